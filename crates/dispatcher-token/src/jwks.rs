//! The JSON Web Key Set (RFC 7517) that publishes the public signing keys, as served and as read.

use serde::{Deserialize, Serialize};

use crate::error::TokenError;

/// A JWKS document: `{"keys":[…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys. Keys of other types are kept when parsing (and ignored by the verifier).
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

/// One JWK. The ones this crate publishes are
/// `{"kty":"OKP","crv":"Ed25519","x":"<base64url raw public key>","kid":"…","alg":"EdDSA","use":"sig"}`.
/// Every member except `kty` is optional so that foreign key sets (RSA, EC, …) still parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type (`OKP` for Ed25519).
    #[serde(default)]
    pub kty: String,
    /// Curve (`Ed25519`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// The raw 32-byte public key, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// The key id tokens name in their header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The algorithm (`EdDSA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Public key use (`sig`).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl Jwk {
    /// The JWK of an Ed25519 signing key.
    pub(crate) fn ed25519(kid: &str, x: String) -> Self {
        Self {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(x),
            kid: Some(kid.into()),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
        }
    }
}

impl Jwks {
    /// Parses a JWKS document (e.g. the body of the JWKS endpoint).
    pub fn from_json(json: &[u8]) -> Result<Self, TokenError> {
        serde_json::from_slice(json).map_err(|e| TokenError::InvalidJwks(e.to_string()))
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from(r#"{"keys":[]}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_shape() {
        let jwks = Jwks {
            keys: vec![Jwk::ed25519("k1", "AAAA".into())],
        };
        assert_eq!(
            jwks.to_json(),
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"k1","alg":"EdDSA","use":"sig"}]}"#
        );
    }

    #[test]
    fn foreign_keys_parse() -> Result<(), TokenError> {
        let jwks =
            Jwks::from_json(br#"{"keys":[{"kty":"RSA","n":"abc","e":"AQAB","kid":"r"},{}]}"#)?;
        assert_eq!(jwks.keys.len(), 2);
        assert_eq!(jwks.keys[0].kty, "RSA");
        assert!(Jwks::from_json(b"not json").is_err());
        Ok(())
    }
}
