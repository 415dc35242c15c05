//! Offline verification of entry tokens against a JWKS: the check a shop runs on every request.
//!
//! The checks run in this order, and the first failure is the error: size and shape (`Malformed`),
//! header algorithm (`UnsupportedAlgorithm`: only `EdDSA`, so `none`, HMAC keyed with the public key and
//! every other algorithm-confusion trick stop here), key id (`UnknownKey`), base64url of payload and
//! signature and the signature's length (`Malformed`), the signature (`BadSignature`), the claims'
//! shape (`Malformed`), `iss` (`WrongIssuer`), `event` (`WrongEvent`), `exp` (`Expired`), `iat`
//! (`NotYetValid`). Nothing from the payload is trusted before the signature has been checked.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::claims::{EntryClaims, ISSUER, WireClaimsIn};
use crate::error::{TokenError, VerifyError, clip};
use crate::jwks::{Jwk, Jwks};
use crate::keyring::{KeyRing, Kid};

/// Longer tokens are rejected as malformed before any decoding (ours are a few hundred bytes).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Verifies entry tokens with a fixed set of Ed25519 public keys. Cheap to clone; build it once per
/// JWKS fetch and share it.
#[derive(Clone)]
pub struct Verifier {
    keys: BTreeMap<Kid, DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The part of a JOSE header the verifier looks at. Unknown members are ignored; a duplicated member
/// makes the header malformed.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
    b64: Option<serde_json::Value>,
}

impl Verifier {
    /// A verifier for the usable keys of `jwks`: `kty` `OKP`, `crv` `Ed25519`, a `kid`, a valid 32-byte
    /// `x`, and, when present, `alg` `EdDSA` and `use` `sig`. Other keys are ignored; of two keys with the
    /// same `kid` the first is kept. Fails when no key is usable.
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, TokenError> {
        let verifier = Self::from_public_keys(jwks.keys.iter().filter_map(usable_key));
        if verifier.keys.is_empty() {
            return Err(TokenError::NoUsableKeys);
        }
        Ok(verifier)
    }

    /// [`from_jwks`](Self::from_jwks) of a JWKS document's JSON text.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, TokenError> {
        Self::from_jwks(&Jwks::from_json(json)?)
    }

    pub(crate) fn from_public_keys(keys: impl IntoIterator<Item = (Kid, [u8; 32])>) -> Self {
        let mut map = BTreeMap::new();
        for (kid, public) in keys {
            map.entry(kid)
                .or_insert_with(|| DecodingKey::from_ed_der(&public));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Time and issuer are checked here, against the caller's clock, with distinct errors.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            keys: map,
            validation,
        }
    }

    /// The key ids this verifier accepts.
    pub fn kids(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.keys.keys().map(String::as_str)
    }

    /// Verifies `token` at `now_unix_s` (seconds) and returns its claims. `expected_event`, when given,
    /// must equal the token's event. `leeway_s` tolerates clock skew on both ends: the token is expired
    /// when `now ≥ exp + leeway` and not yet valid when `iat > now + leeway`. Never panics, whatever
    /// the input.
    pub fn verify(
        &self,
        token: &str,
        expected_event: Option<&str>,
        now_unix_s: u64,
        leeway_s: u64,
    ) -> Result<EntryClaims, VerifyError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Malformed("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed("not three dot-separated parts"));
        };

        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| VerifyError::Malformed("header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&header)
            .map_err(|_| VerifyError::Malformed("header is not a JOSE JSON object"))?;
        let alg = header
            .alg
            .ok_or(VerifyError::Malformed("header has no alg"))?;
        if alg != "EdDSA" {
            return Err(VerifyError::UnsupportedAlgorithm(clip(&alg)));
        }
        if header.crit.is_some() || header.b64.is_some() {
            return Err(VerifyError::Malformed("unsupported critical header"));
        }
        let Some(kid) = header.kid else {
            return Err(VerifyError::UnknownKey(None));
        };
        let Some(key) = self.keys.get(&kid) else {
            return Err(VerifyError::UnknownKey(Some(clip(&kid))));
        };

        URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| VerifyError::Malformed("payload is not base64url"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
        if signature.len() != 64 {
            return Err(VerifyError::Malformed("signature is not 64 bytes"));
        }

        crate::ensure_crypto_provider();
        let wire = jsonwebtoken::decode::<WireClaimsIn>(token, key, &self.validation)
            .map_err(|e| map_decode_error(e.kind(), &alg))?
            .claims;

        if wire.iss.as_deref() != Some(ISSUER) {
            return Err(VerifyError::WrongIssuer(wire.iss.as_deref().map(clip)));
        }
        let claims = wire.into_claims();
        if let Some(expected) = expected_event
            && claims.event != expected
        {
            return Err(VerifyError::WrongEvent {
                expected: expected.to_owned(),
                found: clip(&claims.event),
            });
        }
        if now_unix_s >= claims.exp.saturating_add(leeway_s) {
            return Err(VerifyError::Expired {
                exp: claims.exp,
                now: now_unix_s,
            });
        }
        if claims.iat > now_unix_s.saturating_add(leeway_s) {
            return Err(VerifyError::NotYetValid {
                iat: claims.iat,
                now: now_unix_s,
            });
        }
        Ok(claims)
    }
}

