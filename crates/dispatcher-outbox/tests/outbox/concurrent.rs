//! Several relays share one database and one stream while producers write: every row is published
//! exactly once (nothing crashes here), in order per aggregate, and the partitions are spread over the
//! relays.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{
    RunningRelay, all_settled_and_published, check_stream_against_rows, connect, enqueue, fresh_db,
    msg, options, rows, shared_pg,
};

const RELAYS: usize = 3;
const PRODUCERS: usize = 4;
const AGGREGATES: usize = 60;
const TXS_PER_PRODUCER: usize = 75;
const ROWS_PER_TX: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_publish_every_row_once_in_order_per_aggregate() {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:concurrent";
    let relays: Vec<RunningRelay> = (0..RELAYS)
        .map(|i| RunningRelay::start(options(&url, &redis.url(), stream, &format!("relay-{i}"))))
        .collect();

    // Who holds live leases, sampled all along.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let url = url.clone();
        tokio::spawn(async move {
            let db = connect(&url).await;
            let mut owners: BTreeSet<String> = BTreeSet::new();
            loop {
                for r in db
                    .query(
                        "SELECT DISTINCT owner FROM dispatcher.outbox_lease
                         WHERE owner IS NOT NULL AND expires_at > now()",
                        &[],
                    )
                    .await
                    .expect("read leases")
                {
                    owners.insert(r.get(0));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = done_rx.changed() => return owners,
                }
            }
        })
    };

    // Each producer owns its aggregates and writes them in order, a few rows per transaction.
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut db = connect(&url).await;
                let mine: Vec<usize> = (0..AGGREGATES).filter(|a| a % PRODUCERS == p).collect();
                let mut seq = vec![0usize; AGGREGATES];
                let mut k = 0usize;
                for _ in 0..TXS_PER_PRODUCER {
                    let batch: Vec<_> = (0..ROWS_PER_TX)
                        .map(|_| {
                            let a = mine[k % mine.len()];
                            k += 7;
                            seq[a] += 1;
                            msg(&format!("agg-{a}"), seq[a])
                        })
                        .collect();
                    enqueue(&mut db, &batch).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    for p in producers {
        p.await.expect("producer");
    }
    let total = PRODUCERS * TXS_PER_PRODUCER * ROWS_PER_TX;

    let db = connect(&url).await;
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert_eq!(state.len(), total);
    for (id, (_, _, status, attempts, err)) in &state {
        assert_eq!(status, "sent", "row {id}");
        assert_eq!(*attempts, 0, "row {id} never failed");
        assert!(err.is_none(), "row {id}: {err:?}");
    }
    let duplicates = check_stream_against_rows(&got, &state);
    assert_eq!(duplicates, 0, "no relay crashed: no row is published twice");
    assert_eq!(got.len(), total);

    let _ = done_tx.send(true);
    let owners = sampler.await.expect("sampler");
    assert!(
        owners.len() > 1,
        "the partitions were spread over the relays at some point; owners seen: {owners:?}"
    );

    for r in relays {
        assert!(!r.is_finished(), "a relay ended on its own");
        r.stop().await;
    }
    // A clean stop releases the leases and deregisters the relays.
    let live: i64 = db
        .query_one(
            "SELECT count(*) FROM dispatcher.outbox_lease WHERE expires_at > now()",
            &[],
        )
        .await
        .expect("count leases")
        .get(0);
    assert_eq!(live, 0, "stopped relays hold no lease");
    let registered: i64 = db
        .query_one("SELECT count(*) FROM dispatcher.outbox_relay", &[])
        .await
        .expect("count relays")
        .get(0);
    assert_eq!(registered, 0, "stopped relays deregistered");
}
