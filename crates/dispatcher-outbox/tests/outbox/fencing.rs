//! Fencing: a relay whose partition lease was taken over can neither mark rows sent or failed nor store
//! a checkpoint, and epochs only go forward.

use std::time::{Duration, SystemTime};

use dispatcher_outbox::OutboxError;
use dispatcher_outbox::db::{self, Failure, Settlement};

use crate::support::{connect, enqueue, fresh_db, msg, rows, shared_pg};

const LEASE: Duration = Duration::from_secs(30);

fn sent(id: i64) -> Settlement {
    Settlement {
        sent: vec![(id, SystemTime::now())],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_lease_was_taken_over_cannot_settle_rows() {
    let url = fresh_db(shared_pg()).await;
    let mut c = connect(&url).await;

    let a = db::acquire(&c, "relay-a", 1, 32, LEASE)
        .await
        .expect("A acquires");
    assert_eq!(a.len(), 32);
    assert!(a.iter().all(|h| h.epoch == 1));
    // Nobody else gets a live lease.
    let none = db::acquire(&c, "relay-b", 2, 32, LEASE)
        .await
        .expect("B tries");
    assert!(none.is_empty(), "live leases are not taken: {none:?}");

    let id = enqueue(&mut c, &[msg("fenced", 1)]).await[0];
    let before = rows(&c).await;

    // A's leases expire (a long GC pause, a partition); B takes them over.
    c.batch_execute("UPDATE dispatcher.outbox_lease SET expires_at = now() - interval '1 second'")
        .await
        .expect("expire A's leases");
    let b = db::acquire(&c, "relay-b", 2, 32, LEASE)
        .await
        .expect("B acquires");
    assert_eq!(b.len(), 32);
    assert!(
        b.iter().all(|h| h.epoch == 2),
        "a takeover moves the epoch forward"
    );

    // A wakes up and tries to settle: refused, nothing changes.
    match db::settle(&c, "relay-a", 1, 32, &sent(id)).await {
        Err(OutboxError::LeaseLost(_)) => {}
        other => panic!("A settled after losing its lease: {other:?}"),
    }
    let failed = Settlement {
        failed: vec![Failure {
            id,
            attempts: 1,
            error: "stale".into(),
            retry_at: None,
        }],
        ..Default::default()
    };
    match db::settle(&c, "relay-a", 1, 32, &failed).await {
        Err(OutboxError::LeaseLost(_)) => {}
        other => panic!("A marked a row dead after losing its lease: {other:?}"),
    }
    match db::renew(&c, "relay-a", 1, LEASE, &[(0, Some("5:5:".into()))]).await {
        Err(OutboxError::LeaseLost(_)) => {}
        other => panic!("A renewed a lease it lost: {other:?}"),
    }
    assert_eq!(rows(&c).await, before, "the row is untouched");
    let checkpoint: Option<String> = c
        .query_one(
            "SELECT checkpoint FROM dispatcher.outbox_lease WHERE partition = 0",
            &[],
        )
        .await
        .expect("read checkpoint")
        .get(0);
    assert_eq!(checkpoint, None, "A stored no checkpoint");
    // The same owner with a stale token (an earlier session of the same process) is fenced too.
    match db::settle(&c, "relay-b", 1, 32, &sent(id)).await {
        Err(OutboxError::LeaseLost(_)) => {}
        other => panic!("a stale token settled: {other:?}"),
    }

    // One partition taken from B: B holds 31 of its 32 and is fenced as a whole.
    let p = b[7].partition;
    c.execute(
        "UPDATE dispatcher.outbox_lease SET expires_at = now() - interval '1 second' WHERE partition = $1",
        &[&p],
    )
    .await
    .expect("expire one lease");
    let c_held = db::acquire(&c, "relay-c", 3, 1, LEASE)
        .await
        .expect("C acquires");
    assert_eq!(c_held.len(), 1);
    assert_eq!((c_held[0].partition, c_held[0].epoch), (p, 3));
    match db::settle(&c, "relay-b", 2, 32, &sent(id)).await {
        Err(OutboxError::LeaseLost(msg)) => assert!(msg.contains("31"), "{msg}"),
        other => panic!("B settled while holding 31 of 32 partitions: {other:?}"),
    }
    assert_eq!(rows(&c).await, before, "the row is still untouched");

    // The current holders settle fine.
    db::settle(&c, "relay-b", 2, 31, &sent(id))
        .await
        .expect("B settles with the partitions it holds");
    assert_eq!(rows(&c).await[&id].2, "sent");
    let epochs: Vec<i64> = c
        .query(
            "SELECT epoch FROM dispatcher.outbox_lease ORDER BY partition",
            &[],
        )
        .await
        .expect("epochs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(epochs.iter().all(|e| *e >= 2), "{epochs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_whose_leases_are_taken_stops_publishing_until_they_come_back() {
    use crate::support::{RunningRelay, all_settled_and_published, entries, options};

    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:stolen";
    let relay = RunningRelay::start(options(&url, &redis.url(), stream, "victim"));
    let mut c = connect(&url).await;
    let first = enqueue(&mut c, &[msg("s", 1)]).await[0];
    // Published and marked sent (a takeover between the two would rightly publish it again).
    all_settled_and_published(&c, &redis.url(), stream).await;

    // Another owner takes every partition (as after a long pause of the relay).
    c.batch_execute(
        "UPDATE dispatcher.outbox_lease
         SET owner = 'thief', token = 42, epoch = epoch + 1, expires_at = now() + interval '1 hour'",
    )
    .await
    .expect("take the leases");
    // Within a lease (1 s) the relay notices at a renewal and stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM dispatcher.outbox_lease WHERE owner = 'victim'",
            &[],
        )
        .await
        .expect("count leases")
        .get(0);
    assert_eq!(
        held, 0,
        "the relay took no partition back from a live lease"
    );
    let ids = enqueue(&mut c, &[msg("s", 2), msg("t", 1)]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = entries(&redis.url(), stream).await.expect("xrange");
    assert_eq!(
        got.iter().map(|e| e.outbox_id).collect::<Vec<_>>(),
        vec![first],
        "rows of partitions another owner holds are not published"
    );
    let state = rows(&c).await;
    assert!(ids.iter().all(|id| state[id].2 == "pending"));

    // The other owner lets go: the relay takes the partitions back and publishes.
    c.batch_execute(
        "UPDATE dispatcher.outbox_lease SET owner = NULL, expires_at = '-infinity' WHERE owner = 'thief'",
    )
    .await
    .expect("release the leases");
    let got = all_settled_and_published(&c, &redis.url(), stream).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(!relay.is_finished());
    relay.stop().await;
}
