//! Forwarder crash (docs/guarantees.md#admission, "Streams"): a `dispatcher serve` whose forwarder stops
//! between writing a batch to the dispatch stream and acknowledging it (failpoint `forwarder_after_write`) is
//! SIGKILLed there. A second `serve` against the same Redis takes the dead consumer's pending entries over
//! and carries on. Every admission reaches the dispatch stream, the only duplicates are the tickets the
//! killed process had written, and nothing stays pending.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dispatcher_admission::{
    AdmissionStore, EventId, EventSettings, RedisStore, TicketId, TicketState, UserId,
};
use testkit::RespValue;

use crate::support::{self, Children, TempDir};

const EVENTS: [&str; 6] = ["fwd-a", "fwd-b", "fwd-c", "fwd-d", "fwd-e", "fwd-f"];
/// Admissions waiting on the entry streams when the failing forwarder starts (its one batch).
const BEFORE: usize = 300;
/// Admissions made while no forwarder runs.
const BETWEEN: usize = 120;
/// Admissions made while the second forwarder runs.
const AFTER: usize = 120;
const GROUP: &str = "dispatcher-forwarder";
const FAILPOINT_LINE: &str = "failpoint forwarder_after_write reached";
const PATIENCE: Duration = Duration::from_secs(60);
const SIGKILL: i32 = 9;

/// One admission as the test made it.
#[derive(Debug, Clone)]
struct Admission {
    event: String,
    user: String,
    seq: u64,
}

/// One dispatch message.
#[derive(Debug, Clone)]
struct Message {
    fields: HashMap<String, String>,
}

impl Message {
    fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("dispatch message without {k}: {:?}", self.fields.keys()))
    }
}

async fn admit(
    store: &RedisStore,
    events: &[EventId],
    from: usize,
    count: usize,
    into: &mut HashMap<String, Admission>,
) {
    for i in from..from + count {
        let e = &events[i % events.len()];
        let user = (i % 3 != 0).then(|| format!("fwd-user-{i}"));
        let uid = user
            .as_ref()
            .map(|u| UserId::new(u.clone()).expect("user id"));
        let j = store.join(e, uid.as_ref()).await.expect("join");
        assert!(j.created);
        assert_eq!(
            j.ticket.state,
            TicketState::Admitted,
            "room for everyone: admitted at join"
        );
        into.insert(
            j.ticket.id.to_string(),
            Admission {
                event: e.to_string(),
                user: user.unwrap_or_default(),
                seq: j.ticket.seq,
            },
        );
    }
}

/// Every message of the dispatch stream, oldest first.
fn dispatch_messages(redis: &testkit::RedisServer, key: &str) -> Vec<Message> {
    let reply = redis
        .command(&["XRANGE", key, "-", "+"])
        .expect("XRANGE dispatch");
    let Some(entries) = reply.as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let parts = e.as_array().expect("entry is [id, fields]");
            let fields = parts[1].as_array().expect("fields");
            let fields = fields
                .chunks(2)
                .map(|kv| {
                    (
                        kv[0].as_text().expect("field name"),
                        kv[1].as_text().expect("field value"),
                    )
                })
                .collect();
            Message { fields }
        })
        .collect()
}

/// Entries pending in the forwarders' group, summed over `streams`.
fn pending(redis: &testkit::RedisServer, streams: &[String]) -> i64 {
    streams
        .iter()
        .map(|s| match redis.command(&["XPENDING", s, GROUP]) {
            Ok(RespValue::Array(v)) => v.first().and_then(RespValue::as_int).unwrap_or(0),
            Ok(other) => panic!("XPENDING {s}: {other:?}"),
            // No group yet on this stream: nothing pending.
            Err(e) if e.to_string().contains("NOGROUP") => 0,
            Err(e) => panic!("XPENDING {s}: {e}"),
        })
        .sum()
}

