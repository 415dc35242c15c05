//! The forwarder against real Redis (a private server and a 3-master cluster from testkit): every admission
//! reaches the dispatch stream with its token, crashes between write and ack are reclaimed, trimming never
//! passes unread entries, poison entries do not block, a Redis restart loses nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatcher_admission::{
    AdmissionStore, Clock, EntryRecord, EventId, EventSettings, Forwarder, ForwarderOptions,
    RedisConn, RedisStore, Release, Ticket, TicketState, TokenMinter, UserId, shard_of,
};

use crate::common;

type Fields = HashMap<String, String>;

fn ev(s: &str) -> EventId {
    EventId::new(s).expect("valid event id")
}

fn store(conn: RedisConn, shards: u16) -> Arc<RedisStore> {
    let opts = dispatcher_admission::RedisStoreOptions {
        shards,
        ..common::redis_opts(Clock::Server)
    };
    Arc::new(RedisStore::new(conn, opts).expect("store"))
}

async fn single(shards: u16) -> Arc<RedisStore> {
    store(
        RedisConn::single(&common::redis_url())
            .await
            .expect("connect"),
        shards,
    )
}

/// The test's minter: a token that names the ticket and the entry, so the test can check it.
fn token_of(r: &EntryRecord) -> String {
    format!("tok.{}.{}", r.ticket, r.entry_id)
}

fn minter() -> TokenMinter {
    Arc::new(|r: &EntryRecord| match r.event.as_str() {
        "boom" => Err("refused".to_owned()),
        "panic" => panic!("minter panics on purpose"),
        _ => Ok(token_of(r)),
    })
}

fn opts(consumer: &str) -> ForwarderOptions {
    ForwarderOptions {
        consumer: consumer.to_owned(),
        ..Default::default()
    }
}

/// Configures `events` with room for everyone and joins `per_event` visitors to each (every third with a
/// user id): all are admitted at once.
async fn admit(s: &RedisStore, events: &[EventId], per_event: usize, tag: &str) -> Vec<Ticket> {
    let mut out = Vec::new();
    for e in events {
        s.configure(e, &EventSettings::with_capacity(100_000))
            .await
            .expect("configure");
        for i in 0..per_event {
            let user = (i % 3 == 0).then(|| UserId::new(format!("u-{tag}-{i}")).expect("user"));
            let j = s.join(e, user.as_ref()).await.expect("join");
            assert_eq!(j.ticket.state, TicketState::Admitted);
            out.push(j.ticket);
        }
    }
    out
}

async fn xrange(conn: &RedisConn, key: &str) -> Vec<(String, Fields)> {
    let mut c = conn.clone();
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE")
}

async fn xlen(conn: &RedisConn, key: &str) -> u64 {
    let mut c = conn.clone();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("XLEN")
}

/// Entries pending in the forwarder group, over all shards.
async fn pending(conn: &RedisConn, s: &RedisStore, group: &str) -> u64 {
    let mut total = 0;
    for shard in 0..s.options().shards {
        let mut c = conn.clone();
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(s.entry_stream_key(shard))
            .arg(group)
            .query_async(&mut c)
            .await
            .expect("XPENDING");
        let redis::Value::Array(parts) = v else {
            panic!("XPENDING reply {v:?}")
        };
        let redis::Value::Int(n) = parts[0] else {
            panic!("XPENDING count {:?}", parts[0])
        };
        total += n as u64;
    }
    total
}

/// Every entry of every shard's entry stream: ticket → (entry id, fields).
async fn entries(conn: &RedisConn, s: &RedisStore) -> HashMap<String, (String, Fields)> {
    let mut out = HashMap::new();
    for shard in 0..s.options().shards {
        for (id, f) in xrange(conn, &s.entry_stream_key(shard)).await {
            out.insert(f["t"].clone(), (id, f));
        }
    }
    out
}

/// Runs rounds until one reads nothing.
async fn drain(f: &Forwarder) -> dispatcher_admission::ForwardStats {
    let mut total = dispatcher_admission::ForwardStats::default();
    for _ in 0..1_000 {
        let s = f.run_once().await.expect("round");
        if s.read == 0 {
            return total;
        }
        total += s;
    }
    panic!("forwarder never drained")
}

