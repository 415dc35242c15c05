//! The HTTP API fuzzed (docs/guarantees.md#bad-input): schemathesis generates requests from `/openapi.json`
//! against a real server on a real Redis and checks that nothing is a server error and every status, content
//! type and body is the documented one; a Rust property test throws random bytes at every route as event ids,
//! ticket ids and bodies and checks for no 5xx and JSON errors with a code.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use dispatcher_http::Rate;
use http_body_util::BodyExt;
use hyper::Method;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::common::{ADMIN, Server, Setup, content_type, s, settings};
use crate::ops::ROUTES;

/// Limits stay on, generous enough that the fuzzer is not throttled all the time.
fn fuzz_setup() -> Setup {
    let mut setup = Setup {
        metrics: true,
        ..Default::default()
    };
    setup.http.join_rate_per_ip = Rate::new(1_000.0, 1_000.0);
    setup.http.join_rate_per_user = Rate::new(100.0, 100.0);
    setup.http.request_rate_per_ip = Rate::new(2_000.0, 2_000.0);
    setup
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/run.sh")
}

const PIP: &str = "pip install -r crates/dispatcher-http/tests/fuzz/requirements.txt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let version = tokio::process::Command::new(&python)
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .await;
    match version {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{python} -m schemathesis.cli --version` failed ({}): {}\nschemathesis is not installed? install it with: {PIP}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("cannot run {python} ({e}); schemathesis needs Python 3; install it with: {PIP}")
        }
    }
    let srv = Server::start_with(fuzz_setup()).await;
    // Something to find: events in every state, admitted and waiting tickets.
    srv.configure("fuzz", settings(2, 600_000)).await;
    srv.configure("fuzz-closed", settings(1, 600_000)).await;
    for _ in 0..4 {
        srv.join_ok("fuzz", None).await;
    }
    srv.admin(Method::POST, "/v1/admin/events/fuzz-closed/close", None)
        .await
        .ok();

    // schemathesis keeps a cache in its working directory: a temporary one.
    let work = tempfile::tempdir().expect("work dir");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(script())
        .arg(srv.base())
        .env("DISPATCHER_ADMIN_TOKEN", ADMIN)
        .env("PYTHON", &python)
        .env(
            "FUZZ_MAX_EXAMPLES",
            std::env::var("FUZZ_MAX_EXAMPLES").unwrap_or_else(|_| "60".into()),
        )
        .current_dir(work.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("schemathesis did not finish within 240 s")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(15)..].join("\n"));
    // The server is still healthy after the storm.
    assert_eq!(srv.get("/healthz").await.status.as_u16(), 200);
    assert_eq!(srv.get("/readyz").await.status.as_u16(), 200);
}

/// A path segment exactly as sent: every byte outside the unreserved set percent-encoded.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn segment(known: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(known.to_owned()),
        2 => any::<String>().prop_map(|s| encode(s.as_bytes())),
        2 => "[A-Za-z0-9._-]{1,70}",
        2 => "[0-9a-f]{31,33}",
        1 => "[0-9A-Fa-f:{}%/ ]{0,40}".prop_map(|s| encode(s.as_bytes())),
        2 => proptest::collection::vec(any::<u8>(), 1..80).prop_map(|b| encode(&b)),
        1 => Just("..".to_owned()),
        1 => Just("%00".to_owned()),
    ]
}

fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        2 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Some),
        2 => any::<String>().prop_map(|u| Some(serde_json::json!({ "user": u }).to_string().into_bytes())),
        2 => (any::<i64>(), any::<i64>(), "[a-z]{0,8}", any::<bool>()).prop_map(|(c, t, st, fo)| Some(
            serde_json::json!({ "capacity": c, "session_ttl_ms": t, "state": st, "fail_open": fo })
                .to_string()
                .into_bytes()
        )),
        1 => "\\PC{0,100}".prop_map(|s| Some(s.into_bytes())),
        1 => Just(Some(vec![b'['; 20_000])),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    route: usize,
    method: Option<Method>,
    event: String,
    ticket: String,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    admin: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..ROUTES.len(),
        prop_oneof![
            4 => Just(None),
            1 => prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH]).prop_map(Some),
        ],
        segment("fz"),
        segment(KNOWN_TICKET),
        body(),
        prop::sample::select(vec![None, Some("application/json"), Some("text/plain"), Some("application/json; charset=utf-8")]),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(route, method, event, ticket, body, content_type, admin)| Case {
            route,
            method,
            event,
            ticket,
            body,
            content_type,
            admin,
        })
}

/// Placeholder replaced by a real ticket id of event `fz` at run time.
const KNOWN_TICKET: &str = "KNOWN";

async fn check(srv: &Server, c: &Case, ticket: &str) -> Result<(), TestCaseError> {
    let (m, template) = ROUTES[c.route];
    let method = c
        .method
        .clone()
        .unwrap_or_else(|| m.parse().expect("method"));
    let t = if c.ticket == KNOWN_TICKET {
        ticket
    } else {
        c.ticket.as_str()
    };
    let path = template.replace("{event}", &c.event).replace("{ticket}", t);
    if path.contains('?') || path.contains('#') {
        return Ok(());
    }
    let auth = format!("Bearer {ADMIN}");
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if c.admin {
        headers.push(("authorization", &auth));
    }
    if let Some(ct) = c.content_type {
        headers.push(("content-type", ct));
    }
    let resp = srv
        .open(method.clone(), &path, &headers, c.body.clone())
        .await;
    let status = resp.status();
    let ct = content_type(&resp);
    if ct.starts_with("text/event-stream") {
        prop_assert_eq!(status.as_u16(), 200);
        return Ok(());
    }
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    prop_assert!(
        !status.is_server_error(),
        "{} {} -> {}: {}",
        method,
        path,
        status,
        text
    );
    if status.is_client_error() {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            TestCaseError::fail(format!(
                "{method} {path} -> {status}: body not JSON ({e}): {text}"
            ))
        })?;
        prop_assert!(
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty()),
            "{} {} -> {}: no error.code: {}",
            method,
            path,
            status,
            text
        );
        prop_assert!(
            ct.starts_with("application/json"),
            "{} {} -> {}: {}",
            method,
            path,
            status,
            ct
        );
    } else if ct.starts_with("application/json") {
        serde_json::from_slice::<Value>(&body).map_err(|e| {
            TestCaseError::fail(format!(
                "{method} {path} -> {status}: JSON content type, bad body ({e})"
            ))
        })?;
    }
    Ok(())
}

#[test]
fn random_ids_and_bodies_on_every_route_never_cause_a_server_error() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (srv, ticket) = rt.block_on(async {
        let srv = Server::start_with(fuzz_setup()).await;
        srv.configure("fz", settings(1, 600_000)).await;
        srv.join_ok("fz", None).await;
        let t = srv.join_ok("fz", Some("waiting-one")).await;
        let ticket = s(&t, "ticket").to_owned();
        (srv, ticket)
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |c| rt.block_on(check(&srv, &c, &ticket)));
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        assert_eq!(srv.get("/healthz").await.status.as_u16(), 200);
        drop(srv);
    });
}
