//! Transactions that commit out of id order, and a transaction left open across many relay polls: the
//! relay finds rows by the transaction that wrote them, so a late commit is still delivered (the gap of
//! id-watermark relays) and an open transaction holds nobody else back.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{
    RunningRelay, all_settled_and_published, check_stream_against_rows, connect, enqueue, entries,
    eventually, fresh_db, msg, options, rows, shared_pg,
};

/// Waits until every id of `ids` is in the stream.
async fn wait_in_stream(redis_url: &str, stream: &str, ids: &[i64], what: &str) {
    eventually(what, || async {
        let got = entries(redis_url, stream).await.ok()?;
        let have: HashSet<i64> = got.iter().map(|e| e.outbox_id).collect();
        ids.iter().all(|id| have.contains(id)).then_some(())
    })
    .await
}

async fn in_stream(redis_url: &str, stream: &str, id: i64) -> bool {
    entries(redis_url, stream)
        .await
        .expect("read the stream")
        .iter()
        .any(|e| e.outbox_id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_after_rows_with_higher_ids_is_still_delivered() {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:late";
    let relay = RunningRelay::start(options(&url, &redis.url(), stream, "late"));

    // Transaction A writes first (lower ids) and stays open. It writes more rows than a page (the
    // relay's batch is 200), so its late window is read in pages.
    let mut a = connect(&url).await;
    let tx_a = a.transaction().await.expect("begin A");
    let a_rows: Vec<_> = (0..450)
        .map(|i| msg(&format!("late-a-{}", i % 9), i))
        .collect();
    let a_ids = dispatcher_outbox::enqueue(&tx_a, &a_rows)
        .await
        .expect("insert in A");

    // Others write and commit meanwhile; they are delivered while A is open.
    let mut b = connect(&url).await;
    let mut b_ids = Vec::new();
    for i in 0..5 {
        b_ids.extend(enqueue(&mut b, &[msg(&format!("b-{i}"), 1), msg("b", i)]).await);
    }
    assert!(a_ids[449] < b_ids[0], "A's rows have the lower ids");
    wait_in_stream(
        &redis.url(),
        stream,
        &b_ids,
        "rows committed after A's insert",
    )
    .await;
    // A few more polls with A still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_stream(&redis.url(), stream, a_ids[0]).await,
        "an uncommitted row is not published"
    );

    tx_a.commit().await.expect("commit A");
    wait_in_stream(&redis.url(), stream, &a_ids, "A's rows, committed late").await;

    let db = connect(&url).await;
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert_eq!(state.len(), 460);
    assert!(state.values().all(|r| r.2 == "sent"), "{state:?}");
    assert_eq!(check_stream_against_rows(&got, &state), 0, "no duplicates");
    assert_eq!(got.len(), state.len());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_open_transaction_holds_nobody_back_and_its_rows_arrive_when_it_commits() {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:long";
    let relay = RunningRelay::start(options(&url, &redis.url(), stream, "long"));

    // A transaction that holds back the xmin horizon (a repeatable-read snapshot, no writes) …
    let mut holder = connect(&url).await;
    let snap = holder
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .expect("begin the snapshot holder");
    snap.query_one("SELECT count(*) FROM dispatcher.outbox", &[])
        .await
        .expect("take the snapshot");

    // … and a writer that stays open across many relay polls (tick 50 ms).
    let mut long = connect(&url).await;
    let tx_long = long
        .transaction()
        .await
        .expect("begin the long transaction");
    let mut long_ids = dispatcher_outbox::enqueue(&tx_long, &[msg("long", 1)])
        .await
        .expect("insert in the long transaction");

    let mut other = connect(&url).await;
    for round in 0..5 {
        let ids = enqueue(
            &mut other,
            &(0..20)
                .map(|i| msg(&format!("o-{i}"), round))
                .collect::<Vec<_>>(),
        )
        .await;
        wait_in_stream(
            &redis.url(),
            stream,
            &ids,
            "rows committed while a transaction is open",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!in_stream(&redis.url(), stream, long_ids[0]).await);

    // The long transaction writes again inside a savepoint it keeps, and once more inside one it rolls
    // back, then commits: the two kept rows arrive, in order; the rolled-back one never does.
    let mut tx_long = tx_long;
    let kept = tx_long.savepoint("kept").await.expect("savepoint");
    long_ids.extend(
        dispatcher_outbox::enqueue(&kept, &[msg("long", 2)])
            .await
            .expect("insert in a savepoint"),
    );
    kept.commit().await.expect("release the savepoint");
    let dropped = tx_long.savepoint("dropped").await.expect("savepoint");
    let rolled_back = dispatcher_outbox::enqueue(&dropped, &[msg("long", 3)])
        .await
        .expect("insert in a savepoint")[0];
    dropped.rollback().await.expect("roll back the savepoint");
    tx_long.commit().await.expect("commit the long transaction");
    wait_in_stream(
        &redis.url(),
        stream,
        &long_ids,
        "the long transaction's rows",
    )
    .await;
    snap.commit().await.expect("end the snapshot holder");

    let db = connect(&url).await;
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert_eq!(state.len(), 102);
    assert!(!state.contains_key(&rolled_back));
    assert!(got.iter().all(|e| e.outbox_id != rolled_back));
    assert!(state.values().all(|r| r.2 == "sent"), "{state:?}");
    assert_eq!(check_stream_against_rows(&got, &state), 0, "no duplicates");
    relay.stop().await;
}
