//! The wake-up: with LISTEN a new row is published long before the next poll; without it (poll-only mode,
//! for a transaction-mode pooler) it still arrives, on the poll.

use std::time::{Duration, Instant};

use crate::support::{RunningRelay, connect, enqueue, entries, fresh_db, msg, options, shared_pg};

/// Starts a relay with a 5 s tick, waits until its reader has slowed to long idle sleeps, writes one
/// row and returns how long the row took to reach the stream.
async fn latency_of_one_row(listen: bool) -> Duration {
    let url = fresh_db(shared_pg()).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:wakeup";
    let mut opts = options(
        &url,
        &redis.url(),
        stream,
        if listen { "listen" } else { "poll" },
    );
    opts.listen = listen;
    opts.tick = Duration::from_secs(5);
    // Lease renewals also nudge the reader; keep them rare (every 15 s) so they do not hide the wake-up.
    opts.lease = Duration::from_secs(60);
    let relay = RunningRelay::start(opts);
    // After activity the reader re-polls at 1, 2, 4, … ms, doubling up to the tick: 8.5 s in, it sleeps
    // for seconds.
    tokio::time::sleep(Duration::from_millis(8500)).await;
    let mut db = connect(&url).await;
    let started = Instant::now();
    let id = enqueue(&mut db, &[msg("wake", 1)]).await[0];
    let deadline = started + Duration::from_secs(30);
    loop {
        let got = entries(&redis.url(), stream)
            .await
            .expect("read the stream");
        if got.iter().any(|e| e.outbox_id == id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "row {id} never arrived (listen = {listen})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    relay.stop().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_wakes_the_relay_and_poll_only_mode_still_delivers() {
    let (woken, polled) = tokio::join!(latency_of_one_row(true), latency_of_one_row(false));
    eprintln!("one row with LISTEN: {woken:?}; poll only: {polled:?}");
    assert!(
        woken < Duration::from_secs(2),
        "with LISTEN the row should be published on the wake-up, not on the 5 s tick: took {woken:?}"
    );
}
