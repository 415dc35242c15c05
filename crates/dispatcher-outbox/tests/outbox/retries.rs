//! Rows Redis refuses retry with backoff, hold back only the later rows of their own aggregate, go dead
//! with their last error after the maximum attempts, and are delivered again by `ops::replay`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use dispatcher_outbox::Backoff;
use dispatcher_outbox::ops::{self, ReplayFilter};

use crate::support::{
    RowState, RunningRelay, all_settled_and_published, check_stream_against_rows, connect, enqueue,
    entries, eventually, fresh_db, msg, options, rows, shared_pg,
};

/// Checks one consistent view of the table: a row has been tried (attempts > 0) only if every earlier
/// row of its aggregate is dead.
fn assert_tried_in_order(state: &BTreeMap<i64, RowState>) {
    let mut by_aggregate: BTreeMap<&str, Vec<(i64, &RowState)>> = BTreeMap::new();
    for (id, r) in state {
        by_aggregate.entry(r.1.as_str()).or_default().push((*id, r));
    }
    for (agg, rs) in by_aggregate {
        for (k, (id, r)) in rs.iter().enumerate() {
            if r.3 > 0 {
                for (earlier, e) in &rs[..k] {
                    assert_eq!(
                        e.2, "dead",
                        "aggregate {agg}: row {id} was tried while earlier row {earlier} was {} with {} attempts",
                        e.2, e.3
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_retry_then_go_dead_and_replay_delivers_them() {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:retries";
    // Every XADD now fails for the row: the key holds a string.
    redis.command(&["SET", stream, "x"]).expect("SET");
    let mut opts = options(&url, &redis.url(), stream, "retries");
    opts.max_attempts = 3;
    let relay = RunningRelay::start(opts);

    // Four transactions a little apart, each with a row of every aggregate: later rows arrive while the
    // earlier rows of their aggregate are waiting for a retry.
    let mut db = connect(&url).await;
    let mut ids = Vec::new();
    for t in 0..4 {
        let batch: Vec<_> = (0..4).map(|a| msg(&format!("agg-{a}"), t)).collect();
        ids.extend(enqueue(&mut db, &batch).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // Until every row is dead, sample the table: rows of one aggregate are tried one after another.
    let state = eventually("every row dead after its attempts", || async {
        let state = rows(&db).await;
        assert_tried_in_order(&state);
        state.values().all(|r| r.2 != "pending").then_some(state)
    })
    .await;
    for id in &ids {
        let (_, _, status, attempts, err) = &state[id];
        assert_eq!(status, "dead", "row {id}");
        assert_eq!(*attempts, 3, "row {id} tried max_attempts times");
        let err = err.as_deref().unwrap_or_default();
        assert!(
            err.contains("WRONGTYPE") && err.contains("after 3 attempts"),
            "row {id}: {err}"
        );
    }
    let parked: i64 = db
        .query_one("SELECT count(*) FROM dispatcher.outbox_retry", &[])
        .await
        .expect("count retry list")
        .get(0);
    assert_eq!(parked, 0, "dead rows leave the retry list");
    assert_eq!(
        redis
            .command(&["GET", stream])
            .expect("GET")
            .as_text()
            .as_deref(),
        Some("x"),
        "nothing was written to the key"
    );

    // A dry run counts and changes nothing.
    let dry = ReplayFilter {
        error_contains: Some("wrongtype".into()),
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(ops::replay(&mut db, &dry).await.expect("dry run"), 16);
    assert_eq!(rows(&db).await, state, "a dry run changes nothing");
    let none = ReplayFilter {
        error_contains: Some("no such error".into()),
        ..Default::default()
    };
    assert_eq!(ops::replay(&mut db, &none).await.expect("no match"), 0);
    assert_eq!(
        rows(&db).await,
        state,
        "a replay matching nothing changes nothing"
    );

    // Redis accepts entries again. Replaying one id delivers only that row (the first of its aggregate,
    // so that the stream stays in order per aggregate once the others follow).
    redis.command(&["DEL", stream]).expect("DEL");
    let one = ids[1];
    let by_id = ReplayFilter {
        ids: vec![one],
        ..Default::default()
    };
    assert_eq!(ops::replay(&mut db, &by_id).await.expect("replay one"), 1);
    eventually("the replayed row in the stream", || async {
        let got = entries(&redis.url(), stream).await.ok()?;
        got.iter().any(|e| e.outbox_id == one).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_one = rows(&db).await;
    for (id, r) in &after_one {
        if *id == one {
            assert_eq!(
                (r.2.as_str(), r.3, r.4.as_deref()),
                ("sent", 0, None),
                "replayed row"
            );
        } else {
            assert_eq!(r.2, "dead", "row {id} was not replayed");
        }
    }
    assert_eq!(
        entries(&redis.url(), stream).await.expect("xrange").len(),
        1
    );

    // Replaying by error text delivers the rest.
    let by_error = ReplayFilter {
        error_contains: Some("WRONGTYPE".into()),
        ..Default::default()
    };
    assert_eq!(ops::replay(&mut db, &by_error).await.expect("replay"), 15);
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert!(
        state.values().all(|r| r.2 == "sent" && r.3 == 0),
        "{state:?}"
    );
    assert_eq!(check_stream_against_rows(&got, &state), 0);
    let distinct: HashSet<i64> = got.iter().map(|e| e.outbox_id).collect();
    assert_eq!(distinct.len(), 16);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_waiting_for_its_retry_holds_back_only_later_rows_of_its_aggregate() {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:holdback";
    redis.command(&["SET", stream, "x"]).expect("SET");
    let mut opts = options(&url, &redis.url(), stream, "holdback");
    // Retries 1 to 2 s apart: long enough to see who goes first.
    opts.retry = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(2),
    };
    opts.max_attempts = 50;
    let relay = RunningRelay::start(opts);

    let mut db = connect(&url).await;
    let first = enqueue(&mut db, &[msg("a", 0)]).await[0];
    eventually("the first row failed once", || async {
        let state = rows(&db).await;
        (state[&first].3 >= 1).then_some(())
    })
    .await;

    // Redis accepts entries again; the first row waits for its retry. A later row of its aggregate
    // must wait behind it; a row of another aggregate goes at once.
    redis.command(&["DEL", stream]).expect("DEL");
    let later = enqueue(&mut db, &[msg("a", 1), msg("b", 0)]).await;
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let order: Vec<i64> = got.iter().map(|e| e.outbox_id).collect();
    let pos = |id: i64| order.iter().position(|x| *x == id).expect("in the stream");
    assert!(
        pos(first) < pos(later[0]),
        "a later row of the aggregate went before the row it waits for: {order:?}"
    );
    assert!(
        pos(later[1]) < pos(first),
        "a row of another aggregate waited for the retry: {order:?}"
    );
    let state = rows(&db).await;
    assert!(state[&first].3 >= 1);
    assert_eq!(
        state[&later[0]].3, 0,
        "the held-back row was never tried while the key was bad"
    );
    assert_eq!(state[&later[1]].3, 0);
    assert!(state.values().all(|r| r.2 == "sent"), "{state:?}");
    assert_eq!(check_stream_against_rows(&got, &state), 0);
    relay.stop().await;
}
