//! Signed entry tokens of the waiting room (docs/guarantees.md#admission): EdDSA (Ed25519) JWTs minted for
//! admitted tickets, the key directory they are signed with (rotation included), the JWKS that publishes
//! the public keys, and the offline verifier a shop embeds.
//!
//! The crate is deliberately small: no async runtime, no HTTP, no Redis. A shop that only verifies needs
//! [`Jwks`] (fetched however it likes) and [`Verifier`]:
//!
//! ```
//! # use dispatcher_token::{EntryClaims, KeyRing, Verifier};
//! # let ring = KeyRing::generate_in_memory()?;
//! # let token = ring.mint(&EntryClaims::for_admission("launch", None, "t-1", 1_000_000, 1_900_000))?;
//! let verifier = Verifier::from_jwks(&ring.jwks())?;
//! let claims = verifier.verify(&token, Some("launch"), 1_500, 5)?;
//! assert_eq!(claims.jti, "t-1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Minting is deterministic: the same claims minted with the same key directory give the byte-identical
//! token in every call and every process (Ed25519 signatures are deterministic, the key is chosen from
//! the claims, the JSON has a fixed field order). See [`KeyRing::mint`].

pub mod claims;
pub mod error;
pub mod jwks;
pub mod keyring;
pub mod verify;

pub use claims::{EntryClaims, ISSUER};
pub use error::{TokenError, VerifyError};
pub use jwks::{Jwk, Jwks};
pub use keyring::{KEY_FILE_SUFFIX, KeyInfo, KeyRing, Kid};
pub use verify::{MAX_TOKEN_LEN, Verifier, verify_with_keyring};

/// Makes sure `jsonwebtoken` has a crypto provider. With only its `rust_crypto` feature enabled it picks
/// that one by itself; if feature unification elsewhere in a build also enabled `aws_lc_rs`, it would
/// panic on first use instead, so the pure-Rust provider is installed explicitly when none is.
pub(crate) fn ensure_crypto_provider() {
    use jsonwebtoken::crypto::CryptoProvider;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if CryptoProvider::try_get_default().is_none() {
            // Losing a race with another installer is fine: any provider will do.
            let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        }
    });
}
