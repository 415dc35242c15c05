//! `ops::prune` deletes sent rows older than the retention and dead rows older than the dead-letter
//! retention, in short batches; newer rows and pending rows stay.

use std::collections::BTreeSet;
use std::time::Duration;

use dispatcher_outbox::OutboxError;
use dispatcher_outbox::ops::{self, PruneOptions, Pruned};

use crate::support::{connect, fresh_db, shared_pg};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_old_settled_rows_in_batches() {
    let url = fresh_db(shared_pg()).await;
    let db = connect(&url).await;
    // Interleaved by id: kind = i % 5.
    //   0: sent 10 days ago   -> pruned (retention 7 d)
    //   1: dead 40 days ago   -> pruned (DLQ retention 30 d)
    //   2: sent 1 day ago     -> stays
    //   3: dead 10 days ago   -> stays (older than the sent retention, not the dead one)
    //   4: pending 100 days   -> stays (never pruned)
    db.batch_execute(
        "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload, status, last_error, occurred_at)
         SELECT 'T', 'agg-' || (i % 7), jsonb_build_object('i', i),
                (ARRAY['sent', 'dead', 'sent', 'dead', 'pending'])[i % 5 + 1],
                CASE WHEN i % 5 IN (1, 3) THEN 'boom' END,
                now() - (ARRAY[10, 40, 1, 10, 100])[i % 5 + 1] * interval '1 day'
         FROM generate_series(0, 124) AS i",
    )
    .await
    .expect("insert rows");
    let kinds = |sql: &'static str| {
        let db = &db;
        async move {
            db.query(sql, &[])
                .await
                .expect("query")
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect::<BTreeSet<i64>>()
        }
    };
    let all = kinds("SELECT id FROM dispatcher.outbox").await;
    let keep =
        kinds("SELECT id FROM dispatcher.outbox WHERE (payload->>'i')::int % 5 IN (2, 3, 4)").await;
    assert_eq!(all.len(), 125);
    assert_eq!(keep.len(), 75);

    let o = PruneOptions {
        sent_older_than: 7 * DAY,
        dead_older_than: 30 * DAY,
        batch: 7,
        dry_run: true,
    };
    let mut calls = 0;
    let dry = ops::prune(&db, &o, &mut |_| calls += 1)
        .await
        .expect("dry run");
    assert_eq!((dry.sent, dry.dead), (25, 25));
    assert_eq!(calls, 0, "a dry run has no batches");
    assert_eq!(
        kinds("SELECT id FROM dispatcher.outbox").await,
        all,
        "a dry run deletes nothing"
    );

    let mut seen: Vec<Pruned> = Vec::new();
    let done = ops::prune(
        &db,
        &PruneOptions {
            dry_run: false,
            ..o
        },
        &mut |p| seen.push(*p),
    )
    .await
    .expect("prune");
    assert_eq!((done.sent, done.dead), (25, 25));
    assert_eq!(done.batches, 8, "50 rows in batches of 7");
    assert_eq!(seen.len(), 8, "progress after every batch");
    assert!(
        seen.windows(2)
            .all(|w| w[0].sent + w[0].dead < w[1].sent + w[1].dead),
        "progress grows: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&done));
    assert!(
        seen[..7]
            .iter()
            .enumerate()
            .all(|(i, p)| p.sent + p.dead == 7 * (i as u64 + 1))
    );
    assert_eq!(kinds("SELECT id FROM dispatcher.outbox").await, keep);

    // Nothing left to prune: a second run deletes nothing.
    let again = ops::prune(
        &db,
        &PruneOptions {
            dry_run: false,
            ..o
        },
        &mut |_| {},
    )
    .await
    .expect("prune again");
    assert_eq!(again, Pruned::default());

    // A batch size out of range is refused and changes nothing.
    let bad = ops::prune(
        &db,
        &PruneOptions {
            batch: 0,
            dry_run: false,
            ..o
        },
        &mut |_| {},
    )
    .await;
    assert!(matches!(bad, Err(OutboxError::Invalid(_))), "{bad:?}");
    assert_eq!(kinds("SELECT id FROM dispatcher.outbox").await, keep);
}
