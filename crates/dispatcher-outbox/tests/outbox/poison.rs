//! A poison row (a stream entry over the size limit) goes dead at once with its reason, and holds back
//! neither the later rows of its own aggregate nor anybody else.

use crate::support::{
    RunningRelay, all_settled_and_published, check_stream_against_rows, connect, enqueue, fresh_db,
    msg, options, rows, shared_pg,
};
use dispatcher_outbox::OutboxMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_row_goes_dead_at_once_and_holds_nothing_back() {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:poison";
    let mut opts = options(&url, &redis.url(), stream, "poison");
    opts.max_entry_bytes = 2048;
    opts.max_attempts = 5;
    let relay = RunningRelay::start(opts);

    let big = OutboxMessage::new(
        "TestEvent",
        "p",
        format!(r#"{{"blob":"{}"}}"#, "x".repeat(3000)),
    );
    let mut db = connect(&url).await;
    let ids = enqueue(
        &mut db,
        &[
            msg("p", 0),
            big,
            msg("p", 2),
            msg("q", 0),
            msg("q", 1),
            msg("r", 0),
        ],
    )
    .await;
    let poison = ids[1];
    // A later row of the same aggregate, in a later transaction.
    let later = enqueue(&mut db, &[msg("p", 3)]).await[0];

    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    let (_, _, status, attempts, err) = &state[&poison];
    assert_eq!(status, "dead");
    assert_eq!(*attempts, 1, "dead at its first attempt, not after retries");
    let err = err.as_deref().expect("a dead row has its reason");
    assert!(
        err.contains("poison") && err.contains("2048"),
        "reason names the limit: {err}"
    );
    for id in ids.iter().chain([&later]).filter(|id| **id != poison) {
        assert_eq!(state[id].2, "sent", "row {id}");
    }
    assert!(
        got.iter().all(|e| e.outbox_id != poison),
        "poison not published"
    );
    assert_eq!(check_stream_against_rows(&got, &state), 0);
    let p_order: Vec<i64> = got
        .iter()
        .filter(|e| e.aggregate_id == "p")
        .map(|e| e.outbox_id)
        .collect();
    assert_eq!(p_order, vec![ids[0], ids[2], later]);
    relay.stop().await;
}
