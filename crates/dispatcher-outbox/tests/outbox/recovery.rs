//! A relay that crashes while a row waits for its retry: the relay that takes over retries the row from
//! where it stood, once, keeps the aggregate's order, and never publishes a row that went dead.

use std::time::Duration;

use dispatcher_outbox::Backoff;

use crate::support::{
    CrashableRelay, RunningRelay, all_settled_and_published, connect, enqueue, entries, eventually,
    fresh_db, msg, options, rows, shared_pg,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_waiting_for_a_retry_when_its_relay_crashed_is_retried_once_and_never_published_dead()
{
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:recovery";
    redis.command(&["SET", stream, "x"]).expect("SET");
    let db = connect(&url).await;

    // The first relay renews (and stores checkpoints) only every 2.5 s; it crashes right after the row's
    // first failure is settled, before its checkpoint is stored.
    let mut opts = options(&url, &redis.url(), stream, "crashing");
    opts.max_attempts = 3;
    opts.retry = Backoff {
        base: Duration::from_millis(600),
        max: Duration::from_millis(600),
    };
    opts.lease = Duration::from_secs(10);
    let first = CrashableRelay::start(opts.clone());
    let mut w = connect(&url).await;
    let a1 = enqueue(&mut w, &[msg("a", 1)]).await[0];
    eventually("the row's first failure settled", || async {
        (rows(&db).await[&a1].3 >= 1).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| first.crash());
    let checkpoints: i64 = db
        .query_one(
            "SELECT count(*) FROM dispatcher.outbox_lease WHERE checkpoint IS NOT NULL",
            &[],
        )
        .await
        .expect("read checkpoints")
        .get(0);
    assert_eq!(
        checkpoints, 0,
        "precondition: the crash came before any checkpoint was stored"
    );
    // Its leases would expire in 10 s; let them expire now.
    db.batch_execute("UPDATE dispatcher.outbox_lease SET expires_at = now() - interval '1 second'")
        .await
        .expect("expire the crashed relay's leases");

    // The next relay retries the row until it is dead.
    opts.owner = "successor".into();
    opts.lease = Duration::from_secs(1);
    let second = RunningRelay::start(opts);
    let state = eventually("the row dead after its attempts", || async {
        let state = rows(&db).await;
        (state[&a1].2 == "dead").then_some(state)
    })
    .await;
    assert_eq!(
        state[&a1].3, 3,
        "attempts counted once each: {:?}",
        state[&a1]
    );

    // Redis accepts entries again; later rows of the aggregate and of others go out, the dead row does not.
    redis.command(&["DEL", stream]).expect("DEL");
    let later = enqueue(&mut w, &[msg("a", 2), msg("b", 1)]).await;
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert_eq!(state[&a1].2, "dead");
    assert_eq!(
        state[&a1].3, 3,
        "no attempt after the row went dead: {:?}",
        state[&a1]
    );
    for id in &later {
        assert_eq!(state[id].2, "sent");
    }
    let published: Vec<i64> = got.iter().map(|e| e.outbox_id).collect();
    assert!(
        !published.contains(&a1),
        "a dead row was published: {published:?}"
    );
    assert_eq!(published.len(), 2, "{published:?}");
    // Nothing more arrives, and nothing is left waiting for a retry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = entries(&redis.url(), stream).await.expect("xrange");
    assert_eq!(got.len(), 2, "{got:?}");
    let parked: i64 = db
        .query_one("SELECT count(*) FROM dispatcher.outbox_retry", &[])
        .await
        .expect("count retry list")
        .get(0);
    assert_eq!(parked, 0, "a dead row is not waiting for a retry");
    second.stop().await;
}