fn counts(messages: &[Message]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for m in messages {
        *c.entry(m.get("ticket").to_owned()).or_insert(0) += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_sigkilled_between_write_and_ack_loses_no_admission() {
    let redis = testkit::RedisServer::start().expect("spawn redis-server");
    let prefix = format!("fwdcrash{}", std::process::id());
    let store = support::store(&redis.url(), &prefix).await;
    let events: Vec<EventId> = EVENTS
        .iter()
        .map(|e| EventId::new(*e).expect("event id"))
        .collect();
    for e in &events {
        store
            .configure(
                e,
                &EventSettings {
                    session_ttl_ms: 3_600_000,
                    ..EventSettings::with_capacity(100_000)
                },
            )
            .await
            .expect("configure");
    }
    let shards = support::shards_of(&events, store.shard_count());
    assert!(shards.len() > 1, "the events span several shards");
    let all_streams: Vec<String> = (0..store.shard_count())
        .map(|s| store.entry_stream_key(s))
        .collect();
    let dispatch = format!("{prefix}:dispatch");

    let mut admitted: HashMap<String, Admission> = HashMap::new();
    admit(&store, &events, 0, BEFORE, &mut admitted).await;

    let dir = TempDir::new("fwdcrash");
    let keys = dir.0.join("keys");
    let config = dir.file(
        "dispatcher.toml",
        "[http]\nenabled = false\n[forwarder]\nreclaim_min_idle_ms = 500\n",
    );
    let mut children = Children::default();

    // 1. A forwarder that writes its first batch, then stops before acknowledging it.
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    {
        let first = children.spawn(
            support::serve(&redis.url(), &prefix)
                .arg("--config")
                .arg(&config)
                .env("DISPATCHER_KEY_DIR", &keys)
                .env("DISPATCHER_FAILPOINT", "forwarder_after_write")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = first.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let deadline = Instant::now() + PATIENCE;
    let mut log = Vec::new();
    loop {
        match lines_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let hit = line.contains(FAILPOINT_LINE);
                log.push(line);
                if hit {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "the first dispatcher exited before its failpoint:\n{}",
                    log.join("\n")
                )
            }
        }
        assert!(
            Instant::now() < deadline,
            "the failpoint was not reached within {PATIENCE:?}:\n{}",
            log.join("\n")
        );
    }
    let victim = &mut children.0[0];
    victim.kill().expect("SIGKILL the first dispatcher");
    let status = victim.wait().expect("reap it");
    assert_eq!(status.signal(), Some(SIGKILL), "it died of SIGKILL");

    // Killed between write and acknowledge: what it wrote is all still pending.
    let written = dispatch_messages(&redis, &dispatch);
    assert!(!written.is_empty(), "the killed forwarder wrote nothing");
    let written_tickets: HashSet<String> =
        written.iter().map(|m| m.get("ticket").to_owned()).collect();
    assert_eq!(
        written_tickets.len(),
        written.len(),
        "one batch, no duplicates yet"
    );
    assert_eq!(
        pending(&redis, &all_streams),
        written.len() as i64,
        "every message the killed forwarder wrote is pending, none acknowledged"
    );
    assert!(written_tickets.iter().all(|t| admitted.contains_key(t)));

    // 2. Admissions while no forwarder runs, then a healthy forwarder, then more admissions.
    admit(&store, &events, BEFORE, BETWEEN, &mut admitted).await;
    children.spawn(
        support::serve(&redis.url(), &prefix)
            .arg("--config")
            .arg(&config)
            .env("DISPATCHER_KEY_DIR", &keys)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    admit(&store, &events, BEFORE + BETWEEN, AFTER, &mut admitted).await;
    assert_eq!(admitted.len(), BEFORE + BETWEEN + AFTER);

    // 3. Everything arrives and nothing stays pending.
    let deadline = Instant::now() + PATIENCE;
    let messages = loop {
        // Pending first: an entry is acknowledged only after its message was written, so once nothing is
        // pending, the read that follows sees every message.
        let pend = pending(&redis, &all_streams);
        let messages = dispatch_messages(&redis, &dispatch);
        let seen = counts(&messages);
        let missing = admitted.keys().filter(|t| !seen.contains_key(*t)).count();
        if missing == 0 && pend == 0 {
            break messages;
        }
        if let Some(status) = children.0[1].try_wait().expect("try_wait") {
            panic!("the second dispatcher exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "after {PATIENCE:?}: {missing} admissions not dispatched, {pend} entries pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Every admission at least once; duplicates exactly the tickets the killed process wrote (its pending
    // entries were reclaimed and forwarded again); nothing else.
    let seen = counts(&messages);
    for (ticket, n) in &seen {
        assert!(
            admitted.contains_key(ticket),
            "a dispatch message for a ticket nobody admitted"
        );
        if written_tickets.contains(ticket) {
            assert_eq!(
                *n, 2,
                "a ticket the killed forwarder wrote is forwarded again once"
            );
        } else {
            assert_eq!(
                *n, 1,
                "a ticket the killed forwarder never wrote is duplicated"
            );
        }
    }
    assert_eq!(seen.len(), admitted.len(), "every admission is dispatched");

    // Every message matches its admission, and duplicates are identical (same token: the minting is
    // deterministic and both processes share the key directory).
    let verifier = dispatcher_token::KeyRing::load(&keys)
        .expect("the key directory")
        .verifier();
    let now_s = dispatcher_admission::system_now_ms() / 1000;
    let mut first_of: HashMap<&str, &Message> = HashMap::new();
    for m in &messages {
        let ticket = m.get("ticket");
        if let Some(prev) = first_of.insert(ticket, m) {
            assert_eq!(
                prev.fields, m.fields,
                "a duplicate differs from the first message"
            );
            continue;
        }
        let a = &admitted[ticket];
        assert_eq!(m.get("event"), a.event);
        assert_eq!(m.get("user"), a.user);
        assert_eq!(m.get("seq"), a.seq.to_string());
        let event = EventId::new(a.event.clone()).expect("event id");
        let t = store
            .ticket(&event, &TicketId::parse(ticket).expect("ticket id"))
            .await
            .expect("read ticket");
        assert_eq!(
            m.get("admitted_at_ms"),
            t.admitted_at_ms.expect("admitted").to_string()
        );
        assert_eq!(
            m.get("expires_at_ms"),
            t.expires_at_ms.expect("admitted").to_string()
        );
        let claims = verifier
            .verify(m.get("token"), Some(&a.event), now_s, 5)
            .unwrap_or_else(|e| panic!("a dispatched token does not verify: {e}"));
        assert_eq!(claims.jti, ticket);
        assert_eq!(claims.user.as_deref().unwrap_or(""), a.user);
    }
    assert_eq!(pending(&redis, &all_streams), 0);
    eprintln!(
        "forwarder crash: {} admissions, {} messages, {} written by the killed process and forwarded again",
        admitted.len(),
        messages.len(),
        written_tickets.len()
    );
}
