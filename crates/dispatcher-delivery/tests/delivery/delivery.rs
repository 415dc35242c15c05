//! Delivery end to end in one process (docs/guarantees.md#push-delivery): a leader and two consumers over
//! real WebSockets and a real Redis. Every message's handler runs once and its result is recorded once; a
//! retry is redelivered; a rejected message and one out of attempts go to the dead letters with their reason;
//! a delivery past its ack timeout is redelivered but its handler does not run twice; a consumer shut down
//! mid-run hands its messages to the other and none is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dispatcher_delivery::consumer::Outcome;
use dispatcher_wire::frame::MessageId;

use crate::support::{
    DEADLINE, Log, RunningConsumer, RunningLeader, SECRET, Setup, Step, TestHandler,
    consumer_options, leader_options, start_consumer, start_leader, wait_until,
};

/// Two consumers sharing `log`, the first behaving as `a`, the second as `b`.
async fn two_consumers(
    s: &Setup,
    log: &Arc<Log>,
    a: crate::support::Behaviour,
    b: crate::support::Behaviour,
) -> (RunningConsumer, RunningConsumer) {
    let ca = start_consumer(
        s,
        consumer_options("c-a", SECRET),
        TestHandler::new("c-a", log.clone(), a),
    )
    .await;
    let cb = start_consumer(
        s,
        consumer_options("c-b", SECRET),
        TestHandler::new("c-b", log.clone(), b),
    )
    .await;
    (ca, cb)
}

fn ok() -> crate::support::Behaviour {
    Arc::new(|m, _| Step::done(m))
}

/// Waits until every message in `ids` has a result and nothing is pending any more.
async fn wait_settled(s: &Setup, ids: &[(u16, MessageId)]) {
    wait_until(DEADLINE, "every message has a result", || async {
        s.done_count(ids).await == ids.len()
    })
    .await;
    wait_until(DEADLINE, "nothing is pending", || async {
        s.pending_total().await == 0
    })
    .await;
}

