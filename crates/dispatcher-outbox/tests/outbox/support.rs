//! Helpers shared by the outbox tests: a private Postgres (one per test process) with a fresh database per
//! test, relays run in-process and stopped through their watch channel, reading the stream back, and
//! waiting for a condition with a generous deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dispatcher_outbox::{Backoff, OutboxMessage, Relay, RelayOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// How long a test waits for rows to reach the stream before it fails.
pub const DEADLINE: Duration = Duration::from_secs(45);

/// The Postgres server the tests of this process share (each test gets its own database in it).
pub fn shared_pg() -> &'static testkit::Postgres {
    static PG: OnceLock<testkit::Postgres> = OnceLock::new();
    PG.get_or_init(|| testkit::Postgres::start().expect("start a private PostgreSQL"))
}

/// A database of its own on `pg`, with the outbox schema migrated; returns its URL.
pub async fn fresh_db(pg: &testkit::Postgres) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let admin = connect(&pg.url()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    let base = pg.url();
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    let url = format!("{server}/{name}");
    let mut client = connect(&url).await;
    let applied = dispatcher_outbox::schema::migrate(&mut client)
        .await
        .expect("migrate");
    assert_eq!(applied, vec![1], "a fresh database gets migration 1");
    url
}

/// A client on `url` (its connection runs on a spawned task).
pub async fn connect(url: &str) -> dispatcher_outbox::db::Conn {
    dispatcher_outbox::db::connect(url, None)
        .await
        .expect("connect to the private Postgres")
}

/// Relay options for tests: short lease and tick, fast retries, no trimming.
pub fn options(db_url: &str, redis_url: &str, stream: &str, owner: &str) -> RelayOptions {
    RelayOptions {
        database_url: db_url.to_owned(),
        redis_url: redis_url.to_owned(),
        stream: stream.to_owned(),
        maxlen: 0,
        batch_size: 200,
        tick: Duration::from_millis(50),
        max_attempts: 10,
        retry: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        lease: Duration::from_secs(1),
        listen: true,
        owner: owner.to_owned(),
        ..RelayOptions::default()
    }
}

/// A relay running on the test's runtime.
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<dispatcher_outbox::Result<()>>,
}

impl RunningRelay {
    pub fn start(opts: RelayOptions) -> Self {
        let (stop, rx) = watch::channel(false);
        let relay = Relay::new(opts).expect("valid relay options");
        RunningRelay {
            stop,
            task: tokio::spawn(relay.run(rx)),
        }
    }

    /// Whether the relay has ended (it should only end when told to).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Signals shutdown and waits for a clean end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the relay stops within 30 s of the signal")
            .expect("the relay task did not panic");
        r.expect("the relay ends without an error");
    }
}

/// One entry of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub message_id: String,
    pub outbox_id: i64,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
}

/// Every entry of `stream`, oldest first (an absent key is an empty stream).
pub async fn entries(redis_url: &str, stream: &str) -> redis::RedisResult<Vec<Entry>> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    Ok(reply
        .ids
        .iter()
        .map(|e| {
            let text = |k: &str| {
                e.get::<String>(k)
                    .unwrap_or_else(|| panic!("stream entry {} has no field {k}", e.id))
            };
            Entry {
                message_id: text("message_id"),
                outbox_id: text("outbox_id").parse().expect("outbox_id is a number"),
                aggregate_id: text("aggregate_id"),
                event_type: text("event_type"),
                payload: text("payload"),
            }
        })
        .collect())
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test with `what` after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every outbox row is settled (sent or dead) and every sent row's id is in the stream;
/// returns the stream's entries.
pub async fn all_settled_and_published(db: &Client, redis_url: &str, stream: &str) -> Vec<Entry> {
    eventually("every outbox row settled and in the stream", || async {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'pending'),
                        coalesce(array_agg(id) FILTER (WHERE status = 'sent'), '{}')
                 FROM dispatcher.outbox",
                &[],
            )
            .await
            .ok()?;
        let pending: i64 = row.get(0);
        if pending > 0 {
            return None;
        }
        let sent: Vec<i64> = row.get(1);
        let got = entries(redis_url, stream).await.ok()?;
        let ids: HashSet<i64> = got.iter().map(|e| e.outbox_id).collect();
        sent.iter().all(|id| ids.contains(id)).then_some(got)
    })
    .await
}

