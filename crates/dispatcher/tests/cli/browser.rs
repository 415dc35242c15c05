//! The waiting page in a real browser (docs/guarantees.md#admission): headless Chromium (Debian's `chromium`,
//! driven by `playwright-core` from `tests/browser/`) opens `/wait/{event}` of a `dispatcher serve`, keeps
//! its ticket across a reload, watches its position fall as this test completes the tickets ahead of it, and
//! lands on the target page with an entry token in the URL fragment; the token verifies against the JWKS.
//!
//! Needs `node` (≥ 18), `npm ci` run in `crates/dispatcher/tests/browser/`, and `/usr/bin/chromium`
//! (`apt-get install chromium`); `.ci/run` installs them. Without them the test fails and says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{self, Children, TempDir};

const EVENT: &str = "browser-sale";
const TARGET: &str = "/landing";
const ADMIN_TOKEN: &str = "browser-test-admin-token-0123456789";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("DISPATCHER_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails the test with what to install when a prerequisite is missing (never a silent skip).
fn check_prerequisites() {
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match node {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "the browser test needs Node.js (`node` ≥ 18 on PATH): install it, e.g. `apt-get install nodejs npm`"
        ),
    }
    let module = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        module.exists(),
        "the browser test needs its npm packages: run `npm ci` in {} ({} is missing)",
        browser_dir().display(),
        module.display()
    );
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "the browser test needs Chromium at {}: install it with `apt-get install chromium` \
         (or point DISPATCHER_TEST_CHROMIUM at a Chromium binary)",
        chromium.display()
    );
}

/// Where screenshots go: `<target dir>/browser/`.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/cli-<hash>
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join("browser")
}

/// A plain HTTP/1.1 exchange with `Connection: close`; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn json(what: &str, status: u16, body: &str, want: &[u16]) -> Value {
    assert!(
        want.contains(&status),
        "{what}: HTTP {status} (wanted {want:?}): {body}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"))
}

fn join_ticket(addr: &str) -> Value {
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/events/{EVENT}/tickets"),
        Some("{}"),
    );
    json("join", status, &body, &[200, 201])
}

fn complete(addr: &str, ticket: &str) {
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/events/{EVENT}/tickets/{ticket}/complete"),
        None,
    );
    let v = json("complete", status, &body, &[200]);
    assert_eq!(v["ticket"]["state"], "completed", "completed: {v}");
}

