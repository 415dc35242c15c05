//! Shared helpers: raw token assembly and signing, so tests can build tokens the minter never would.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dispatcher_token::{EntryClaims, KeyRing, TokenError};
use ed25519_dalek::{Signer as _, SigningKey};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The secret key of the test ring.
pub const SEED: [u8; 32] = [42u8; 32];

pub fn ring() -> Result<KeyRing, TokenError> {
    KeyRing::from_keys([(0, SEED)])
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap_or_default()
}

/// `header.payload.signature` with the given JSON texts, signed Ed25519 with `seed`.
pub fn signed(seed: &[u8; 32], header: &str, payload: &str) -> String {
    let msg = format!("{}.{}", b64(header), b64(payload));
    let sig = SigningKey::from_bytes(seed).sign(msg.as_bytes());
    format!("{msg}.{}", b64(sig.to_bytes()))
}

/// The three parts of a token.
pub fn parts(token: &str) -> (String, String, String) {
    let mut it = token.split('.').map(str::to_owned);
    (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    )
}

/// Claims admitted at second 1_000 with a 10-minute session.
pub fn claims(event: &str) -> EntryClaims {
    EntryClaims::for_admission(
        event,
        Some("user-1".into()),
        "ticket-0123456789abcdef",
        1_000_000,
        1_600_000,
    )
}
