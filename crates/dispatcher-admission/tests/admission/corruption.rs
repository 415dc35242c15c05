//! Redis data changed behind the store's back (a key of the wrong type, a ticket record deleted) and a store
//! that cannot be reached, against a private redis-server: errors are classified by kind (internal, never
//! "unavailable", for an error answer), and a queued ticket without a record is dropped from its line and
//! counted while the rest of the line moves on, in order, with nothing lost.

use dispatcher_admission::{
    AdmissionError, AdmissionStore, Clock, EventId, EventSettings, EventState, Promoter,
    PromoterOptions, QueueMode, RedisConn, RedisStore, Release, TicketId, TicketState, UserId,
    shard_of,
};

use crate::common::{self, T0};

fn ev(s: &str) -> EventId {
    EventId::new(s).expect("valid event id")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

fn settings(capacity: u64) -> EventSettings {
    EventSettings {
        session_ttl_ms: 10_000,
        abandon_timeout_ms: 60_000,
        ..EventSettings::with_capacity(capacity)
    }
}

/// The name of one of `event`'s keys (`cfg`, `w`, `t`, ...), as the store lays them out.
fn key(store: &RedisStore, event: &EventId, suffix: &str) -> String {
    let o = store.options();
    format!(
        "{}:{{s{}}}:e:{}:{suffix}",
        o.prefix,
        shard_of(event, o.shards),
        event.as_str()
    )
}

async fn redis_cmd<T: redis::FromRedisValue>(store: &RedisStore, args: &[&str]) -> T {
    let mut conn = store.connection();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[track_caller]
fn assert_internal<T: std::fmt::Debug>(what: &str, r: Result<T, AdmissionError>) {
    match r {
        Err(e @ AdmissionError::Internal(_)) => {
            assert!(e.is_internal() && !e.is_retryable(), "{what}: {e:?}");
        }
        other => panic!("{what}: expected an internal error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_key_of_the_wrong_type_is_an_internal_error_not_an_unavailable_store() {
    let store = common::redis(Clock::manual(T0)).await;
    let e = ev("wrongtype");
    store.configure(&e, &settings(1)).await.expect("configure");
    let first = store.join(&e, None).await.expect("join").ticket;
    assert_eq!(first.state, TicketState::Admitted);

    // The waiting line (a zset) is overwritten with a string: every call that touches it gets WRONGTYPE.
    let w = key(&store, &e, "w");
    let () = redis_cmd(&store, &["SET", &w, "not a zset"]).await;
    assert_internal("join", store.join(&e, None).await);
    assert_internal("event", store.event(&e).await);
    assert_internal("tick", store.tick(&e).await);
    // Calls that do not touch the line still work: the store is up.
    assert_eq!(
        store.ticket(&e, &first.id).await.expect("ticket").state,
        TicketState::Admitted
    );

    // The settings hash is overwritten with a list.
    let e2 = ev("wrongtype-cfg");
    store.configure(&e2, &settings(1)).await.expect("configure");
    let cfg = key(&store, &e2, "cfg");
    let _: u64 = redis_cmd(&store, &["DEL", &cfg]).await;
    let _: u64 = redis_cmd(&store, &["RPUSH", &cfg, "x"]).await;
    assert_internal("join over a list", store.join(&e2, None).await);
    assert_internal("event over a list", store.event(&e2).await);
}

#[tokio::test]
async fn a_script_error_is_an_internal_error() {
    let store = common::redis(Clock::manual(T0)).await;
    let e = ev("script-error");
    store.configure(&e, &settings(1)).await.expect("configure");
    let cfg = key(&store, &e, "cfg");
    // A non-integer sequence counter: HINCRBY inside the join function fails ("ERR hash value is not an
    // integer").
    let _: u64 = redis_cmd(&store, &["HSET", &cfg, "seq", "abc"]).await;
    assert_internal("join with a bad counter", store.join(&e, None).await);
    // A non-numeric capacity: a Lua runtime error (arithmetic on nil) in promote.
    let _: u64 = redis_cmd(&store, &["HSET", &cfg, "seq", "0", "cap", "lots"]).await;
    assert_internal("join with a bad capacity", store.join(&e, None).await);
}

#[tokio::test]
async fn an_unreachable_store_is_unavailable_and_retryable() {
    let mut server = testkit::RedisServer::start().expect("spawn redis-server");
    let conn = RedisConn::single(&server.url()).await.expect("connect");
    let store = RedisStore::new(conn, common::redis_opts(Clock::manual(T0))).expect("store");
    let e = ev("unreachable");
    store.configure(&e, &settings(1)).await.expect("configure");
    server.kill().expect("kill redis-server");
    for r in [
        store.join(&e, None).await.map(|_| ()),
        store.event(&e).await.map(|_| ()),
    ] {
        match r {
            Err(e @ AdmissionError::Unavailable(_)) => {
                assert!(e.is_retryable() && !e.is_internal(), "{e:?}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}

/// Joins `users` in order; returns their ticket ids.
async fn join_all(store: &RedisStore, e: &EventId, users: &[&str]) -> Vec<TicketId> {
    let mut out = Vec::new();
    for u in users {
        out.push(store.join(e, Some(&user(u))).await.expect("join").ticket.id);
    }
    out
}

async fn state_of(store: &RedisStore, e: &EventId, t: &TicketId) -> TicketState {
    store.ticket(e, t).await.expect("ticket").state
}

async fn orphans_total(store: &RedisStore, e: &EventId) -> u64 {
    let v: Option<u64> = redis_cmd(store, &["HGET", &key(store, e, "cfg"), "n_O"]).await;
    v.unwrap_or(0)
}

#[tokio::test]
async fn a_waiter_without_a_record_is_dropped_and_counted_and_the_line_moves_on() {
    let store = common::redis(Clock::manual(T0)).await;
    let e = ev("orphan");
    store
        .configure(
            &e,
            &EventSettings {
                state: EventState::Paused,
                ..settings(3)
            },
        )
        .await
        .expect("configure");
    let t = join_all(&store, &e, &["u1", "u2", "u3", "u4", "u5"]).await;
    for id in &t {
        assert_eq!(state_of(&store, &e, id).await, TicketState::Waiting);
    }
    // The third waiter's record disappears (deleted by hand, a bad migration, ...).
    let tickets = key(&store, &e, "t");
    let _: u64 = redis_cmd(&store, &["HDEL", &tickets, t[2].as_str()]).await;

    // Resuming admits three: the orphan is skipped and the next waiter takes its slot.
    let admitted = store
        .set_state(&e, EventState::Open)
        .await
        .expect("resume with an orphan in the line");
    assert_eq!(admitted, 3);
    for i in [0, 1, 3] {
        assert_eq!(
            state_of(&store, &e, &t[i]).await,
            TicketState::Admitted,
            "ticket {i}"
        );
    }
    let last = store.ticket(&e, &t[4]).await.expect("ticket");
    assert_eq!((last.state, last.ahead), (TicketState::Waiting, Some(0)));
    assert!(matches!(
        store.ticket(&e, &t[2]).await,
        Err(AdmissionError::UnknownTicket)
    ));
    // Admitted in order, each recorded once on the entry stream; the orphan is not.
    let shard = shard_of(&e, store.options().shards);
    let entries: Vec<(String, u64)> = store
        .entry_records(shard, "0", 100)
        .await
        .expect("entries")
        .into_iter()
        .filter(|r| r.event == e.as_str())
        .map(|r| (r.ticket, r.seq))
        .collect();
    assert_eq!(
        entries,
        vec![
            (t[0].to_string(), 1),
            (t[1].to_string(), 2),
            (t[3].to_string(), 4)
        ]
    );
    let info = store.event(&e).await.expect("event");
    assert_eq!((info.waiting, info.admitted), (1, 3));
    assert_eq!(info.totals.admitted, 3);

    // Counted: reported once by the next full pass, and kept in the event's total.
    let tick = store.tick(&e).await.expect("tick");
    assert_eq!((tick.orphaned, tick.admitted), (1, 0));
    assert_eq!(store.tick(&e).await.expect("tick").orphaned, 0);
    assert_eq!(orphans_total(&store, &e).await, 1);

    // Later calls on the event work.
    let late = join_all(&store, &e, &["u6"]).await;
    let r = store
        .release(&e, &t[0], Release::Complete)
        .await
        .expect("complete");
    assert_eq!(r.admitted_next, 1);
    assert_eq!(state_of(&store, &e, &t[4]).await, TicketState::Admitted);
    let l = store.ticket(&e, &late[0]).await.expect("ticket");
    assert_eq!((l.state, l.ahead), (TicketState::Waiting, Some(0)));
    store.tick(&e).await.expect("tick");
    let info = store.event(&e).await.expect("event");
    assert_eq!((info.waiting, info.admitted), (1, 3));
}

#[tokio::test]
async fn orphans_in_the_timed_lines_are_dropped_and_reported_to_the_promoter() {
    let clock = Clock::manual(T0);
    let store = common::redis(clock.clone()).await;
    let tickets_of = |e: &EventId| key(&store, e, "t");

    // Admitted: an admitted ticket's record is gone when its session ends.
    let a = ev("orphan-admitted");
    let patient = EventSettings {
        abandon_timeout_ms: 600_000,
        ..settings(2)
    };
    store.configure(&a, &patient).await.expect("configure");
    let ta = join_all(&store, &a, &["a1", "a2", "a3"]).await;
    let _: u64 = redis_cmd(&store, &["HDEL", &tickets_of(&a), ta[0].as_str()]).await;

    // Presence: a paused event's silent waiter whose record is gone.
    let b = ev("orphan-presence");
    store
        .configure(
            &b,
            &EventSettings {
                state: EventState::Paused,
                ..settings(2)
            },
        )
        .await
        .expect("configure");
    let tb = join_all(&store, &b, &["b1", "b2"]).await;
    let _: u64 = redis_cmd(&store, &["HDEL", &tickets_of(&b), tb[0].as_str()]).await;

    // Pre-queue: a pre-queued ticket's record is gone at the start.
    let q = ev("orphan-prequeue");
    store
        .configure(
            &q,
            &EventSettings {
                queue_mode: QueueMode::Prequeue,
                starts_at_ms: Some(T0 + 5_000),
                ..settings(10)
            },
        )
        .await
        .expect("configure");
    let tq = join_all(&store, &q, &["q1", "q2", "q3"]).await;
    let _: u64 = redis_cmd(&store, &["HDEL", &tickets_of(&q), tq[1].as_str()]).await;

    clock.advance(61_000);
    let promoter = Promoter::new(store.clone(), PromoterOptions::default());
    let total = promoter.sweep().await.expect("sweep over orphans");
    assert_eq!(total.orphaned, 3);
    assert_eq!(
        promoter
            .stats()
            .orphaned
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // Admitted: the live ticket expired, the orphan only left the line; the waiter took a slot.
    assert_eq!(state_of(&store, &a, &ta[1]).await, TicketState::Expired);
    assert_eq!(state_of(&store, &a, &ta[2]).await, TicketState::Admitted);
    let info = store.event(&a).await.expect("event");
    assert_eq!((info.admitted, info.totals.expired), (1, 1));
    // Presence: the silent waiter was abandoned; the orphan left both lines.
    assert_eq!(state_of(&store, &b, &tb[1]).await, TicketState::Abandoned);
    let info = store.event(&b).await.expect("event");
    assert_eq!((info.waiting, info.totals.abandoned), (0, 1));
    // Pre-queue: the two with records were placed with consecutive sequence numbers and admitted.
    let mut seqs = Vec::new();
    for id in [&tq[0], &tq[2]] {
        let t = store.ticket(&q, id).await.expect("ticket");
        assert_eq!(t.state, TicketState::Admitted);
        seqs.push(t.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2]);
    let info = store.event(&q).await.expect("event");
    assert_eq!((info.admitted, info.pre_queued, info.waiting), (2, 0, 0));
    for e in [&a, &b, &q] {
        assert_eq!(orphans_total(&store, e).await, 1, "{e}");
    }
    // Nothing is left to report, and the events go on working.
    assert_eq!(promoter.sweep().await.expect("sweep").orphaned, 0);
    join_all(&store, &a, &["a4"]).await;
    join_all(&store, &q, &["q4"]).await;
}

#[tokio::test]
async fn join_many_answers_places_right_after_dropping_an_orphan() {
    let clock = Clock::manual(T0);
    let store = common::redis(clock.clone()).await;
    let e = ev("orphan-batch");
    // One admission per second: the line only moves when the clock does.
    store
        .configure(
            &e,
            &EventSettings {
                rate_per_minute: Some(60),
                ..settings(10)
            },
        )
        .await
        .expect("configure");
    let t = join_all(&store, &e, &["m1", "m2", "m3"]).await;
    assert_eq!(state_of(&store, &e, &t[0]).await, TicketState::Admitted);
    let _: u64 = redis_cmd(&store, &["HDEL", &key(&store, &e, "t"), t[1].as_str()]).await;
    clock.advance(1_000);
    // The batch's promotion pops the orphan, then admits m3 with the one token.
    let out = store
        .join_many(&e, &[Some(user("m4")), Some(user("m5"))])
        .await
        .expect("join_many");
    assert_eq!(state_of(&store, &e, &t[2]).await, TicketState::Admitted);
    for (i, r) in out.iter().enumerate() {
        let answered = &r.as_ref().expect("joined").ticket;
        let read = store.ticket(&e, &answered.id).await.expect("ticket");
        assert_eq!(
            (answered.state, answered.ahead),
            (read.state, read.ahead),
            "answer {i} equals what a read sees"
        );
        assert_eq!(read.ahead, Some(i as u64));
    }
}
