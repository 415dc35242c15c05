//! Property tests: no input panics the verifier, and no single-character edit of a genuine token verifies.

use dispatcher_token::{EntryClaims, KeyRing, Verifier};
use proptest::prelude::*;

use crate::common::{SEED, claims};

fn fixture() -> Option<(Verifier, String, EntryClaims)> {
    let ring = KeyRing::from_keys([(0, SEED)]).ok()?;
    let c = claims("launch");
    let token = ring.mint(&c).ok()?;
    Some((ring.verifier(), token, c))
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), now in any::<u64>(), leeway in any::<u64>()) {
        let (v, _, _) = fixture().ok_or_else(|| TestCaseError::fail("fixture"))?;
        let _ = v.verify(&s, Some("launch"), now, leeway);
        let _ = v.verify(&s, None, now, leeway);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (v, _, _) = fixture().ok_or_else(|| TestCaseError::fail("fixture"))?;
        let _ = v.verify(&String::from_utf8_lossy(&bytes), None, 1_100, 0);
    }

    #[test]
    fn jwt_shaped_noise_never_panics(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,120}", 0..5)) {
        let (v, _, _) = fixture().ok_or_else(|| TestCaseError::fail("fixture"))?;
        let _ = v.verify(&parts.join("."), None, 1_100, 0);
    }

}

// Each case below signs or verifies: fewer cases keep the debug-build run short.
proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn edited_tokens_never_verify(at in any::<prop::sample::Index>(), with in any::<prop::sample::Index>()) {
        let (v, token, c) = fixture().ok_or_else(|| TestCaseError::fail("fixture"))?;
        prop_assert_eq!(v.verify(&token, None, 1_100, 0), Ok(c));
        let mut bytes = token.into_bytes();
        let i = at.index(bytes.len());
        let replacement = ALPHABET[with.index(ALPHABET.len())];
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let edited = String::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(v.verify(&edited, None, 1_100, 0).is_err(), "{} verified", edited);
    }

    #[test]
    fn minting_is_a_function_of_the_claims(
        event in "[A-Za-z0-9._-]{1,64}",
        user in proptest::option::of("\\PC{0,40}"),
        ticket in "[A-Za-z0-9_-]{22,43}",
        admitted in 0u64..4_000_000_000_000,
        ttl in 0u64..86_400_000,
    ) {
        let ring = KeyRing::from_keys([(0, SEED), (2_000_000_000_000, [8u8; 32])])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let c = EntryClaims::for_admission(event.clone(), user, ticket, admitted, admitted + ttl);
        let a = ring.mint(&c).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = ring.mint(&c.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&a, &b);
        let now = c.iat;
        let got = ring.verifier().verify(&a, Some(&event), now, 0);
        if c.exp > now {
            prop_assert_eq!(got, Ok(c));
        } else {
            prop_assert!(got.is_err());
        }
    }
}