/// Dispatch messages by ticket (all copies).
fn by_ticket(msgs: &[(String, Fields)]) -> HashMap<String, Vec<Fields>> {
    let mut out: HashMap<String, Vec<Fields>> = HashMap::new();
    for (_, f) in msgs {
        out.entry(f["ticket"].clone()).or_default().push(f.clone());
    }
    out
}

/// Each admitted ticket is on the dispatch stream with exactly the fields of its admission.
async fn check_messages(
    s: &RedisStore,
    tickets: &[Ticket],
    events: &HashMap<String, EventId>,
    entry_ids: &HashMap<String, (String, Fields)>,
    msgs: &HashMap<String, Vec<Fields>>,
) {
    for t in tickets {
        let copies = msgs
            .get(t.id.as_str())
            .unwrap_or_else(|| panic!("ticket {:?} missing from the dispatch stream", t.id));
        let e = &events[t.id.as_str()];
        let stored = s.ticket(e, &t.id).await.expect("ticket");
        let (entry_id, _) = &entry_ids[t.id.as_str()];
        for m in copies {
            assert_eq!(m["event"], e.as_str());
            assert_eq!(
                m["user"],
                stored.user.as_ref().map(|u| u.as_str()).unwrap_or("")
            );
            assert_eq!(m["seq"], stored.seq.to_string());
            assert_eq!(
                m["admitted_at_ms"],
                stored.admitted_at_ms.expect("admitted").to_string()
            );
            assert_eq!(
                m["expires_at_ms"],
                stored.expires_at_ms.expect("admitted").to_string()
            );
            assert_eq!(&m["entry"], entry_id);
            assert_eq!(m["token"], format!("tok.{}.{}", t.id.as_str(), entry_id));
            assert_eq!(m.len(), 8, "exactly the documented fields: {:?}", m.keys());
        }
    }
}

#[tokio::test]
async fn forwards_every_admission_once_with_its_token() {
    let s = single(4).await;
    let conn = s.connection();
    let events: Vec<EventId> = (0..6).map(|i| ev(&format!("fw-{i}"))).collect();
    let mut tickets = admit(&s, &events, 7, "a").await;
    // One admission through a release: capacity 1, the second visitor is admitted when the first completes.
    let small = ev("fw-small");
    s.configure(&small, &EventSettings::with_capacity(1))
        .await
        .expect("configure");
    let first = s.join(&small, None).await.expect("join").ticket;
    let second = s.join(&small, None).await.expect("join").ticket;
    assert_eq!(second.state, TicketState::Waiting);
    let r = s
        .release(&small, &first.id, Release::Complete)
        .await
        .expect("complete");
    assert_eq!(r.admitted_next, 1);
    tickets.push(first.clone());
    tickets.push(second.clone());
    let mut event_of: HashMap<String, EventId> = HashMap::new();
    for (i, t) in tickets.iter().enumerate() {
        let e = if i < 42 {
            events[i / 7].clone()
        } else {
            small.clone()
        };
        event_of.insert(t.id.as_str().to_owned(), e);
    }
    let shards: HashSet<u16> = event_of.values().map(|e| shard_of(e, 4)).collect();
    assert!(shards.len() >= 3, "admissions spread over shards");

    let entry_ids = entries(&conn, &s).await;
    assert_eq!(entry_ids.len(), tickets.len());
    let f = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            batch_size: 5,
            ..opts("one")
        },
    )
    .expect("forwarder");
    assert_eq!(
        f.dispatch_stream(),
        format!("{}:dispatch", s.options().prefix)
    );
    let stats = drain(&f).await;
    assert_eq!(stats.forwarded, tickets.len() as u64);
    assert_eq!(stats.acked, tickets.len() as u64);
    assert_eq!(stats.poison, 0);

    let msgs = by_ticket(&xrange(&conn, f.dispatch_stream()).await);
    assert_eq!(msgs.len(), tickets.len());
    assert!(
        msgs.values().all(|c| c.len() == 1),
        "each admission exactly once"
    );
    check_messages(&s, &tickets, &event_of, &entry_ids, &msgs).await;
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);
    // A later round finds nothing and writes nothing.
    let again = f.run_once().await.expect("round");
    assert_eq!((again.read, again.forwarded), (0, 0));
    assert_eq!(xlen(&conn, f.dispatch_stream()).await, tickets.len() as u64);
}

