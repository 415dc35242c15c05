//! Integration tests: every helper spawns a real server and the assertions talk to it.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{
    Postgres, RedisCluster, RedisOptions, RedisServer, RespValue, Result, process_alive, wait_until,
};

fn text(value: &RespValue) -> String {
    value.as_text().unwrap_or_else(|| format!("{value:?}"))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn aof() -> RedisOptions {
    RedisOptions {
        aof: true,
        extra_args: Vec::new(),
    }
}

#[test]
fn redis_answers_ping_and_set_get() -> Result<()> {
    let redis = RedisServer::start()?;
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.command(&["PING"])?, RespValue::Simple("PONG".into()));
    assert_eq!(
        redis.command(&["SET", "greeting", "hello world"])?,
        RespValue::Simple("OK".into())
    );
    assert_eq!(text(&redis.command(&["GET", "greeting"])?), "hello world");
    assert!(redis.command(&["GET", "missing"])?.is_nil());
    assert_eq!(redis.command(&["INCRBY", "n", "41"])?.as_int(), Some(41));
    let mut conn = redis.connect()?;
    conn.command(&["RPUSH", "list", "a", "b"])?;
    let list = conn.command(&["LRANGE", "list", "0", "-1"])?;
    assert_eq!(
        list.as_array()
            .map(|items| items.iter().map(text).collect::<Vec<_>>()),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    // An error reply is an error.
    assert!(matches!(
        redis.command(&["INCR", "greeting"]),
        Err(testkit::Error::Redis(_))
    ));
    // It keeps nothing on disk.
    let config = redis.command(&["CONFIG", "GET", "save"])?;
    assert_eq!(
        config
            .as_array()
            .and_then(|a| a.get(1))
            .map(text)
            .as_deref(),
        Some("")
    );
    assert!(redis.dir().join("redis.log").exists());
    Ok(())
}

#[test]
fn redis_with_aof_keeps_data_across_restart_and_crash() -> Result<()> {
    let mut redis = RedisServer::start_with(aof())?;
    let port = redis.port();
    let config = redis.command(&["CONFIG", "GET", "appendfsync"])?;
    assert_eq!(
        config
            .as_array()
            .and_then(|a| a.get(1))
            .map(text)
            .as_deref(),
        Some("always")
    );

    redis.command(&["SET", "survives", "restart"])?;
    let first_pid = redis.pid();
    redis.restart()?;
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), first_pid);
    assert!(!process_alive(first_pid));
    assert_eq!(text(&redis.command(&["GET", "survives"])?), "restart");

    redis.command(&["SET", "crash", "proof"])?;
    let crashed_pid = redis.pid();
    redis.kill()?;
    assert!(!process_alive(crashed_pid));
    assert!(
        redis.command(&["PING"]).is_err(),
        "killed server still answers"
    );
    redis.start_again()?;
    assert_eq!(redis.port(), port);
    assert_eq!(text(&redis.command(&["GET", "crash"])?), "proof");
    assert_eq!(text(&redis.command(&["GET", "survives"])?), "restart");
    Ok(())
}

#[test]
fn redis_without_aof_forgets_on_restart() -> Result<()> {
    let mut redis = RedisServer::start()?;
    redis.command(&["SET", "ephemeral", "1"])?;
    redis.restart()?;
    assert!(redis.command(&["GET", "ephemeral"])?.is_nil());
    assert!(
        redis.start_again().is_err(),
        "start_again while running must fail"
    );
    Ok(())
}

#[test]
fn dropping_redis_kills_it_frees_the_port_and_removes_the_dir() -> Result<()> {
    let redis = RedisServer::start()?;
    let (pid, port, dir) = (redis.pid(), redis.port(), redis.dir().to_path_buf());
    assert!(process_alive(pid));
    assert!(!port_is_free(port));
    drop(redis);
    assert!(!process_alive(pid), "redis-server pid {pid} survived drop");
    assert!(wait_until(Duration::from_secs(5), || port_is_free(port)));
    assert!(!dir.exists(), "{} survived drop", dir.display());
    Ok(())
}

#[test]
fn cluster_of_three_masters_serves_keys() -> Result<()> {
    let cluster = RedisCluster::start(3)?;
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.nodes(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
    );
    for node in cluster.servers() {
        let info = text(&node.command(&["CLUSTER", "INFO"])?);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        let nodes = text(&node.command(&["CLUSTER", "NODES"])?);
        let masters = nodes.lines().filter(|l| l.contains("master")).count();
        assert_eq!(masters, 3, "{nodes}");
    }

    // Find the node owning the key's slot through CLUSTER SLOTS and write there directly.
    let key = "user:{42}:profile";
    let first = &cluster.servers()[0];
    let slot = first
        .command(&["CLUSTER", "KEYSLOT", key])?
        .as_int()
        .unwrap_or(-1);
    let slots = first.command(&["CLUSTER", "SLOTS"])?;
    let owner_port = slots
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|range| range.as_array())
        .find(|range| {
            let bound = |i: usize| range.get(i).and_then(RespValue::as_int).unwrap_or(-1);
            bound(0) <= slot && slot <= bound(1)
        })
        .and_then(|range| range.get(2)?.as_array()?.get(1)?.as_int())
        .unwrap_or(-1);
    let owner = cluster
        .servers()
        .iter()
        .find(|node| i64::from(node.port()) == owner_port)
        .expect("some node owns the slot");
    owner.command(&["SET", key, "direct"])?;
    assert_eq!(text(&owner.command(&["GET", key])?), "direct");
    // Any other node redirects...
    let other = cluster
        .servers()
        .iter()
        .find(|node| node.port() != owner.port())
        .expect("three nodes");
    match other.command(&["GET", key]) {
        Err(testkit::Error::Redis(message)) => assert!(message.starts_with("MOVED"), "{message}"),
        reply => panic!("expected MOVED, got {reply:?}"),
    }
    // ...and the cluster helper follows the redirection.
    assert_eq!(text(&cluster.command(&["GET", key])?), "direct");
    cluster.command(&["SET", "another-key", "v"])?;
    assert_eq!(text(&cluster.command(&["GET", "another-key"])?), "v");

    let pids: Vec<u32> = cluster.servers().iter().map(RedisServer::pid).collect();
    drop(cluster);
    for pid in pids {
        assert!(!process_alive(pid), "cluster node pid {pid} survived drop");
    }
    Ok(())
}

