//! The visitor's journey over HTTP against a real Redis: join, wait, admission with a verifiable token,
//! completion handing the slot to the next visitor (pushed over the live stream), identical tokens on
//! every read, honest positions, idempotent joins per user.

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, SseReader, content_type, n, now_s, s, settings};

const TTL_MS: u64 = 120_000;

/// Checks an admitted ticket's token against the published JWKS: event, jti, user, iat and exp (the
/// session end rounded up to the second).
async fn check_token(srv: &Server, event: &str, t: &Value) -> String {
    assert_eq!(s(t, "state"), "admitted", "{t}");
    let token = s(t, "token").to_owned();
    let admitted_at = n(t, "admitted_at_ms");
    let expires_at = n(t, "expires_at_ms");
    assert_eq!(
        expires_at,
        admitted_at + TTL_MS,
        "session end = admission + TTL"
    );
    let claims = srv
        .verifier()
        .await
        .verify(&token, Some(event), now_s(), 5)
        .unwrap_or_else(|e| panic!("the entry token does not verify: {e}"));
    assert_eq!(claims.event, event);
    assert_eq!(claims.jti, s(t, "ticket"), "jti is the ticket id");
    assert_eq!(
        claims.user.as_deref(),
        t.get("user").and_then(Value::as_str)
    );
    assert_eq!(claims.iat, admitted_at / 1000);
    assert_eq!(
        claims.exp,
        expires_at.div_ceil(1000),
        "exp = admitted_at + TTL, seconds rounded up"
    );
    // The token belongs to this event only.
    assert!(
        srv.verifier()
            .await
            .verify(&token, Some("another-event"), now_s(), 5)
            .is_err(),
        "a token of {event} must not pass as another event's"
    );
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_wait_admit_complete_hands_the_slot_over_and_pushes_the_token_live() {
    let srv = Server::start().await;
    assert_eq!(
        srv.configure("show", settings(1, TTL_MS)).await,
        StatusCode::CREATED
    );

    // The first visitor takes the only slot at once.
    let first = srv.join("show", None).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let a = first.json();
    let token_a = check_token(&srv, "show", &a).await;
    assert_eq!(n(&a, "seq"), 1);

    // The second waits, first in line.
    let b = srv.join_ok("show", Some("bob")).await;
    assert_eq!(s(&b, "state"), "waiting", "{b}");
    assert_eq!((n(&b, "ahead"), n(&b, "position")), (0, 1), "{b}");
    assert!(
        b.get("token").is_none(),
        "a waiting ticket carries no token: {b}"
    );
    let ticket_b = s(&b, "ticket").to_owned();

    // Its live stream opens with the current view.
    let resp = srv
        .open(
            Method::GET,
            &format!("/v1/events/show/tickets/{ticket_b}/live"),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = content_type(&resp);
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    let mut live = SseReader::new(resp.into_body());
    let ev = live.next().await.expect("the first live event");
    assert_eq!(ev.event, "position", "{:?}", ev);
    assert_eq!(s(&ev.data, "state"), "waiting");
    assert_eq!(n(&ev.data, "ahead"), 0);

    // Every read of the admitted ticket returns the identical token.
    for _ in 0..3 {
        let again = srv.status("show", s(&a, "ticket")).await.ok();
        assert_eq!(
            s(&again, "token"),
            token_a,
            "the same ticket, the same token"
        );
    }

    // Completing the first frees the slot and admits the second in the same step.
    let done = srv
        .post_empty(&format!(
            "/v1/events/show/tickets/{}/complete",
            s(&a, "ticket")
        ))
        .await
        .ok();
    assert_eq!(s(&done["ticket"], "state"), "completed", "{done}");
    assert_eq!(done["changed"], json!(true));
    assert_eq!(n(&done, "admitted_next"), 1, "{done}");
    assert!(
        done["ticket"].get("token").is_none(),
        "a completed ticket has no token"
    );

    // The live stream delivers the admission with the token; the test never polls.
    let ev = loop {
        let ev = live
            .next()
            .await
            .expect("the live stream ended before the admission");
        if ev.event == "admitted" {
            break ev;
        }
        assert_eq!(ev.event, "position", "{ev:?}");
    };
    let pushed = check_token(&srv, "show", &ev.data).await;
    assert_eq!(s(&ev.data, "ticket"), ticket_b);

    // A status read agrees: admitted, with the very same token.
    let read = srv.status("show", &ticket_b).await.ok();
    assert_eq!(s(&read, "state"), "admitted");
    assert_eq!(s(&read, "token"), pushed, "the pushed token is the token");
    assert!(read.get("position").is_none_or(Value::is_null));

    // Completing again is a no-op (already completed); completing a waiting ticket is a conflict.
    let again = srv
        .post_empty(&format!(
            "/v1/events/show/tickets/{}/complete",
            s(&a, "ticket")
        ))
        .await
        .ok();
    assert_eq!(again["changed"], json!(false), "{again}");
    let c = srv.join_ok("show", None).await;
    assert_eq!(s(&c, "state"), "waiting");
    srv.post_empty(&format!(
        "/v1/events/show/tickets/{}/complete",
        s(&c, "ticket")
    ))
    .await
    .expect_error(409, "conflict");

    // Completing the second closes its stream with a final event.
    srv.post_empty(&format!("/v1/events/show/tickets/{ticket_b}/complete"))
        .await
        .ok();
    let fin = loop {
        let ev = live.next().await.expect("the final event");
        if ev.event == "final" {
            break ev;
        }
    };
    assert_eq!(s(&fin.data, "state"), "completed");
    assert!(
        live.next().await.is_none(),
        "the stream ends after the final event"
    );
    let info = srv.info("show").await;
    assert_eq!(info.totals.completed, 2);
    assert_eq!(info.totals.admitted, 3, "a, b and then c admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_never_overstate_the_people_ahead() {
    let srv = Server::start().await;
    srv.configure("line", settings(2, TTL_MS)).await;
    let mut tickets = Vec::new();
    for i in 0..12 {
        let t = srv.join_ok("line", Some(&format!("user-{i}"))).await;
        assert_eq!(n(&t, "seq"), i + 1, "sequence numbers follow join order");
        tickets.push(t);
    }
    // Two admitted, ten waiting in join order.
    let check = |views: &[Value]| {
        let mut truly_ahead = 0u64;
        for v in views {
            match s(v, "state") {
                "admitted" => {}
                "waiting" => {
                    let ahead = n(v, "ahead");
                    assert!(
                        ahead <= truly_ahead,
                        "seq {}: shown {ahead} ahead, only {truly_ahead} truly are",
                        n(v, "seq")
                    );
                    assert_eq!(n(v, "position"), ahead + 1);
                    truly_ahead += 1;
                }
                other => panic!("unexpected state {other}: {v}"),
            }
        }
        truly_ahead
    };
    let mut views = Vec::new();
    for t in &tickets {
        views.push(srv.status("line", s(t, "ticket")).await.ok());
    }
    assert_eq!(check(&views), 10);
    let admitted: Vec<_> = views
        .iter()
        .filter(|v| s(v, "state") == "admitted")
        .collect();
    assert_eq!(admitted.len(), 2);
    assert!(
        admitted.iter().all(|v| n(v, "seq") <= 2),
        "the first two are admitted"
    );
    // Positions strictly increase along the line.
    let waiting: Vec<u64> = views
        .iter()
        .filter(|v| s(v, "state") == "waiting")
        .map(|v| n(v, "position"))
        .collect();
    assert!(waiting.windows(2).all(|w| w[0] < w[1]), "{waiting:?}");

    // People leave from the middle and the front moves on: recount.
    for i in [4usize, 7, 0] {
        srv.post_empty(&format!(
            "/v1/events/line/tickets/{}/leave",
            s(&tickets[i], "ticket")
        ))
        .await
        .ok();
    }
    let mut views = Vec::new();
    for (i, t) in tickets.iter().enumerate() {
        if [4usize, 7, 0].contains(&i) {
            let v = srv.status("line", s(t, "ticket")).await.ok();
            assert_eq!(s(&v, "state"), "left");
            continue;
        }
        views.push(srv.status("line", s(t, "ticket")).await.ok());
    }
    assert_eq!(check(&views), 7, "12 joined, 3 left, 2 admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_twice_with_the_same_user_returns_the_same_ticket() {
    let srv = Server::start().await;
    srv.configure("drop", settings(1, TTL_MS)).await;
    let first = srv.join("drop", Some("alice")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The same user again: no second ticket, and the answer does not hand the first ticket's secret (or
    // token) to whoever names the user id.
    let again = srv.join("drop", Some("alice")).await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "an existing ticket is not created"
    );
    assert_eq!(s(&again.json()["error"], "code"), "already_joined");
    let body = String::from_utf8_lossy(&again.body).to_string();
    assert!(
        !body.contains(s(&first.json(), "ticket")),
        "the ticket id is not revealed: {body}"
    );
    let other = srv.join("drop", Some("bob")).await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_ne!(s(&other.json(), "ticket"), s(&first.json(), "ticket"));
    // A waiting user joins again: still one ticket.
    let bob_again = srv.join("drop", Some("bob")).await;
    assert_eq!(bob_again.status, StatusCode::CONFLICT);
    // Anonymous joins always create.
    assert_eq!(srv.join("drop", None).await.status, StatusCode::CREATED);
    assert_eq!(srv.join("drop", None).await.status, StatusCode::CREATED);
    assert_eq!(
        srv.info("drop").await.joined,
        4,
        "two users and two anonymous joins"
    );
    // Once alice's ticket is final, she gets a new one.
    srv.post_empty(&format!(
        "/v1/events/drop/tickets/{}/leave",
        s(&first.json(), "ticket")
    ))
    .await
    .ok();
    let fresh = srv.join("drop", Some("alice")).await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(s(&fresh.json(), "ticket"), s(&first.json(), "ticket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_event_and_waiting_page() {
    let srv = Server::start().await;
    srv.configure("pub", settings(1, TTL_MS)).await;
    srv.join_ok("pub", None).await;
    srv.join_ok("pub", None).await;
    let v = srv.get("/v1/events/pub").await.ok();
    assert_eq!(
        (n(&v, "waiting"), n(&v, "admitted"), n(&v, "capacity")),
        (1, 1, 1),
        "{v}"
    );
    assert_eq!(s(&v, "state"), "open");
    assert!(
        v.get("settings").is_none(),
        "the public view hides the settings: {v}"
    );
    srv.get("/v1/events/nope")
        .await
        .expect_error(404, "unknown_event");
    let page = srv.get("/wait/pub").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/html")
    );
    srv.get("/wait/a:b")
        .await
        .expect_error(400, "invalid_input");
    assert_eq!(srv.get("/dashboard").await.status, StatusCode::OK);
}
