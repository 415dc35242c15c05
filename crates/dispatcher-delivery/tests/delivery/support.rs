//! Helpers shared by the delivery tests: a private Redis per test, a store over it, consumers and
//! leaders run in-process and stopped through their watch channel, a handler that records every run,
//! publishing, and waiting for a condition with a generous deadline.

// Each test module uses some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatcher_delivery::consumer::{self, ConsumerOptions, Handler, Message, Outcome};
use dispatcher_delivery::keys::Partitioning;
use dispatcher_delivery::leader::{self, LeaderOptions};
use dispatcher_delivery::stats::Stats;
use dispatcher_delivery::store::{self, Store};
use dispatcher_wire::frame::MessageId;
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The secret leaders and consumers share unless a test says otherwise.
pub const SECRET: &[u8] = b"test secret: correct horse battery staple";
/// How long a test waits for something that must happen before it fails.
pub const DEADLINE: Duration = Duration::from_secs(40);
/// The consumer group of the tests.
pub const GROUP: &str = "workers";

/// A private Redis and a store over it with keys unique to the test.
#[derive(Debug)]
pub struct Setup {
    pub redis: testkit::RedisServer,
    pub keys: Partitioning,
    pub store: Store,
    pub conn: ConnectionManager,
}

/// A fresh key prefix, so several setups on one server never share keys.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

impl Setup {
    /// A new Redis without persistence and `partitions` partitions of the stream `jobs`.
    pub async fn new(partitions: u16) -> Self {
        let redis = testkit::RedisServer::start().expect("spawn redis-server");
        Self::on(redis, partitions).await
    }

    /// A setup on an already running server.
    /// A fenced reader of new entries on its own connection (as a leader's partition task has).
    pub async fn reader(&self) -> dispatcher_delivery::store::Reader {
        let client = redis::Client::open(self.redis.url()).expect("client");
        dispatcher_delivery::store::Reader::open(&client, &self.store)
            .await
            .expect("open a reader")
    }

    pub async fn on(redis: testkit::RedisServer, partitions: u16) -> Self {
        let prefix = unique("t");
        let keys = Partitioning::new(format!("{prefix}:jobs"), partitions, format!("{prefix}:"))
            .expect("valid partitioning");
        let store = new_store(&redis.url(), &keys).await;
        let conn = store::connect(&redis.url())
            .await
            .expect("connect to the private Redis");
        Setup {
            redis,
            keys,
            store,
            conn,
        }
    }

    /// Appends `body` to partition `p`'s stream; returns its id.
    pub async fn publish(&self, p: u16, body: &str) -> MessageId {
        let mut conn = self.conn.clone();
        let id: String = redis::cmd("XADD")
            .arg(self.keys.stream_key(p))
            .arg("*")
            .arg("body")
            .arg(body)
            .query_async(&mut conn)
            .await
            .expect("XADD");
        id.parse().expect("a stream id")
    }

    /// Appends `n` messages spread round robin over the partitions (pipelined); returns (partition, id).
    pub async fn publish_many(&self, n: usize) -> Vec<(u16, MessageId)> {
        let mut out = Vec::with_capacity(n);
        let mut conn = self.conn.clone();
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut pipe = redis::pipe();
            let mut parts = Vec::with_capacity(chunk.len());
            for i in chunk {
                let p = (*i % usize::from(self.keys.partitions)) as u16;
                parts.push(p);
                pipe.cmd("XADD")
                    .arg(self.keys.stream_key(p))
                    .arg("*")
                    .arg("body")
                    .arg(format!("message {i}"));
            }
            let ids: Vec<String> = pipe.query_async(&mut conn).await.expect("XADD pipeline");
            for (p, id) in parts.into_iter().zip(ids) {
                out.push((p, id.parse().expect("a stream id")));
            }
        }
        out
    }

    /// The number of pending entries (delivered, not acknowledged) of partition `p`'s group.
    pub async fn pending(&self, p: u16) -> u64 {
        let mut conn = self.conn.clone();
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(self.keys.stream_key(p))
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        match v {
            redis::Value::Array(parts) => match parts.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                other => panic!("XPENDING summary starts with {other:?}"),
            },
            other => panic!("XPENDING replied {other:?}"),
        }
    }

    /// Pending entries over every partition.
    pub async fn pending_total(&self) -> u64 {
        let mut n = 0;
        for p in 0..self.keys.partitions {
            n += self.pending(p).await;
        }
        n
    }

    /// The entries of partition `p`'s dead-letter stream, as field maps.
    pub async fn dead_letters(&self, p: u16) -> Vec<HashMap<String, String>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.dead_key(p))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE dead letters");
        reply
            .ids
            .into_iter()
            .map(|e| {
                e.map
                    .iter()
                    .map(|(k, v)| {
                        let v: String = redis::from_redis_value_ref(v).unwrap_or_default();
                        (k.clone(), v)
                    })
                    .collect()
            })
            .collect()
    }

    /// The recorded result of every message in `ids` (None where there is none).
    pub async fn results(&self, ids: &[(u16, MessageId)]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(ids.len());
        for (p, id) in ids {
            out.push(self.store.result(*p, *id).await.expect("read a result"));
        }
        out
    }

    /// How many of `ids` have a recorded result.
    pub async fn done_count(&self, ids: &[(u16, MessageId)]) -> usize {
        self.results(ids)
            .await
            .iter()
            .filter(|r| r.is_some())
            .count()
    }
}

