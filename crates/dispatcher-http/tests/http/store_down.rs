//! The store goes down (the private redis-server is killed) and comes back: fail-closed events refuse joins
//! with 503 and `Retry-After`, fail-open events let visitors through with a verifiable token, `/readyz`
//! follows the store, `/healthz` does not, and everything works again once Redis is back.

use dispatcher_admission::{AdmissionStore, EventId};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, Setup, n, now_s, s, settings, typed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_fails_closed_or_open_per_event_and_recovers() {
    let mut srv = Server::start_with(Setup {
        aof: true,
        ..Default::default()
    })
    .await;
    // Fail closed (the default), configured through the admin API.
    srv.configure("shut", settings(1, 3_600_000)).await;
    // Fail open, configured through the admin API (the app caches the settings it saw).
    let mut open = settings(1, 90_000);
    open["fail_open"] = json!(true);
    srv.configure("open", open).await;
    // Fail open, configured behind the app's back: the app learns it from its periodic refresh.
    let mut direct = settings(1, 45_000);
    direct["fail_open"] = json!(true);
    srv.store
        .configure(&EventId::new("direct").expect("id"), &typed(&direct))
        .await
        .expect("configure directly");
    srv.app.refresh_events().await;

    let held = srv.join_ok("shut", Some("early")).await;
    let held_token = s(&held, "token").to_owned();
    let verifier = srv.verifier().await;
    let r = srv.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    assert_eq!(r.json(), json!({ "store": "ok", "promoter": "running" }));

    srv.redis.kill().expect("kill redis-server");

    // Every call below waits for the store client to give up reconnecting; they run concurrently so the
    // test waits for that once.
    let held_ticket = s(&held, "ticket").to_owned();
    let (shut_anon, shut_named, read, admin, public, unknown, open_join, direct_join) = tokio::join!(
        srv.join("shut", None),
        srv.join("shut", Some("late")),
        srv.status("shut", &held_ticket),
        srv.admin(Method::GET, "/v1/admin/events", None),
        srv.get("/v1/events/shut"),
        srv.join("unknown-to-app", None),
        srv.join("open", Some("lucky")),
        srv.join("direct", Some("lucky")),
    );

    // Fail closed: 503 with Retry-After, for anonymous and named visitors.
    for r in [&shut_anon, &shut_named] {
        r.expect_error(503, "store_unavailable");
        assert!(
            r.retry_after().is_some_and(|s| s >= 1),
            "503 carries Retry-After"
        );
    }
    // Reads and admin calls fail the same way.
    for r in [&read, &admin, &public] {
        r.expect_error(503, "store_unavailable");
        assert!(r.retry_after().is_some());
    }
    // An event the app never saw fails closed.
    unknown.expect_error(503, "store_unavailable");

    // Fail open: let through with a token that verifies offline.
    for (event, ttl_ms, r) in [
        ("open", 90_000u64, &open_join),
        ("direct", 45_000, &direct_join),
    ] {
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{event}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["fail_open"], json!(true), "{v}");
        assert_eq!(s(&v, "state"), "admitted");
        assert_eq!(n(&v, "expires_at_ms") - n(&v, "admitted_at_ms"), ttl_ms);
        let claims = verifier
            .verify(s(&v, "token"), Some(event), now_s(), 5)
            .unwrap_or_else(|e| panic!("{event}: the fail-open token does not verify: {e}"));
        assert_eq!(claims.event, event);
        assert_eq!(claims.jti, s(&v, "ticket"));
        assert_eq!(claims.user.as_deref(), Some("lucky"));
        assert_eq!(claims.exp, n(&v, "expires_at_ms").div_ceil(1000));
    }

    // Tokens issued before the outage keep verifying offline.
    verifier
        .verify(&held_token, Some("shut"), now_s(), 5)
        .expect("an issued token verifies while the store is down");

    // Readiness follows the store; liveness does not.
    let r = srv.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["store"], json!("unreachable"));
    let r = srv.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({ "status": "ok" }));
    assert_eq!(
        srv.get("/.well-known/jwks.json").await.status,
        StatusCode::OK
    );

    srv.redis.start_again().expect("restart redis-server");
    srv.eventually("/readyz is 200 again after Redis is back", || async {
        srv.get("/readyz").await.status == StatusCode::OK
    })
    .await;
    // The data survived (AOF); the same ticket reads back with the same token.
    let again = srv.status("shut", s(&held, "ticket")).await.ok();
    assert_eq!(s(&again, "token"), held_token);
    // Joins work again; the fail-open admissions left no ticket in the store.
    let j = srv.join("shut", None).await;
    assert_eq!(
        j.status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&j.body)
    );
    assert_eq!(s(&j.json(), "state"), "waiting");
    let info = srv.info("open").await;
    assert_eq!(
        (info.joined, info.admitted),
        (0, 0),
        "fail-open joins are not in the store"
    );
    let j: Value = srv.join_ok("open", Some("lucky")).await;
    assert!(
        j.get("fail_open").is_none(),
        "a normal admission again: {j}"
    );
}

/// A key of the wrong type under a fail-open event is no outage: the store is up and answered with an
/// error. The join answers 500 `internal`, mints no token, and is counted in
/// `dispatcher_store_internal_errors_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_fail_open_event_answers_500_and_mints_no_token() {
    let srv = Server::start_with(Setup {
        metrics: true,
        promoter: false,
        ..Default::default()
    })
    .await;
    let mut open = settings(1, 90_000);
    open["fail_open"] = json!(true);
    srv.configure("broken", open).await;
    let event = EventId::new("broken").expect("id");
    let o = srv.store.options();
    let waiting = format!(
        "{}:{{s{}}}:e:broken:w",
        o.prefix,
        dispatcher_admission::shard_of(&event, o.shards)
    );
    srv.redis
        .command(&["SET", &waiting, "not a zset"])
        .expect("SET over the waiting line");

    let r = srv.join("broken", Some("unlucky")).await;
    r.expect_error(500, "internal");
    assert!(r.retry_after().is_none(), "no Retry-After on a 500");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains("token") && !body.contains("fail_open"),
        "{body}"
    );

    let text = String::from_utf8_lossy(&srv.get("/metrics").await.body).into_owned();
    let counted = text
        .lines()
        .find_map(|l| l.strip_prefix("dispatcher_store_internal_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(counted.is_some_and(|v| v >= 1.0), "{text}");
}
