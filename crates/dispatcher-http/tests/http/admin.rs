//! The admin API over HTTP against a real Redis: authentication, the event life cycle, listing with
//! counts, revocation.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN, Server, n, s, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_require_the_bearer_token() {
    let srv = Server::start().await;
    srv.configure("guarded", settings(1, 60_000)).await;
    let before = srv.snapshot();
    let wrong = format!("Bearer {ADMIN}x");
    let short = "Bearer admin";
    let basic = format!("Basic {ADMIN}");
    let routes: [(Method, &str, Option<Value>); 6] = [
        (Method::GET, "/v1/admin/events", None),
        (Method::GET, "/v1/admin/events/guarded", None),
        (
            Method::PUT,
            "/v1/admin/events/guarded",
            Some(settings(9, 60_000)),
        ),
        (Method::DELETE, "/v1/admin/events/guarded?force=true", None),
        (Method::POST, "/v1/admin/events/guarded/close", None),
        (Method::POST, "/v1/admin/keys/rotate", None),
    ];
    for (method, path, body) in routes {
        let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
        for headers in [
            vec![],
            vec![("authorization", wrong.as_str())],
            vec![("authorization", short)],
            vec![("authorization", basic.as_str())],
            vec![("authorization", ADMIN)],
        ] {
            srv.send(method.clone(), path, &headers, body.clone())
                .await
                .expect_error(401, "unauthorized");
        }
    }
    assert_eq!(srv.snapshot(), before, "refused admin calls change nothing");
    assert_eq!(srv.info("guarded").await.settings.capacity, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_created_configured_paused_resumed_closed_and_deleted() {
    let srv = Server::start().await;
    // Create: 201; the body shows the settings and counts.
    let r = srv
        .admin(
            Method::PUT,
            "/v1/admin/events/life",
            Some(&settings(1, 60_000)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(s(&v, "id"), "life");
    assert_eq!(n(&v["settings"], "capacity"), 1);
    assert_eq!((n(&v, "waiting"), n(&v, "admitted")), (0, 0));
    // Reconfigure: 200, takes effect.
    let r = srv
        .admin(
            Method::PUT,
            "/v1/admin/events/life",
            Some(&settings(2, 60_000)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(n(&r.json()["settings"], "capacity"), 2);
    assert_eq!(srv.info("life").await.settings.capacity, 2);

    // Pause: joins queue, nobody is admitted even with free slots.
    let v = srv
        .admin(Method::POST, "/v1/admin/events/life/pause", None)
        .await
        .ok();
    assert_eq!(s(&v["settings"], "state"), "paused");
    let t1 = srv.join_ok("life", None).await;
    let t2 = srv.join_ok("life", None).await;
    let t3 = srv.join_ok("life", None).await;
    for t in [&t1, &t2, &t3] {
        assert_eq!(s(t, "state"), "waiting", "paused: {t}");
    }
    // Resume: admits up to capacity at once, in order.
    let v = srv
        .admin(Method::POST, "/v1/admin/events/life/resume", None)
        .await
        .ok();
    assert_eq!(s(&v["settings"], "state"), "open");
    assert_eq!((n(&v, "admitted"), n(&v, "waiting")), (2, 1), "{v}");
    assert_eq!(
        s(&srv.status("life", s(&t1, "ticket")).await.ok(), "state"),
        "admitted"
    );
    assert_eq!(
        s(&srv.status("life", s(&t2, "ticket")).await.ok(), "state"),
        "admitted"
    );
    assert_eq!(
        s(&srv.status("life", s(&t3, "ticket")).await.ok(), "state"),
        "waiting"
    );

    // The admin reads a ticket (no presence needed) and completes it for the shop.
    let at = srv
        .admin(
            Method::GET,
            &format!("/v1/admin/events/life/tickets/{}", s(&t1, "ticket")),
            None,
        )
        .await
        .ok();
    assert_eq!(s(&at, "state"), "admitted");
    assert!(at.get("token").is_some(), "{at}");
    let done = srv
        .admin(
            Method::POST,
            &format!(
                "/v1/admin/events/life/tickets/{}/complete",
                s(&t1, "ticket")
            ),
            None,
        )
        .await
        .ok();
    assert_eq!(s(&done["ticket"], "state"), "completed");
    assert_eq!(n(&done, "admitted_next"), 1, "t3 takes the slot");

    // Close: new joins get 409 event_closed; the queue keeps its tickets.
    let v = srv
        .admin(Method::POST, "/v1/admin/events/life/close", None)
        .await
        .ok();
    assert_eq!(s(&v["settings"], "state"), "closed");
    let before = srv.info("life").await;
    srv.join("life", None)
        .await
        .expect_error(409, "event_closed");
    srv.join("life", Some("newcomer"))
        .await
        .expect_error(409, "event_closed");
    assert_eq!(
        srv.info("life").await.joined,
        before.joined,
        "a refused join takes no number"
    );

    // Reject mode: 403 joins_rejected.
    let mut reject = settings(2, 60_000);
    reject["queue_mode"] = json!("reject");
    srv.configure("life", reject).await;
    srv.join("life", None)
        .await
        .expect_error(403, "joins_rejected");

    // Delete: refused while tickets live, done with force.
    srv.admin(Method::DELETE, "/v1/admin/events/life", None)
        .await
        .expect_error(409, "conflict");
    assert!(srv.info("life").await.admitted > 0, "nothing deleted");
    let gone = srv
        .admin(Method::DELETE, "/v1/admin/events/life?force=true", None)
        .await
        .ok();
    assert_eq!(s(&gone, "event"), "life");
    assert_eq!(n(&gone, "tickets"), 3, "{gone}");
    srv.admin(Method::GET, "/v1/admin/events/life", None)
        .await
        .expect_error(404, "unknown_event");
    srv.join("life", None)
        .await
        .expect_error(404, "unknown_event");
    srv.admin(Method::DELETE, "/v1/admin/events/life", None)
        .await
        .expect_error(404, "unknown_event");
    srv.admin(Method::POST, "/v1/admin/events/life/pause", None)
        .await
        .expect_error(404, "unknown_event");
    srv.admin(Method::DELETE, "/v1/admin/events/life?force=maybe", None)
        .await
        .expect_error(400, "invalid_input");

    // An event without live tickets deletes without force.
    srv.configure("empty", settings(1, 60_000)).await;
    let gone = srv
        .admin(Method::DELETE, "/v1/admin/events/empty", None)
        .await
        .ok();
    assert_eq!(n(&gone, "tickets"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_shows_every_event_with_counts_and_totals() {
    let srv = Server::start().await;
    srv.configure("list-a", settings(1, 60_000)).await;
    srv.configure("list-b", settings(5, 60_000)).await;
    let a1 = srv.join_ok("list-a", None).await;
    srv.join_ok("list-a", None).await;
    srv.join_ok("list-a", None).await;
    srv.join_ok("list-b", None).await;
    srv.post_empty(&format!(
        "/v1/events/list-a/tickets/{}/complete",
        s(&a1, "ticket")
    ))
    .await
    .ok();
    let list = srv.admin(Method::GET, "/v1/admin/events", None).await.ok();
    let list = list.as_array().expect("an array");
    let ids: Vec<&str> = list.iter().map(|e| s(e, "id")).collect();
    assert_eq!(ids, ["list-a", "list-b"], "sorted by id");
    let a = &list[0];
    assert_eq!(
        (
            n(a, "joined"),
            n(a, "waiting"),
            n(a, "admitted"),
            n(a, "finished")
        ),
        (3, 1, 1, 1),
        "{a}"
    );
    assert_eq!(n(&a["totals"], "admitted"), 2, "{a}");
    assert_eq!(n(&a["totals"], "completed"), 1, "{a}");
    assert_eq!(a["active"], json!(true));
    let b = &list[1];
    assert_eq!(
        (n(b, "joined"), n(b, "waiting"), n(b, "admitted")),
        (1, 0, 1),
        "{b}"
    );
    assert_eq!(n(&b["settings"], "capacity"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_admitted_ticket_frees_its_slot_and_lists_it() {
    let srv = Server::start().await;
    srv.configure("rv", settings(1, 60_000)).await;
    let a = srv.join_ok("rv", Some("holder")).await;
    let b = srv.join_ok("rv", Some("next")).await;
    assert_eq!(s(&a, "state"), "admitted");
    assert_eq!(s(&b, "state"), "waiting");
    let empty = srv
        .admin(Method::GET, "/v1/admin/events/rv/revocations", None)
        .await
        .ok();
    assert_eq!(empty["revoked"], json!([]));

    // A visitor cannot revoke: there is no such visitor route.
    srv.post_empty(&format!("/v1/events/rv/tickets/{}/revoke", s(&a, "ticket")))
        .await
        .expect_error(404, "not_found");

    let r = srv
        .admin(
            Method::POST,
            &format!("/v1/admin/events/rv/tickets/{}/revoke", s(&a, "ticket")),
            None,
        )
        .await
        .ok();
    assert_eq!(s(&r["ticket"], "state"), "revoked", "{r}");
    assert_eq!(r["changed"], json!(true));
    assert_eq!(n(&r, "admitted_next"), 1);
    let nb = srv.status("rv", s(&b, "ticket")).await.ok();
    assert_eq!(
        s(&nb, "state"),
        "admitted",
        "the next visitor took the slot"
    );
    assert!(nb.get("token").is_some());
    let list = srv
        .admin(Method::GET, "/v1/admin/events/rv/revocations", None)
        .await
        .ok();
    assert_eq!(s(&list, "event"), "rv");
    let revoked = list["revoked"].as_array().expect("revoked list");
    assert_eq!(revoked.len(), 1, "{list}");
    assert_eq!(s(&revoked[0], "ticket"), s(&a, "ticket"));
    assert_eq!(n(&revoked[0], "expires_at_ms"), n(&a, "expires_at_ms"));
    // The revoked holder sees its final state; revoking again changes nothing.
    let ra = srv.status("rv", s(&a, "ticket")).await.ok();
    assert_eq!(s(&ra, "state"), "revoked");
    assert!(
        ra.get("token").is_none(),
        "a revoked ticket no longer shows a token"
    );
    let again = srv
        .admin(
            Method::POST,
            &format!("/v1/admin/events/rv/tickets/{}/revoke", s(&a, "ticket")),
            None,
        )
        .await
        .ok();
    assert_eq!(again["changed"], json!(false));
    assert_eq!(srv.info("rv").await.totals.revoked, 1);
    // A waiting ticket can be revoked too, but it had no token to list.
    let c = srv.join_ok("rv", None).await;
    srv.admin(
        Method::POST,
        &format!("/v1/admin/events/rv/tickets/{}/revoke", s(&c, "ticket")),
        None,
    )
    .await
    .ok();
    let list = srv
        .admin(Method::GET, "/v1/admin/events/rv/revocations", None)
        .await
        .ok();
    assert_eq!(list["revoked"].as_array().map(Vec::len), Some(1), "{list}");
}