/// Verifies `token` with the keys of `ring` (the server's own check; see [`Verifier::verify`]).
pub fn verify_with_keyring(
    ring: &KeyRing,
    token: &str,
    expected_event: Option<&str>,
    now_unix_s: u64,
    leeway_s: u64,
) -> Result<EntryClaims, VerifyError> {
    ring.verifier()
        .verify(token, expected_event, now_unix_s, leeway_s)
}

fn usable_key(jwk: &Jwk) -> Option<(Kid, [u8; 32])> {
    if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
        return None;
    }
    if jwk.alg.as_deref().is_some_and(|a| a != "EdDSA")
        || jwk.use_.as_deref().is_some_and(|u| u != "sig")
    {
        return None;
    }
    let kid = jwk.kid.clone()?;
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk.x.as_deref()?)
        .ok()?
        .try_into()
        .ok()?;
    let key = VerifyingKey::from_bytes(&x).ok()?;
    if key.is_weak() {
        return None;
    }
    Some((kid, x))
}

/// What a `jsonwebtoken` decode failure means here. The shape, algorithm and key were checked before
/// the call, so in practice only a bad signature or claims that are not entry claims get here.
fn map_decode_error(kind: &ErrorKind, alg: &str) -> VerifyError {
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => VerifyError::UnsupportedAlgorithm(clip(alg)),
        ErrorKind::Json(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::MissingRequiredClaim(_) => {
            VerifyError::Malformed("payload is not the entry claims")
        }
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            VerifyError::Malformed("bad base64url or UTF-8")
        }
        ErrorKind::InvalidToken => VerifyError::Malformed("rejected header"),
        _ => VerifyError::Malformed("rejected by the JWT decoder"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn ring() -> Result<KeyRing, TokenError> {
        KeyRing::from_keys([(0, [3u8; 32])])
    }

    #[test]
    fn round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let claims =
            EntryClaims::for_admission("launch", Some("u".into()), "tkt", 100_000, 700_000);
        let token = ring.mint(&claims)?;
        let got = Verifier::from_jwks(&ring.jwks())?.verify(&token, Some("launch"), 200, 0)?;
        assert_eq!(got, claims);
        assert_eq!(verify_with_keyring(&ring, &token, None, 200, 0)?, claims);
        Ok(())
    }

    #[test]
    fn header_problems_are_classified() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let verifier = ring.verifier();
        let kid = ring.signing_key_for(0).kid.clone();
        let token = ring.mint(&EntryClaims::for_admission("e", None, "t", 0, 60_000))?;
        let (_, rest) = token.split_once('.').ok_or("no dot")?;
        let with_header = |h: &str| format!("{}.{rest}", b64(h));
        let v = |t: &str| verifier.verify(t, None, 1, 0);

        assert_eq!(
            v(&with_header(r#"{"kid":"x"}"#)),
            Err(VerifyError::Malformed("header has no alg"))
        );
        assert!(matches!(
            v(&with_header(r#"{"alg":"EdDSA","alg":"EdDSA"}"#)),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            v(&with_header(r#"{"alg":7}"#)),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            v(&with_header("[]")),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            v(&with_header(r#"{"alg":"none"}"#)),
            Err(VerifyError::UnsupportedAlgorithm("none".into()))
        );
        assert_eq!(
            v(&with_header(r#"{"alg":"ES256"}"#)),
            Err(VerifyError::UnsupportedAlgorithm("ES256".into()))
        );
        assert_eq!(
            v(&with_header(r#"{"alg":"EdDSA"}"#)),
            Err(VerifyError::UnknownKey(None))
        );
        assert_eq!(
            v(&with_header(r#"{"alg":"EdDSA","kid":"nope"}"#)),
            Err(VerifyError::UnknownKey(Some("nope".into())))
        );
        let crit = format!(r#"{{"alg":"EdDSA","kid":"{kid}","crit":["b64"],"b64":false}}"#);
        assert!(matches!(
            v(&with_header(&crit)),
            Err(VerifyError::Malformed(_))
        ));
        // A header re-encoded differently changes the signed bytes: the signature no longer matches.
        let reordered = format!(r#"{{"kid":"{kid}","alg":"EdDSA","typ":"JWT"}}"#);
        assert_eq!(v(&with_header(&reordered)), Err(VerifyError::BadSignature));
        Ok(())
    }

    #[test]
    fn jwks_filtering() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let good = ring.jwks().keys.remove(0);
        let mut short = good.clone();
        short.x = Some(b64("short"));
        let mut hs = good.clone();
        hs.alg = Some("HS256".into());
        let mut enc = good.clone();
        enc.use_ = Some("enc".into());
        let mut no_kid = good.clone();
        no_kid.kid = None;
        let mut weak = good.clone();
        weak.x = Some(URL_SAFE_NO_PAD.encode([0u8; 32]));
        weak.kid = Some("weak".into());
        let rsa = Jwk {
            kty: "RSA".into(),
            crv: None,
            x: None,
            kid: Some("r".into()),
            alg: None,
            use_: None,
        };
        let bad = Jwks {
            keys: vec![short, hs, enc, no_kid, weak, rsa.clone()],
        };
        assert!(matches!(
            Verifier::from_jwks(&bad),
            Err(TokenError::NoUsableKeys)
        ));
        assert!(matches!(
            Verifier::from_jwks(&Jwks::default()),
            Err(TokenError::NoUsableKeys)
        ));
        let mixed = Jwks {
            keys: vec![rsa, good.clone()],
        };
        let verifier = Verifier::from_jwks(&mixed)?;
        assert_eq!(
            verifier.kids().collect::<Vec<_>>(),
            vec![good.kid.as_deref().ok_or("kid")?]
        );
        let json = mixed.to_json();
        assert_eq!(Verifier::from_jwks_json(json.as_bytes())?.kids().len(), 1);
        Ok(())
    }

    #[test]
    fn time_edges() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let token = ring.mint(&EntryClaims::for_admission(
            "e", None, "t", 100_000, 200_000,
        ))?;
        let v = ring.verifier();
        assert!(v.verify(&token, None, 199, 0).is_ok());
        assert_eq!(
            v.verify(&token, None, 200, 0),
            Err(VerifyError::Expired { exp: 200, now: 200 })
        );
        assert!(v.verify(&token, None, 204, 5).is_ok());
        assert!(v.verify(&token, None, 100, 0).is_ok());
        assert_eq!(
            v.verify(&token, None, 99, 0),
            Err(VerifyError::NotYetValid { iat: 100, now: 99 })
        );
        assert!(v.verify(&token, None, 95, 5).is_ok());
        assert!(v.verify(&token, None, u64::MAX, u64::MAX).is_err());
        Ok(())
    }
}
