//! The verifier against forged, tampered, stale and malformed tokens: each gets its own error.

use dispatcher_token::{KeyRing, MAX_TOKEN_LEN, VerifyError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::{SEED, TestResult, b64, claims, parts, ring, signed, unb64};

const NOW: u64 = 1_100;

fn header_with_kid(kid: &str) -> String {
    format!(r#"{{"typ":"JWT","alg":"EdDSA","kid":"{kid}"}}"#)
}

#[test]
fn genuine_token_verifies() -> TestResult {
    let ring = ring()?;
    let c = claims("launch");
    let token = ring.mint(&c)?;
    let (h, p, _) = parts(&token);
    let kid = ring.signing_key_for(c.iat).kid.clone();
    assert_eq!(String::from_utf8(unb64(&h))?, header_with_kid(&kid));
    assert_eq!(
        String::from_utf8(unb64(&p))?,
        r#"{"iss":"dispatcher","event":"launch","user":"user-1","jti":"ticket-0123456789abcdef","iat":1000,"exp":1600}"#
    );
    assert_eq!(ring.verifier().verify(&token, Some("launch"), NOW, 0)?, c);
    assert_eq!(ring.verifier().verify(&token, None, NOW, 0)?, c);
    // The test helper signs exactly like the minter.
    assert_eq!(
        signed(
            &SEED,
            &header_with_kid(&kid),
            &String::from_utf8(unb64(&p))?
        ),
        token
    );
    Ok(())
}

#[test]
fn forged_with_another_key_under_our_kid() -> TestResult {
    let ring = ring()?;
    let token = ring.mint(&claims("launch"))?;
    let (h, p, _) = parts(&token);
    let forged = signed(
        &[7u8; 32],
        &String::from_utf8(unb64(&h))?,
        &String::from_utf8(unb64(&p))?,
    );
    assert_eq!(
        ring.verifier().verify(&forged, Some("launch"), NOW, 0),
        Err(VerifyError::BadSignature)
    );
    Ok(())
}

#[test]
fn tampered_payload_or_signature() -> TestResult {
    let ring = ring()?;
    let v = ring.verifier();
    let token = ring.mint(&claims("launch"))?;
    let (h, p, s) = parts(&token);

    // Flip one byte of the payload JSON (the event name), keep the signature.
    let mut payload = unb64(&p);
    let at = payload
        .windows(6)
        .position(|w| w == b"launch")
        .ok_or("no event")?;
    payload[at] ^= 0x01;
    let tampered = format!("{h}.{}.{s}", b64(&payload));
    assert_eq!(
        v.verify(&tampered, None, NOW, 0),
        Err(VerifyError::BadSignature)
    );

    // Extend the session: the classic edit.
    let longer = String::from_utf8(unb64(&p))?.replace("1600", "9999");
    assert_eq!(
        v.verify(&format!("{h}.{}.{s}", b64(longer)), None, NOW, 0),
        Err(VerifyError::BadSignature)
    );

    // Flip one byte of the signature.
    let mut sig = unb64(&s);
    sig[10] ^= 0x80;
    assert_eq!(
        v.verify(&format!("{h}.{p}.{}", b64(&sig)), None, NOW, 0),
        Err(VerifyError::BadSignature)
    );

    // Swap in the signature of another of our own tokens.
    let other = ring.mint(&claims("other"))?;
    let (_, _, other_sig) = parts(&other);
    assert_eq!(
        v.verify(&format!("{h}.{p}.{other_sig}"), None, NOW, 0),
        Err(VerifyError::BadSignature)
    );
    Ok(())
}

#[test]
fn expired_not_yet_valid_wrong_event() -> TestResult {
    let ring = ring()?;
    let v = ring.verifier();
    let token = ring.mint(&claims("launch"))?;
    assert_eq!(
        v.verify(&token, Some("launch"), 1_600, 0),
        Err(VerifyError::Expired {
            exp: 1_600,
            now: 1_600
        })
    );
    assert_eq!(
        v.verify(&token, Some("launch"), 1_609, 10).map(|c| c.iat),
        Ok(1_000)
    );
    assert_eq!(
        v.verify(&token, None, 999, 0),
        Err(VerifyError::NotYetValid {
            iat: 1_000,
            now: 999
        })
    );
    assert_eq!(
        v.verify(&token, Some("other"), NOW, 0),
        Err(VerifyError::WrongEvent {
            expected: "other".into(),
            found: "launch".into()
        })
    );
    assert_eq!(
        v.verify(&token, Some("other"), NOW, 0)
            .map_err(|e| e.code()),
        Err("wrong_event")
    );
    Ok(())
}

#[test]
fn signed_by_us_but_not_our_claims() -> TestResult {
    let ring = ring()?;
    let v = ring.verifier();
    let header = header_with_kid(&ring.signing_key_for(0).kid);
    let sign = |payload: &str| signed(&SEED, &header, payload);

    let other_iss = sign(r#"{"iss":"someone","event":"e","jti":"t","iat":1000,"exp":2000}"#);
    assert_eq!(
        v.verify(&other_iss, None, NOW, 0),
        Err(VerifyError::WrongIssuer(Some("someone".into())))
    );
    let no_iss = sign(r#"{"event":"e","jti":"t","iat":1000,"exp":2000}"#);
    assert_eq!(
        v.verify(&no_iss, None, NOW, 0),
        Err(VerifyError::WrongIssuer(None))
    );
    for payload in [
        r#"{"iss":"dispatcher","jti":"t","iat":1000,"exp":2000}"#,
        r#"{"iss":"dispatcher","event":"e","iat":1000,"exp":2000}"#,
        r#"{"iss":"dispatcher","event":"e","jti":"t","exp":2000}"#,
        r#"{"iss":"dispatcher","event":"e","jti":"t","iat":1000}"#,
        r#"{"iss":"dispatcher","event":"e","jti":"t","iat":"1000","exp":2000}"#,
        r#"{"iss":"dispatcher","event":"e","jti":"t","iat":1000.5,"exp":2000}"#,
        r#"{"iss":"dispatcher","event":"e","jti":"t","iat":-1,"exp":2000}"#,
        r#"{"iss":"dispatcher","event":7,"jti":"t","iat":1000,"exp":2000}"#,
        r#"["not","an","object"]"#,
        "not json",
        "",
    ] {
        assert!(
            matches!(
                v.verify(&sign(payload), None, NOW, 0),
                Err(VerifyError::Malformed(_))
            ),
            "{payload}"
        );
    }
    // Unknown extra claims are tolerated.
    let extra =
        sign(r#"{"iss":"dispatcher","event":"e","jti":"t","iat":1000,"exp":2000,"x":{"y":1}}"#);
    assert_eq!(v.verify(&extra, Some("e"), NOW, 0)?.jti, "t");
    Ok(())
}

#[test]
fn algorithm_confusion_is_refused() -> TestResult {
    let ring = ring()?;
    let v = ring.verifier();
    let kid = ring.signing_key_for(0).kid.clone();
    let token = ring.mint(&claims("launch"))?;
    let (_, p, s) = parts(&token);

    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(format!(r#"{{"typ":"JWT","alg":"{alg}","kid":"{kid}"}}"#));
        assert_eq!(
            v.verify(&format!("{h}.{p}."), None, NOW, 0),
            Err(VerifyError::UnsupportedAlgorithm(alg.into()))
        );
        assert_eq!(
            v.verify(&format!("{h}.{p}.{s}"), None, NOW, 0),
            Err(VerifyError::UnsupportedAlgorithm(alg.into()))
        );
    }

    // HS256 keyed with the public key, both as raw bytes and as the JWK's `x` text.
    let jwk = ring.jwks().keys.remove(0);
    let x = jwk.x.ok_or("no x")?;
    let payload: serde_json::Value = serde_json::from_slice(&unb64(&p))?;
    for secret in [unb64(&x), x.clone().into_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let hs = jsonwebtoken::encode(&header, &payload, &EncodingKey::from_secret(&secret)?)?;
        assert_eq!(
            v.verify(&hs, None, NOW, 0),
            Err(VerifyError::UnsupportedAlgorithm("HS256".into()))
        );
    }
    for alg in ["RS256", "ES256", "PS256", "Ed25519", "EdDSA ", "eddsa", ""] {
        let h = b64(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#));
        assert_eq!(
            v.verify(&format!("{h}.{p}.{s}"), None, NOW, 0),
            Err(VerifyError::UnsupportedAlgorithm(alg.into()))
        );
    }
    Ok(())
}

#[test]
fn garbage_and_truncation_are_malformed() -> TestResult {
    let ring = ring()?;
    let v = ring.verifier();
    let token = ring.mint(&claims("launch"))?;
    for garbage in [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "not a jwt",
        " ",
        "\0",
        "e30.e30.e30",
        "e30.e30.",
        "eyJhbGciOiJFZERTQSJ9",
        "💥.💥.💥",
        &format!("{token}."),
        &format!(" {token}"),
        &format!("{token}="),
        &format!("{token}\n"),
        &"a".repeat(MAX_TOKEN_LEN + 1),
    ] {
        let got = v.verify(garbage, None, NOW, 0);
        assert!(
            matches!(got, Err(VerifyError::Malformed(_))),
            "{garbage:?} gave {got:?}"
        );
        assert_eq!(got.map_err(|e| e.code()), Err("malformed"));
    }
    for len in 0..token.len() {
        let prefix = &token[..len];
        let got = v.verify(prefix, None, NOW, 0);
        assert!(
            matches!(got, Err(VerifyError::Malformed(_))),
            "prefix {len} gave {got:?}"
        );
    }
    Ok(())
}

#[test]
fn unknown_key() -> TestResult {
    let ours = ring()?;
    let theirs = KeyRing::from_keys([(0, [9u8; 32])])?;
    let token = theirs.mint(&claims("launch"))?;
    let kid = theirs.signing_key_for(0).kid.clone();
    assert_eq!(
        ours.verifier().verify(&token, None, NOW, 0),
        Err(VerifyError::UnknownKey(Some(kid)))
    );
    let (_, p, s) = parts(&token);
    let no_kid = format!("{}.{p}.{s}", b64(r#"{"alg":"EdDSA","typ":"JWT"}"#));
    assert_eq!(
        ours.verifier().verify(&no_kid, None, NOW, 0),
        Err(VerifyError::UnknownKey(None))
    );
    Ok(())
}
