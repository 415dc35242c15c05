//! Helpers shared by the CLI tests: launching the `dispatcher` binary with a clean environment, a guard
//! that kills every child process (also when a test panics), and waits with timeouts.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dispatcher");

/// A `dispatcher` command whose environment holds none of the caller's `DISPATCHER_*` / `REDIS_URL`
/// settings, so a developer's shell cannot point a test at a real deployment.
pub fn dispatcher() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("DISPATCHER_") || k == "REDIS_URL" || k == "RUST_LIB_BACKTRACE" {
            c.env_remove(&k);
        }
    }
    // Keep error output short: a failing test prints it.
    c.env("RUST_BACKTRACE", "0");
    // Many processes at once: any free port for HTTP, and signing keys in a private directory instead
    // of the working directory.
    c.env("DISPATCHER_HTTP_ADDR", "127.0.0.1:0");
    c.env("DISPATCHER_KEY_DIR", key_dir());
    c.stdin(Stdio::null());
    c
}

/// A key directory private to this test process (removed with the OS's temp dir cleaning).
pub fn key_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dispatcher-test-keys-{}", std::process::id()))
}

/// `dispatcher serve` against a private Redis with the given key prefix.
pub fn serve(redis_url: &str, prefix: &str) -> Command {
    let mut c = dispatcher();
    c.arg("serve")
        .env("DISPATCHER_REDIS_URL", redis_url)
        .env("DISPATCHER_KEY_PREFIX", prefix)
        .env("DISPATCHER_LOG", "warn");
    c
}

/// A Redis store client with the key prefix the `serve` processes of a test use.
pub async fn store(redis_url: &str, prefix: &str) -> dispatcher_admission::RedisStore {
    dispatcher_admission::RedisStore::connect(
        redis_url,
        dispatcher_admission::RedisStoreOptions {
            prefix: prefix.to_owned(),
            ..Default::default()
        },
    )
    .await
    .expect("connect to the private Redis")
}

/// The distinct shards `events` map to, ascending.
pub fn shards_of(events: &[dispatcher_admission::EventId], shard_count: u16) -> Vec<u16> {
    let mut shards: Vec<u16> = events
        .iter()
        .map(|e| dispatcher_admission::shard_of(e, shard_count))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// Child processes killed (SIGKILL) and reaped when dropped, so a failing test leaves none behind.
#[derive(Debug, Default)]
pub struct Children(pub Vec<Child>);

impl Children {
    /// Spawns `cmd` and keeps the child.
    pub fn spawn(&mut self, cmd: &mut Command) -> &mut Child {
        let child = cmd.spawn().expect("spawn the dispatcher binary");
        self.0.push(child);
        let last = self.0.len() - 1;
        &mut self.0[last]
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // Already-exited children are fine: kill reports an error or nothing, wait reaps.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with captured output; kills it and fails the test after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Finished {
    let mut children = Children::default();
    let child = children.spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    match status {
        Some(status) => Finished {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not exit within {timeout:?}; killed it.\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

/// A fresh temporary directory for config files, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "dispatcher-cli-test-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    /// Writes `name` with `text` and returns its path.
    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