#[tokio::test]
async fn a_step_admitting_many_is_one_entry_and_each_of_its_admissions_is_forwarded_once() {
    let s = single(1).await;
    let conn = s.connection();
    let key = s.entry_stream_key(0);
    let e = ev("fw-step");
    s.configure(&e, &EventSettings::with_capacity(40))
        .await
        .expect("configure");
    let mut tickets = Vec::new();
    for i in 0..100 {
        let user = (i % 3 == 0).then(|| UserId::new(format!("step-{i}")).expect("user"));
        tickets.push(s.join(&e, user.as_ref()).await.expect("join").ticket);
    }
    assert_eq!(
        xlen(&conn, &key).await,
        40,
        "each admitting join is its own step"
    );
    let first: Vec<_> = tickets[..40].iter().map(|t| t.id.clone()).collect();
    let r = s
        .release_many(&e, &first, Release::Complete)
        .await
        .expect("complete");
    assert_eq!(r.admitted_next, 40);
    assert_eq!(
        xlen(&conn, &key).await,
        41,
        "forty admissions of one step: one entry"
    );
    let step = xrange(&conn, &key).await.pop().expect("the step's entry").1;
    assert_eq!(step["n"], "40");
    // The store reads the step back as forty records in line order, sharing the entry id.
    let recs = s.entry_records(0, "0", 100).await.expect("records");
    assert_eq!(recs.len(), 80);
    let seqs: Vec<u64> = recs[40..].iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (41..=80).collect::<Vec<u64>>());
    assert!(recs[40..].iter().all(|r| r.entry_id == recs[40].entry_id));
    assert_eq!(recs[40].ticket, tickets[40].id.as_str());
    assert_eq!(recs[42].user, "step-42");
    // A step entry with one undecodable line among good ones: the good one is forwarded, the bad one is
    // poison, the entry is acknowledged once.
    let stray = "0123456789abcdef0123456789abcdef";
    let mut c = conn.clone();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg(&["e", "ev", "at", "1", "exp", "2", "n", "2"])
        .arg("a")
        .arg(format!("{stray} 1 \nnot-a-ticket 2 bob"))
        .query_async(&mut c)
        .await
        .expect("XADD");
    let f = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            batch_size: 5,
            ..opts("step")
        },
    )
    .expect("forwarder");
    let stats = drain(&f).await;
    assert_eq!((stats.forwarded, stats.poison), (81, 1));
    assert_eq!(stats.acked, 42, "one acknowledgement per entry");
    let msgs = by_ticket(&xrange(&conn, f.dispatch_stream()).await);
    assert_eq!(msgs.len(), 81);
    for t in &tickets[..80] {
        let copies = &msgs[t.id.as_str()];
        assert_eq!(copies.len(), 1, "each admission exactly once");
        assert_eq!(copies[0]["seq"], t.seq.to_string());
    }
    assert!(msgs.contains_key(stray));
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);
}

