//! Findings of the outside review (issue 16, items 10–17) as processes: passwords never printed, the
//! outbox relay's pacing and connecting stop-aware and bounded, `serve` waiting for a Postgres that is
//! not up yet (and saying so on `/readyz`), configured events restored after Redis lost them, absurd
//! settings refused, and the reference consumer's limits before authentication.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatcher_admission::{AdmissionError, AdmissionStore, EventId, UserId};
use testkit::{Postgres, RedisServer};

use crate::support::{self, Children, TempDir};

const STREAM: &str = "hardening:outbox";
const SECRET: &str = "hardening test secret 0123456789";
const PW: &str = "Sup3r-S3cret-pw";

/// A command with none of the caller's outbox settings and the given database and Redis.
fn with_urls(args: &[&str], db: Option<&str>, redis: Option<&str>) -> Command {
    let mut c = support::dispatcher();
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("DISPATCH_") || k == "DATABASE_URL" || k == "REDIS_STREAM_MAXLEN" {
            c.env_remove(&k);
        }
    }
    c.args(args)
        .env("DISPATCH_STREAM_NAME", STREAM)
        .env("DISPATCHER_LOG", "info")
        .env("DISPATCHER_SHARED_SECRET", SECRET);
    if let Some(db) = db {
        c.env("DATABASE_URL", db);
    }
    if let Some(r) = redis {
        c.env("DISPATCHER_REDIS_URL", r);
    }
    c
}

/// A running child whose stdout and stderr are collected as they come.
struct Captured {
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Captured {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the dispatcher binary");
        let out = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut pipe in pipes {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .expect("output lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Captured {
            child,
            out,
            readers,
        }
    }

    fn text(&self) -> String {
        self.out.lock().expect("output lock").clone()
    }

    /// Waits up to `timeout` until the output contains `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        testkit::wait_until(timeout, || self.text().contains(needle))
    }

