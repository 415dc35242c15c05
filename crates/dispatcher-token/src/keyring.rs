//! The signing keys: the key directory (load, generate, rotate, remove), which key signs which token,
//! minting, and the JWKS of the public halves.
//!
//! # The key directory
//!
//! One file per key, named `<active_from_unix_ms>-<kid>.ed25519`, holding the Ed25519 private key as a
//! PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`, RFC 8410; the format `openssl genpkey -algorithm
//! ed25519` writes). `active_from_unix_ms` is the instant from which the key signs new admissions (its
//! creation time, unless the key was added ahead of time with [`KeyRing::add_key_active_from`]); `kid`
//! is the key id (below) and must match the key inside, or loading fails naming the file.
//!
//! * The directory is created with mode 0700 and key files with 0600 (on unix; modes of an existing
//!   directory are left alone).
//! * Files are written to a dot-prefixed temporary name, fsynced, then renamed into place, so a reader
//!   never sees half a key. Files whose name starts with `.` are ignored; any other `*.ed25519` file
//!   must be a valid key.
//! * Generating, adding and removing keys hold an exclusive `flock` on `<dir>/.lock`, so processes
//!   starting at once on a fresh directory create exactly one key between them. Loading takes no lock.
//!
//! # Key ids
//!
//! `kid` = base64url without padding of the first 12 bytes of SHA-256 over the raw 32-byte public key
//! (16 characters). It is not the RFC 7638 JWK thumbprint.
//!
//! # Which key signs
//!
//! A token's key is a function of its claims only, so every process holding the same directory mints
//! the byte-identical token for the same claims: the newest key whose `active_from` is at or before the
//! start of the token's `iat` second (`iat·1000` ms); if no key is that old, the oldest key. Ties in
//! `active_from` are broken by `kid`. After a rotation, tickets admitted before the new key's
//! `active_from` keep their old tokens for as long as the old key is in the directory. (Comparing with
//! the start rather than the end of the second matters: `iat` is the admission instant rounded down, so
//! a ticket admitted in the same second as a rotation but before it would otherwise switch keys.)
//!
//! Processes that have not reloaded the directory yet keep minting with the keys they know, so for
//! tokens to agree everywhere a new key should be added ahead of time
//! ([`KeyRing::add_key_active_from`] `now + reload interval`); that also lets shops fetch the new JWKS
//! before the first token signed with the new key reaches them.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::claims::{EntryClaims, WireClaimsOut};
use crate::error::TokenError;
use crate::jwks::{Jwk, Jwks};
use crate::verify::Verifier;

/// A key id (see the module documentation for how it is derived).
pub type Kid = String;

/// The file name suffix of key files.
pub const KEY_FILE_SUFFIX: &str = ".ed25519";

const LOCK_FILE_NAME: &str = ".lock";
/// Key files are a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// The public facts of one signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub kid: Kid,
    /// From when (Unix ms) the key signs new admissions.
    pub active_from_ms: u64,
}

struct RingKey {
    info: KeyInfo,
    public: [u8; 32],
    signing: SigningKey,
    /// The base64url JOSE header with this key's id, encoded once.
    header_b64: String,
}