#[tokio::test]
async fn a_crash_between_write_and_ack_is_reclaimed_by_another_forwarder() {
    let s = single(3).await;
    let conn = s.connection();
    let events: Vec<EventId> = (0..5).map(|i| ev(&format!("crash-{i}"))).collect();
    let tickets = admit(&s, &events, 8, "c").await;

    let a = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            batch_size: 4,
            stop_after_write: true,
            ..opts("a")
        },
    )
    .expect("forwarder a");
    let err = a.run_once().await.expect_err("failpoint");
    assert!(err.is_retryable());
    let written_by_a: HashSet<String> = by_ticket(&xrange(&conn, a.dispatch_stream()).await)
        .into_keys()
        .collect();
    assert!(!written_by_a.is_empty() && written_by_a.len() < tickets.len());
    assert_eq!(
        pending(&conn, &s, "dispatcher-forwarder").await,
        written_by_a.len() as u64,
        "A wrote but never acknowledged"
    );
    drop(a);

    let b = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            reclaim_min_idle: Duration::from_millis(50),
            dead_consumer_idle: Duration::from_millis(50),
            ..opts("b")
        },
    )
    .expect("forwarder b");
    let fresh = drain(&b).await;
    assert_eq!(fresh.forwarded as usize, tickets.len() - written_by_a.len());
    tokio::time::sleep(Duration::from_millis(80)).await;
    let reclaimed = b.reclaim_once().await.expect("reclaim");
    assert_eq!(reclaimed.reclaimed as usize, written_by_a.len());
    assert_eq!(reclaimed.forwarded as usize, written_by_a.len());
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);

    let msgs = by_ticket(&xrange(&conn, b.dispatch_stream()).await);
    let expected: HashSet<String> = tickets.iter().map(|t| t.id.as_str().to_owned()).collect();
    let seen: HashSet<String> = msgs.keys().cloned().collect();
    assert_eq!(seen, expected, "no admission missing, nothing else");
    let duplicated: HashSet<String> = msgs
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(t, c)| {
            assert_eq!(c.len(), 2);
            assert_eq!(c[0], c[1], "a duplicate is the same message again");
            t.clone()
        })
        .collect();
    assert_eq!(
        duplicated, written_by_a,
        "duplicates are exactly the tickets A wrote"
    );

    // A (nothing pending, idle) is removed from the group; B stays.
    assert!(b.cleanup_consumers_once().await.expect("cleanup") >= 1);
    let mut c = conn.clone();
    let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(s.entry_stream_key(0))
        .arg("dispatcher-forwarder")
        .query_async(&mut c)
        .await
        .expect("XINFO CONSUMERS");
    let names: HashSet<String> = consumers
        .iter()
        .map(|m| redis::from_redis_value_ref::<String>(&m["name"]).expect("name"))
        .collect();
    assert_eq!(names, HashSet::from(["b".to_owned()]));
}

#[tokio::test]
async fn a_failed_write_is_retried_from_the_own_pending_list() {
    let s = single(2).await;
    let conn = s.connection();
    let dispatch = format!("{}:broken-dispatch", s.options().prefix);
    let mut c = conn.clone();
    // The dispatch key holds a string: every XADD fails with WRONGTYPE.
    let () = redis::cmd("SET")
        .arg(&dispatch)
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("SET");
    let events: Vec<EventId> = (0..3).map(|i| ev(&format!("own-{i}"))).collect();
    let tickets = admit(&s, &events, 4, "o").await;
    let f = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            dispatch_stream: Some(dispatch.clone()),
            ..opts("own")
        },
    )
    .expect("forwarder");
    let err = f.run_once().await.expect_err("the write fails");
    // WRONGTYPE is an error answer, not an unreachable store: internal by kind (the round is retried all
    // the same, below).
    assert!(err.is_internal() && !err.is_retryable(), "{err}");
    assert_eq!(
        pending(&conn, &s, "dispatcher-forwarder").await,
        tickets.len() as u64,
        "nothing is acknowledged when the write failed"
    );
    let () = redis::cmd("DEL")
        .arg(&dispatch)
        .query_async(&mut c)
        .await
        .map(|_: u64| ())
        .expect("DEL");
    // No reclaim (min idle 15 s): the forwarder re-reads its own pending entries at once.
    let stats = drain(&f).await;
    assert_eq!(stats.forwarded, tickets.len() as u64);
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);
    let msgs = by_ticket(&xrange(&conn, &dispatch).await);
    assert_eq!(msgs.len(), tickets.len());
    assert!(msgs.values().all(|c| c.len() == 1));
}

