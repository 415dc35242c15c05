//! Rotation: tokens of earlier admissions stay identical, new admissions use the new key, removal
//! retires the old tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use dispatcher_token::{EntryClaims, KeyRing, TokenError, Verifier, VerifyError};

use crate::common::TestResult;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[test]
fn rotate_then_remove() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let before = KeyRing::load_or_generate(dir)?;
    let old_kid = before.keys().next().ok_or("no key")?.kid.clone();

    // A ticket admitted two seconds ago, with its token minted before the rotation.
    let admitted = now_ms() - 2_000;
    let old =
        EntryClaims::for_admission("launch", None, "old-ticket", admitted, admitted + 900_000);
    let old_token = before.mint(&old)?;

    let new_kid = KeyRing::add_key(dir)?;
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        before.keys().len(),
        1,
        "a loaded ring does not change by itself"
    );
    let after = KeyRing::load(dir)?;
    assert_eq!(after.keys().len(), 2);
    let new_info = after
        .keys()
        .find(|k| k.kid == new_kid)
        .ok_or("new key not loaded")?
        .clone();

    assert_eq!(
        after.mint(&old)?,
        old_token,
        "an old ticket's token is unchanged"
    );
    assert_eq!(after.signing_key_for(old.iat).kid, old_kid);

    let admitted_new = new_info.active_from_ms + 1_000;
    let new = EntryClaims::for_admission(
        "launch",
        None,
        "new-ticket",
        admitted_new,
        admitted_new + 900_000,
    );
    let new_token = after.mint(&new)?;
    assert_eq!(after.signing_key_for(new.iat).kid, new_kid);

    let jwks = after.jwks();
    assert_eq!(jwks.keys.len(), 2);
    assert_eq!(
        jwks.keys[0].kid.as_deref(),
        Some(new_kid.as_str()),
        "newest first"
    );
    let verifier = Verifier::from_jwks(&jwks)?;
    let now = new.iat + 1;
    assert_eq!(verifier.verify(&old_token, Some("launch"), now, 0)?, old);
    assert_eq!(verifier.verify(&new_token, Some("launch"), now, 0)?, new);
    // A shop still holding the JWKS of before the rotation does not know the new key.
    assert_eq!(
        Verifier::from_jwks(&before.jwks())?.verify(&new_token, None, now, 0),
        Err(VerifyError::UnknownKey(Some(new_kid.clone())))
    );

    KeyRing::remove_key(dir, &old_kid)?;
    let removed = KeyRing::load(dir)?;
    assert_eq!(removed.keys().len(), 1);
    let verifier = Verifier::from_jwks(&removed.jwks())?;
    assert_eq!(
        verifier.verify(&old_token, None, now, 0),
        Err(VerifyError::UnknownKey(Some(old_kid.clone())))
    );
    assert_eq!(verifier.verify(&new_token, None, now, 0)?, new);
    // The old ticket now gets a token from the remaining key.
    let reminted = removed.mint(&old)?;
    assert_ne!(reminted, old_token);
    assert_eq!(verifier.verify(&reminted, None, now, 0)?, old);

    assert!(matches!(
        KeyRing::remove_key(dir, &old_kid),
        Err(TokenError::UnknownKid { .. })
    ));
    assert!(matches!(
        KeyRing::remove_key(dir, &new_kid),
        Err(TokenError::LastKey { .. })
    ));
    assert_eq!(KeyRing::load(dir)?.keys().len(), 1);
    Ok(())
}

#[test]
fn key_added_ahead_is_published_but_not_used_until_due() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let first = KeyRing::load_or_generate(dir)?;
    let first_kid = first.keys().next().ok_or("no key")?.kid.clone();
    let due_ms = now_ms() + 3_600_000;
    let next_kid = KeyRing::add_key_active_from(dir, due_ms)?;
    let ring = KeyRing::load(dir)?;
    assert!(
        ring.jwks()
            .keys
            .iter()
            .any(|k| k.kid.as_deref() == Some(next_kid.as_str()))
    );
    assert_eq!(ring.signing_key_for(now_ms() / 1000).kid, first_kid);
    assert_eq!(
        ring.signing_key_for(due_ms / 1000).kid,
        first_kid,
        "due within that second, not at its start"
    );
    assert_eq!(ring.signing_key_for(due_ms / 1000 + 1).kid, next_kid);
    Ok(())
}

#[test]
fn same_second_rotation_keeps_earlier_tokens() -> TestResult {
    // Old key from t = 0, new key from 5_500 ms; a ticket admitted at 5_200 ms (iat 5) keeps the old key.
    let ring = KeyRing::from_keys([(0, [1u8; 32])])?;
    let rotated = KeyRing::from_keys([(0, [1u8; 32]), (5_500, [2u8; 32])])?;
    let c = EntryClaims::for_admission("e", None, "t", 5_200, 65_000);
    assert_eq!(ring.mint(&c)?, rotated.mint(&c)?);
    Ok(())
}