impl RingKey {
    fn new(signing: &SigningKey, active_from_ms: u64) -> Result<Self, TokenError> {
        let public = signing.verifying_key().to_bytes();
        let kid = kid_of(&public);
        // The kid is base64url text: it needs no JSON escaping.
        let header = format!(r#"{{"typ":"JWT","alg":"EdDSA","kid":"{kid}"}}"#);
        Ok(Self {
            info: KeyInfo {
                kid,
                active_from_ms,
            },
            public,
            signing: signing.clone(),
            header_b64: URL_SAFE_NO_PAD.encode(header),
        })
    }
}

/// The signing keys, ordered by activation time. Never empty. Immutable: rotation writes to the key
/// directory, and a ring sees the change once reloaded with [`KeyRing::load`].
pub struct KeyRing {
    /// Sorted by (`active_from_ms`, `kid`); at least one key, kids distinct.
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.info).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// Loads the key directory, first creating it (mode 0700) and one key in it when it holds none.
    /// Safe to call from several processes or threads at once on the same fresh directory: exactly one
    /// key is created.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TokenError> {
        create_key_dir(dir)?;
        let _lock = lock_dir(dir)?;
        if list_key_files(dir)?.is_empty() {
            write_key_file(dir, now_ms(), &generate_signing_key()?)?;
        }
        Self::load(dir)
    }

    /// Loads every key of the directory. Fails when it holds none, or when any `*.ed25519` file is not a
    /// valid key (the error names the file).
    pub fn load(dir: &Path) -> Result<Self, TokenError> {
        let mut keys = Vec::new();
        for file in list_key_files(dir)? {
            if let Some(key) = read_key_file(&file)? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(TokenError::NoKeys {
                dir: dir.to_owned(),
            });
        }
        Self::from_ring_keys(keys)
    }

    /// Rotation: generates a new key in the directory, active from now, and returns its id. Rings
    /// already loaded do not see it until reloaded with [`KeyRing::load`].
    pub fn add_key(dir: &Path) -> Result<Kid, TokenError> {
        Self::add_key_active_from(dir, now_ms())
    }

    /// Like [`add_key`](Self::add_key), but the key signs only admissions from `active_from_ms` on. A
    /// key added ahead of time is published in the JWKS at once, so shops that cache the JWKS and
    /// servers that reload the directory periodically all have it before the first token uses it.
    pub fn add_key_active_from(dir: &Path, active_from_ms: u64) -> Result<Kid, TokenError> {
        create_key_dir(dir)?;
        let _lock = lock_dir(dir)?;
        write_key_file(dir, active_from_ms, &generate_signing_key()?)
    }

    /// Deletes the key `kid` from the directory; tokens signed with it stop verifying once verifiers
    /// have the new JWKS. Refuses to delete the directory's last key.
    pub fn remove_key(dir: &Path, kid: &str) -> Result<(), TokenError> {
        let _lock = lock_dir(dir)?;
        let (matching, others): (Vec<_>, Vec<_>) =
            list_key_files(dir)?.into_iter().partition(|f| f.kid == kid);
        if matching.is_empty() {
            return Err(TokenError::UnknownKid {
                kid: kid.to_owned(),
                dir: dir.to_owned(),
            });
        }
        if others.is_empty() {
            return Err(TokenError::LastKey {
                kid: kid.to_owned(),
                dir: dir.to_owned(),
            });
        }
        for file in matching {
            match fs::remove_file(&file.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(TokenError::io(&file.path, e)),
            }
        }
        sync_dir(dir)
    }

    /// A ring of one fresh key, active from now, kept in memory only (tests, `dispatcher demo`).
    pub fn generate_in_memory() -> Result<Self, TokenError> {
        let seed = random_seed()?;
        Self::from_keys([(now_ms(), seed)])
    }

    /// A ring from raw keys: (`active_from_ms`, 32-byte Ed25519 secret key). Fails when empty or when
    /// two entries are the same key.
    pub fn from_keys(keys: impl IntoIterator<Item = (u64, [u8; 32])>) -> Result<Self, TokenError> {
        let keys = keys
            .into_iter()
            .map(|(active_from_ms, seed)| {
                RingKey::new(&SigningKey::from_bytes(&seed), active_from_ms)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_ring_keys(keys)
    }

    fn from_ring_keys(mut keys: Vec<RingKey>) -> Result<Self, TokenError> {
        if keys.is_empty() {
            return Err(TokenError::EmptyRing);
        }
        keys.sort_by(|a, b| {
            (a.info.active_from_ms, &a.info.kid).cmp(&(b.info.active_from_ms, &b.info.kid))
        });
        let mut kids: Vec<&str> = keys.iter().map(|k| k.info.kid.as_str()).collect();
        kids.sort_unstable();
        if let Some(w) = kids.windows(2).find(|w| w[0] == w[1]) {
            return Err(TokenError::DuplicateKid {
                kid: w[0].to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// The keys, oldest activation first.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &KeyInfo> + '_ {
        self.keys.iter().map(|k| &k.info)
    }

    /// The key that signs tokens issued at `iat` (seconds); see the module documentation.
    pub fn signing_key_for(&self, iat: u64) -> &KeyInfo {
        &self.key_for(iat).info
    }

    fn key_for(&self, iat: u64) -> &RingKey {
        let cutoff_ms = iat.saturating_mul(1000);
        // `keys` is never empty (checked in `from_ring_keys`, the only constructor).
        self.keys
            .iter()
            .rev()
            .find(|k| k.info.active_from_ms <= cutoff_ms)
            .unwrap_or(&self.keys[0])
    }

    /// Mints the entry token of `claims`: a JWT with header `{"typ":"JWT","alg":"EdDSA","kid":…}` and
    /// payload `{"iss":"dispatcher","event":…,"user":…,"jti":…,"iat":…,"exp":…}` (`user` omitted when
    /// absent), signed with the key chosen by [`signing_key_for`](Self::signing_key_for). The same
    /// claims give the same token on every call and in every process sharing the key directory.
    ///
    /// Signed here with ed25519-dalek (a compact JWS, RFC 7515/8037), not through `jsonwebtoken`, which
    /// re-parsed the PKCS#8 key on every call: minting is on the hot path of admissions.
    pub fn mint(&self, claims: &EntryClaims) -> Result<String, TokenError> {
        use ed25519_dalek::Signer;
        let key = self.key_for(claims.iat);
        let payload = serde_json::to_vec(&WireClaimsOut::from(claims))
            .map_err(|e| TokenError::Signing(format!("claims: {e}")))?;
        let mut out = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&key.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        let signature = key.signing.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
        Ok(out)
    }

    /// The public keys as a JWKS, newest activation first. Keys added ahead of time are included.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .rev()
                .map(|k| Jwk::ed25519(&k.info.kid, URL_SAFE_NO_PAD.encode(k.public)))
                .collect(),
        }
    }

    /// A verifier for exactly this ring's keys.
    pub fn verifier(&self) -> Verifier {
        Verifier::from_public_keys(self.keys.iter().map(|k| (k.info.kid.clone(), k.public)))
    }
}

/// The key id of a raw Ed25519 public key.
pub(crate) fn kid_of(public: &[u8; 32]) -> Kid {
    let digest = Sha256::digest(public);
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_seed() -> Result<[u8; 32], TokenError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(seed)
}

fn generate_signing_key() -> Result<SigningKey, TokenError> {
    Ok(SigningKey::from_bytes(&random_seed()?))
}

/// A `*.ed25519` file of the key directory, as named.
#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
    active_from_ms: u64,
    kid: Kid,
}

/// Parses `<active_from_unix_ms>-<kid>.ed25519`.
fn parse_key_file_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(KEY_FILE_SUFFIX)?;
    let (ms, kid) = stem.split_once('-')?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if kid.is_empty()
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((ms.parse().ok()?, kid))
}