    /// SIGTERM; the exit status if it exited within `timeout` (SIGKILLed otherwise), and the output.
    fn stop(mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = support::wait_exit(&mut self.child, timeout);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text = self.text();
        (status, text)
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion (at most 60 s); its exit status and everything it printed.
fn finish(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    let f = support::run(cmd, Duration::from_secs(60));
    (f.status, format!("{}{}", f.stdout, f.stderr))
}

/// A port with nothing listening on it.
fn dead_port() -> u16 {
    testkit::free_port().expect("a free port")
}

#[test]
fn no_process_prints_a_password_in_any_url_form() {
    let redis = RedisServer::start().expect("spawn redis-server");
    let port = dead_port();
    let pg_forms = [
        format!("postgres://app:{PW}@127.0.0.1:{port}/shop"),
        format!("postgres://app@127.0.0.1:{port}/shop?password={PW}"),
        format!("host=127.0.0.1 port={port} user=app password={PW} dbname=shop"),
    ];
    let redis_forms = [
        format!("redis://:{PW}@127.0.0.1:{port}/"),
        format!("redis://app:{PW}@127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/0?password={PW}"),
    ];
    let check = |what: &str, out: &str| {
        assert!(
            !out.contains(PW) && !out.contains("S3cret"),
            "{what} printed the password:\n{out}"
        );
    };
    for db in &pg_forms {
        for cmd in ["migrate", "status"] {
            let (status, out) = finish(&mut with_urls(
                &["outbox", cmd],
                Some(db),
                Some(&redis.url()),
            ));
            assert!(!status.success(), "outbox {cmd} against nothing: {out}");
            check(&format!("outbox {cmd} with {db:?}"), &out);
        }
        for args in [&["outbox", "run"][..], &["serve"][..]] {
            let p = Captured::spawn(&mut with_urls(args, Some(db), Some(&redis.url())));
            // Long enough to try and fail (and log it) more than once.
            assert!(
                p.wait_for("unavailable", Duration::from_secs(20)),
                "{args:?} logged no failure:\n{}",
                p.text()
            );
            let (_, out) = p.stop(Duration::from_secs(15));
            check(&format!("{args:?} with {db:?}"), &out);
        }
    }
    for r in &redis_forms {
        for args in [
            &["serve"][..],
            &["delivery", "run"][..],
            &["consumer", "--listen", "127.0.0.1:0"][..],
        ] {
            let mut cmd = with_urls(args, None, Some(r));
            cmd.env("DISPATCHER_CONSUMERS", "ws://127.0.0.1:9/");
            let p = Captured::spawn(&mut cmd);
            std::thread::sleep(Duration::from_secs(2));
            let (_, out) = p.stop(Duration::from_secs(15));
            check(&format!("{args:?} with {r:?}"), &out);
        }
    }
}

/// Starts Postgres and Redis and applies the outbox schema.
fn outbox_servers() -> (Postgres, RedisServer) {
    let pg = Postgres::start().expect("start a private PostgreSQL");
    let redis = RedisServer::start().expect("spawn redis-server");
    let (status, out) = finish(&mut with_urls(
        &["outbox", "migrate"],
        Some(&pg.url()),
        Some(&redis.url()),
    ));
    assert!(status.success(), "migrate: {out}");
    (pg, redis)
}

fn insert_rows(pg: &Postgres, n: usize) {
    for i in 0..n {
        pg.psql(&format!(
            "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload) VALUES ('T', 'agg-{i}', '{{}}')"
        ))
        .expect("insert an outbox row");
    }
}

fn stream_len(redis: &RedisServer) -> i64 {
    redis
        .command(&["XLEN", STREAM])
        .ok()
        .and_then(|v| v.as_int())
        .unwrap_or(0)
}

#[test]
fn a_tiny_rate_paces_the_first_batch_and_does_not_hold_sigterm() {
    let (pg, redis) = outbox_servers();
    insert_rows(&pg, 3);
    let mut cmd = with_urls(&["outbox", "run"], Some(&pg.url()), Some(&redis.url()));
    cmd.env("DISPATCH_MAX_ROWS_PER_SEC", "0.001")
        .env("DISPATCH_TICK_MS", "50");
    let p = Captured::spawn(&mut cmd);
    assert!(
        testkit::wait_until(Duration::from_secs(30), || stream_len(&redis) >= 1),
        "nothing published:\n{}",
        p.text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stream_len(&redis),
        1,
        "at 0.001 rows/s the first batch is one row, not all three"
    );
    let (status, out) = p.stop(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{out}"));
    assert!(status.success(), "{status}: {out}");
}

#[test]
fn absurd_rates_and_durations_are_refused_at_start_without_a_panic() {
    for (name, value) in [
        ("DISPATCH_MAX_ROWS_PER_SEC", "1e-300"),
        ("DISPATCH_MAX_ROWS_PER_SEC", "1e300"),
        ("DISPATCH_LEASE_MS", "18446744073709551615"),
        ("DISPATCH_CONNECT_TIMEOUT_MS", "0"),
    ] {
        for args in [&["outbox", "run"][..], &["serve"][..]] {
            let mut cmd = with_urls(
                args,
                Some("postgres://app@127.0.0.1:9/db"),
                Some("redis://127.0.0.1:9/"),
            );
            cmd.env(name, value);
            let (status, out) = finish(&mut cmd);
            assert!(!status.success(), "{args:?} {name}={value} accepted: {out}");
            assert_eq!(status.code(), Some(1), "{args:?} {name}={value}: {out}");
            assert!(
                out.contains(name) && out.contains(" to "),
                "{args:?} {name}={value}: no clear message: {out}"
            );
            assert!(!out.contains("panicked"), "{out}");
        }
    }
}

#[test]
fn a_postgres_that_never_answers_is_given_up_on_and_sigterm_is_obeyed() {
    let redis = RedisServer::start().expect("spawn redis-server");
    let port = testkit::silent_server().expect("a silent server");
    let db = format!("postgres://app@127.0.0.1:{port}/shop");
    let started = Instant::now();
    let mut cmd = with_urls(&["outbox", "status"], Some(&db), Some(&redis.url()));
    cmd.env("DISPATCH_CONNECT_TIMEOUT_MS", "1000");
    let (status, out) = finish(&mut cmd);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("DISPATCH_CONNECT_TIMEOUT_MS") && out.contains("1000 ms"),
        "not a clear error: {out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "gave up only after {:?}",
        started.elapsed()
    );

    let mut cmd = with_urls(&["outbox", "run"], Some(&db), Some(&redis.url()));
    cmd.env("DISPATCH_CONNECT_TIMEOUT_MS", "1000");
    let p = Captured::spawn(&mut cmd);
    assert!(
        p.wait_for("DISPATCH_CONNECT_TIMEOUT_MS", Duration::from_secs(20)),
        "the relay logged no timeout:\n{}",
        p.text()
    );
    // Mid-connect (the default timeout is longer than the wait below): SIGTERM ends it promptly.
    let (status, out) = p.stop(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{out}"));
    assert!(status.success(), "{status}: {out}");

    let mut cmd = with_urls(&["outbox", "run"], Some(&db), Some(&redis.url()));
    cmd.env("DISPATCH_CONNECT_TIMEOUT_MS", "300000");
    let p = Captured::spawn(&mut cmd);
    assert!(
        p.wait_for("outbox relay starting", Duration::from_secs(20)),
        "{}",
        p.text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, out) = p.stop(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "a connect with a 5-minute timeout held SIGTERM:\n{out}"
    );
}

/// `GET path` on `port`: the status code and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}

#[test]
fn serve_waits_for_a_postgres_that_is_not_up_yet_and_readyz_says_so() {
    let (mut pg, redis) = outbox_servers();
    pg.kill().expect("stop Postgres");
    let port = testkit::free_port().expect("a free port");
    let mut cmd = with_urls(&["serve"], Some(&pg.url()), Some(&redis.url()));
    cmd.env("DISPATCHER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DISPATCH_TICK_MS", "50");
    let p = Captured::spawn(&mut cmd);
    let mut last = None;
    assert!(
        testkit::wait_until(Duration::from_secs(20), || {
            last = http_get(port, "/readyz");
            last.is_some()
        }),
        "no answer on /readyz:\n{}",
        p.text()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (code, body) = http_get(port, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""outbox":"connecting""#), "{body}");

    pg.start_again().expect("start Postgres");
    insert_rows(&pg, 1);
    assert!(
        testkit::wait_until(Duration::from_secs(30), || stream_len(&redis) == 1),
        "the row never reached the stream:\n{}",
        p.text()
    );
    let mut ready = None;
    assert!(
        testkit::wait_until(Duration::from_secs(10), || {
            ready = http_get(port, "/readyz");
            matches!(&ready, Some((200, _)))
        }),
        "not ready once Postgres is up: {ready:?}"
    );
    let body = ready.map(|r| r.1).unwrap_or_default();
    assert!(body.contains(r#""outbox":"running""#), "{body}");
    let (status, out) = p.stop(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_events_come_back_after_redis_loses_them() {
    let redis = RedisServer::start().expect("spawn redis-server");
    let prefix = format!("reapply{}", std::process::id());
    let dir = TempDir::new("reapply");
    let config = dir.file(
        "dispatcher.toml",
        "[[events]]\nid = \"kept\"\ncapacity = 5\nsession_ttl_ms = 60000\n",
    );
    let mut children = Children::default();
    children.spawn(
        support::serve(&redis.url(), &prefix)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    let store = support::store(&redis.url(), &prefix).await;
    let event = EventId::new("kept").expect("valid id");
    let user = |n: u32| UserId::new(format!("u{n}")).expect("valid user");
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.event(&event).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "serve never configured the event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.join(&event, Some(&user(1))).await.expect("join");
    tokio::task::block_in_place(|| redis.command(&["FLUSHALL"])).expect("FLUSHALL");
    assert!(
        matches!(
            store.join(&event, Some(&user(2))).await,
            Err(AdmissionError::UnknownEvent(_))
        ),
        "the flush removed the event"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.join(&event, Some(&user(3))).await {
            Ok(_) => break,
            Err(AdmissionError::UnknownEvent(_)) => {}
            Err(e) => panic!("join failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the event did not come back within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = store.event(&event).await.expect("event");
    assert_eq!(info.settings.capacity, 5, "with the configured settings");
}

/// `dispatcher consumer` on a free port with at most `max_handshakes` unauthenticated connections.
fn consumer(redis: &RedisServer, max_handshakes: usize) -> (Captured, u16) {
    let port = testkit::free_port().expect("a free port");
    let mut cmd = with_urls(
        &["consumer", "--listen", &format!("127.0.0.1:{port}")],
        None,
        Some(&redis.url()),
    );
    cmd.env(
        "DISPATCHER_CONSUMER_MAX_HANDSHAKES",
        max_handshakes.to_string(),
    )
    .env("DISPATCHER_CONSUMER_HANDSHAKE_TIMEOUT_MS", "30000")
    .env("DISPATCHER_LOG", "warn");
    let p = Captured::spawn(&mut cmd);
    assert!(
        testkit::wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "consumer never listened:\n{}",
        p.text()
    );
    (p, port)
}

/// A WebSocket client past the upgrade, nothing else said; `None` if the consumer would not upgrade.
fn try_upgrade(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? != 1 {
            return None;
        }
        got.push(b[0]);
    }
    got.starts_with(b"HTTP/1.1 101").then_some(s)
}

fn upgraded(port: u16) -> TcpStream {
    try_upgrade(port).expect("a WebSocket upgrade")
}

#[test]
fn an_unauthenticated_peer_cannot_make_the_consumer_buffer_a_huge_message() {
    let redis = RedisServer::start().expect("spawn redis-server");
    let (p, port) = consumer(&redis, 8);
    let mut s = upgraded(port);
    // One 60 MiB message in eight 7.5 MiB frames (each under tungstenite's default frame limit): a binary
    // frame, then continuations, the last with FIN; written until the consumer hangs up.
    let frame_len: u64 = 60 << 20 >> 3;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent: u64 = 0;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    'frames: for i in 0..8u8 {
        let opcode = if i == 0 { 0x02 } else { 0x00 };
        let fin = if i == 7 { 0x80 } else { 0x00 };
        let mut header = vec![fin | opcode, 0x80 | 127];
        header.extend_from_slice(&frame_len.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        if s.write_all(&header).is_err() {
            break;
        }
        let mut left = frame_len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            match s.write(&chunk[..n]) {
                Ok(w) => {
                    sent += w as u64;
                    left -= w as u64;
                }
                Err(_) => break 'frames,
            }
        }
    }
    // The kernel's socket buffers take a few MiB after the consumer stopped reading; nowhere near 60.
    assert!(
        sent < 16 << 20,
        "the consumer took {} MiB from a peer that never authenticated",
        sent >> 20
    );
    let (status, out) = p.stop(Duration::from_secs(15));
    assert!(status.is_some(), "{out}");
}

#[test]
fn connections_beyond_the_handshake_cap_are_refused() {
    let redis = RedisServer::start().expect("spawn redis-server");
    let (p, port) = consumer(&redis, 2);
    let held: Vec<TcpStream> = (0..2).map(|_| upgraded(port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        try_upgrade(port).is_none(),
        "a third unauthenticated connection was served"
    );
    // Once one of the two goes away, a new connection gets its upgrade again.
    drop(held);
    assert!(
        testkit::wait_until(Duration::from_secs(10), || try_upgrade(port).is_some()),
        "the cap was not given back"
    );
    let (status, out) = p.stop(Duration::from_secs(15));
    assert!(status.is_some(), "{out}");
}