fn psql_cli(pg: &Postgres, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn postgres_answers_and_keeps_data_across_restart_and_crash() -> Result<()> {
    let mut pg = Postgres::start()?;
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert_eq!(psql_cli(&pg, "select 1"), "1");
    assert_eq!(pg.psql("show fsync")?, "on");
    assert_eq!(pg.psql("show synchronous_commit")?, "on");

    pg.psql("create table t (v text); insert into t values ('before restart')")?;
    let port = pg.port();
    pg.restart()?;
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("select v from t")?, "before restart");

    pg.psql("insert into t values ('before crash')")?;
    let crashed = pg.pid();
    pg.kill()?;
    assert!(
        !process_alive(crashed),
        "postmaster {crashed} survived kill()"
    );
    assert!(pg.psql("select 1").is_err(), "killed server still answers");
    pg.start_again()?;
    assert_ne!(pg.pid(), crashed);
    assert_eq!(
        pg.psql("select v from t order by v")?,
        "before crash\nbefore restart"
    );
    Ok(())
}

#[test]
fn dropping_postgres_stops_it_and_removes_the_dir() -> Result<()> {
    let pg = Postgres::start()?;
    let (pid, port, dir) = (pg.pid(), pg.port(), pg.dir().to_path_buf());
    assert!(process_alive(pid));
    assert!(pg.data_dir().join("PG_VERSION").exists());
    drop(pg);
    assert!(!process_alive(pid), "postmaster {pid} survived drop");
    assert!(wait_until(Duration::from_secs(5), || port_is_free(port)));
    assert!(!Path::new(&dir).exists(), "{} survived drop", dir.display());
    Ok(())
}

/// Set in a child run of this test binary to make `helper_*` tests do their part.
const HELPER_ENV: &str = "TESTKIT_TEST_HELPER";

/// Runs this test binary again, only `test_name`, with the helper switch on.
fn run_helper(test_name: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env(HELPER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper")
}

/// Reads the `pid=... dir=...` line a helper prints.
fn helper_report(child: &mut std::process::Child) -> (u32, std::path::PathBuf) {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    // libtest may print "test name ... " on the same line before our output.
    let mut lines = std::io::BufReader::new(stdout).lines();
    let report = lines
        .by_ref()
        .map_while(std::result::Result::ok)
        .find_map(|l| Some(l.split_once("pid=")?.1.to_owned()))
        .expect("helper reports its server");
    // Keep draining, or the helper dies of a broken pipe on its next line.
    std::thread::spawn(move || lines.for_each(drop));
    let (pid, dir) = report.split_once(" dir=").expect("pid=... dir=...");
    (pid.parse().expect("numeric pid"), dir.into())
}

static LEAKED: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();

#[test]
fn helper_leak_redis_in_static() -> Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let redis = LEAKED.get_or_init(|| RedisServer::start().expect("start redis"));
    println!("pid={} dir={}", redis.pid(), redis.dir().display());
    if std::env::var_os("TESTKIT_TEST_HELPER_HANG").is_some() {
        std::thread::sleep(Duration::from_secs(60));
    }
    Ok(())
}

static LEAKED_PG: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();

#[test]
fn helper_leak_postgres_in_static() -> Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let pg = LEAKED_PG.get_or_init(|| Postgres::start().expect("start postgres"));
    println!("pid={} dir={}", pg.pid(), pg.dir().display());
    Ok(())
}

#[test]
fn helper_start_anything() -> Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let _redis = RedisServer::start()?;
    Ok(())
}

#[test]
fn a_server_kept_in_a_static_is_killed_at_exit() {
    let mut child = run_helper("helper_leak_redis_in_static");
    let (pid, dir) = helper_report(&mut child);
    assert!(child.wait().expect("helper exits").success());
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(pid)),
        "redis-server {pid} outlived its test process"
    );
    assert!(!dir.exists(), "{} outlived its test process", dir.display());
}

#[test]
fn a_postgres_kept_in_a_static_is_killed_at_exit() {
    let mut child = run_helper("helper_leak_postgres_in_static");
    let (pid, dir) = helper_report(&mut child);
    assert!(child.wait().expect("helper exits").success());
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(pid)),
        "postmaster {pid} outlived its test process"
    );
    assert!(!dir.exists(), "{} outlived its test process", dir.display());
}

#[test]
fn servers_of_a_killed_test_process_are_reaped_by_the_next_one() {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "helper_leak_redis_in_static",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HELPER_ENV, "1")
        .env("TESTKIT_TEST_HELPER_HANG", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let (pid, dir) = helper_report(&mut child);
    child.kill().expect("SIGKILL the helper");
    child.wait().expect("reap the helper");
    // (Any testkit process starting meanwhile may already reap the orphan: no assertion here.)
    // The next process that uses testkit reaps it.
    let mut next = run_helper("helper_start_anything");
    assert!(next.wait().expect("helper exits").success());
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(pid)),
        "orphaned redis-server {pid} was not reaped"
    );
    assert!(!dir.exists(), "{} was not reaped", dir.display());
}
