//! The key directory: creation, permissions, determinism across loads, bad files, concurrent starts.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};

use dispatcher_token::{KEY_FILE_SUFFIX, KeyRing, TokenError, Verifier};

use crate::common::{TestResult, claims};

fn key_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n.ends_with(KEY_FILE_SUFFIX));
    names.sort();
    names
}

#[test]
fn load_or_generate_creates_one_key_and_mints_identical_tokens() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("keys").join("nested");
    let a = KeyRing::load_or_generate(&dir)?;
    let b = KeyRing::load_or_generate(&dir)?;
    let c = KeyRing::load(&dir)?;
    assert_eq!(key_files(&dir).len(), 1, "a second start adds no key");
    assert_eq!(a.keys().len(), 1);

    let claims = claims("launch");
    let token = a.mint(&claims)?;
    assert_eq!(token, a.mint(&claims)?, "same ring, same token");
    assert_eq!(token, b.mint(&claims)?, "same dir, same token");
    assert_eq!(token, c.mint(&claims)?);
    assert_eq!(a.jwks(), c.jwks());

    // The shop's path: JWKS over the wire as JSON.
    let verifier = Verifier::from_jwks_json(a.jwks().to_json().as_bytes())?;
    assert_eq!(verifier.verify(&token, Some("launch"), 1_001, 0)?, claims);

    let pem = fs::read_to_string(dir.join(&key_files(&dir)[0]))?;
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    Ok(())
}

#[cfg(unix)]
#[test]
fn modes_are_private() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("keys");
    KeyRing::load_or_generate(&dir)?;
    KeyRing::add_key(&dir)?;
    assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    let files = key_files(&dir);
    assert_eq!(files.len(), 2);
    for name in files {
        assert_eq!(
            fs::metadata(dir.join(&name))?.permissions().mode() & 0o777,
            0o600,
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn empty_or_missing_dir_is_an_error() -> TestResult {
    let tmp = tempfile::tempdir()?;
    assert!(matches!(
        KeyRing::load(tmp.path()),
        Err(TokenError::NoKeys { .. })
    ));
    assert!(matches!(
        KeyRing::load(&tmp.path().join("absent")),
        Err(TokenError::Io { .. })
    ));
    fs::write(tmp.path().join("README"), "not a key")?;
    fs::write(tmp.path().join(".1-abc.ed25519.99.tmp"), "half a key")?;
    assert!(
        matches!(KeyRing::load(tmp.path()), Err(TokenError::NoKeys { .. })),
        "other files are ignored"
    );
    KeyRing::load_or_generate(tmp.path())?;
    assert_eq!(KeyRing::load(tmp.path())?.keys().len(), 1);
    Ok(())
}

#[test]
fn bad_key_files_are_named() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    KeyRing::load_or_generate(dir)?;
    let good = key_files(dir).remove(0);

    let expect_bad = |name: &str| -> TestResult {
        match KeyRing::load(dir) {
            Err(e @ TokenError::BadKeyFile { .. }) => {
                let TokenError::BadKeyFile { path, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &dir.join(name));
                assert!(e.to_string().contains(name), "{e}");
                Ok(())
            }
            other => Err(format!("expected BadKeyFile for {name}, got {other:?}").into()),
        }
    };

    let corrupt = "1700000000000-AAAAAAAAAAAAAAAA.ed25519";
    fs::write(
        dir.join(corrupt),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )?;
    expect_bad(corrupt)?;
    fs::write(dir.join(corrupt), [0xff, 0xfe, 0x00])?;
    expect_bad(corrupt)?;
    fs::write(dir.join(corrupt), vec![b'A'; 20_000])?;
    expect_bad(corrupt)?;
    // A valid key under a name whose kid is not its own.
    fs::copy(dir.join(&good), dir.join(corrupt))?;
    expect_bad(corrupt)?;
    fs::remove_file(dir.join(corrupt))?;

    let misnamed = "my-key.ed25519";
    fs::copy(dir.join(&good), dir.join(misnamed))?;
    expect_bad(misnamed)?;
    fs::remove_file(dir.join(misnamed))?;

    // `load_or_generate` does not paper over a bad file either.
    fs::write(dir.join(corrupt), "x")?;
    assert!(matches!(
        KeyRing::load_or_generate(dir),
        Err(TokenError::BadKeyFile { .. })
    ));
    fs::remove_file(dir.join(corrupt))?;
    assert_eq!(KeyRing::load(dir)?.keys().len(), 1);
    Ok(())
}

#[test]
fn concurrent_starts_on_a_fresh_dir_agree_on_one_key() -> TestResult {
    for _ in 0..5 {
        let tmp = tempfile::tempdir()?;
        let dir = Arc::new(tmp.path().join("keys"));
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (dir, barrier) = (Arc::clone(&dir), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    KeyRing::load_or_generate(&dir)
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for handle in handles {
            let ring = handle.join().map_err(|_| "thread panicked")??;
            assert_eq!(ring.keys().len(), 1);
            tokens.push(ring.mint(&claims("e"))?);
        }
        tokens.dedup();
        assert_eq!(tokens.len(), 1, "every starter mints the same token");
        assert_eq!(key_files(&dir).len(), 1);
        let leftovers: Vec<_> = fs::read_dir(&*dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != ".lock" && !n.ends_with(KEY_FILE_SUFFIX))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
    Ok(())
}
