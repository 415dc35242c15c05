//! Abuse limits over HTTP: a burst of joins from one address or for one user beyond its rate gets 429
//! with `Retry-After` and a JSON `rate_limited` error, and the refused joins take no ticket.

use dispatcher_http::Rate;
use hyper::StatusCode;

use crate::common::{Server, Setup, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_from_one_address_is_throttled() {
    let mut setup = Setup::default();
    // 3 at once, then one every 100 s: the test cannot refill it by accident.
    setup.http.join_rate_per_ip = Rate::new(0.01, 3.0);
    let srv = Server::start_with(setup).await;
    srv.configure("busy", settings(100, 60_000)).await;
    for i in 0..3 {
        let r = srv.join("busy", Some(&format!("u{i}"))).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "join {i} is within the burst"
        );
    }
    for i in 3..8 {
        let r = srv.join("busy", Some(&format!("u{i}"))).await;
        r.expect_error(429, "rate_limited");
        let wait = r.retry_after().expect("429 carries Retry-After");
        assert!(wait >= 1, "Retry-After {wait}");
        // An anonymous join from the same address is throttled as well.
        srv.join("busy", None)
            .await
            .expect_error(429, "rate_limited");
    }
    assert_eq!(
        srv.info("busy").await.joined,
        3,
        "refused joins take no ticket"
    );
    // Other visitor routes keep working: only joins are limited this tightly.
    let ok = srv.get("/v1/events/busy").await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_for_one_user_is_throttled_per_user() {
    let mut setup = Setup::default();
    setup.http.join_rate_per_user = Rate::new(0.01, 2.0);
    let srv = Server::start_with(setup).await;
    srv.configure("per-user", settings(100, 60_000)).await;
    assert_eq!(
        srv.join("per-user", Some("carol")).await.status,
        StatusCode::CREATED
    );
    srv.join("per-user", Some("carol"))
        .await
        .expect_error(409, "already_joined");
    for _ in 0..4 {
        let r = srv.join("per-user", Some("carol")).await;
        r.expect_error(429, "rate_limited");
        assert!(r.retry_after().is_some_and(|s| s >= 1));
    }
    // Other users (and anonymous joins) from the same address are not held back by carol's limit.
    assert_eq!(
        srv.join("per-user", Some("dave")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(srv.join("per-user", None).await.status, StatusCode::CREATED);
    // The limit is per event: carol may still join another event.
    srv.configure("per-user-2", settings(100, 60_000)).await;
    assert_eq!(
        srv.join("per-user-2", Some("carol")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(srv.info("per-user").await.joined, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_requests_beyond_the_per_address_rate_are_throttled() {
    let mut setup = Setup::default();
    setup.http.request_rate_per_ip = Rate::new(0.01, 5.0);
    let srv = Server::start_with(setup).await;
    srv.configure("reads", settings(1, 60_000)).await;
    let mut throttled = 0;
    for _ in 0..10 {
        let r = srv.get("/v1/events/reads").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            r.expect_error(429, "rate_limited");
            assert!(r.retry_after().is_some());
            throttled += 1;
        } else {
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    assert_eq!(throttled, 5, "five within the burst, five refused");
    // Operations routes are not visitor routes and stay reachable.
    assert_eq!(srv.get("/healthz").await.status, StatusCode::OK);
}
