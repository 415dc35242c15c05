//! Crash injection (docs/guarantees.md#invariants): four `dispatcher serve` promoters share one Redis while a
//! crowd joins three small events with short sessions; one promoter is SIGKILLed mid-run. Every admission
//! invariant must still hold, and the survivors must carry on expiring sessions and refilling slots.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dispatcher_admission::{
    AdmissionError, AdmissionStore, EntryRecord, EventId, EventSettings, RedisStore, TicketId,
    TicketState, UserId,
};
use tokio::task::JoinSet;

use crate::support::{self, Children};

const EVENTS: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
const CAPACITY: u64 = 20;
const SESSION_TTL_MS: u64 = 300;
/// Large, so nobody is abandoned: every ticket must be admitted exactly once.
const ABANDON_MS: u64 = 600_000;
const USERS: u64 = 3_000;
const JOIN_SPREAD: Duration = Duration::from_secs(2);
const JOINERS: u64 = 32;
const PROMOTERS: usize = 4;
const KILL_AFTER: Duration = Duration::from_secs(1);
/// Scripts a promoter sent just before it died may still run; expiries later than this after the kill
/// were certainly done by the survivors.
const KILL_MARGIN_MS: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(60);
const SIGKILL: i32 = 9;

#[derive(Debug, Clone)]
struct JoinedTicket {
    event: usize,
    user: String,
    id: TicketId,
    seq: u64,
}

#[derive(Debug, Default)]
struct Samples {
    max_admitted: Vec<u64>,
    count: u64,
}

#[derive(Debug, Default)]
struct Completions {
    /// Tickets this task completed (the call changed them to completed).
    completed: HashSet<String>,
    /// Tickets it tried to complete after their session had already expired.
    too_late: HashSet<String>,
}

fn event_index(events: &[EventId], name: &str) -> usize {
    events
        .iter()
        .position(|e| e.as_str() == name)
        .unwrap_or_else(|| panic!("entry stream names an unknown event {name:?}"))
}

/// Joins users `joiner, joiner + JOINERS, ...`, each at its slot of the arrival spread.
async fn join_users(
    store: Arc<RedisStore>,
    events: Arc<Vec<EventId>>,
    joiner: u64,
    start: tokio::time::Instant,
) -> Vec<JoinedTicket> {
    let mut out = Vec::new();
    let mut i = joiner;
    while i < USERS {
        tokio::time::sleep_until(start + JOIN_SPREAD.mul_f64(i as f64 / USERS as f64)).await;
        let k = (i % events.len() as u64) as usize;
        let user = format!("user-{i}");
        let uid = UserId::new(user.clone()).expect("valid user id");
        let j = store
            .join(&events[k], Some(&uid))
            .await
            .unwrap_or_else(|e| panic!("join of {user} to {} failed: {e}", events[k]));
        assert!(j.created, "{user} is a new user and must get a new ticket");
        assert!(
            matches!(j.ticket.state, TicketState::Waiting | TicketState::Admitted),
            "a fresh ticket is waiting or admitted, not {:?}",
            j.ticket.state
        );
        out.push(JoinedTicket {
            event: k,
            user,
            id: j.ticket.id,
            seq: j.ticket.seq,
        });
        i += JOINERS;
    }
    out
}