/// The key files of `dir`, sorted by (activation, kid). Dot files are skipped.
fn list_key_files(dir: &Path) -> Result<Vec<KeyFile>, TokenError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| TokenError::io(dir, e))? {
        let entry = entry.map_err(|e| TokenError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(KEY_FILE_SUFFIX) {
            continue;
        }
        let path = entry.path();
        let Some((active_from_ms, kid)) = parse_key_file_name(name) else {
            return Err(TokenError::bad_file(
                path,
                "name is not <active_from_unix_ms>-<kid>.ed25519",
            ));
        };
        let kid = kid.to_owned();
        files.push(KeyFile {
            path,
            active_from_ms,
            kid,
        });
    }
    files.sort_by(|a, b| (a.active_from_ms, &a.kid).cmp(&(b.active_from_ms, &b.kid)));
    Ok(files)
}

/// Reads one key file; `None` when it vanished since it was listed (a concurrent `remove_key`).
fn read_key_file(file: &KeyFile) -> Result<Option<RingKey>, TokenError> {
    let path = &file.path;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TokenError::io(path, e)),
    };
    let mut bytes = Vec::new();
    f.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TokenError::io(path, e))?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(TokenError::bad_file(
            path,
            format!("larger than {MAX_KEY_FILE_LEN} bytes"),
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| TokenError::bad_file(path, "not a PEM text file"))?;
    let signing = SigningKey::from_pkcs8_pem(text).map_err(|e| {
        TokenError::bad_file(path, format!("not a PKCS#8 PEM Ed25519 private key ({e})"))
    })?;
    let key = RingKey::new(&signing, file.active_from_ms)?;
    if key.info.kid != file.kid {
        return Err(TokenError::bad_file(
            path,
            format!(
                "the name says kid {} but the key inside has kid {}",
                file.kid, key.info.kid
            ),
        ));
    }
    Ok(Some(key))
}

fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Writes a new key file atomically (temporary file, fsync, rename, directory fsync); returns its kid.
fn write_key_file(
    dir: &Path,
    active_from_ms: u64,
    signing: &SigningKey,
) -> Result<Kid, TokenError> {
    let kid = kid_of(&signing.verifying_key().to_bytes());
    let name = format!("{active_from_ms}-{kid}{KEY_FILE_SUFFIX}");
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| TokenError::Signing(format!("encode key: {e}")))?;
    let written = private_file_options()
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
        let _ = fs::remove_file(&tmp);
        return Err(TokenError::io(&path, e));
    }
    sync_dir(dir)?;
    Ok(kid)
}

fn create_key_dir(dir: &Path) -> Result<(), TokenError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| TokenError::io(dir, e))
}

/// Takes the directory's exclusive lock; released when the returned file is dropped.
fn lock_dir(dir: &Path) -> Result<File, TokenError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = private_file_options()
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| TokenError::io(&path, e))?;
    file.lock().map_err(|e| TokenError::io(&path, e))?;
    Ok(file)
}

/// Makes renames and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), TokenError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TokenError::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), TokenError>;

    #[test]
    fn file_names_parse_strictly() {
        assert_eq!(
            parse_key_file_name("1700000000000-abc_-XYZ.ed25519"),
            Some((1_700_000_000_000, "abc_-XYZ"))
        );
        assert_eq!(parse_key_file_name("-abc.ed25519"), None);
        assert_eq!(parse_key_file_name("12-.ed25519"), None);
        assert_eq!(parse_key_file_name("+12-abc.ed25519"), None);
        assert_eq!(parse_key_file_name("12-a/b.ed25519"), None);
        assert_eq!(
            parse_key_file_name("99999999999999999999999-abc.ed25519"),
            None
        );
        assert_eq!(parse_key_file_name("12-abc.pem"), None);
    }

    #[test]
    fn kid_is_sixteen_url_safe_chars() -> R {
        let ring = KeyRing::from_keys([(0, [7u8; 32])])?;
        let kid = &ring.signing_key_for(0).kid;
        assert_eq!(kid.len(), 16);
        assert!(
            kid.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        Ok(())
    }

    #[test]
    fn key_choice_follows_iat() -> R {
        let ring = KeyRing::from_keys([
            (10_000, [1u8; 32]),
            (20_000, [2u8; 32]),
            (30_500, [3u8; 32]),
        ])?;
        let kids: Vec<Kid> = ring.keys().map(|k| k.kid.clone()).collect();
        assert_eq!(
            ring.signing_key_for(0).kid,
            kids[0],
            "older than every key: the oldest"
        );
        assert_eq!(ring.signing_key_for(10).kid, kids[0]);
        assert_eq!(ring.signing_key_for(19).kid, kids[0]);
        assert_eq!(ring.signing_key_for(20).kid, kids[1]);
        assert_eq!(ring.signing_key_for(29).kid, kids[1]);
        assert_eq!(
            ring.signing_key_for(30).kid,
            kids[1],
            "second 30 starts before 30_500 ms"
        );
        assert_eq!(ring.signing_key_for(31).kid, kids[2]);
        assert_eq!(ring.signing_key_for(u64::MAX).kid, kids[2]);
        Ok(())
    }

    #[test]
    fn duplicate_and_empty_rings_are_refused() {
        assert!(matches!(KeyRing::from_keys([]), Err(TokenError::EmptyRing)));
        assert!(matches!(
            KeyRing::from_keys([(1, [5u8; 32]), (2, [5u8; 32])]),
            Err(TokenError::DuplicateKid { .. })
        ));
    }

    #[test]
    fn debug_shows_no_secret() -> R {
        let ring = KeyRing::from_keys([(1, [9u8; 32])])?;
        let s = format!("{ring:?}");
        assert!(s.contains(&ring.signing_key_for(0).kid));
        assert!(!s.contains("encoding"), "{s}");
        Ok(())
    }
}
