//! A private `redis-server` on a free port, in its own temporary directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::resp::{RespConnection, RespValue};
use crate::sys;
use crate::util::{self, TempDir};

/// How long a starting server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when another process steals ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;

const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "redis.stdout";

/// How to run a [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always` (every acknowledged write survives a crash).
    /// Without it the server keeps nothing on disk (`--save ""`).
    pub aof: bool,
    /// Further `redis-server` arguments, e.g. `["--maxmemory", "64mb"]`.
    pub extra_args: Vec<String>,
}

/// A `redis-server` process bound to `127.0.0.1:<port>`, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    pid: u32,
    port: u16,
    options: RedisOptions,
    binary: PathBuf,
    // Declared last so that it is removed after the process is gone.
    dir: TempDir,
}

pub(crate) fn redis_binary(name: &'static str) -> Result<PathBuf> {
    util::find_on_path(name).ok_or(Error::BinaryNotFound {
        binary: name,
        hint: "install Debian package redis-server (apt-get install -y redis-server)",
    })
}

impl RedisServer {
    /// Starts a server without persistence and waits until it answers PING.
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` and waits until it answers PING.
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        Self::launch(options, util::free_port)
    }

    /// Starts a server on a port chosen by `pick_port`, retrying on a fresh port when the
    /// chosen one turns out to be taken.
    pub(crate) fn launch(options: RedisOptions, pick_port: fn() -> Result<u16>) -> Result<Self> {
        let binary = redis_binary("redis-server")?;
        let dir = TempDir::new()?;
        let mut server = Self {
            child: None,
            pid: 0,
            port: pick_port()?,
            options,
            binary,
            dir,
        };
        let mut attempt = 1;
        loop {
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(Error::ExitedEarly { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("Address already in use") =>
                {
                    attempt += 1;
                    server.port = pick_port()?;
                    let _ = std::fs::remove_file(server.dir.path().join(LOG_FILE));
                    let _ = std::fs::remove_file(server.dir.path().join(STDIO_FILE));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's working directory (`--dir`): its log, AOF and RDB files live here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// The process id of the running server, or of the last one after [`kill`](Self::kill) or
    /// [`stop`](Self::stop).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Opens a new connection to the server.
    pub fn connect(&self) -> Result<RespConnection> {
        RespConnection::connect(self.addr())
    }

    /// Sends one command on a new connection and returns the reply.
    pub fn command(&self, args: &[&str]) -> Result<RespValue> {
        self.connect()?.command(args)
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 10 s) and starts it again on the same
    /// port and directory, waiting until it answers PING. With AOF the data survives.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Stops the server gracefully: SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(None)) {
            sys::signal(self.pid_i32(), sys::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        reap(child)
    }

    /// Kills the server with SIGKILL, as in a crash. Does nothing if it is not running.
    pub fn kill(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => reap(child),
            None => Ok(()),
        }
    }

    /// Starts the server again after [`kill`](Self::kill) or [`stop`](Self::stop), on the same
    /// port and directory, and waits until it answers PING.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::State(format!(
                "redis-server on port {} is still running; use restart()",
                self.port
            )));
        }
        self.child = None;
        self.spawn()
    }

    fn pid_i32(&self) -> i32 {
        i32::try_from(self.pid).unwrap_or(i32::MAX)
    }

    fn what(&self) -> String {
        format!("redis-server on 127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let dir = self.dir.path();
        util::log_tail(&[&dir.join(LOG_FILE), &dir.join(STDIO_FILE)], 20)
    }

    /// Spawns the process and waits until it answers PING.
    fn spawn(&mut self) -> Result<()> {
        let dir = self.dir.path().to_path_buf();
        let stdio_path = dir.join(STDIO_FILE);
        let open = || -> Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&stdio_path)
                .map_err(|e| Error::io(format!("open {}", stdio_path.display()), e))
        };
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(&dir)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join(LOG_FILE));
        if self.options.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        cmd.args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("spawn `{}`", util::describe(&cmd)), e))?;
        self.pid = child.id();
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::ExitedEarly {
                    what: self.what(),
                    status: status.to_string(),
                    log: self.log_path(),
                    log_tail: self.log_tail(),
                });
            }
            // A server still loading its AOF answers -LOADING: keep waiting.
            if let Ok(RespValue::Simple(pong)) = self.command(&["PING"])
                && pong == "PONG"
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(Error::NotReady {
                    what: self.what(),
                    timeout: READY_TIMEOUT,
                    log: self.log_path(),
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGKILLs `child` if it still runs and waits for it, so no zombie is left behind.
fn reap(mut child: Child) -> Result<()> {
    if matches!(child.try_wait(), Ok(None)) {
        // Fails only if it exited meanwhile; wait() below settles it either way.
        let _ = child.kill();
    }
    child
        .wait()
        .map(drop)
        .map_err(|e| Error::io(format!("wait for redis-server pid {}", child.id()), e))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