/// A row's `(message_id, aggregate_id, status, attempts, last_error)`.
pub type RowState = (String, String, String, i32, Option<String>);

/// Every row's state, by id.
pub async fn rows(db: &Client) -> BTreeMap<i64, RowState> {
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

/// Checks the stream against the table: every row in it is sent, every sent row is in it, each entry
/// carries its row's message and aggregate ids, and per aggregate the first entries of its rows come in
/// id order (a row never precedes an earlier row of its aggregate). Returns how many entries were
/// duplicates.
pub fn check_stream_against_rows(got: &[Entry], rows: &BTreeMap<i64, RowState>) -> usize {
    let mut first_seen: HashSet<i64> = HashSet::new();
    let mut last_of_aggregate: HashMap<&str, i64> = HashMap::new();
    let mut duplicates = 0;
    for e in got {
        let (message_id, aggregate_id, status, _, _) = rows
            .get(&e.outbox_id)
            .unwrap_or_else(|| panic!("stream entry for unknown outbox row {}", e.outbox_id));
        assert_eq!(
            &e.message_id, message_id,
            "message id of row {}",
            e.outbox_id
        );
        assert_eq!(
            &e.aggregate_id, aggregate_id,
            "aggregate of row {}",
            e.outbox_id
        );
        assert_eq!(status, "sent", "row {} is in the stream", e.outbox_id);
        if !first_seen.insert(e.outbox_id) {
            duplicates += 1;
            continue;
        }
        if let Some(prev) = last_of_aggregate.insert(aggregate_id, e.outbox_id) {
            assert!(
                prev < e.outbox_id,
                "aggregate {aggregate_id}: row {} was published before row {prev}",
                e.outbox_id
            );
        }
    }
    for (id, (_, _, status, _, _)) in rows {
        if status == "sent" {
            assert!(
                first_seen.contains(id),
                "sent row {id} is not in the stream"
            );
        }
    }
    duplicates
}

/// Inserts `messages` in one transaction through the library's producer helper; returns their ids.
pub async fn enqueue(db: &mut Client, messages: &[OutboxMessage]) -> Vec<i64> {
    let tx = db.transaction().await.expect("begin");
    let ids = dispatcher_outbox::enqueue(&tx, messages)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    ids
}

/// A small message of `aggregate` with `seq` in its payload.
pub fn msg(aggregate: &str, seq: usize) -> OutboxMessage {
    OutboxMessage::new(
        "TestEvent",
        aggregate,
        format!(r#"{{"aggregate":"{aggregate}","seq":{seq}}}"#),
    )
}

/// A relay on a runtime of its own, on its own thread, so that it can "crash": every task it spawned
/// stops at once, mid-whatever, without a clean shutdown (no settle, no checkpoint, no lease release).
#[derive(Debug)]
pub struct CrashableRelay {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CrashableRelay {
    pub fn start(opts: RelayOptions) -> Self {
        let relay = Relay::new(opts).expect("valid relay options");
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("relay runtime");
            let (_stop, rx) = watch::channel(false);
            rt.block_on(async move {
                tokio::select! {
                    r = relay.run(rx) => panic!("the relay ended on its own: {r:?}"),
                    _ = killed => {}
                }
            });
            // Dropping the runtime cancels every task of the relay where it stands.
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        CrashableRelay {
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Stops the relay dead and waits until its tasks are gone.
    pub fn crash(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("the relay thread did not panic");
        }
    }
}

impl Drop for CrashableRelay {
    fn drop(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}
