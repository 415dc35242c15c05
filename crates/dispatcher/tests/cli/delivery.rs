//! Push delivery as processes (docs/guarantees.md#push-delivery): `dispatcher delivery run` leaders and
//! `dispatcher consumer` services sharing one Redis. A leader paused with SIGSTOP is fenced and writes
//! nothing after it resumes; leaders SIGKILLed mid-run lose no message and make no handler run twice; a
//! consumer SIGKILLed mid-run loses nothing and only the messages that were in its hands run again. The
//! consumers' run logs (`R` handler about to run, `W` result recorded by this consumer, `D` found done) are
//! the audit trail.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dispatcher_delivery::keys::Partitioning;
use dispatcher_wire::frame::MessageId;
use testkit::{RedisServer, RespConnection, RespValue};

use crate::support::{self, Children, TempDir};

const SECRET: &str = "cli delivery test secret, 16+ bytes";
const LEASE_TTL_MS: u64 = 1000;
/// How long the consumers' claims keep a message from running elsewhere (the default is far longer; a
/// killed consumer's claims must run out within the test).
const CLAIM_TTL_MS: u64 = 3000;
const DEADLINE: Duration = Duration::from_secs(45);
const SIGKILL: i32 = 9;
/// The load of the kill scenarios.
const RATE: u64 = 2000;
const PUBLISH_FOR: Duration = Duration::from_secs(12);
/// The consumers' handler in the kill scenarios.
const HANDLER: &str = "sleep:1";

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One Redis, its key layout, free ports for the consumers and a directory for logs and stats.
struct Deployment {
    redis: RedisServer,
    prefix: String,
    keys: Partitioning,
    dir: TempDir,
    consumer_ports: Vec<u16>,
    config: PathBuf,
}

impl Deployment {
    fn new(tag: &str, partitions: u16, consumers: usize) -> Self {
        let redis = RedisServer::start().expect("spawn redis-server");
        let prefix = format!("{tag}{}", std::process::id());
        let keys = Partitioning::new(format!("{prefix}:jobs"), partitions, format!("{prefix}:"))
            .expect("valid partitioning");
        let dir = TempDir::new(tag);
        let consumer_ports = (0..consumers)
            .map(|_| testkit::free_port().expect("a free port"))
            .collect();
        let config = dir.file(
            "dispatcher.toml",
            &format!("[delivery]\nclaim_ttl_ms = {CLAIM_TTL_MS}\n"),
        );
        Deployment {
            redis,
            prefix,
            keys,
            dir,
            consumer_ports,
            config,
        }
    }

    fn base(&self, name: &str) -> Command {
        let mut c = support::dispatcher();
        c.env("DISPATCHER_REDIS_URL", self.redis.url())
            .env("DISPATCHER_SHARED_SECRET", SECRET)
            .env("DISPATCHER_KEY_PREFIX", &self.prefix)
            .env(
                "DISPATCHER_DELIVERY_PARTITIONS",
                self.keys.partitions.to_string(),
            )
            .env("DISPATCHER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.0.join(format!("{name}.stderr")))
                    .expect("open a stderr file"),
            );
        c
    }

