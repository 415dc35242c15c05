//! The outbox relay as processes (docs/guarantees.md#outbox-relay): `dispatcher outbox run` SIGKILLed mid-run
//! while another takes over, Redis crashed and restarted under a running relay, the `DISPATCHER_ENABLED` kill
//! switch, and the `migrate`, `status`, `replay` and `prune` commands with good and bad input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dispatcher_outbox::OutboxMessage;
use testkit::{Postgres, RedisOptions, RedisServer, RespValue};
use tokio::task::block_in_place;
use tokio_postgres::Client;

use crate::support::{self, Children};

const STREAM: &str = "test:outbox";
const DEADLINE: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const SIGKILL: i32 = 9;
/// Rows written at once just before the SIGKILL.
const BURST: usize = 600;

/// `dispatcher outbox <args>` against `db` and `redis`, with none of the caller's outbox settings.
fn outbox(db: &str, redis: &str, args: &[&str]) -> Command {
    let mut c = support::dispatcher();
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("DISPATCH_")
            || matches!(
                k.as_str(),
                "DATABASE_URL"
                    | "REDIS_STREAM_MAXLEN"
                    | "OUTBOX_RETENTION_DAYS"
                    | "DLQ_RETENTION_DAYS"
            )
        {
            c.env_remove(&k);
        }
    }
    c.arg("outbox")
        .args(args)
        .env("DATABASE_URL", db)
        .env("DISPATCHER_REDIS_URL", redis)
        .env("DISPATCH_STREAM_NAME", STREAM)
        .env("DISPATCHER_LOG", "warn");
    c
}

/// `dispatcher outbox run` with a short lease and tick.
fn relay(db: &str, redis: &str) -> Command {
    let mut c = outbox(db, redis, &["run"]);
    c.env("DISPATCH_LEASE_MS", "1000")
        .env("DISPATCH_TICK_MS", "50")
        .env("DISPATCH_BATCH_SIZE", "200");
    c
}

/// Runs a short command to completion, asserting it succeeded; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let f = support::run(cmd, COMMAND_TIMEOUT);
    assert!(
        f.status.success(),
        "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    f.stdout
}

/// Runs a short command that must fail; returns its stderr.
fn fails(cmd: &mut Command) -> String {
    let f = support::run(cmd, COMMAND_TIMEOUT);
    assert!(
        !f.status.success(),
        "{cmd:?} succeeded but should have failed:\n--- stdout ---\n{}",
        f.stdout
    );
    f.stderr
}

/// SIGTERM, as a deployment stops a relay.
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {}", child.id());
}

async fn connect(url: &str) -> dispatcher_outbox::db::Conn {
    dispatcher_outbox::db::connect(url, None)
        .await
        .expect("connect to the private Postgres")
}

fn msg(aggregate: &str, seq: usize) -> OutboxMessage {
    OutboxMessage::new(
        "TestEvent",
        aggregate,
        format!(r#"{{"aggregate":"{aggregate}","seq":{seq}}}"#),
    )
}

/// Writes `txs` transactions of `per_tx` rows over `aggregates` aggregates, one every `pause`.
async fn produce(url: String, txs: usize, per_tx: usize, aggregates: usize, pause: Duration) {
    let mut db = connect(&url).await;
    let mut seq = 0usize;
    for _ in 0..txs {
        let batch: Vec<_> = (0..per_tx)
            .map(|_| {
                seq += 1;
                msg(&format!("agg-{}", seq % aggregates), seq)
            })
            .collect();
        let tx = db.transaction().await.expect("begin");
        dispatcher_outbox::enqueue(&tx, &batch)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        tokio::time::sleep(pause).await;
    }
}

/// One stream entry.
#[derive(Debug, Clone)]
struct Entry {
    message_id: String,
    outbox_id: i64,
    aggregate_id: String,
}

/// The stream's entries, or `None` while Redis is unreachable.
fn stream_entries(redis: &RedisServer) -> Option<Vec<Entry>> {
    let reply = block_in_place(|| redis.command(&["XRANGE", STREAM, "-", "+"])).ok()?;
    let items = reply.as_array()?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let [_, RespValue::Array(kv)] = item.as_array()? else {
            panic!("unexpected XRANGE item {item:?}");
        };
        let fields: HashMap<String, String> = kv
            .chunks(2)
            .map(|c| {
                (
                    c[0].as_text().unwrap_or_default(),
                    c[1].as_text().unwrap_or_default(),
                )
            })
            .collect();
        out.push(Entry {
            message_id: fields["message_id"].clone(),
            outbox_id: fields["outbox_id"].parse().expect("outbox_id is a number"),
            aggregate_id: fields["aggregate_id"].clone(),
        });
    }
    Some(out)
}