/// Polls every event's admitted count and keeps the maximum seen.
async fn sample(
    store: Arc<RedisStore>,
    events: Arc<Vec<EventId>>,
    stop: Arc<AtomicBool>,
) -> Samples {
    let mut s = Samples {
        max_admitted: vec![0; events.len()],
        count: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        for (k, e) in events.iter().enumerate() {
            let info = store.event(e).await.expect("sample event counts");
            s.max_admitted[k] = s.max_admitted[k].max(info.admitted);
        }
        s.count += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    s
}

/// Follows the entry streams and completes the admitted tickets with an even sequence number; the rest
/// are left for the promoters to expire.
async fn complete_half(
    store: Arc<RedisStore>,
    events: Arc<Vec<EventId>>,
    shards: Vec<u16>,
    stop: Arc<AtomicBool>,
) -> Completions {
    let mut c = Completions::default();
    let mut cursors: Vec<String> = vec!["0".into(); shards.len()];
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut seen = 0;
        for (i, sh) in shards.iter().enumerate() {
            let recs = store
                .entry_records(*sh, &cursors[i], 1_000)
                .await
                .expect("read entry stream");
            if let Some(last) = recs.last() {
                cursors[i] = last.entry_id.clone();
            }
            seen += recs.len();
            for r in recs {
                if r.seq % 2 != 0 {
                    continue;
                }
                let e = &events[event_index(&events, &r.event)];
                let id = TicketId::parse(&r.ticket).expect("entry stream holds a valid ticket id");
                match store.complete(e, &id).await {
                    Ok(rel) => {
                        assert!(rel.changed, "ticket {} was completed twice", r.ticket);
                        assert_eq!(rel.ticket.state, TicketState::Completed);
                        c.completed.insert(r.ticket);
                    }
                    Err(AdmissionError::Conflict(_)) => {
                        c.too_late.insert(r.ticket);
                    }
                    Err(other) => panic!("complete of an admitted ticket failed: {other}"),
                }
            }
        }
        if seen == 0 {
            if stopping {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Every record on the given shards' entry streams, in stream order.
async fn all_records(store: &RedisStore, shards: &[u16]) -> Vec<EntryRecord> {
    let mut out = Vec::new();
    for sh in shards {
        let mut cursor = "0".to_owned();
        loop {
            let recs = store
                .entry_records(*sh, &cursor, 10_000)
                .await
                .expect("read entry stream");
            let Some(last) = recs.last() else { break };
            cursor = last.entry_id.clone();
            out.extend(recs);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoters_sigkilled_mid_run_keep_every_admission_invariant() {
    let redis = testkit::RedisServer::start().expect("spawn redis-server");
    let prefix = format!("crash{}", std::process::id());
    let store = Arc::new(support::store(&redis.url(), &prefix).await);
    let events: Arc<Vec<EventId>> = Arc::new(
        EVENTS
            .iter()
            .map(|e| EventId::new(*e).expect("valid event id"))
            .collect(),
    );
    for e in events.iter() {
        let settings = EventSettings {
            session_ttl_ms: SESSION_TTL_MS,
            abandon_timeout_ms: ABANDON_MS,
            ..EventSettings::with_capacity(CAPACITY)
        };
        store
            .configure(e, &settings)
            .await
            .expect("configure event");
    }
    let shards = support::shards_of(&events, store.shard_count());

    let mut promoters = Children::default();
    for _ in 0..PROMOTERS {
        promoters.spawn(
            support::serve(&redis.url(), &prefix)
                // The entry streams are this test's ledger of admissions: no forwarder trims them.
                .env("DISPATCHER_FORWARDER_ENABLED", "false")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(store.clone(), events.clone(), stop.clone()));
    let completer = tokio::spawn(complete_half(
        store.clone(),
        events.clone(),
        shards.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    let mut joiners = JoinSet::new();
    for j in 0..JOINERS {
        joiners.spawn(join_users(store.clone(), events.clone(), j, start));
    }

    let mut joined: Vec<JoinedTicket> = Vec::new();
    let mut joiners_done = 0;
    let mut kill_at_ms: Option<u64> = None;
    loop {
        while let Some(r) = joiners.try_join_next() {
            joined.extend(r.expect("joiner task"));
            joiners_done += 1;
        }
        if kill_at_ms.is_none() && started.elapsed() >= KILL_AFTER {
            for (i, c) in promoters.0.iter_mut().enumerate() {
                if let Some(status) = c.try_wait().expect("try_wait") {
                    panic!("promoter {i} exited on its own before the kill: {status}");
                }
            }
            let victim = &mut promoters.0[0];
            victim.kill().expect("SIGKILL a promoter");
            let status = victim.wait().expect("reap the killed promoter");
            assert_eq!(
                status.signal(),
                Some(SIGKILL),
                "the promoter died of SIGKILL"
            );
            kill_at_ms = Some(store.now_ms().await.expect("Redis time"));
        }
        if joiners_done == JOINERS && kill_at_ms.is_some() {
            let mut live = 0;
            for e in events.iter() {
                let info = store.event(e).await.expect("event counts");
                live += info.waiting + info.admitted;
            }
            if live == 0 {
                break;
            }
        }
        if started.elapsed() > TIMEOUT {
            let mut state = String::new();
            for e in events.iter() {
                state.push_str(&format!("\n  {e}: {:?}", store.event(e).await));
            }
            panic!(
                "not every ticket reached a final state within {TIMEOUT:?} \
                 ({joiners_done}/{JOINERS} joiner tasks done, {} tickets joined):{state}",
                joined.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill_at_ms = kill_at_ms.expect("the kill happened");
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.expect("sampler task");
    let completions = completer.await.expect("completer task");
    let run_time = started.elapsed();

    // The survivors are still running: the kill took down only its victim.
    for (i, c) in promoters.0.iter_mut().enumerate().skip(1) {
        if let Some(status) = c.try_wait().expect("try_wait") {
            panic!("surviving promoter {i} exited during the run: {status}");
        }
    }
    assert_eq!(joined.len() as u64, USERS, "every join returned a ticket");

    // 1. Capacity, as sampled during the run.
    assert!(samples.count > 0, "the sampler took no samples");
    for (k, e) in events.iter().enumerate() {
        assert!(
            samples.max_admitted[k] <= CAPACITY,
            "event {e}: {} tickets admitted at once in a sample, capacity {CAPACITY}",
            samples.max_admitted[k]
        );
        assert_eq!(
            samples.max_admitted[k], CAPACITY,
            "event {e} never filled up; the load did not exercise the capacity limit"
        );
    }

    // 2. The entry streams: each joined ticket admitted exactly once, in join order.
    let records = all_records(&store, &shards).await;
    let mut seen_ids: HashSet<&str> = HashSet::new();
    let mut last_seq = vec![0u64; events.len()];
    let mut by_ticket: HashMap<&str, &EntryRecord> = HashMap::new();
    for r in &records {
        let k = event_index(&events, &r.event);
        assert!(
            seen_ids.insert(r.ticket.as_str()),
            "ticket {}… of {} (seq {}) was admitted twice",
            &r.ticket[..6],
            r.event,
            r.seq
        );
        assert!(
            r.seq > last_seq[k],
            "event {}: seq {} admitted after seq {} (admission order must be join order)",
            r.event,
            r.seq,
            last_seq[k]
        );
        last_seq[k] = r.seq;
        by_ticket.insert(r.ticket.as_str(), r);
    }
    assert_eq!(
        records.len(),
        joined.len(),
        "entry records ≠ joined tickets: every joined ticket must be admitted exactly once"
    );

    // 3. Every ticket is readable and in exactly one final state that matches what happened to it.
    let mut completed = vec![0u64; events.len()];
    let mut expired = vec![0u64; events.len()];
    let mut expired_after_kill = vec![0u64; events.len()];
    let mut intervals: Vec<Vec<(u64, u64)>> = vec![Vec::new(); events.len()];
    for j in &joined {
        let e = &events[j.event];
        let rec = by_ticket
            .get(j.id.as_str())
            .unwrap_or_else(|| panic!("{} (seq {} of {e}) was never admitted", j.user, j.seq));
        assert_eq!(
            rec.event,
            e.as_str(),
            "{}: admitted to the wrong event",
            j.user
        );
        assert_eq!(rec.seq, j.seq, "{}: entry record has the wrong seq", j.user);
        assert_eq!(
            rec.user, j.user,
            "entry record of seq {} names the wrong user",
            j.seq
        );
        let t = store.ticket(e, &j.id).await.unwrap_or_else(|err| {
            panic!("{} (seq {} of {e}) is not readable: {err}", j.user, j.seq)
        });
        assert_eq!(t.seq, j.seq);
        let (Some(admitted_at), Some(expires_at), Some(ended_at)) =
            (t.admitted_at_ms, t.expires_at_ms, t.ended_at_ms)
        else {
            panic!(
                "{} of {e} is {:?} with incomplete times: {t:?}",
                j.user, t.state
            );
        };
        assert_eq!(
            admitted_at, rec.admitted_at_ms,
            "{}: admission time",
            j.user
        );
        assert_eq!(expires_at, rec.expires_at_ms, "{}: session end", j.user);
        assert_eq!(
            expires_at - admitted_at,
            SESSION_TTL_MS,
            "{}: session TTL",
            j.user
        );
        assert!(
            ended_at >= admitted_at,
            "{}: ended before it was admitted",
            j.user
        );
        intervals[j.event].push((admitted_at, ended_at));
        match t.state {
            TicketState::Completed => {
                completed[j.event] += 1;
                assert!(
                    completions.completed.contains(j.id.as_str()),
                    "{} (seq {}) is completed but nobody completed it",
                    j.user,
                    j.seq
                );
            }
            TicketState::Expired => {
                expired[j.event] += 1;
                assert!(
                    ended_at >= expires_at,
                    "{} (seq {}) expired at {ended_at}, before its session end {expires_at}",
                    j.user,
                    j.seq
                );
                assert!(
                    !completions.completed.contains(j.id.as_str()),
                    "{} (seq {}) was completed, yet reads as expired",
                    j.user,
                    j.seq
                );
                if ended_at > kill_at_ms + KILL_MARGIN_MS {
                    expired_after_kill[j.event] += 1;
                }
            }
            other => panic!(
                "{} (seq {} of {e}) ended {other:?}; only completed or expired is possible here",
                j.user, j.seq
            ),
        }
    }
    let completed_total: u64 = completed.iter().sum();
    assert_eq!(
        completed_total,
        completions.completed.len() as u64,
        "every successful completion shows as a completed ticket"
    );
    for id in &completions.too_late {
        assert!(
            !completions.completed.contains(id),
            "a ticket was both completed and refused"
        );
    }
    for (k, e) in events.iter().enumerate() {
        let n = joined.iter().filter(|j| j.event == k).count() as u64;
        assert_eq!(
            completed[k] + expired[k],
            n,
            "event {e}: completed + expired ≠ joined"
        );
        assert!(completed[k] > 0, "event {e}: nothing was completed");
        assert!(expired[k] > 0, "event {e}: nothing expired");
        let info = store.event(e).await.expect("event counts");
        assert_eq!(
            info.joined, n,
            "event {e}: sequence counter ≠ tickets joined"
        );
        assert_eq!(
            (info.waiting, info.admitted),
            (0, 0),
            "event {e}: live tickets remain"
        );
        assert_eq!(
            info.finished, n,
            "event {e}: final-ticket count disagrees with completed + expired"
        );
        assert!(
            !info.active,
            "event {e}: an empty event stays in the active registry"
        );
        assert!(
            expired_after_kill[k] > 0,
            "event {e}: no session expired after the kill; the surviving promoters stopped working"
        );
    }

    // 4. Capacity, reconstructed from every ticket's history: at the end of each millisecond (Redis
    //    time) at most CAPACITY sessions were open. Ends sort before starts within one millisecond.
    for (k, e) in events.iter().enumerate() {
        let mut points: Vec<(u64, i64)> = Vec::with_capacity(intervals[k].len() * 2);
        for (a, z) in &intervals[k] {
            points.push((*a, 1));
            points.push((*z, -1));
        }
        points.sort_unstable();
        let mut open = 0i64;
        for (at, d) in points {
            open += d;
            assert!(
                open <= CAPACITY as i64,
                "event {e}: {open} sessions open at {at} ms, capacity {CAPACITY}"
            );
        }
    }

    eprintln!(
        "crash test: {} tickets in {:.1} s, {} samples, completed {:?}, expired {:?} \
         ({:?} after the kill), {} completions too late",
        joined.len(),
        run_time.as_secs_f64(),
        samples.count,
        completed,
        expired,
        expired_after_kill,
        completions.too_late.len()
    );
}