/// A store over its own connection to `url`.
pub async fn new_store(url: &str, keys: &Partitioning) -> Store {
    let conn = store::connect(url)
        .await
        .expect("connect to the private Redis");
    Store::new(conn, keys.clone(), GROUP)
        .await
        .expect("load the delivery functions")
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One handler run as the log saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub consumer: String,
    pub attempt: u16,
}

/// Every handler run of a test, per message (partition, id: stream ids repeat across partitions),
/// shared by its consumers.
#[derive(Debug, Default)]
pub struct Log {
    runs: Mutex<HashMap<(u16, MessageId), Vec<Run>>>,
}

impl Log {
    /// Handler runs per message.
    pub fn runs(&self) -> HashMap<(u16, MessageId), Vec<Run>> {
        self.runs.lock().expect("log lock").clone()
    }

    /// Runs of one message.
    pub fn runs_of(&self, p: u16, id: MessageId) -> Vec<Run> {
        self.runs
            .lock()
            .expect("log lock")
            .get(&(p, id))
            .cloned()
            .unwrap_or_default()
    }

    /// Handler runs in all.
    pub fn total_runs(&self) -> usize {
        self.runs
            .lock()
            .expect("log lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Messages whose handler ran more than once, with their runs.
    pub fn ran_twice(&self) -> Vec<((u16, MessageId), Vec<Run>)> {
        self.runs
            .lock()
            .expect("log lock")
            .iter()
            .filter(|(_, r)| r.len() > 1)
            .map(|(k, r)| (*k, r.clone()))
            .collect()
    }
}

/// What a handler does with one run: wait, then answer.
#[derive(Debug, Clone)]
pub struct Step {
    pub sleep: Duration,
    pub outcome: Outcome,
}

impl Step {
    pub fn done(m: &Message) -> Self {
        Step {
            sleep: Duration::ZERO,
            outcome: Outcome::Done(format!("ok {}", m.id).into_bytes()),
        }
    }
}

/// Decides a run: the message and how many times the handler has now run for it (1 on the first).
pub type Behaviour = Arc<dyn Fn(&Message, usize) -> Step + Send + Sync>;

/// A handler that logs every run, then does what its behaviour says.
pub struct TestHandler {
    name: String,
    log: Arc<Log>,
    behaviour: Behaviour,
}

impl std::fmt::Debug for TestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHandler")
            .field("name", &self.name)
            .finish()
    }
}

impl TestHandler {
    pub fn new(name: &str, log: Arc<Log>, behaviour: Behaviour) -> Arc<Self> {
        Arc::new(TestHandler {
            name: name.to_owned(),
            log,
            behaviour,
        })
    }

    /// A handler that records `ok <id>` for everything.
    pub fn ok(name: &str, log: Arc<Log>) -> Arc<Self> {
        Self::new(name, log, Arc::new(|m, _| Step::done(m)))
    }
}

impl Handler for TestHandler {
    async fn handle(&self, msg: Message) -> Outcome {
        let n = {
            let mut runs = self.log.runs.lock().expect("log lock");
            let v = runs.entry((msg.partition, msg.id)).or_default();
            v.push(Run {
                consumer: self.name.clone(),
                attempt: msg.attempt,
            });
            v.len()
        };
        let step = (self.behaviour)(&msg, n);
        if !step.sleep.is_zero() {
            tokio::time::sleep(step.sleep).await;
        }
        step.outcome
    }
}

