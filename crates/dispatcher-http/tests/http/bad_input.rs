//! Bad input gets a clear JSON error with a stable code and changes nothing in the store
//! (docs/guarantees.md#bad-input).

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::common::{ADMIN, Server, s, settings};

/// A server with event "good" (one admitted ticket, two waiting) and event "other" (one waiting).
async fn populated() -> (Server, String, String) {
    let srv = Server::start().await;
    srv.configure("good", settings(1, 600_000)).await;
    srv.configure("other", settings(1, 600_000)).await;
    let a = srv.join_ok("good", Some("ann")).await;
    srv.join_ok("good", Some("ben")).await;
    srv.join_ok("good", None).await;
    srv.join_ok("other", None).await;
    let o = srv.join_ok("other", None).await;
    (srv, s(&a, "ticket").to_owned(), s(&o, "ticket").to_owned())
}

/// (method, path, headers, body, expected status, expected error code)
type Case<'a> = (
    Method,
    String,
    &'a [(&'a str, &'a str)],
    Option<Vec<u8>>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors_and_change_nothing() {
    let (srv, ticket, other_ticket) = populated().await;
    let auth = format!("Bearer {ADMIN}");
    let admin = [("authorization", auth.as_str())];
    let admin_text = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    let admin_json = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let json_ct = [("content-type", "application/json")];
    let big = vec![b' '; 20 * 1024];
    let big_json = format!("{{\"user\": \"{}\"}}", "x".repeat(20 * 1024)).into_bytes();
    let long_event = "e".repeat(65);
    let before = srv.snapshot();

    // (method, path, headers, body, status, code)
    let cases: Vec<Case> = vec![
        // Join bodies.
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(b"{".to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(b"[1,2]".to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(b"\xff\xfe".to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(br#"{"usr":"x"}"#.to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(br#"{"user":""}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(br#"{"user":"a b"}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(format!("{{\"user\":\"{}\"}}", "u".repeat(129)).into_bytes()),
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(br#"{"user":7}"#.to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(big_json.clone()),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets".into(),
            &json_ct,
            Some(big.clone()),
            413,
            "payload_too_large",
        ),
        // Event ids that would break keys.
        (
            Method::POST,
            "/v1/events/a:b/tickets".into(),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            format!("/v1/events/{long_event}/tickets"),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/%7B/tickets".into(),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/%7Bs0%7D/tickets".into(),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/a%20b/tickets".into(),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::POST,
            "/v1/events/%FF/tickets".into(),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::GET,
            format!("/v1/events/a:b/tickets/{ticket}"),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::GET,
            "/v1/events/%7B".into(),
            &[],
            None,
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/a:b".into(),
            &admin,
            Some(serde_json::to_vec(&settings(1, 1000)).expect("json")),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            format!("/v1/admin/events/{long_event}"),
            &admin,
            Some(serde_json::to_vec(&settings(1, 1000)).expect("json")),
            400,
            "invalid_input",
        ),
        (
            Method::GET,
            "/v1/admin/events/%7B".into(),
            &admin,
            None,
            400,
            "invalid_input",
        ),
        // Unknown events.
        (
            Method::POST,
            "/v1/events/nosuch/tickets".into(),
            &[],
            None,
            404,
            "unknown_event",
        ),
        (
            Method::GET,
            format!("/v1/events/nosuch/tickets/{ticket}"),
            &[],
            None,
            404,
            "unknown_event",
        ),
        // Malformed, unknown and other-event ticket ids: the same 404.
        (
            Method::GET,
            "/v1/events/good/tickets/xyz".into(),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/good/tickets/{}", ticket.to_uppercase()),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/good/tickets/{}", &ticket[..31]),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/good/tickets/{ticket}0"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/good/tickets/{}", "0".repeat(32)),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/good/tickets/{other_ticket}"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/other/tickets/{ticket}"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::POST,
            format!("/v1/events/other/tickets/{ticket}/heartbeat"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::POST,
            format!("/v1/events/other/tickets/{ticket}/complete"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::POST,
            format!("/v1/events/other/tickets/{ticket}/leave"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/events/other/tickets/{ticket}/live"),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::GET,
            format!("/v1/admin/events/other/tickets/{ticket}"),
            &admin,
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::POST,
            format!("/v1/admin/events/other/tickets/{ticket}/revoke"),
            &admin,
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::POST,
            format!("/v1/admin/events/other/tickets/{ticket}/complete"),
            &admin,
            None,
            404,
            "unknown_ticket",
        ),
        (
            Method::POST,
            "/v1/events/good/tickets/%00%01/leave".into(),
            &[],
            None,
            404,
            "unknown_ticket",
        ),
        // Admin settings bodies.
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(b"{".to_vec()),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(br#"{"capacity":1,"colour":"red"}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(br#"{"capacity":0}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(br#"{"capacity":-1}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(br#"{"capacity":1,"session_ttl_ms":1}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(br#"{"capacity":1,"state":"sleeping"}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(br#"{}"#.to_vec()),
            400,
            "invalid_input",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin_json,
            None,
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            None,
            415,
            "unsupported_media_type",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin_text,
            Some(br#"{"capacity":1}"#.to_vec()),
            415,
            "unsupported_media_type",
        ),
        (
            Method::PUT,
            "/v1/admin/events/good".into(),
            &admin,
            Some(big_json.clone()),
            413,
            "payload_too_large",
        ),
        (
            Method::DELETE,
            "/v1/admin/events/good?force=yes".into(),
            &admin,
            None,
            400,
            "invalid_input",
        ),
        (
            Method::DELETE,
            "/v1/admin/events/good?forse=true".into(),
            &admin,
            None,
            400,
            "invalid_input",
        ),
        (
            Method::DELETE,
            "/v1/admin/events/good".into(),
            &admin,
            None,
            409,
            "conflict",
        ),
        // Wrong methods and unknown routes.
        (
            Method::DELETE,
            "/v1/events/good/tickets".into(),
            &[],
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/events/good/tickets".into(),
            &[],
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            format!("/v1/events/good/tickets/{ticket}"),
            &[],
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            format!("/v1/events/good/tickets/{ticket}/complete"),
            &[],
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/v1/admin/events".into(),
            &admin,
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/healthz".into(),
            &[],
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::PATCH,
            "/v1/admin/events/good".into(),
            &admin,
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            &[],
            None,
            404,
            "not_found",
        ),
        (Method::GET, "/".into(), &[], None, 404, "not_found"),
        (
            Method::POST,
            "/v1/events/good/tickets/extra/segments/here".into(),
            &[],
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/events/".into(),
            &[],
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/admin/events/good/tickets".into(),
            &admin,
            None,
            404,
            "not_found",
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, headers, body, status, code) in cases {
        let r = srv.send(method.clone(), &path, headers, body).await;
        let shown = &path[..path.len().min(90)];
        let got_code = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/code")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned)
            });
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
        if r.status.as_u16() != status
            || got_code.as_deref() != Some(code)
            || ct != Some("application/json")
            || r.retry_after().is_some()
        {
            wrong.push(format!(
                "{method} {shown}: expected {status} {code}, got {} {ct:?} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(srv.snapshot(), before, "bad requests changed the store");
    let info = srv.info("good").await;
    assert_eq!((info.joined, info.waiting, info.admitted), (3, 2, 1));
    assert_eq!(info.settings.capacity, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_whitespace_join_body_joins_anonymously() {
    let srv = Server::start().await;
    srv.configure("anon", settings(5, 60_000)).await;
    for body in [
        None,
        Some(b"".to_vec()),
        Some(b"  \n".to_vec()),
        Some(b"{}".to_vec()),
    ] {
        let r = srv
            .send(Method::POST, "/v1/events/anon/tickets", &[], body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert!(r.json().get("user").is_none());
    }
    let r = srv
        .post("/v1/events/anon/tickets", &json!({ "user": "ünïcødé-✓" }))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "printable Unicode user ids are fine"
    );
    assert_eq!(s(&r.json(), "user"), "ünïcødé-✓");
}