#[tokio::test]
async fn a_lost_group_is_recreated_from_the_start_of_the_stream() {
    let s = single(1).await;
    let conn = s.connection();
    let f = Forwarder::new(&s, minter(), opts("lost")).expect("forwarder");
    assert_eq!(f.run_once().await.expect("round").read, 0);
    // The stream and its group vanish (as with a Redis restarted without persistence); admissions go on.
    let mut c = conn.clone();
    let _: u64 = redis::cmd("DEL")
        .arg(s.entry_stream_key(0))
        .query_async(&mut c)
        .await
        .expect("DEL");
    let tickets = admit(&s, &[ev("lost")], 5, "l").await;
    let err = f.run_once().await.expect_err("NOGROUP");
    assert!(err.to_string().contains("NOGROUP"), "{err}");
    assert_eq!(drain(&f).await.forwarded, tickets.len() as u64);
    assert_eq!(
        by_ticket(&xrange(&conn, f.dispatch_stream()).await).len(),
        tickets.len()
    );
}

#[tokio::test]
async fn trimming_removes_forwarded_entries_but_never_unread_or_pending_ones() {
    let s = single(1).await;
    let conn = s.connection();
    let key = s.entry_stream_key(0);
    let events = [ev("trim")];
    let first = admit(&s, &events, 300, "t1").await;
    let f = Forwarder::new(&s, minter(), opts("trimmer")).expect("forwarder");
    assert_eq!(drain(&f).await.forwarded, 300);
    let lag = f.trim_once().await.expect("trim");
    assert_eq!(lag.len(), 1);
    assert_eq!((lag[0].pending, lag[0].unread), (0, 0));
    assert!(lag[0].trimmed > 0, "{lag:?}");
    let left = xlen(&conn, &key).await;
    assert!(left < 300, "forwarded entries are trimmed (left {left})");

    // Admissions while the forwarder is stopped survive trimming.
    let unread = admit(&s, &events, 50, "t2").await;
    let lag = f.trim_once().await.expect("trim");
    assert_eq!((lag[0].pending, lag[0].unread), (0, 50));
    let on_stream: HashSet<String> = xrange(&conn, &key)
        .await
        .into_iter()
        .map(|(_, f)| f["t"].clone())
        .collect();
    for t in &unread {
        assert!(
            on_stream.contains(t.id.as_str()),
            "unread entry trimmed away"
        );
    }
    assert!(
        first
            .iter()
            .filter(|t| on_stream.contains(t.id.as_str()))
            .count()
            < 300
    );

    // Read but unacknowledged entries (a crashed forwarder's) survive too.
    let crashed = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            batch_size: 20,
            stop_after_write: true,
            ..opts("crashed")
        },
    )
    .expect("forwarder");
    crashed.run_once().await.expect_err("failpoint");
    let lag = f.trim_once().await.expect("trim");
    assert_eq!((lag[0].pending, lag[0].unread), (20, 30));
    let on_stream: HashSet<String> = xrange(&conn, &key)
        .await
        .into_iter()
        .map(|(_, f)| f["t"].clone())
        .collect();
    assert!(unread.iter().all(|t| on_stream.contains(t.id.as_str())));

    // A pending entry deleted from the stream (as the MAXLEN cap would) is acknowledged by the reclaim.
    let stream = xrange(&conn, &key).await;
    let victim = stream
        .iter()
        .find(|(_, f)| f["t"] == unread[0].id.as_str())
        .map(|(id, _)| id.clone())
        .expect("first unread entry");
    let mut c = conn.clone();
    let _: u64 = redis::cmd("XDEL")
        .arg(&key)
        .arg(&victim)
        .query_async(&mut c)
        .await
        .expect("XDEL");
    let rescuer = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            reclaim_min_idle: Duration::from_millis(1),
            ..opts("rescuer")
        },
    )
    .expect("forwarder");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = rescuer.reclaim_once().await.expect("reclaim");
    assert_eq!((r.reclaimed, r.deleted, r.forwarded), (19, 1, 19));
    assert_eq!(drain(&rescuer).await.forwarded, 30);
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);
}