    /// `dispatcher delivery run` as node `node`, dialling every consumer.
    fn dispatcher(&self, node: &str) -> Command {
        let urls: Vec<String> = self
            .consumer_ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}/"))
            .collect();
        let mut c = self.base(node);
        c.args(["delivery", "run", "--config"])
            .arg(&self.config)
            .arg("--stats-file")
            .arg(self.stats_path(node))
            .env("DISPATCHER_CONSUMERS", urls.join(","))
            .env("DISPATCHER_NODE_ID", node)
            .env("DISPATCHER_LEASE_TTL_MS", LEASE_TTL_MS.to_string());
        c
    }

    fn stats_path(&self, node: &str) -> PathBuf {
        self.dir.0.join(format!("{node}.stats"))
    }

    /// `dispatcher consumer` number `i`, its `incarnation`-th process (each with its own run log).
    fn consumer(&self, i: usize, incarnation: usize) -> Command {
        self.consumer_with(i, incarnation, "noop")
    }

    /// The same with another `--handler`.
    fn consumer_with(&self, i: usize, incarnation: usize, handler: &str) -> Command {
        let mut c = self.base(&format!("c{i}"));
        c.args(["consumer", "--config"])
            .arg(&self.config)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.consumer_ports[i]),
                "--id",
                &format!("c{i}"),
                "--handler",
                handler,
                "--run-log",
            ])
            .arg(self.run_log(i, incarnation));
        c
    }

    fn run_log(&self, i: usize, incarnation: usize) -> PathBuf {
        self.dir.0.join(format!("c{i}.{incarnation}.log"))
    }

    fn stderr_tail(&self, name: &str) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.0.join(format!("{name}.stderr"))) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn wait_listening(&self) {
        for port in &self.consumer_ports {
            assert!(
                testkit::wait_until(DEADLINE, || std::net::TcpStream::connect((
                    "127.0.0.1",
                    *port
                ))
                .is_ok()),
                "consumer on port {port} never listened"
            );
        }
    }

    fn conn(&self) -> RespConnection {
        self.redis.connect().expect("connect to the private Redis")
    }

    /// The lease holder of every partition, `(owner, epoch)`.
    fn holders(&self, conn: &mut RespConnection) -> Vec<Option<(String, u64)>> {
        (0..self.keys.partitions)
            .map(|p| {
                let v = conn
                    .command(&["GET", &self.keys.lease_key(p)])
                    .expect("GET lease");
                v.as_text().and_then(|s| {
                    let (o, e) = s.rsplit_once('|')?;
                    Some((o.to_owned(), e.parse().ok()?))
                })
            })
            .collect()
    }

    fn wait_holders(
        &self,
        what: &str,
        mut ok: impl FnMut(&[Option<(String, u64)>]) -> bool,
    ) -> Vec<Option<(String, u64)>> {
        let mut conn = self.conn();
        let mut last = Vec::new();
        let done = testkit::wait_until(DEADLINE, || {
            last = self.holders(&mut conn);
            ok(&last)
        });
        assert!(done, "timed out waiting until {what}; holders: {last:?}");
        last
    }

    /// Which of `ids` have a recorded result (`d|…` in their result hash).
    fn done(&self, conn: &mut RespConnection, ids: &[Msg]) -> HashSet<Msg> {
        let mut by_key: HashMap<String, Vec<&Msg>> = HashMap::new();
        for x in ids {
            let id: MessageId = x.1.parse().expect("a message id");
            by_key
                .entry(self.keys.result_key(x.0, id))
                .or_default()
                .push(x);
        }
        let mut out = HashSet::new();
        for (key, xs) in by_key {
            let v = conn.command(&["HGETALL", &key]).expect("HGETALL");
            let items = v.as_array().unwrap_or(&[]);
            let mut state: HashMap<String, String> = HashMap::new();
            for kv in items.chunks(2) {
                if let [k, v] = kv {
                    state.insert(
                        k.as_text().unwrap_or_default(),
                        v.as_text().unwrap_or_default(),
                    );
                }
            }
            for x in xs {
                if state.get(&x.1).is_some_and(|s| s.starts_with("d|")) {
                    out.insert(x.clone());
                }
            }
        }
        out
    }

    fn wait_done(&self, ids: &[Msg]) {
        let mut conn = self.conn();
        let mut n = 0;
        let ok = testkit::wait_until(DEADLINE, || {
            n = self.done(&mut conn, ids).len();
            n == ids.len()
        });
        assert!(
            ok,
            "only {n} of {} messages have a result after {DEADLINE:?}",
            ids.len()
        );
    }

    fn pending(&self, conn: &mut RespConnection, p: u16) -> i64 {
        match conn.command(&["XPENDING", &self.keys.stream_key(p), "dispatcher"]) {
            Ok(v) => v
                .as_array()
                .and_then(|a| a.first())
                .and_then(RespValue::as_int)
                .unwrap_or(0),
            // No group yet: nothing pending.
            Err(_) => 0,
        }
    }

    fn wait_nothing_pending(&self) {
        let mut conn = self.conn();
        let mut left = Vec::new();
        let ok = testkit::wait_until(DEADLINE, || {
            left = (0..self.keys.partitions)
                .map(|p| self.pending(&mut conn, p))
                .collect();
            left.iter().all(|n| *n == 0)
        });
        assert!(ok, "entries still pending per partition: {left:?}");
    }

    fn dead_letters(&self, conn: &mut RespConnection) -> i64 {
        (0..self.keys.partitions)
            .map(|p| {
                conn.command(&["XLEN", &self.keys.dead_key(p)])
                    .expect("XLEN")
                    .as_int()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// XINFO CONSUMERS of partition `p`'s group: name → (pending, idle ms).
    fn group_consumers(&self, conn: &mut RespConnection, p: u16) -> HashMap<String, (i64, i64)> {
        let v = conn
            .command(&["XINFO", "CONSUMERS", &self.keys.stream_key(p), "dispatcher"])
            .expect("XINFO CONSUMERS");
        let mut out = HashMap::new();
        for c in v.as_array().unwrap_or(&[]) {
            let fields = c.as_array().unwrap_or(&[]);
            let mut m: HashMap<String, RespValue> = HashMap::new();
            for kv in fields.chunks(2) {
                if let [k, v] = kv {
                    m.insert(k.as_text().unwrap_or_default(), v.clone());
                }
            }
            let name = m
                .get("name")
                .and_then(RespValue::as_text)
                .unwrap_or_default();
            let pending = m.get("pending").and_then(RespValue::as_int).unwrap_or(-1);
            let idle = m.get("idle").and_then(RespValue::as_int).unwrap_or(-1);
            out.insert(name, (pending, idle));
        }
        out
    }
}

/// A message: its partition and its stream id (ids repeat across partitions: each partition stream
/// numbers its entries on its own).
type Msg = (u16, String);

fn xadd(conn: &mut RespConnection, keys: &Partitioning, p: u16) -> Msg {
    let v = conn
        .command(&["XADD", &keys.stream_key(p), "*", "body", "payload"])
        .expect("XADD");
    (p, v.as_text().expect("XADD returns the id"))
}

/// Publishes `n` messages round robin over the partitions.
fn publish_n(d: &Deployment, n: usize) -> Vec<Msg> {
    let mut conn = d.conn();
    (0..n)
        .map(|i| {
            xadd(
                &mut conn,
                &d.keys,
                (i % usize::from(d.keys.partitions)) as u16,
            )
        })
        .collect()
}

/// Publishes about `rate` messages a second into random partitions for `dur`, on its own thread.
fn publisher(
    addr: String,
    keys: Partitioning,
    rate: u64,
    dur: Duration,
) -> std::thread::JoinHandle<Vec<Msg>> {
    std::thread::spawn(move || {
        let mut conn = RespConnection::connect(addr).expect("publisher connects");
        let mut out = Vec::new();
        let start = Instant::now();
        while start.elapsed() < dur {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as usize;
            while out.len() < due {
                out.push(xadd(
                    &mut conn,
                    &keys,
                    rand::random_range(0..keys.partitions),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out
    })
}

/// What the consumers' run logs say, per message.
#[derive(Debug, Default)]
struct Audit {
    r: HashMap<Msg, u32>,
    w: HashMap<Msg, u32>,
    d: HashMap<Msg, u32>,
}

impl Audit {
    /// Reads run logs: lines `<R|W|D> <partition> <id>`.
    fn read(paths: &[PathBuf]) -> Self {
        let mut a = Audit::default();
        for path in paths {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for line in text.lines() {
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [tag, p, id] = parts.as_slice() else {
                    panic!("{}: run log line {line:?}", path.display());
                };
                let m = match *tag {
                    "R" => &mut a.r,
                    "W" => &mut a.w,
                    "D" => &mut a.d,
                    other => panic!("{}: unknown run log tag {other:?}", path.display()),
                };
                let p: u16 = p.parse().expect("a partition number");
                *m.entry((p, (*id).to_owned())).or_default() += 1;
            }
        }
        a
    }

    fn more_than_once(m: &HashMap<Msg, u32>) -> Vec<Msg> {
        let mut v: Vec<Msg> = m
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

/// The JSON lines of a stats file.
fn stats_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every event of a stats file: (kind, partition, epoch, t_ms).
fn stats_events(path: &Path) -> Vec<(String, u16, u64, u64)> {
    stats_lines(path)
        .iter()
        .flat_map(|l| l["events"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["partition"].as_u64().unwrap_or(u64::MAX) as u16,
                e["epoch"].as_u64().unwrap_or(0),
                e["t_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn counters(line: &serde_json::Value) -> (u64, u64) {
    (
        line["delivered"].as_u64().unwrap_or(u64::MAX),
        line["acked"].as_u64().unwrap_or(u64::MAX),
    )
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {}", child.id());
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert_eq!(status.signal(), Some(SIGKILL), "it died of SIGKILL");
}

fn assert_running(children: &mut Children, d: &Deployment, names: &[&str]) {
    for (c, name) in children.0.iter_mut().zip(names) {
        if let Some(status) = c.try_wait().expect("try_wait") {
            panic!(
                "{name} exited on its own: {status}\n{}",
                d.stderr_tail(name)
            );
        }
    }
}

#[test]
fn a_leader_paused_with_sigstop_is_fenced_and_writes_nothing_after_it_resumes() {
    let d = Deployment::new("dstop", 4, 2);
    let mut procs = Children::default();
    procs.spawn(&mut d.consumer(0, 0));
    procs.spawn(&mut d.consumer(1, 0));
    d.wait_listening();
    procs.spawn(&mut d.dispatcher("node-a"));
    let names = ["c0", "c1", "node-a", "node-b", "node-c"];
    let held_by = |h: &[Option<(String, u64)>], who: &str| {
        h.iter()
            .filter(|x| x.as_ref().is_some_and(|(o, _)| o == who))
            .count()
    };
    let a_holds = d.wait_holders("A holds every partition", |h| held_by(h, "node-a") == 4);
    let a_epochs: Vec<u64> = a_holds
        .iter()
        .map(|h| h.as_ref().map_or(0, |x| x.1))
        .collect();

    let mut all = publish_n(&d, 400);
    d.wait_done(&all);
    d.wait_nothing_pending();
    // A's counters settle (a stats line a second) before the pause.
    let a_stats = d.stats_path("node-a");
    assert!(
        testkit::wait_until(DEADLINE, || stats_lines(&a_stats)
            .last()
            .is_some_and(|l| counters(l).1 >= 400)),
        "A's stats never showed its acks"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let a_before = counters(stats_lines(&a_stats).last().expect("a stats line"));

    let t_stop = unix_ms();
    signal(&procs.0[2], "STOP");
    // Published while A is paused: A still holds the leases until they run out.
    all.extend(publish_n(&d, 400));
    procs.spawn(&mut d.dispatcher("node-b"));
    let b_holds = d.wait_holders("B holds every partition with a higher epoch", |h| {
        h.iter()
            .zip(&a_epochs)
            .all(|(x, a)| x.as_ref().is_some_and(|(o, e)| o == "node-b" && e > a))
    });
    all.extend(publish_n(&d, 400));
    d.wait_done(&all);
    d.wait_nothing_pending();
    // A third instance takes half of B's partitions, so that a resumed A has no fair share to claim.
    procs.spawn(&mut d.dispatcher("node-c"));
    let before_resume = d.wait_holders("B and C hold two partitions each", |h| {
        held_by(h, "node-b") == 2 && held_by(h, "node-c") == 2
    });
    for (p, h) in before_resume.iter().enumerate() {
        let (_, e) = h.as_ref().expect("held");
        assert!(
            *e >= b_holds[p].as_ref().expect("held").1,
            "partition {p}: epoch went backwards"
        );
    }

    let t_resume = unix_ms();
    signal(&procs.0[2], "CONT");
    std::thread::sleep(Duration::from_secs(3));
    assert_running(&mut procs, &d, &names);

    let mut conn = d.conn();
    let now = unix_ms();
    // The resumed A took no lease (it is still B's and C's, with the same epochs).
    let after = d.holders(&mut conn);
    assert_eq!(
        after,
        before_resume,
        "leases moved after A resumed (A's stderr:\n{})",
        d.stderr_tail("node-a")
    );
    // A found out it lost every partition it held, with the epochs it held them under.
    let events = stats_events(&a_stats);
    for (p, epoch) in a_epochs.iter().enumerate() {
        assert!(
            events.iter().any(|(k, ep, e, t)| k == "lost"
                && usize::from(*ep) == p
                && e == epoch
                && *t >= t_resume),
            "A's stats show no `lost` event for partition {p} epoch {epoch} after it resumed: {events:?}"
        );
    }
    let late: Vec<_> = events
        .iter()
        .filter(|(k, _, _, t)| *t >= t_resume && k != "lost")
        .collect();
    assert!(late.is_empty(), "A acted after resuming: {late:?}");
    // A delivered and acknowledged nothing more.
    let a_after = counters(stats_lines(&a_stats).last().expect("a stats line"));
    assert_eq!(
        a_after, a_before,
        "A's delivered/acked counters moved after it was paused"
    );
    // Redis agrees: A's consumer in every partition's group holds nothing and has not read or claimed
    // anything since before the pause.
    let mut idles = Vec::new();
    for p in 0..d.keys.partitions {
        let consumers = d.group_consumers(&mut conn, p);
        let (pending, idle) = *consumers
            .get("node-a")
            .unwrap_or_else(|| panic!("partition {p}: no consumer node-a in {consumers:?}"));
        assert_eq!(pending, 0, "partition {p}: A gained pending entries");
        let since_stop = (now - t_stop) as i64;
        idles.push(idle);
        assert!(
            idle >= since_stop - 300,
            "partition {p}: A touched the group {idle} ms ago, after its pause {since_stop} ms ago \
             (resumed {} ms ago)",
            now - t_resume
        );
        assert!(
            consumers
                .get("node-b")
                .is_some_and(|(_, idle)| (*idle as u64) < now - t_stop),
            "partition {p}: B never read it: {consumers:?}"
        );
    }
    eprintln!(
        "sigstop: A paused {} ms, resumed {} ms ago; A's consumer idle per partition {idles:?} ms; \
         A's epochs {a_epochs:?}, after: {after:?}",
        t_resume - t_stop,
        now - t_resume
    );
    // Every message ran once and was recorded once.
    let audit = Audit::read(&[d.run_log(0, 0), d.run_log(1, 0)]);
    let done = d.done(&mut conn, &all);
    assert_eq!(done.len(), all.len(), "messages without a result");
    for m in &all {
        assert_eq!(
            audit.w.get(m).copied().unwrap_or(0),
            1,
            "{m:?}: results recorded (W)"
        );
        assert_eq!(
            audit.r.get(m).copied().unwrap_or(0),
            1,
            "{m:?}: handler runs (R)"
        );
    }
    assert_eq!(d.dead_letters(&mut conn), 0);
    let b_acked = stats_lines(&d.stats_path("node-b"))
        .last()
        .map(|l| counters(l).1)
        .unwrap_or(0);
    assert!(
        b_acked >= 800,
        "B acknowledged {b_acked} messages; it should have delivered the 800 published during A's pause"
    );
}

/// The dispatcher holding the most partitions now, and its partitions with their epochs.
fn busiest(holders: &[Option<(String, u64)>], nodes: &[String]) -> (usize, Vec<(usize, u64)>) {
    let mut best = (0, Vec::new());
    for (i, n) in nodes.iter().enumerate() {
        let mine: Vec<(usize, u64)> = holders
            .iter()
            .enumerate()
            .filter_map(|(p, h)| match h {
                Some((o, e)) if o == n => Some((p, *e)),
                _ => None,
            })
            .collect();
        if mine.len() > best.1.len() {
            best = (i, mine);
        }
    }
    best
}

struct Report {
    published: usize,
    lost: Vec<Msg>,
    twice_w: Vec<Msg>,
    twice_r: Vec<Msg>,
}

fn check_all(d: &Deployment, all: &[Msg], logs: &[PathBuf]) -> (Report, Audit) {
    d.wait_done(all);
    d.wait_nothing_pending();
    let mut conn = d.conn();
    let done = d.done(&mut conn, all);
    let lost: Vec<Msg> = all.iter().filter(|x| !done.contains(x)).cloned().collect();
    let audit = Audit::read(logs);
    let published: HashSet<&Msg> = all.iter().collect();
    for m in audit.r.keys().chain(audit.w.keys()) {
        assert!(
            published.contains(m),
            "a run log names {m:?}, never published"
        );
    }
    assert_eq!(
        d.dead_letters(&mut conn),
        0,
        "messages were dead-lettered (their handlers never recorded a result)"
    );
    (
        Report {
            published: all.len(),
            lost,
            twice_w: Audit::more_than_once(&audit.w),
            twice_r: Audit::more_than_once(&audit.r),
        },
        audit,
    )
}

#[test]
fn leaders_sigkilled_mid_run_lose_nothing_and_reprocess_nothing() {
    let d = Deployment::new("dfail", 8, 2);
    let mut procs = Children::default();
    // Handlers that take a little time, so messages are in the consumers' hands when a leader dies.
    procs.spawn(&mut d.consumer_with(0, 0, HANDLER));
    procs.spawn(&mut d.consumer_with(1, 0, HANDLER));
    d.wait_listening();
    let nodes: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
    for n in &nodes {
        procs.spawn(&mut d.dispatcher(n));
    }
    d.wait_holders("every partition is held", |h| h.iter().all(Option::is_some));

    let started = Instant::now();
    let publisher = publisher(d.redis.addr(), d.keys.clone(), RATE, PUBLISH_FOR);
    let mut conn = d.conn();
    let mut kills = Vec::new();
    for at in [Duration::from_secs(3), Duration::from_secs(7)] {
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        let (i, theirs) = busiest(&d.holders(&mut conn), &nodes);
        assert!(!theirs.is_empty(), "no dispatcher holds a partition");
        sigkill(&mut procs.0[2 + i]);
        // Restarted at once, as a supervisor would.
        procs.0[2 + i] = d
            .dispatcher(&nodes[i])
            .spawn()
            .expect("restart a dispatcher");
        kills.push((nodes[i].clone(), theirs));
    }
    let all = publisher.join().expect("publisher thread");
    let elapsed = started.elapsed();
    let (report, _) = check_all(&d, &all, &[d.run_log(0, 0), d.run_log(1, 0)]);
    assert_running(&mut procs, &d, &["c0", "c1", "node-0", "node-1", "node-2"]);

    // Each victim's partitions moved on to higher epochs.
    let now = d.holders(&mut conn);
    for (who, theirs) in &kills {
        for (p, e) in theirs {
            let (_, e2) = now[*p].as_ref().expect("held");
            assert!(
                e2 > e,
                "partition {p} of the killed {who}: epoch {e2} after {e}"
            );
        }
    }
    eprintln!(
        "leader failover: {} messages in {elapsed:.1?}, kills {:?}, lost {}, W twice {}, R twice {}",
        report.published,
        kills
            .iter()
            .map(|(w, t)| format!("{w} ({} partitions)", t.len()))
            .collect::<Vec<_>>(),
        report.lost.len(),
        report.twice_w.len(),
        report.twice_r.len()
    );
    assert!(report.published > 5_000, "the publisher fell far behind");
    assert_eq!(report.lost, Vec::<Msg>::new(), "lost messages");
    assert_eq!(
        report.twice_w,
        Vec::<Msg>::new(),
        "messages whose result was recorded twice"
    );
    assert_eq!(
        report.twice_r,
        Vec::<Msg>::new(),
        "messages whose handler ran twice across a leader failover"
    );
}

#[test]
fn a_consumer_sigkilled_mid_run_loses_nothing_and_reruns_only_what_it_held() {
    let d = Deployment::new("dckill", 8, 2);
    let mut procs = Children::default();
    // Handlers that take a little time, so the killed consumer has messages in its hands.
    procs.spawn(&mut d.consumer_with(0, 0, HANDLER));
    procs.spawn(&mut d.consumer_with(1, 0, HANDLER));
    d.wait_listening();
    let nodes: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
    for n in &nodes {
        procs.spawn(&mut d.dispatcher(n));
    }
    d.wait_holders("every partition is held", |h| h.iter().all(Option::is_some));

    let started = Instant::now();
    let publisher = publisher(d.redis.addr(), d.keys.clone(), RATE, PUBLISH_FOR);
    std::thread::sleep(Duration::from_secs(4));
    let victim_log = d.run_log(0, 0);
    let before = Audit::read(std::slice::from_ref(&victim_log));
    assert!(
        !before.r.is_empty(),
        "consumer 0 ran nothing before the kill; the kill would prove nothing"
    );
    sigkill(&mut procs.0[0]);
    procs.0[0] = d
        .consumer_with(0, 1, HANDLER)
        .spawn()
        .expect("restart the consumer");
    let all = publisher.join().expect("publisher thread");
    let elapsed = started.elapsed();
    let logs = [d.run_log(0, 0), d.run_log(0, 1), d.run_log(1, 0)];
    let (report, audit) = check_all(&d, &all, &logs);
    assert_running(&mut procs, &d, &["c0", "c1", "node-0", "node-1", "node-2"]);

    // What the killed process had started and not recorded: the only messages allowed to run again,
    // and the only ones allowed to have no W (their result was recorded, the log line was not).
    let killed = Audit::read(std::slice::from_ref(&victim_log));
    let in_hands: HashSet<&Msg> = killed
        .r
        .keys()
        .filter(|m| !killed.w.contains_key(*m))
        .collect();
    let rerun_outside: Vec<&Msg> = report
        .twice_r
        .iter()
        .filter(|m| !in_hands.contains(m))
        .collect();
    let no_w_outside: Vec<&Msg> = all
        .iter()
        .filter(|m| !audit.w.contains_key(*m) && !in_hands.contains(m))
        .collect();
    eprintln!(
        "consumer kill: {} messages in {elapsed:.1?}, {} in the killed consumer's hands, lost {}, W twice {}, \
         R twice {} (outside its hands {})",
        report.published,
        in_hands.len(),
        report.lost.len(),
        report.twice_w.len(),
        report.twice_r.len(),
        rerun_outside.len()
    );
    assert!(report.published > 5_000, "the publisher fell far behind");
    assert_eq!(report.lost, Vec::<Msg>::new(), "lost messages");
    assert_eq!(
        report.twice_w,
        Vec::<Msg>::new(),
        "messages whose result was recorded twice"
    );
    assert!(
        rerun_outside.is_empty(),
        "messages that ran twice although the killed consumer never had them: {rerun_outside:?}"
    );
    assert!(
        no_w_outside.is_empty(),
        "messages without a W line that the killed consumer never had: {no_w_outside:?}"
    );
}
