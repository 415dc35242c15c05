//! Operations surface: `/openapi.json` matches the router, every documented route answers its documented
//! method, `/metrics`, `/healthz`, and signing key rotation through the admin API.

use std::collections::BTreeSet;

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::{ADMIN, Server, Setup, content_type, now_s, s, settings};

/// Every (method, path) the router serves, as these tests exercise them. The OpenAPI document must list
/// exactly these.
pub const ROUTES: [(&str, &str); 24] = [
    ("POST", "/v1/events/{event}/tickets"),
    ("GET", "/v1/events/{event}/tickets/{ticket}"),
    ("POST", "/v1/events/{event}/tickets/{ticket}/heartbeat"),
    ("POST", "/v1/events/{event}/tickets/{ticket}/leave"),
    ("POST", "/v1/events/{event}/tickets/{ticket}/complete"),
    ("GET", "/v1/events/{event}/tickets/{ticket}/live"),
    ("GET", "/v1/events/{event}"),
    ("GET", "/v1/admin/events"),
    ("GET", "/v1/admin/events/{event}"),
    ("PUT", "/v1/admin/events/{event}"),
    ("DELETE", "/v1/admin/events/{event}"),
    ("POST", "/v1/admin/events/{event}/pause"),
    ("POST", "/v1/admin/events/{event}/resume"),
    ("POST", "/v1/admin/events/{event}/close"),
    ("GET", "/v1/admin/events/{event}/tickets/{ticket}"),
    ("POST", "/v1/admin/events/{event}/tickets/{ticket}/complete"),
    ("POST", "/v1/admin/events/{event}/tickets/{ticket}/revoke"),
    ("GET", "/v1/admin/events/{event}/revocations"),
    ("GET", "/v1/admin/keys"),
    ("POST", "/v1/admin/keys/rotate"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

/// Routes outside the versioned API that the router also serves.
pub const OTHER_ROUTES: [(&str, &str); 3] = [
    ("GET", "/metrics"),
    ("GET", "/wait/{event}"),
    ("GET", "/dashboard"),
];

fn all_routes() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ROUTES
        .iter()
        .chain(OTHER_ROUTES.iter())
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_openapi_document_lists_exactly_the_routers_routes() {
    assert_eq!(
        dispatcher_http::openapi::operations(),
        all_routes(),
        "the OpenAPI document and the router disagree"
    );
}

/// The statuses an operation documents.
fn documented_statuses(doc: &Value, method: &str, path: &str) -> BTreeSet<u16> {
    doc["paths"][path][method.to_lowercase()]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} has no responses"))
        .keys()
        .map(|k| k.parse().unwrap_or_else(|_| panic!("status {k}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_its_documented_method_with_a_documented_status() {
    let srv = Server::start().await;
    let r = srv.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    srv.configure("ops", settings(5, 60_000)).await;
    srv.configure("ops-del", settings(5, 60_000)).await;
    let t = srv.join_ok("ops", None).await;
    let ticket = s(&t, "ticket").to_owned();
    let auth = format!("Bearer {ADMIN}");
    let ops = dispatcher_http::openapi::operations();
    assert!(ops.len() >= ROUTES.len());
    for (method, path) in &ops {
        let event = if method == "DELETE" { "ops-del" } else { "ops" };
        let concrete = path.replace("{event}", event).replace("{ticket}", &ticket);
        let m: Method = method.parse().expect("method");
        let body =
            (method == "PUT").then(|| serde_json::to_vec(&settings(5, 60_000)).expect("json"));
        let headers = [("authorization", auth.as_str())];
        let resp = srv.open(m.clone(), &concrete, &headers, body).await;
        let status = resp.status();
        let ct = content_type(&resp);
        // The live stream never ends: its head is enough.
        let body = if path.ends_with("/live") {
            assert!(ct.starts_with("text/event-stream"), "{path}: {ct}");
            drop(resp);
            bytes::Bytes::new()
        } else {
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes()
        };
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            let v: Value = serde_json::from_slice(&body).expect("404 is JSON");
            assert_ne!(
                v["error"]["code"], "not_found",
                "{method} {path} has no route"
            );
        }
        let documented = documented_statuses(&doc, method, path);
        assert!(
            documented.contains(&status.as_u16()),
            "{method} {path} answered {status}, documented {documented:?}: {}",
            String::from_utf8_lossy(&body)
        );
        if ct.starts_with("application/json") {
            serde_json::from_slice::<Value>(&body).unwrap_or_else(|e| {
                panic!("{method} {path}: JSON content type, body not JSON: {e}")
            });
        }
    }

    // No documented path takes an undocumented method.
    let documented: BTreeSet<(String, String)> = ops.iter().cloned().collect();
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{event}", "ops").replace("{ticket}", &ticket);
        for m in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            if documented.contains(&(m.to_string(), path.clone())) {
                continue;
            }
            srv.send(
                m.clone(),
                &concrete,
                &[("authorization", auth.as_str())],
                None,
            )
            .await
            .expect_error(405, "method_not_allowed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_promotions_requests_and_tokens() {
    let srv = Server::start_with(Setup {
        metrics: true,
        ..Default::default()
    })
    .await;
    srv.configure("m", settings(1, 60_000)).await;
    let a = srv.join_ok("m", None).await;
    srv.join_ok("m", None).await;
    srv.post_empty(&format!(
        "/v1/events/m/tickets/{}/complete",
        s(&a, "ticket")
    ))
    .await
    .ok();
    srv.get("/v1/nothing-here").await;
    let r = srv.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers["content-type"].to_str().unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    // The recorder is process-wide: other tests of this process (under `cargo test`) may add to the
    // counts, so they are lower bounds.
    for (series, at_least) in [
        ("dispatcher_promotions_total{source=\"join\"}", 1.0),
        ("dispatcher_promotions_total{source=\"release\"}", 1.0),
        ("dispatcher_tokens_minted_total", 1.0),
        ("dispatcher_join_duration_seconds_count", 2.0),
        ("dispatcher_admit_duration_seconds_count", 1.0),
        (
            "dispatcher_http_requests_total{route=\"/v1/events/{event}/tickets\",status=\"201\"}",
            2.0,
        ),
        (
            "dispatcher_http_requests_total{route=\"unmatched\",status=\"404\"}",
            1.0,
        ),
        ("dispatcher_admission_promoter_rounds_total", 1.0),
    ] {
        let value = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("/metrics lacks {series}:\n{text}"));
        assert!(
            value >= at_least,
            "{series} = {value}, expected at least {at_least}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_recorder_metrics_is_a_clear_404() {
    let srv = Server::start().await;
    srv.get("/metrics")
        .await
        .expect_error(404, "metrics_disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_publishes_a_new_key_and_keeps_issued_tokens() {
    let srv = Server::start_with(Setup {
        key_dir: true,
        ..Default::default()
    })
    .await;
    srv.configure("rot", settings(5, 60_000)).await;
    let a = srv.join_ok("rot", Some("before")).await;
    let token = s(&a, "token").to_owned();
    let before = srv.verifier().await;
    assert_eq!(before.kids().len(), 1);
    let keys = srv.admin(Method::GET, "/v1/admin/keys", None).await.ok();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");

    let rotated = srv
        .admin(Method::POST, "/v1/admin/keys/rotate", None)
        .await
        .ok();
    let rotated = rotated.as_array().expect("key list").clone();
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    let old_kid = s(&keys[0], "kid");
    assert!(
        rotated.iter().any(|k| s(k, "kid") == old_kid),
        "the old key stays"
    );
    let after = srv.verifier().await;
    assert_eq!(
        after.kids().len(),
        2,
        "the JWKS publishes the new key at once"
    );
    let new_kid = rotated
        .iter()
        .map(|k| s(k, "kid"))
        .find(|k| *k != old_kid)
        .expect("a new kid");
    assert!(after.kids().any(|k| k == new_kid));

    // The admitted ticket keeps its identical token, which still verifies.
    let again = srv.status("rot", s(&a, "ticket")).await.ok();
    assert_eq!(s(&again, "token"), token);
    after
        .verify(&token, Some("rot"), now_s(), 5)
        .expect("an issued token verifies after rotation");
    // A new admission verifies against the published keys too.
    let b = srv.join_ok("rot", Some("after")).await;
    after
        .verify(s(&b, "token"), Some("rot"), now_s(), 5)
        .expect("a token minted after rotation verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_in_memory_keys_is_refused() {
    let srv = Server::start().await;
    let before = srv.verifier().await.kids().len();
    srv.admin(Method::POST, "/v1/admin/keys/rotate", None)
        .await
        .expect_error(409, "rotation_unavailable");
    assert_eq!(srv.verifier().await.kids().len(), before);
}

/// `\uXXXX` at the start of `s`, and the rest.
fn code_point(s: &str) -> (u32, &str) {
    let hex = s
        .strip_prefix("\\u")
        .unwrap_or_else(|| panic!("expected \\uXXXX at {s:?}"));
    let cp = u32::from_str_radix(&hex[..4], 16).expect("four hex digits");
    (cp, &hex[4..])
}

#[test]
fn the_documented_user_id_pattern_is_the_servers_rule() {
    let doc = dispatcher_http::openapi::document();
    let pattern = doc
        .pointer("/components/schemas/JoinRequest/properties/user/pattern")
        .and_then(Value::as_str)
        .expect("the user id has a documented pattern");
    let mut rest = pattern
        .strip_prefix("^[^")
        .and_then(|p| p.strip_suffix("]+$"))
        .expect("a negated character class");
    let mut excluded = Vec::new();
    while !rest.is_empty() {
        let (lo, r) = code_point(rest);
        rest = r;
        let hi = match rest.strip_prefix('-') {
            Some(r) => {
                let (hi, r) = code_point(r);
                rest = r;
                hi
            }
            None => lo,
        };
        excluded.push(lo..=hi);
    }
    for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
        let documented_ok = !excluded.iter().any(|r| r.contains(&u32::from(c)));
        assert_eq!(
            dispatcher_admission::UserId::new(c.to_string()).is_ok(),
            documented_ok,
            "U+{:04X}: the documented pattern and the server disagree",
            u32::from(c)
        );
    }
}