#[tokio::test]
async fn poison_entries_are_acknowledged_counted_and_do_not_block() {
    let s = single(2).await;
    let conn = s.connection();
    let f = Forwarder::new(&s, minter(), opts("poison")).expect("forwarder");
    assert_eq!(f.run_once().await.expect("round").read, 0);
    let key = s.entry_stream_key(0);
    let ticket = "0123456789abcdef0123456789abcdef";
    let bad: [&[&str]; 5] = [
        &["e", "ev", "u", "", "s", "1", "at", "2", "exp", "3"], // no ticket
        &[
            "e", "ev", "t", ticket, "u", "", "s", "x", "at", "2", "exp", "3",
        ], // seq not a number
        &[
            "e",
            "ev",
            "t",
            "not-a-ticket",
            "s",
            "1",
            "at",
            "2",
            "exp",
            "3",
        ], // bad ticket id
        &[
            "e", "boom", "t", ticket, "u", "", "s", "1", "at", "2", "exp", "3",
        ], // minter refuses
        &[
            "e", "panic", "t", ticket, "u", "", "s", "1", "at", "2", "exp", "3",
        ], // minter panics
    ];
    let mut c = conn.clone();
    for fields in bad {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(fields)
            .query_async(&mut c)
            .await
            .expect("XADD");
    }
    let events: Vec<EventId> = (0..4).map(|i| ev(&format!("pz-{i}"))).collect();
    let good = admit(&s, &events, 3, "p").await;
    let stats = drain(&f).await;
    assert_eq!(stats.poison, 5);
    assert_eq!(stats.forwarded, good.len() as u64);
    assert_eq!(
        f.totals().poison.load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);
    // Later admissions flow as usual.
    let later = admit(&s, &events, 2, "q").await;
    assert_eq!(drain(&f).await.forwarded, later.len() as u64);
    let msgs = by_ticket(&xrange(&conn, f.dispatch_stream()).await);
    assert_eq!(msgs.len(), good.len() + later.len());
    assert!(!msgs.contains_key(ticket));
}

