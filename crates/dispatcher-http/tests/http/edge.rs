//! The HTTP edge against hostile input, over a real listener and a real Redis: admin authentication
//! throttled per address, the `X-Forwarded-For` hop that is trusted, joins that must be declared JSON
//! objects, ids and settings that could never be used, per-event metric series that go with their event,
//! live-stream caps, and a visitor budget when the store stops answering.

use std::time::Duration;

use dispatcher_admission::AdmissionStore;
use dispatcher_http::{EdgeOptions, Rate};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{ADMIN, Server, Setup, settings};

/// Writes `request` on a fresh connection to `addr` and returns what the server answered until it closed
/// or `PATIENCE` passed.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(crate::common::PATIENCE, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One answer is enough (keep-alive would wait for the next request).
                let text = String::from_utf8_lossy(&out);
                if let Some((head, body)) = text.split_once("\r\n\r\n")
                    && let Some(len) = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    && body.len() >= len
                {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_admin_authentication_is_throttled_per_address() {
    let mut setup = Setup::default();
    setup.http.admin_failure_rate = Rate::new(0.01, 3.0);
    setup.http.trust_forwarded_for = true;
    let srv = Server::start_with(setup).await;
    let wrong = format!("Bearer {ADMIN}x");
    let right = format!("bEaReR {ADMIN}");
    let from = |ip: &'static str, auth: &str| -> Vec<(&'static str, String)> {
        vec![
            ("x-forwarded-for", ip.to_owned()),
            ("authorization", auth.to_owned()),
        ]
    };
    let send = |h: Vec<(&'static str, String)>| {
        let srv = &srv;
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            srv.send(Method::GET, "/v1/admin/events", &h, None).await
        }
    };
    for _ in 0..3 {
        let r = send(from("7.7.7.7", &wrong)).await;
        r.expect_error(401, "unauthorized");
        let challenge = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "401 names its scheme: {challenge:?}"
        );
    }
    // The burst is spent: the address is refused, the right token included (a guesser learns nothing).
    let r = send(from("7.7.7.7", &wrong)).await;
    r.expect_error(429, "rate_limited");
    assert!(r.retry_after().is_some());
    send(from("7.7.7.7", &right))
        .await
        .expect_error(429, "rate_limited");
    // Another address is not affected, and the scheme is case-insensitive.
    let r = send(from("8.8.8.8", &right)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_x_forwarded_for_line_cannot_dodge_the_join_limit() {
    let mut setup = Setup::default();
    setup.http.trust_forwarded_for = true;
    setup.http.join_rate_per_ip = Rate::new(0.01, 2.0);
    let srv = Server::start_with(setup).await;
    srv.configure("xff", settings(100, 60_000)).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        // The client sends a line of its own choosing; the proxy appends its own line with the real
        // address (9.9.9.9) last.
        let chosen = format!("6.6.6.{i}");
        let r = srv
            .send(
                Method::POST,
                "/v1/events/xff/tickets",
                &[
                    ("x-forwarded-for", chosen.as_str()),
                    ("x-forwarded-for", "10.0.0.1, 9.9.9.9"),
                ],
                Some(b"{}".to_vec()),
            )
            .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [201, 201, 429, 429, 429, 429]);
    assert_eq!(srv.info("xff").await.joined, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_must_be_a_json_object_declared_as_json() {
    let srv = Server::start().await;
    srv.configure("csrf", settings(100, 60_000)).await;
    let body = br#"{"user":"victim"}"#;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let head = match ct {
            Some(ct) => format!("Content-Type: {ct}\r\n"),
            None => String::new(),
        };
        let req = format!(
            "POST /v1/events/csrf/tickets HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let answer = raw(srv.addr, &bytes).await;
        assert!(
            answer.starts_with("HTTP/1.1 415"),
            "{ct:?}: a join not declared JSON is refused: {answer}"
        );
        assert!(answer.contains("unsupported_media_type"), "{answer}");
    }
    // JSON arrays are not join requests (serde would read one as the struct's fields in order).
    for body in [&br#"["victim"]"#[..], b" [null]", b"\"victim\"", b"7"] {
        srv.send(
            Method::POST,
            "/v1/events/csrf/tickets",
            &[],
            Some(body.to_vec()),
        )
        .await
        .expect_error(400, "invalid_json");
    }
    assert_eq!(
        srv.info("csrf").await.joined,
        0,
        "refused joins take no ticket"
    );
    // Declared JSON (with parameters, any case) and no body at all still join.
    let r = srv
        .send(
            Method::POST,
            "/v1/events/csrf/tickets",
            &[("content-type", "Application/JSON; charset=utf-8")],
            Some(br#"{"user":"alice"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        srv.post_empty("/v1/events/csrf/tickets").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_event_ids_and_settings_are_refused_and_change_nothing() {
    let srv = Server::start().await;
    let before = srv.snapshot();
    for id in ["%2E", "%2E%2E", "...", "%2e%2e%2e"] {
        srv.admin(
            Method::PUT,
            &format!("/v1/admin/events/{id}"),
            Some(&settings(5, 60_000)),
        )
        .await
        .expect_error(400, "invalid_input");
    }
    let mut fifo = settings(5, 60_000);
    fifo["starts_at_ms"] = json!(4_000_000_000_000u64);
    srv.admin(Method::PUT, "/v1/admin/events/early", Some(&fifo))
        .await
        .expect_error(400, "invalid_input");
    assert_eq!(srv.snapshot(), before, "nothing was created");
    srv.get("/v1/events/early")
        .await
        .expect_error(404, "unknown_event");
    fifo["queue_mode"] = json!("prequeue");
    assert_eq!(
        srv.admin(Method::PUT, "/v1/admin/events/early", Some(&fifo))
            .await
            .status,
        StatusCode::CREATED
    );
}

/// The text of `/metrics` on the public port.
async fn metrics_page(srv: &Server) -> String {
    String::from_utf8_lossy(&srv.get("/metrics").await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_events_series_leave_the_metrics_page() {
    let srv = Server::start_with(Setup {
        metrics: true,
        ..Default::default()
    })
    .await;
    srv.configure("fleeting", settings(1, 60_000)).await;
    srv.configure("staying", settings(1, 60_000)).await;
    srv.join_ok("fleeting", None).await;
    srv.join_ok("fleeting", None).await;
    srv.app.refresh_events().await;
    let page = metrics_page(&srv).await;
    assert!(
        page.contains("dispatcher_event_waiting{event=\"fleeting\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("dispatcher_event_admitted{event=\"fleeting\"} 1"),
        "{page}"
    );
    srv.admin(Method::DELETE, "/v1/admin/events/fleeting?force=true", None)
        .await
        .ok();
    let page = metrics_page(&srv).await;
    assert!(
        !page.contains("event=\"fleeting\""),
        "deleted at once: {page}"
    );
    assert!(page.contains("event=\"staying\""), "{page}");
    // Deleted behind this process's back: gone after the next refresh.
    srv.store
        .delete_event(
            &dispatcher_admission::EventId::new("staying").expect("id"),
            true,
        )
        .await
        .expect("delete directly");
    srv.app.refresh_events().await;
    let page = metrics_page(&srv).await;
    assert!(!page.contains("event=\"staying\""), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_metrics_address_the_public_port_does_not_list_events() {
    let mut setup = Setup {
        metrics: true,
        ..Default::default()
    };
    setup.http.public_metrics = false;
    let srv = Server::start_with(setup).await;
    srv.configure("secret-drop", settings(1, 60_000)).await;
    srv.app.refresh_events().await;
    srv.get("/metrics")
        .await
        .expect_error(404, "metrics_elsewhere");
    // The metrics router (what `serve` puts on DISPATCHER_METRICS_ADDR) has them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = dispatcher_http::metrics_router(srv.app.clone());
    let server = tokio::spawn(async move {
        dispatcher_http::serve(
            listener,
            router,
            &EdgeOptions::default(),
            std::future::pending(),
        )
        .await
    });
    let page = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("dispatcher_event_waiting{event=\"secret-drop\"}"),
        "{page}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped_per_address_and_in_total() {
    let mut setup = Setup::default();
    setup.http.trust_forwarded_for = true;
    setup.http.edge.max_live_streams = 3;
    setup.http.edge.max_live_streams_per_ip = 2;
    let srv = Server::start_with(setup).await;
    srv.configure("streams", settings(1, 600_000)).await;
    let mut tickets = Vec::new();
    for _ in 0..6 {
        let t = srv.join_ok("streams", None).await;
        tickets.push(t["ticket"].as_str().expect("ticket").to_owned());
    }
    let live = |i: usize, ip: &'static str| {
        let srv = &srv;
        let path = format!("/v1/events/streams/tickets/{}/live", tickets[i]);
        async move {
            srv.open(Method::GET, &path, &[("x-forwarded-for", ip)], None)
                .await
        }
    };
    let a1 = live(0, "1.1.1.1").await;
    let a2 = live(1, "1.1.1.1").await;
    assert_eq!((a1.status(), a2.status()), (StatusCode::OK, StatusCode::OK));
    let a3 = live(2, "1.1.1.1").await;
    assert_eq!(
        a3.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "per-address cap"
    );
    let b1 = live(3, "2.2.2.2").await;
    assert_eq!(
        b1.status(),
        StatusCode::OK,
        "another address has its own share"
    );
    let c1 = live(4, "3.3.3.3").await;
    assert_eq!(c1.status(), StatusCode::SERVICE_UNAVAILABLE, "total cap");
    // Status reads still work for everyone: only streams are capped.
    let r = srv
        .get(&format!("/v1/events/streams/tickets/{}", tickets[5]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    drop((a1, a2, b1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_gets_visitors_an_answer_within_the_budget() {
    let mut setup = Setup::default();
    setup.http.visitor_budget = Duration::from_millis(300);
    let srv = Server::start_with(setup).await;
    srv.configure("paused", settings(1, 600_000)).await;
    let mut open = settings(1, 600_000);
    open["fail_open"] = json!(true);
    srv.configure("lenient", open).await;
    let t = srv.join_ok("paused", None).await;
    let path = format!(
        "/v1/events/paused/tickets/{}",
        t["ticket"].as_str().expect("ticket")
    );
    // Redis holds every client for 3 s; the calls below would succeed after it if they waited.
    srv.redis
        .command(&["CLIENT", "PAUSE", "3000", "ALL"])
        .expect("CLIENT PAUSE");
    srv.get(&path).await.expect_error(503, "store_unavailable");
    srv.join("paused", None)
        .await
        .expect_error(503, "store_unavailable");
    let r = srv.join("lenient", None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.json()["fail_open"],
        json!(true),
        "a fail-open event lets the visitor through"
    );
    srv.redis
        .command(&["CLIENT", "UNPAUSE"])
        .expect("CLIENT UNPAUSE");
    srv.eventually("the store answers again", || async {
        srv.get(&path).await.status == StatusCode::OK
    })
    .await;
}
