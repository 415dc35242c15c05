//! The crate's typed errors: [`TokenError`] for keys and minting, [`VerifyError`] for rejected tokens.

use std::io;
use std::path::PathBuf;

/// Failures of the key directory, of key material and of minting.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the key directory failed.
    #[error("key directory I/O on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file in the key directory is not a valid key file.
    #[error("bad key file {}: {reason}", path.display())]
    BadKeyFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key directory holds no key (use `load_or_generate` to create one).
    #[error("no signing key in {}", dir.display())]
    NoKeys {
        /// The directory.
        dir: PathBuf,
    },
    /// A key ring was built from no keys.
    #[error("a key ring needs at least one key")]
    EmptyRing,
    /// Two keys of one ring have the same key id.
    #[error("duplicate key id {kid}")]
    DuplicateKid {
        /// The key id.
        kid: String,
    },
    /// `remove_key` was asked for a key id the directory does not hold.
    #[error("no key with id {kid} in {}", dir.display())]
    UnknownKid {
        /// The key id asked for.
        kid: String,
        /// The directory.
        dir: PathBuf,
    },
    /// `remove_key` would have removed the directory's last key.
    #[error("key {kid} is the last key in {}; add another before removing it", dir.display())]
    LastKey {
        /// The key id.
        kid: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// Encoding a key or signing a token failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// A JWKS document could not be parsed.
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
    /// A JWKS holds no key this crate can verify with (Ed25519 signing keys with a key id).
    #[error("the JWKS holds no usable Ed25519 key")]
    NoUsableKeys,
}

impl TokenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::BadKeyFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Why a token was rejected. Each kind has a stable [`code`](VerifyError::code) for logs, metrics and
/// API responses. Strings taken from the token are cut to a few dozen characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT: wrong number of parts, bad base64url, bad JSON, a missing or mistyped claim, an
    /// unsupported critical header, a signature of the wrong length, or too long a token.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not `EdDSA` (this includes `none` and every HMAC/RSA/EC algorithm).
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The header has no `kid`, or one the key set does not hold.
    #[error("unknown key id {0:?}")]
    UnknownKey(Option<String>),
    /// The signature does not verify with the key named by `kid`: forged or tampered.
    #[error("bad signature")]
    BadSignature,
    /// The session ended: `now ≥ exp + leeway`.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// Issued in the future: `iat > now + leeway`.
    #[error("token issued at {iat}, in the future (now {now})")]
    NotYetValid {
        /// The token's `iat`.
        iat: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The token is for another event.
    #[error("token is for event {found:?}, expected {expected:?}")]
    WrongEvent {
        /// The event the caller expected.
        expected: String,
        /// The event in the token.
        found: String,
    },
    /// The `iss` claim is missing or not [`ISSUER`](crate::ISSUER).
    #[error("wrong issuer {0:?}")]
    WrongIssuer(Option<String>),
}

impl VerifyError {
    /// A stable machine-readable name of the kind: `malformed`, `unsupported_algorithm`, `unknown_key`,
    /// `bad_signature`, `expired`, `not_yet_valid`, `wrong_event`, `wrong_issuer`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::WrongEvent { .. } => "wrong_event",
            Self::WrongIssuer(_) => "wrong_issuer",
        }
    }
}

/// Cuts a string taken from an untrusted token to at most 64 characters for error reports.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        s.chars().take(MAX).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            VerifyError::Malformed("x"),
            VerifyError::UnsupportedAlgorithm("none".into()),
            VerifyError::UnknownKey(None),
            VerifyError::BadSignature,
            VerifyError::Expired { exp: 1, now: 2 },
            VerifyError::NotYetValid { iat: 2, now: 1 },
            VerifyError::WrongEvent {
                expected: "a".into(),
                found: "b".into(),
            },
            VerifyError::WrongIssuer(None),
        ];
        let mut codes: Vec<_> = all.iter().map(VerifyError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn clip_cuts_long_strings() {
        assert_eq!(clip("abc"), "abc");
        let long = "x".repeat(100);
        assert_eq!(clip(&long).chars().count(), 65);
    }
}