#[tokio::test]
async fn forwards_across_the_shards_of_a_cluster() {
    let nodes = tokio::task::spawn_blocking(common::cluster_nodes)
        .await
        .expect("cluster thread");
    let s = store(
        RedisConn::cluster(&nodes).await.expect("connect cluster"),
        8,
    );
    let conn = s.connection();
    let events: Vec<EventId> = (0..12).map(|i| ev(&format!("cl-{i}"))).collect();
    let shards: HashSet<u16> = events.iter().map(|e| shard_of(e, 8)).collect();
    assert!(shards.len() >= 4);
    let tickets = admit(&s, &events, 4, "k").await;
    let mut event_of = HashMap::new();
    for (i, t) in tickets.iter().enumerate() {
        event_of.insert(t.id.as_str().to_owned(), events[i / 4].clone());
    }
    let entry_ids = entries(&conn, &s).await;
    let f = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            batch_size: 3,
            reclaim_min_idle: Duration::from_millis(1),
            ..opts("cluster")
        },
    )
    .expect("forwarder");
    assert_eq!(drain(&f).await.forwarded, tickets.len() as u64);
    let msgs = by_ticket(&xrange(&conn, f.dispatch_stream()).await);
    assert_eq!(msgs.len(), tickets.len());
    assert!(msgs.values().all(|c| c.len() == 1));
    check_messages(&s, &tickets, &event_of, &entry_ids, &msgs).await;
    assert_eq!(pending(&conn, &s, "dispatcher-forwarder").await, 0);
    // Reclaim and trim run per shard as well (no cross-slot command).
    assert_eq!(f.reclaim_once().await.expect("reclaim").reclaimed, 0);
    let lag = f.trim_once().await.expect("trim");
    assert_eq!(lag.len(), 8);
    assert!(lag.iter().all(|l| l.lag() == 0), "{lag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_admission() {
    let mut server = tokio::task::spawn_blocking(|| {
        testkit::RedisServer::start_with(testkit::RedisOptions {
            aof: true,
            ..Default::default()
        })
    })
    .await
    .expect("spawn thread")
    .expect("redis with AOF");
    // Few reconnection attempts, so that the outage surfaces as errors instead of waiting calls.
    let manager = redis::Client::open(server.url())
        .expect("client")
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new()
                .set_number_of_retries(1)
                .set_connection_timeout(Some(Duration::from_millis(500)))
                .set_response_timeout(Some(Duration::from_secs(2))),
        )
        .await
        .expect("connect");
    let s = store(RedisConn::Single(manager), 4);
    let conn = s.connection();
    let events: Vec<EventId> = (0..4).map(|i| ev(&format!("rs-{i}"))).collect();
    for e in &events {
        s.configure(e, &EventSettings::with_capacity(100_000))
            .await
            .expect("configure");
    }
    let f = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            batch_size: 16,
            backoff_max: Duration::from_millis(100),
            reclaim_min_idle: Duration::from_millis(300),
            reclaim_interval: Duration::from_millis(100),
            trim_interval: Duration::from_millis(100),
            ..opts("restart")
        },
    )
    .expect("forwarder");
    let dispatch = f.dispatch_stream().to_owned();
    let totals = f.totals();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(f.run(async {
        let _ = stopped.await;
    }));

    // Visitors keep joining while Redis is killed and started again; every join that succeeded counts.
    let joiner = {
        let s = s.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut admitted = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(1_200);
            let mut i = 0usize;
            while Instant::now() < deadline {
                if let Ok(j) = s.join(&events[i % events.len()], None).await {
                    admitted.push(j.ticket.id.as_str().to_owned());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            admitted
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.kill().expect("kill redis");
        std::thread::sleep(Duration::from_millis(300));
        server.start_again().expect("restart redis");
        server
    })
    .await
    .expect("restart thread");
    let admitted = joiner.await.expect("joiner");
    assert!(admitted.len() > 50);

    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let seen: HashSet<String> = by_ticket(&xrange(&conn, &dispatch).await)
            .into_keys()
            .collect();
        let missing: Vec<&String> = admitted.iter().filter(|t| !seen.contains(*t)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(missing, 0, "admissions missing from the dispatch stream");
    assert!(
        totals.errors.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the forwarder saw the outage"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("run returns after shutdown")
        .expect("run task");
    drop(server);
}

#[tokio::test]
async fn the_dispatch_stream_is_trimmed_but_never_past_what_a_group_needs() {
    let s = single(2).await;
    let conn = s.connection();
    let f = Forwarder::new(
        &s,
        minter(),
        ForwarderOptions {
            // Trim target 100, hard cap 1,000 on every XADD (above the 350 messages of this test).
            dispatch_maxlen: 100,
            ..opts("dt")
        },
    )
    .expect("forwarder");
    let key = f.dispatch_stream().to_owned();
    // A downstream consumer group (the delivery engine's, a shop's) that has read nothing yet.
    let mut c = conn.clone();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("shop")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .expect("group");
    admit(&s, &[ev("dt-a"), ev("dt-b")], 175, "dt").await;
    drain(&f).await;
    assert_eq!(xlen(&conn, &key).await, 350);
    let lag = f.trim_dispatch().await.expect("trim");
    assert_eq!(lag, 350, "the group has read nothing");
    assert_eq!(
        xlen(&conn, &key).await,
        350,
        "nothing the group needs is trimmed"
    );
    // The group reads and acknowledges everything: now the stream shrinks towards its target.
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("shop")
        .arg("c1")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut c)
        .await
        .expect("read");
    let ids: Vec<String> = xrange(&conn, &key)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 350);
    drop(read);
    let acked: u64 = redis::cmd("XACK")
        .arg(&key)
        .arg("shop")
        .arg(&ids)
        .query_async(&mut c)
        .await
        .expect("ack");
    assert_eq!(acked, 350);
    assert_eq!(f.trim_dispatch().await.expect("trim"), 0);
    let left = xlen(&conn, &key).await;
    assert!(
        left < 350,
        "read and acknowledged messages are trimmed ({left} left)"
    );
}