async fn stop_all(leader: RunningLeader, consumers: Vec<RunningConsumer>) {
    leader.stop().await;
    for c in consumers {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_messages_over_four_partitions_run_and_are_recorded_exactly_once() {
    let s = Setup::new(4).await;
    let log = Arc::new(Log::default());
    // Half before the leader starts (read from the group's start), half while it runs.
    let mut ids = s.publish_many(1000).await;
    let (ca, cb) = two_consumers(&s, &log, ok(), ok()).await;
    let leader = start_leader(
        &s,
        leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET),
    )
    .await;
    ids.extend(s.publish_many(1000).await);
    let distinct: HashSet<(u16, MessageId)> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 2000);

    wait_until(DEADLINE, "2,000 handler runs", || async {
        log.total_runs() >= 2000
    })
    .await;
    wait_settled(&s, &ids).await;

    let runs = log.runs();
    assert_eq!(log.ran_twice(), vec![], "a handler ran twice");
    assert_eq!(
        runs.keys().copied().collect::<HashSet<_>>(),
        distinct,
        "the handlers ran for exactly the published messages"
    );
    for ((p, id), result) in ids.iter().zip(s.results(&ids).await) {
        assert_eq!(
            result,
            Some(format!("ok {id}").into_bytes()),
            "partition {p}, {id}: its own result, recorded once"
        );
    }
    let by: HashMap<String, usize> = runs.values().flatten().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.consumer.clone()).or_default() += 1;
        m
    });
    assert!(
        by.get("c-a").copied().unwrap_or(0) > 0 && by.get("c-b").copied().unwrap_or(0) > 0,
        "both consumers got work: {by:?}"
    );
    assert!(
        runs.values().flatten().all(|r| r.attempt == 1),
        "nothing needed a second attempt"
    );
    let st = &leader.stats;
    assert_eq!(st.acked.load(Ordering::SeqCst), 2000);
    assert_eq!(st.redelivered.load(Ordering::SeqCst), 0);
    assert_eq!(st.dead.load(Ordering::SeqCst), 0);
    for p in 0..4 {
        assert!(s.dead_letters(p).await.is_empty());
    }
    stop_all(leader, vec![ca, cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_redelivered_to_the_other_consumer_and_done_on_attempt_two() {
    let s = Setup::new(2).await;
    let log = Arc::new(Log::default());
    let retry_first: crate::support::Behaviour = Arc::new(|m, n| {
        if n == 1 {
            Step {
                sleep: Duration::ZERO,
                outcome: Outcome::Retry("not yet".into()),
            }
        } else {
            Step::done(m)
        }
    });
    let (ca, cb) = two_consumers(&s, &log, retry_first.clone(), retry_first).await;
    let leader = start_leader(
        &s,
        leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET),
    )
    .await;
    let ids = s.publish_many(20).await;
    wait_settled(&s, &ids).await;

    for (p, id) in &ids {
        let runs = log.runs_of(*p, *id);
        assert_eq!(
            runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            vec![1, 2],
            "{p}/{id}: run on attempt 1 (retry), then on attempt 2 (done): {runs:?}"
        );
        assert_ne!(
            runs[0].consumer, runs[1].consumer,
            "{p}/{id}: the redelivery avoids the consumer that asked for the retry"
        );
        assert_eq!(
            s.store.result(*p, *id).await.expect("result"),
            Some(format!("ok {id}").into_bytes())
        );
    }
    assert!(leader.stats.redelivered.load(Ordering::SeqCst) >= 20);
    for p in 0..2 {
        assert!(
            s.dead_letters(p).await.is_empty(),
            "a retried message was dead-lettered"
        );
    }
    stop_all(leader, vec![ca, cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_goes_to_the_dead_letters_with_its_reason_and_is_acked() {
    let s = Setup::new(2).await;
    let log = Arc::new(Log::default());
    let reject_poison: crate::support::Behaviour = Arc::new(|m, _| {
        if m.body.starts_with(b"poison") {
            Step {
                sleep: Duration::ZERO,
                outcome: Outcome::Reject(format!(
                    "cannot parse {}",
                    String::from_utf8_lossy(&m.body)
                )),
            }
        } else {
            Step::done(m)
        }
    });
    let (ca, cb) = two_consumers(&s, &log, reject_poison.clone(), reject_poison).await;
    let leader = start_leader(
        &s,
        leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET),
    )
    .await;
    let good = s.publish_many(10).await;
    let mut poison = Vec::new();
    for i in 0..3u16 {
        let p = i % 2;
        poison.push((p, s.publish(p, &format!("poison {i}")).await, i));
    }
    wait_until(DEADLINE, "three dead letters", || async {
        s.dead_letters(0).await.len() + s.dead_letters(1).await.len() == 3
    })
    .await;
    wait_settled(&s, &good).await;

    for (p, id, i) in &poison {
        let letters = s.dead_letters(*p).await;
        let l = letters
            .iter()
            .find(|l| l.get("message_id") == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no dead letter names {id}: {letters:?}"));
        let reason = l.get("reason").expect("a reason");
        assert!(
            reason.contains("rejected") && reason.contains(&format!("cannot parse poison {i}")),
            "the dead letter carries the handler's reason: {reason:?}"
        );
        assert_eq!(l.get("attempts").map(String::as_str), Some("1"));
        assert_eq!(l.get("body"), Some(&format!("poison {i}")));
        assert_eq!(l.get("stream"), Some(&s.keys.stream_key(*p)));
        assert_eq!(
            log.runs_of(*p, *id).len(),
            1,
            "a rejected message is not retried"
        );
        assert_eq!(s.store.result(*p, *id).await.expect("result"), None);
    }
    assert_eq!(leader.stats.dead.load(Ordering::SeqCst), 3);
    stop_all(leader, vec![ca, cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_beyond_the_frame_limit_goes_to_the_dead_letters_without_a_delivery() {
    let s = Setup::new(1).await;
    let log = Arc::new(Log::default());
    let (ca, cb) = two_consumers(&s, &log, ok(), ok()).await;
    let mut opts = leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET);
    opts.max_payload = 1024;
    let leader = start_leader(&s, opts).await;
    let big = "x".repeat(2000);
    let id = s.publish(0, &big).await;
    let small = s.publish(0, "small").await;
    wait_until(DEADLINE, "one dead letter", || async {
        s.dead_letters(0).await.len() == 1
    })
    .await;
    wait_settled(&s, &[(0, small)]).await;
    let letters = s.dead_letters(0).await;
    assert_eq!(letters[0].get("message_id"), Some(&id.to_string()));
    let reason = letters[0].get("reason").expect("a reason");
    assert!(reason.contains("undeliverable"), "{reason:?}");
    assert_eq!(letters[0].get("body"), Some(&big));
    assert!(log.runs_of(0, id).is_empty(), "no consumer ever saw it");
    assert_eq!(log.runs_of(0, small).len(), 1, "the next message flows");
    assert_eq!(s.pending(0).await, 0);
    stop_all(leader, vec![ca, cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_always_asks_for_a_retry_is_dead_after_max_attempts() {
    let s = Setup::new(2).await;
    let log = Arc::new(Log::default());
    let always_retry: crate::support::Behaviour = Arc::new(|_, _| Step {
        sleep: Duration::ZERO,
        outcome: Outcome::Retry("flaky downstream".into()),
    });
    let (ca, cb) = two_consumers(&s, &log, always_retry.clone(), always_retry).await;
    let mut opts = leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET);
    opts.max_attempts = 3;
    let leader = start_leader(&s, opts).await;
    let ids = s.publish_many(6).await;
    wait_until(DEADLINE, "six dead letters", || async {
        s.dead_letters(0).await.len() + s.dead_letters(1).await.len() == 6
    })
    .await;
    wait_until(DEADLINE, "nothing is pending", || async {
        s.pending_total().await == 0
    })
    .await;
    // Dead is final: nothing runs any more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (p, id) in &ids {
        let runs = log.runs_of(*p, *id);
        assert_eq!(
            runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "{p}/{id}: exactly max_attempts deliveries: {runs:?}"
        );
        let letters = s.dead_letters(*p).await;
        let l = letters
            .iter()
            .find(|l| l.get("message_id") == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no dead letter names {id}: {letters:?}"));
        assert_eq!(l.get("attempts").map(String::as_str), Some("3"));
        assert!(
            !l.get("reason").map(String::is_empty).unwrap_or(true),
            "a reason: {l:?}"
        );
        assert_eq!(s.store.result(*p, *id).await.expect("result"), None);
    }
    assert_eq!(leader.stats.dead.load(Ordering::SeqCst), 6);
    stop_all(leader, vec![ca, cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_its_ack_timeout_is_redelivered_but_its_handler_runs_once() {
    let s = Setup::new(2).await;
    let log = Arc::new(Log::default());
    // The first run of each message takes 1 s, three times the ack timeout.
    let slow_first: crate::support::Behaviour = Arc::new(|m, n| Step {
        sleep: if n == 1 {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        },
        outcome: Outcome::Done(format!("run {n} of {}", m.id).into_bytes()),
    });
    let (ca, cb) = two_consumers(&s, &log, slow_first.clone(), slow_first).await;
    let mut opts = leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET);
    opts.ack_timeout = Duration::from_millis(300);
    // Redeliveries every 300 ms for a second must not dead-letter it.
    opts.max_attempts = 50;
    let leader = start_leader(&s, opts).await;
    let ids = vec![
        (0, s.publish(0, "slow").await),
        (1, s.publish(1, "slow too").await),
    ];
    wait_settled(&s, &ids).await;

    assert!(
        leader.stats.redelivered.load(Ordering::SeqCst) >= 2,
        "the deliveries were not redelivered after the ack timeout"
    );
    for (p, id) in &ids {
        assert_eq!(
            log.runs_of(*p, *id).len(),
            1,
            "{p}/{id}: a redelivery ran the handler again while the first run held the claim"
        );
        assert_eq!(
            s.store.result(*p, *id).await.expect("result"),
            Some(format!("run 1 of {id}").into_bytes()),
            "the first (only) run's result"
        );
        assert!(s.dead_letters(*p).await.is_empty());
    }
    stop_all(leader, vec![ca, cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_shut_down_mid_run_hands_its_messages_to_the_other_and_none_is_lost() {
    let s = Setup::new(4).await;
    let log = Arc::new(Log::default());
    let slowish: crate::support::Behaviour = Arc::new(|m, _| Step {
        sleep: Duration::from_millis(2),
        outcome: Step::done(m).outcome,
    });
    let (ca, cb) = two_consumers(&s, &log, slowish.clone(), slowish).await;
    let leader = start_leader(
        &s,
        leader_options("leader", vec![ca.url.clone(), cb.url.clone()], SECRET),
    )
    .await;
    let ids = s.publish_many(2000).await;
    let ran_by = |who: &str| {
        log.runs()
            .values()
            .flatten()
            .filter(|r| r.consumer == who)
            .count()
    };
    wait_until(DEADLINE, "consumer A ran 200 messages", || async {
        ran_by("c-a") >= 200
    })
    .await;
    let total_at_stop = log.total_runs();
    assert!(
        total_at_stop < 1500,
        "the run was nearly over before the shutdown ({total_at_stop} runs); nothing was in flight"
    );
    ca.stop().await;
    let a_runs = ran_by("c-a");
    wait_settled(&s, &ids).await;

    assert_eq!(log.ran_twice(), vec![], "a handler ran twice");
    assert_eq!(log.total_runs(), 2000, "every message ran once");
    assert_eq!(
        ran_by("c-a"),
        a_runs,
        "the stopped consumer ran nothing after it stopped"
    );
    assert!(
        ran_by("c-b") >= 2000 - a_runs,
        "consumer B took over the rest"
    );
    for ((p, id), result) in ids.iter().zip(s.results(&ids).await) {
        assert_eq!(
            result,
            Some(format!("ok {id}").into_bytes()),
            "{p}/{id} lost"
        );
    }
    assert!(
        leader.stats.redelivered.load(Ordering::SeqCst) > 0,
        "the consumer's in-flight messages were redelivered"
    );
    stop_all(leader, vec![cb]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_without_a_delivery_do_not_use_up_the_attempts() {
    let s = Setup::new(1).await;
    let id = s.publish(0, "survivor").await;
    // A leader read it and died before delivering it: pending, delivery count 1.
    let e = s
        .store
        .acquire(0, "ghost", 60_000)
        .await
        .expect("acquire")
        .expect("free");
    let read = s
        .reader()
        .await
        .read(0, &format!("ghost|{e}"), "ghost", 10)
        .await
        .expect("read");
    assert_eq!(read.len(), 1);
    assert!(
        s.store
            .release(0, &format!("ghost|{e}"))
            .await
            .expect("release")
    );
    // Three leaders take the partition over and shut down in turn while the consumer is down.
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("ws://{}/", l.local_addr().expect("addr"))
    };
    for i in 0..3 {
        let node = format!("leader-{i}");
        let mut opts = leader_options(&node, vec![nowhere.clone()], SECRET);
        opts.max_attempts = 3;
        let leader = start_leader(&s, opts).await;
        // It took the message over (XAUTOCLAIM moves it to its consumer).
        wait_until(
            DEADLINE,
            "the new leader took the pending entry over",
            || async {
                let mut conn = s.conn.clone();
                let v: redis::Value = redis::cmd("XPENDING")
                    .arg(s.keys.stream_key(0))
                    .arg(crate::support::GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(10)
                    .query_async(&mut conn)
                    .await
                    .expect("XPENDING");
                let rows: Vec<(String, String, i64, i64)> =
                    redis::from_redis_value(v).unwrap_or_default();
                rows.iter().any(|r| r.1 == node) || !s.dead_letters(0).await.is_empty()
            },
        )
        .await;
        leader.stop().await;
    }
    // The consumer is back: the message was never delivered, so it must still be deliverable.
    let log = Arc::new(Log::default());
    let c = start_consumer(
        &s,
        consumer_options("worker", SECRET),
        TestHandler::ok("worker", log.clone()),
    )
    .await;
    let mut opts = leader_options("leader-last", vec![c.url.clone()], SECRET);
    opts.max_attempts = 3;
    let leader = start_leader(&s, opts).await;
    wait_until(DEADLINE, "the message is done or dead-lettered", || async {
        s.store.result(0, id).await.expect("result").is_some()
            || !s.dead_letters(0).await.is_empty()
    })
    .await;
    assert_eq!(
        s.dead_letters(0).await,
        Vec::<HashMap<String, String>>::new(),
        "a message no consumer ever saw was dead-lettered"
    );
    assert_eq!(log.runs_of(0, id).len(), 1);
    stop_all(leader, vec![c]).await;
}