/// A consumer served in-process on a free port.
#[derive(Debug)]
pub struct RunningConsumer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<dispatcher_delivery::Result<()>>,
}

/// Consumer options for tests.
pub fn consumer_options(id: &str, secret: &[u8]) -> ConsumerOptions {
    ConsumerOptions::new(id, secret.to_vec())
}

/// Serves a consumer on `addr` (`127.0.0.1:0` for any free port).
pub async fn start_consumer_on<H: Handler>(
    addr: &str,
    store: Store,
    opts: ConsumerOptions,
    handler: Arc<H>,
) -> RunningConsumer {
    let listener = TcpListener::bind(addr).await.expect("bind a consumer port");
    let addr = listener.local_addr().expect("local address");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(consumer::serve(listener, store, opts, handler, rx));
    RunningConsumer {
        url: format!("ws://{addr}/"),
        addr,
        stop,
        task,
    }
}

/// Serves a consumer on a free port with its own store connection.
pub async fn start_consumer<H: Handler>(
    setup: &Setup,
    opts: ConsumerOptions,
    handler: Arc<H>,
) -> RunningConsumer {
    let store = new_store(&setup.redis.url(), &setup.keys).await;
    start_consumer_on("127.0.0.1:0", store, opts, handler).await
}

impl RunningConsumer {
    /// Asks the consumer to shut down (its shutdown watch) without waiting.
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Shuts the consumer down and waits until `serve` returned.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the consumer stops within the deadline")
            .expect("consumer task");
        r.expect("consumer::serve returned an error");
    }
}

/// A leader run in-process.
#[derive(Debug)]
pub struct RunningLeader {
    pub stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<dispatcher_delivery::Result<()>>,
}

/// Leader options for tests: fast redials, default lease (1 s) and everything else as shipped.
pub fn leader_options(node: &str, consumers: Vec<String>, secret: &[u8]) -> LeaderOptions {
    let mut o = LeaderOptions::new(consumers, secret.to_vec());
    o.node_id = node.to_owned();
    o.redial_base = Duration::from_millis(20);
    o.redial_max = Duration::from_millis(300);
    o
}

/// Runs a leader with its own store connection.
pub async fn start_leader(setup: &Setup, opts: LeaderOptions) -> RunningLeader {
    let store = new_store(&setup.redis.url(), &setup.keys).await;
    let stats = Arc::new(Stats::default());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(leader::run(
        store,
        setup.redis.url(),
        opts,
        stats.clone(),
        rx,
    ));
    RunningLeader { stats, stop, task }
}

impl RunningLeader {
    /// Shuts the leader down (drain, release) and waits until `run` returned.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the leader stops within the deadline")
            .expect("leader task");
        r.expect("leader::run returned an error");
    }
}

/// Waits until a leader holds every partition's lease.
pub async fn wait_all_held(setup: &Setup) {
    wait_until(DEADLINE, "every partition's lease is held", || async {
        for p in 0..setup.keys.partitions {
            if setup.store.holder(p).await.ok().flatten().is_none() {
                return false;
            }
        }
        true
    })
    .await;
}

/// XINFO GROUPS of partition `p`: the one group's fields as text.
pub async fn group_info(setup: &Setup, p: u16) -> HashMap<String, String> {
    let mut conn = setup.conn.clone();
    let v: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(setup.keys.stream_key(p))
        .query_async(&mut conn)
        .await
        .expect("XINFO GROUPS");
    let redis::Value::Array(groups) = v else {
        panic!("XINFO GROUPS replied {v:?}")
    };
    for g in groups {
        let fields: Vec<redis::Value> = match g {
            redis::Value::Array(f) => f,
            redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => panic!("XINFO GROUPS entry {other:?}"),
        };
        let mut out = HashMap::new();
        for kv in fields.chunks(2) {
            let k: String = redis::from_redis_value_ref(&kv[0]).expect("field name");
            let v = match &kv[1] {
                redis::Value::Nil => "nil".to_owned(),
                other => redis::from_redis_value_ref::<String>(other).unwrap_or_default(),
            };
            out.insert(k, v);
        }
        if out.get("name").map(String::as_str) == Some(GROUP) {
            return out;
        }
    }
    panic!("no group {GROUP} on partition {p}")
}
