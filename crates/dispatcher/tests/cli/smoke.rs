//! Smoke tests of the command line: `serve` with a config file, bad config files, and `demo`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use dispatcher_admission::{AdmissionError, AdmissionStore, EventId, TicketState, UserId};

use crate::support::{self, Children, TempDir};

/// `dispatcher serve --config` creates the listed event, runs a promoter that expires sessions, and exits
/// cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_configures_events_runs_the_promoter_and_stops_on_sigterm() {
    let redis = testkit::RedisServer::start().expect("spawn redis-server");
    let prefix = format!("smoke{}", std::process::id());
    let dir = TempDir::new("serve");
    let config = dir.file(
        "dispatcher.toml",
        "[[events]]\nid = \"smoke-x\"\ncapacity = 5\nsession_ttl_ms = 200\n",
    );
    let store = support::store(&redis.url(), &prefix).await;
    let event = EventId::new("smoke-x").expect("valid id");

    let mut children = Children::default();
    let child = children.spawn(
        support::serve(&redis.url(), &prefix)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );

    // The event appears with the configured settings.
    let deadline = Instant::now() + Duration::from_secs(15);
    let info = loop {
        match store.event(&event).await {
            Ok(info) => break info,
            Err(AdmissionError::UnknownEvent(_)) => {}
            Err(e) => panic!("reading the event failed: {e}"),
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("dispatcher serve exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "dispatcher serve did not create event smoke-x within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(info.settings.capacity, 5);
    assert_eq!(info.settings.session_ttl_ms, 200);
    assert_eq!(
        (info.joined, info.waiting, info.admitted),
        (0, 0, 0),
        "a fresh event"
    );

    // Only the serve process ticks this store: an admitted session that expires proves its promoter runs.
    let user = UserId::new("smoke-user").expect("valid user");
    let joined = store.join(&event, Some(&user)).await.expect("join");
    assert_eq!(
        joined.ticket.state,
        TicketState::Admitted,
        "a free slot admits at once"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = store
            .ticket(&event, &joined.ticket.id)
            .await
            .expect("read ticket");
        if t.state == TicketState::Expired {
            break;
        }
        assert_eq!(
            t.state,
            TicketState::Admitted,
            "nobody else ends this ticket"
        );
        assert!(
            Instant::now() < deadline,
            "the serve process's promoter did not expire a 200 ms session within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "dispatcher serve is still running"
    );

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(sent.success(), "kill -TERM failed: {sent}");
    let status = support::wait_exit(child, Duration::from_secs(15))
        .expect("dispatcher serve did not exit within 15 s of SIGTERM");
    assert!(
        status.success(),
        "dispatcher serve should exit cleanly on SIGTERM, got {status}"
    );
}

/// A bad config file makes `serve` exit non-zero naming the problem, before it touches the store.
#[test]
fn serve_refuses_a_bad_config_and_touches_nothing() {
    let redis = testkit::RedisServer::start().expect("spawn redis-server");
    let dir = TempDir::new("bad");
    let good = "[[events]]\nid = \"good\"\ncapacity = 5\n";
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "unknown top-level field",
            format!("shardz = 3\n{good}"),
            &["unknown field", "shardz"],
        ),
        (
            "unknown event field (typo)",
            format!("{good}sesion_ttl_ms = 100\n"),
            &["unknown field", "sesion_ttl_ms"],
        ),
        (
            "capacity 0 after a valid event",
            format!("{good}[[events]]\nid = \"zero-cap\"\ncapacity = 0\n"),
            &["capacity", "zero-cap"],
        ),
        (
            "event id with a key-breaking character",
            "[[events]]\nid = \"a:b{x}\"\ncapacity = 5\n".to_owned(),
            &["event id"],
        ),
        (
            "session TTL below the minimum",
            format!("{good}session_ttl_ms = 1\n"),
            &["session_ttl_ms"],
        ),
    ];
    for (i, (what, text, needles)) in cases.iter().enumerate() {
        let path = dir.file(&format!("case-{i}.toml"), text);
        let out = support::run(
            support::serve(&redis.url(), &format!("bad{i}"))
                .arg("--config")
                .arg(&path),
            Duration::from_secs(20),
        );
        assert!(
            !out.status.success(),
            "{what}: serve accepted the config {text:?} (status {})",
            out.status
        );
        for n in *needles {
            assert!(
                out.stderr.contains(n),
                "{what}: stderr does not name the problem ({n:?}):\n{}",
                out.stderr
            );
        }
    }

    // A missing file is an error too.
    let missing = dir.0.join("does-not-exist.toml");
    let out = support::run(
        support::serve(&redis.url(), "missing")
            .arg("--config")
            .arg(&missing),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "serve ran without its config file");
    assert!(
        out.stderr.contains("does-not-exist.toml"),
        "stderr does not name the missing file:\n{}",
        out.stderr
    );

    let keys = redis.command(&["DBSIZE"]).expect("DBSIZE");
    assert_eq!(
        keys.as_int(),
        Some(0),
        "a refused config must not write anything to Redis"
    );
}

/// `dispatcher demo` on the in-process store serves everyone and reports its invariants held.
#[test]
fn demo_on_the_in_process_store_holds_its_invariants() {
    let out = support::run(
        support::dispatcher().args([
            "demo",
            "--users",
            "200",
            "--capacity",
            "10",
            "--arrival-secs",
            "0.5",
            "--session-ttl-ms",
            "500",
            "--timeout-secs",
            "45",
        ]),
        Duration::from_secs(55),
    );
    assert!(
        out.status.success(),
        "demo failed with {}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("on the memory store"),
        "demo did not use the in-process store:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("all 200 visitors served"),
        "demo did not serve everyone:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("invariants held"),
        "demo did not report its invariants:\n{}",
        out.stdout
    );
}