#[test]
fn browser_waiting_page_shows_the_position_falling_and_lands_on_the_target_with_a_token() {
    check_prerequisites();
    let started = Instant::now();
    let redis = testkit::RedisServer::start().expect("spawn redis-server");
    let port = testkit::free_port().expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let dir = TempDir::new("browser");
    let config = dir.file(
        "dispatcher.toml",
        &format!(
            "[http]\njoin_rate_per_ip = 50.0\njoin_burst_per_ip = 50.0\n\n\
             [[events]]\nid = \"{EVENT}\"\ncapacity = 1\nsession_ttl_ms = 120000\n"
        ),
    );
    let keys = dir.0.join("keys");
    std::fs::create_dir_all(&keys).expect("key dir");

    let mut children = Children::default();
    let server = children.spawn(
        support::serve(&redis.url(), &format!("browser{}", std::process::id()))
            .arg("--config")
            .arg(&config)
            .env("DISPATCHER_HTTP_ENABLED", "true")
            .env("DISPATCHER_HTTP_ADDR", &addr)
            .env("DISPATCHER_KEY_DIR", &keys)
            .env("DISPATCHER_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );

    // The server answers and the event exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.try_wait().expect("try_wait") {
            panic!("dispatcher serve exited early with {status}");
        }
        let ok = TcpStream::connect(&addr).is_ok()
            && http(&addr, "GET", &format!("/v1/events/{EVENT}"), None).0 == 200;
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dispatcher serve did not serve event {EVENT} on {addr} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Three visitors before the browser: one admitted (capacity 1), two waiting; the page will be third.
    let ahead: Vec<String> = (0..3)
        .map(|_| {
            join_ticket(&addr)["ticket"]
                .as_str()
                .expect("ticket id")
                .to_owned()
        })
        .collect();
    let (status, body) = http(
        &addr,
        "GET",
        &format!("/v1/events/{EVENT}/tickets/{}", ahead[0]),
        None,
    );
    assert_eq!(
        json("status", status, &body, &[200])["state"],
        "admitted",
        "the first visitor holds the only slot"
    );

    let shots = screenshot_dir();
    let mut node = Command::new("node");
    node.arg("waiting_room.mjs")
        .current_dir(browser_dir())
        .env("BASE_URL", format!("http://{addr}"))
        .env("EVENT", EVENT)
        .env("TARGET", TARGET)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", chromium())
        .env("TIMEOUT_MS", "25000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let child = children.spawn(&mut node);
    let stdout = child.stdout.take().expect("node stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Complete the tickets ahead one at a time, each once the page shows the position it implies, so the
    // page sees every step: 3 → 2 → 1 → admitted.
    let mut to_complete = ahead.clone();
    let mut ticket: Option<String> = None;
    let mut reported: Vec<u64> = Vec::new();
    let mut result: Option<Value> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while result.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the browser script gave no result within 40 s; positions it reported: {reported:?}"
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the browser script ended without a result line; positions: {reported:?}")
            }
        };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            eprintln!("browser: {line}");
            continue;
        };
        match msg["step"].as_str() {
            Some("joined") => {
                ticket = msg["ticket"].as_str().map(str::to_owned);
                assert_eq!(msg["position"], 3, "two wait ahead of the page: {msg}");
                reported.push(3);
            }
            Some("reloaded") => {
                assert_eq!(
                    msg["ticket"].as_str(),
                    ticket.as_deref(),
                    "a reload keeps the ticket"
                );
                assert_eq!(msg["position"], 3, "a reload keeps the place: {msg}");
                complete(&addr, &to_complete.remove(0));
            }
            Some("position") => {
                let p = msg["position"].as_u64().expect("a position");
                reported.push(p);
                assert_eq!(
                    p as usize,
                    to_complete.len(),
                    "the page shows the true position after a completion: {reported:?}"
                );
                complete(&addr, &to_complete.remove(0));
            }
            Some("result") => result = Some(msg),
            _ => eprintln!("browser: {line}"),
        }
    }
    let result = result.expect("a result");
    let status = support::wait_exit(child, Duration::from_secs(10));
    assert!(
        result["ok"] == true,
        "the browser script failed: {}",
        result["error"].as_str().unwrap_or("(no error text)")
    );
    assert_eq!(status.map(|s| s.success()), Some(true), "node exit status");
    assert!(to_complete.is_empty(), "every ticket ahead was completed");
    assert_eq!(
        result["positions"],
        serde_json::json!([3, 2, 1]),
        "the page showed the position fall step by step: {result}"
    );
    assert_eq!(result["reloadSameTicket"], true);
    assert_eq!(result["foreignTarget"]["linkShown"], false, "{result}");
    assert_eq!(result["path"], TARGET);
    assert_eq!(result["dashboardShowsEvent"], true, "{result}");

    // The token in the fragment is a valid entry token of this event for the page's ticket.
    let token = result["token"].as_str().expect("a token in the result");
    let (status, jwks) = http(&addr, "GET", "/.well-known/jwks.json", None);
    assert_eq!(status, 200, "jwks: {jwks}");
    let verifier = dispatcher_token::Verifier::from_jwks_json(jwks.as_bytes()).expect("JWKS");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = verifier
        .verify(token, Some(EVENT), now, 5)
        .unwrap_or_else(|e| panic!("the page's token does not verify: {e}"));
    assert_eq!(claims.event, EVENT);
    assert_eq!(
        Some(claims.jti.as_str()),
        ticket.as_deref(),
        "the token is the page's ticket's"
    );
    assert!(claims.exp > now, "the session has not ended");

    eprintln!(
        "browser test: positions {}, landed on {}, screenshots in {} ({} ms)",
        result["positions"],
        result["url"],
        shots.display(),
        started.elapsed().as_millis()
    );
}
