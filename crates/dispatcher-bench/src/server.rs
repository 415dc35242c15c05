//! A `dispatcher serve` process under test: spawned from the running binary with a generated
//! configuration, watched for readiness, measured (CPU, RSS) through `/proc`, and stopped on drop. The
//! server runs in its own process so its CPU and memory are its own
//! (docs/benchmarks.md#how-a-number-is-measured).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// The admin token the benches give the server they start.
pub(crate) const ADMIN: &str = "bench-admin-token-0123456789";

/// A running server.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts `exe serve -c <config>` with `config_toml` (which must not set `http_addr`, `key_dir` or
    /// the admin token: they are set here) and waits until `/healthz` answers.
    pub fn start(exe: &Path, config_toml: &str, admin_token: &str) -> Result<Self, BenchError> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| BenchError::Setup(format!("address: {e}")))?;
        let dir = std::env::temp_dir().join(format!(
            "dispatcher-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(format!("temp dir: {e}")))?;
        let cfg = dir.join("serve.toml");
        let mut f = std::fs::File::create(&cfg)
            .map_err(|e| BenchError::Setup(format!("config file: {e}")))?;
        f.write_all(config_toml.as_bytes())
            .map_err(|e| BenchError::Setup(format!("config file: {e}")))?;
        let log = std::fs::File::create(dir.join("serve.log"))
            .map_err(|e| BenchError::Setup(format!("log file: {e}")))?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env("DISPATCHER_HTTP_ADDR", addr.to_string())
            .env("DISPATCHER_KEY_DIR", dir.join("keys"))
            .env("DISPATCHER_ADMIN_TOKEN", admin_token)
            .env("DISPATCHER_LOG", "warn")
            .env_remove("DISPATCHER_REDIS_CLUSTER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("spawning {}: {e}", exe.display())))?;
        let mut s = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(BenchError::Setup(format!(
                    "dispatcher serve exited with {status}; its log: {}",
                    s.log_tail()
                )));
            }
            if healthz(addr) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "dispatcher serve did not answer /healthz within 15 s; its log: {}",
                    s.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the server has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.pid())
    }

    /// The server's resident memory, bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes_of(self.pid())
    }

    /// Deletes the bench's events with all their tickets (admin API), so runs leave nothing behind in a
    /// shared Redis. Best effort: failures are logged.
    pub fn delete_events(&self, events: &[String], admin_token: &str) {
        use std::io::Read;
        for e in events {
            let ok = (|| -> std::io::Result<bool> {
                let mut s =
                    std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                write!(
                    s,
                    "DELETE /v1/admin/events/{e}?force=true HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {admin_token}\r\nConnection: close\r\n\r\n"
                )?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                Ok(n >= 12 && &buf[9..12] == b"200")
            })();
            if !matches!(ok, Ok(true)) {
                tracing::warn!(event = %e, "could not delete a bench event");
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops a child process: SIGTERM (graceful drain), then SIGKILL if it is still running after `grace`.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn clock_ticks() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Setup(format!("finding a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("finding a free port: {e}")))
}

fn healthz(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident memory of process `pid`, bytes.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Reads Redis's persistence settings, for the report (docs/benchmarks.md#how-a-number-is-measured).
pub async fn redis_persistence(url: &str) -> String {
    let Ok(client) = redis::Client::open(url) else {
        return "unknown".into();
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return "unknown".into();
    };
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    let fsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    format!(
        "appendonly={} appendfsync={} save={:?}",
        aof.get(1).map(String::as_str).unwrap_or("?"),
        fsync.get(1).map(String::as_str).unwrap_or("?"),
        save.get(1).map(String::as_str).unwrap_or("?")
    )
}

/// Removes every key of a bench's private key prefix (streams included) after its server stopped. The
/// prefix is unique per run, so nothing else is touched.
pub async fn remove_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await;
        let Ok((next, keys)) = r else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<u64> =
                redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