/// A row's `(message_id, aggregate_id, status, attempts, last_error)`.
type RowState = (String, String, String, i32, Option<String>);

async fn rows(db: &Client) -> BTreeMap<i64, RowState> {
    db.query(
        "SELECT id, message_id::text, aggregate_id, status, attempts, last_error
         FROM dispatcher.outbox ORDER BY id",
        &[],
    )
    .await
    .expect("read the outbox")
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
    .collect()
}

/// Waits until no row is pending and every sent row is in the stream; returns the rows and the stream.
async fn wait_all_settled(
    db: &Client,
    redis: &RedisServer,
) -> (BTreeMap<i64, RowState>, Vec<Entry>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let state = rows(db).await;
        if state.values().all(|r| r.2 != "pending")
            && let Some(got) = stream_entries(redis)
        {
            let ids: HashSet<i64> = got.iter().map(|e| e.outbox_id).collect();
            if state
                .iter()
                .all(|(id, r)| r.2 != "sent" || ids.contains(id))
            {
                return (state, got);
            }
        }
        let pending = state.values().filter(|r| r.2 == "pending").count();
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}, {pending} of {} rows are still pending or missing from the stream",
            state.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row reached the stream or is dead with a reason; duplicates only by message id (each entry
/// carries its row's message id); per aggregate, a row's first entry never precedes an earlier row's.
/// Returns how many entries were duplicates.
fn check_delivery(state: &BTreeMap<i64, RowState>, got: &[Entry]) -> usize {
    let mut first: HashSet<i64> = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut duplicates = 0;
    for e in got {
        let (message_id, aggregate_id, status, _, _) = state
            .get(&e.outbox_id)
            .unwrap_or_else(|| panic!("stream entry for unknown row {}", e.outbox_id));
        assert_eq!(&e.message_id, message_id, "row {}", e.outbox_id);
        assert_eq!(&e.aggregate_id, aggregate_id, "row {}", e.outbox_id);
        assert_eq!(status, "sent", "row {} is in the stream", e.outbox_id);
        if !first.insert(e.outbox_id) {
            duplicates += 1;
            continue;
        }
        if let Some(prev) = last.insert(aggregate_id, e.outbox_id) {
            assert!(
                prev < e.outbox_id,
                "aggregate {aggregate_id}: row {} published before row {prev}",
                e.outbox_id
            );
        }
    }
    for (id, (_, _, status, _, err)) in state {
        match status.as_str() {
            "sent" => assert!(first.contains(id), "sent row {id} is not in the stream"),
            "dead" => assert!(err.is_some(), "dead row {id} has no reason"),
            other => panic!("row {id} is {other}"),
        }
    }
    let messages: HashSet<&str> = got.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(
        messages.len(),
        first.len(),
        "distinct message ids = distinct rows in the stream"
    );
    duplicates
}

/// Owners holding a live lease, with how many partitions.
async fn lease_owners(db: &Client) -> BTreeMap<String, i64> {
    db.query(
        "SELECT owner, count(*) FROM dispatcher.outbox_lease
         WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner",
        &[],
    )
    .await
    .expect("read leases")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Whether `owner` names the process `pid` (owners are `host-pid-random`).
fn owned_by(owner: &str, pid: u32) -> bool {
    owner.contains(&format!("-{pid}-"))
}

fn start_servers(aof: bool) -> (Postgres, RedisServer) {
    let pg = Postgres::start().expect("start a private PostgreSQL");
    let redis = RedisServer::start_with(RedisOptions {
        aof,
        ..Default::default()
    })
    .expect("start a private Redis");
    (pg, redis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_sigkilled_mid_run_loses_no_row_and_duplicates_only_by_message_id() {
    let (pg, redis) = start_servers(false);
    let (db_url, redis_url) = (pg.url(), redis.url());
    ok(&mut outbox(&db_url, &redis_url, &["migrate"]));
    let db = connect(&db_url).await;

    let mut children = Children::default();
    for _ in 0..2 {
        children.spawn(&mut relay(&db_url, &redis_url));
    }
    let (victim_pid, survivor_pid) = (children.0[0].id(), children.0[1].id());
    // Both relays hold partitions before the rows come.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let owners = lease_owners(&db).await;
        if owners.keys().any(|o| owned_by(o, victim_pid))
            && owners.keys().any(|o| owned_by(o, survivor_pid))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two relays never shared the partitions: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // About 3 s of rows over 40 aggregates; the victim dies a third of the way in, mid-batch: a burst of
    // rows lands, then a lock on the table stalls every settle while reading and publishing go on, so the
    // victim dies with entries in the stream that it has not marked sent.
    let producer = tokio::spawn(produce(
        db_url.clone(),
        100,
        30,
        40,
        Duration::from_millis(30),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut burst = connect(&db_url).await;
    let mut locker = connect(&db_url).await;
    let tx = burst.transaction().await.expect("begin the burst");
    let rows_of_burst: Vec<_> = (0..BURST)
        .map(|i| msg(&format!("burst-{}", i % 20), i))
        .collect();
    dispatcher_outbox::enqueue(&tx, &rows_of_burst)
        .await
        .expect("enqueue the burst");
    tx.commit().await.expect("commit the burst");
    let stall = locker.transaction().await.expect("begin");
    stall
        .batch_execute("LOCK TABLE dispatcher.outbox IN SHARE MODE")
        .await
        .expect("stall the settles");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owners = lease_owners(&db).await;
    assert!(
        owners
            .iter()
            .any(|(o, n)| owned_by(o, victim_pid) && *n > 0),
        "the victim holds partitions when it is killed: {owners:?}"
    );
    let victim = &mut children.0[0];
    assert!(
        victim.try_wait().expect("try_wait").is_none(),
        "the victim died on its own"
    );
    victim.kill().expect("SIGKILL the victim");
    let status = victim.wait().expect("reap the victim");
    assert_eq!(status.signal(), Some(SIGKILL));
    stall.commit().await.expect("end the stall");
    producer.await.expect("producer");

    let (state, got) = wait_all_settled(&db, &redis).await;
    assert_eq!(state.len(), 3000 + BURST);
    assert!(
        state.values().all(|r| r.2 == "sent" && r.3 == 0),
        "every row sent, none failed"
    );
    let duplicates = check_delivery(&state, &got);
    assert_eq!(got.len() - duplicates, 3000 + BURST);
    eprintln!("{duplicates} duplicate entries after the SIGKILL");
    assert!(
        duplicates > 0,
        "the victim died between publishing and marking rows sent; the survivor published them again"
    );
    // The survivor took over the victim's partitions.
    let owners = lease_owners(&db).await;
    assert!(
        owners.keys().all(|o| owned_by(o, survivor_pid)) && owners.values().sum::<i64>() == 32,
        "the survivor holds every partition: {owners:?}"
    );

    // SIGTERM: the survivor stops cleanly and releases its leases.
    let survivor = &mut children.0[1];
    assert!(
        survivor.try_wait().expect("try_wait").is_none(),
        "the survivor died"
    );
    sigterm(survivor);
    let status = support::wait_exit(survivor, Duration::from_secs(20)).expect("stops on SIGTERM");
    assert!(status.success(), "clean stop: {status}");
    assert!(
        lease_owners(&db).await.is_empty(),
        "leases released on a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crashed_and_restarted_with_aof_under_a_running_relay_loses_no_row() {
    let (pg, mut redis) = start_servers(true);
    let (db_url, redis_url) = (pg.url(), redis.url());
    ok(&mut outbox(&db_url, &redis_url, &["migrate"]));
    let db = connect(&db_url).await;
    let mut children = Children::default();
    children.spawn(&mut relay(&db_url, &redis_url));

    let producer = tokio::spawn(produce(
        db_url.clone(),
        80,
        25,
        20,
        Duration::from_millis(25),
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    block_in_place(|| redis.kill()).expect("kill redis");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    block_in_place(|| redis.start_again()).expect("start redis again");
    producer.await.expect("producer");

    let (state, got) = wait_all_settled(&db, &redis).await;
    assert_eq!(state.len(), 2000);
    for (id, (_, _, status, attempts, err)) in &state {
        assert_eq!(status, "sent", "row {id}");
        assert_eq!(
            *attempts, 0,
            "row {id}: Redis being away is not the row's failure"
        );
        assert!(err.is_none(), "row {id}: {err:?}");
    }
    let duplicates = check_delivery(&state, &got);
    assert_eq!(got.len() - duplicates, 2000);
    assert!(
        children.0[0].try_wait().expect("try_wait").is_none(),
        "the relay kept running through the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_stops_publishing_without_losing_rows() {
    let (pg, redis) = start_servers(false);
    let (db_url, redis_url) = (pg.url(), redis.url());
    ok(&mut outbox(&db_url, &redis_url, &["migrate"]));
    let mut db = connect(&db_url).await;

    let mut children = Children::default();
    children.spawn(relay(&db_url, &redis_url).env("DISPATCHER_ENABLED", "false"));
    let tx = db.transaction().await.expect("begin");
    let batch: Vec<_> = (0..50).map(|i| msg(&format!("agg-{}", i % 5), i)).collect();
    dispatcher_outbox::enqueue(&tx, &batch)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    // Thirty ticks later: nothing published, nothing claimed, the process idles.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let disabled = &mut children.0[0];
    assert!(
        disabled.try_wait().expect("try_wait").is_none(),
        "a disabled relay keeps running (idle) until stopped"
    );
    let len = block_in_place(|| redis.command(&["XLEN", STREAM])).expect("XLEN");
    assert_eq!(len.as_int(), Some(0), "a disabled relay publishes nothing");
    let state = rows(&db).await;
    assert!(
        state.values().all(|r| r.2 == "pending" && r.3 == 0),
        "{state:?}"
    );
    assert!(
        lease_owners(&db).await.is_empty(),
        "a disabled relay takes no lease"
    );
    sigterm(disabled);
    let status = support::wait_exit(disabled, Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success(), "{status}");

    // Switched back on: everything goes out.
    children.spawn(&mut relay(&db_url, &redis_url));
    let (state, got) = wait_all_settled(&db, &redis).await;
    assert_eq!(state.len(), 50);
    assert!(state.values().all(|r| r.2 == "sent"));
    assert_eq!(check_delivery(&state, &got), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_replay_and_prune_commands() {
    let (pg, redis) = start_servers(false);
    let (db_url, redis_url) = (pg.url(), redis.url());
    let cmd = |args: &[&str]| outbox(&db_url, &redis_url, args);

    let first = ok(&mut cmd(&["migrate"]));
    assert!(first.contains("applied outbox migrations [1]"), "{first}");
    let second = ok(&mut cmd(&["migrate"]));
    assert!(
        second.contains("up to date"),
        "migrate is idempotent: {second}"
    );

    let db = connect(&db_url).await;
    db.batch_execute(
        "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload, status, last_error, occurred_at)
         SELECT 'T', 'agg-' || i, '{}', s, e, now() - interval '1 hour'
         FROM (VALUES (1, 'pending', NULL), (2, 'pending', NULL), (3, 'pending', NULL),
                      (4, 'sent', NULL), (5, 'sent', NULL), (6, 'sent', NULL), (7, 'sent', NULL),
                      (8, 'dead', 'WRONGTYPE Operation against a key holding the wrong kind of value (after 10 attempts)'),
                      (9, 'dead', 'WRONGTYPE Operation against a key holding the wrong kind of value (after 10 attempts)'),
                      (10, 'dead', 'poison: stream entry of 5000 bytes is over the limit of 2048 bytes'))
              AS v(i, s, e)",
    )
    .await
    .expect("insert rows");
    let status = |db_url: &str| -> serde_json::Value {
        let out = ok(&mut outbox(db_url, &redis_url, &["status", "--json"]));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
    };
    let counts = |v: &serde_json::Value| {
        (
            v["pending"].as_i64(),
            v["sent"].as_i64(),
            v["dead"].as_i64(),
        )
    };
    let st = status(&db_url);
    assert_eq!(counts(&st), (Some(3), Some(4), Some(3)), "{st}");
    assert_eq!(st["stream"], STREAM);
    assert!(
        st["oldest_pending_age_secs"]
            .as_f64()
            .is_some_and(|a| a >= 3500.0),
        "{st}"
    );
    let text = ok(&mut cmd(&["status"]));
    assert!(
        text.contains("3 pending") && text.contains("4 sent") && text.contains("3 dead"),
        "{text}"
    );

    // Replay by error text: a dry run counts, then the real one puts the two rows back.
    let dry = ok(&mut cmd(&["replay", "--error", "WRONGTYPE", "--dry-run"]));
    assert!(dry.contains("2 dead rows match"), "{dry}");
    assert_eq!(
        counts(&status(&db_url)),
        (Some(3), Some(4), Some(3)),
        "a dry run changes nothing"
    );
    let done = ok(&mut cmd(&["replay", "--error", "wrongtype"]));
    assert!(done.contains("2 dead rows put back to pending"), "{done}");
    let st = status(&db_url);
    assert_eq!(counts(&st), (Some(5), Some(4), Some(1)), "{st}");
    let replayed: Vec<(i32, Option<String>)> = db
        .query(
            "SELECT attempts, last_error FROM dispatcher.outbox WHERE aggregate_id IN ('agg-8', 'agg-9')",
            &[],
        )
        .await
        .expect("read replayed rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        replayed,
        vec![(0, None), (0, None)],
        "attempts and error reset"
    );

    // Sent rows can be counted for a re-publication (after a Redis data loss) without changing them.
    let sent = ok(&mut cmd(&["replay", "--sent", "--dry-run"]));
    assert!(sent.contains("4 sent rows match"), "{sent}");

    // Prune with zero retention: every sent and dead row older than now; pending rows stay.
    let dry = ok(&mut cmd(&[
        "prune",
        "--sent-days",
        "0",
        "--dead-days",
        "0",
        "--dry-run",
    ]));
    assert!(
        dry.contains("would delete 4 sent rows") && dry.contains("1 dead rows"),
        "{dry}"
    );
    assert_eq!(
        counts(&status(&db_url)),
        (Some(5), Some(4), Some(1)),
        "a dry run deletes nothing"
    );
    let pruned = ok(&mut cmd(&[
        "prune",
        "--sent-days",
        "0",
        "--dead-days",
        "0",
        "--batch",
        "3",
    ]));
    assert!(
        pruned.contains("deleted 4 sent rows")
            && pruned.contains("1 dead rows")
            && pruned.contains("in 2 batches"),
        "{pruned}"
    );
    assert_eq!(counts(&status(&db_url)), (Some(5), Some(0), Some(0)));
    // Default retentions (7 and 30 days) keep rows an hour old.
    db.batch_execute(
        "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload, status, occurred_at)
         VALUES ('T', 'x', '{}', 'sent', now() - interval '1 hour')",
    )
    .await
    .expect("insert a sent row");
    let kept = ok(&mut cmd(&["prune"]));
    assert!(
        kept.contains("deleted 0 sent rows (older than 7 d)"),
        "{kept}"
    );
    assert_eq!(counts(&status(&db_url)), (Some(5), Some(1), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (pg, redis) = start_servers(false);
    let (db_url, redis_url) = (pg.url(), redis.url());
    let cmd = |args: &[&str]| outbox(&db_url, &redis_url, args);

    // Without the schema, the relay and the commands refuse and say what to do.
    let err = fails(&mut cmd(&["run"]));
    assert!(err.contains("dispatcher outbox migrate"), "{err}");
    let err = fails(&mut cmd(&["status"]));
    assert!(err.contains("dispatcher outbox migrate"), "{err}");

    ok(&mut cmd(&["migrate"]));
    let db = connect(&db_url).await;
    db.batch_execute(
        "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload, status, last_error)
         VALUES ('T', 'a', '{}', 'dead', 'WRONGTYPE (after 10 attempts)')",
    )
    .await
    .expect("insert a dead row");
    let before = rows(&db).await;

    let err = fails(&mut cmd(&["replay", "--since", "24"]));
    assert!(err.contains("--since") && err.contains("unit"), "{err}");
    let err = fails(&mut cmd(&["replay", "--since", "1h", "--until", "2h"]));
    assert!(err.contains("--until"), "{err}");
    let err = fails(&mut cmd(&["prune", "--batch", "0"]));
    assert!(err.contains("batch"), "{err}");
    assert_eq!(rows(&db).await, before, "refused commands change nothing");

    // The relay needs DATABASE_URL and valid settings.
    let err = fails(cmd(&["run"]).env_remove("DATABASE_URL"));
    assert!(err.contains("DATABASE_URL"), "{err}");
    let err = fails(cmd(&["run"]).env("DISPATCH_TICK_MS", "0"));
    assert!(err.contains("DISPATCH_TICK_MS"), "{err}");
    let err = fails(cmd(&["run"]).env("DISPATCH_BATCH_SIZE", "lots"));
    assert!(err.contains("DISPATCH_BATCH_SIZE"), "{err}");
    let err = fails(cmd(&["run"]).env("DISPATCHER_ENABLED", "maybe"));
    assert!(err.contains("DISPATCHER_ENABLED"), "{err}");
    assert_eq!(rows(&db).await, before, "refused relays change nothing");
}
