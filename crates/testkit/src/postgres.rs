//! A private PostgreSQL server (`initdb` + `pg_ctl`) on a free port, in its own temporary directory.
//!
//! `initdb` refuses to run as root, so when this process is root the directory is handed to the
//! `postgres` user and `initdb`/`pg_ctl` run through `runuser -u postgres --` (or `su`).

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys;
use crate::util::{self, TempDir};

/// How long `pg_ctl start`/`stop` may take.
const PG_CTL_TIMEOUT_SECS: u32 = 60;
/// How long to wait for the TCP port after `pg_ctl start -w` reported success, and for a
/// killed server's processes to vanish.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when another process steals ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;

const DATA_DIR: &str = "data";
const SOCKET_DIR: &str = "socket";
const LOG_FILE: &str = "postgres.log";

const INSTALL_HINT: &str = "install Debian package postgresql (its binaries live in \
                            /usr/lib/postgresql/<version>/bin, which is searched too)";

#[derive(Debug)]
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    psql: Option<PathBuf>,
}

/// Numeric version of a `/usr/lib/postgresql/<version>` directory name, e.g. "9.6" -> [9, 6].
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn find_binaries() -> Result<Binaries> {
    let on_path = (util::find_on_path("initdb"), util::find_on_path("pg_ctl"));
    let (initdb, pg_ctl) = if let (Some(initdb), Some(pg_ctl)) = on_path {
        (initdb, pg_ctl)
    } else {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let key = version_key(entry.file_name().to_str()?)?;
                let bin = entry.path().join("bin");
                (util::is_executable(&bin.join("initdb"))
                    && util::is_executable(&bin.join("pg_ctl")))
                .then_some((key, bin))
            })
            .collect();
        versions.sort();
        let (_, bin) = versions.pop().ok_or(Error::BinaryNotFound {
            binary: "initdb/pg_ctl",
            hint: INSTALL_HINT,
        })?;
        (bin.join("initdb"), bin.join("pg_ctl"))
    };
    let sibling_psql = initdb.with_file_name("psql");
    let psql = util::find_on_path("psql")
        .or_else(|| util::is_executable(&sibling_psql).then_some(sibling_psql));
    Ok(Binaries {
        initdb,
        pg_ctl,
        psql,
    })
}

/// How to run a program as the `postgres` user while we are root.
#[derive(Debug)]
enum RunAs {
    Runuser(PathBuf),
    Su(PathBuf),
}

/// uid and gid of the `postgres` user.
fn postgres_ids() -> Result<(u32, u32)> {
    let from_passwd = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() > 3 && fields[0] == "postgres")
                    .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                    .flatten()
            })
        });
    let from_id = || {
        let id = |flag: &str| {
            util::run(Command::new("id").args([flag, "postgres"]))
                .ok()
                .and_then(|out| out.trim().parse().ok())
        };
        Some((id("-u")?, id("-g")?))
    };
    from_passwd.or_else(from_id).ok_or_else(|| {
        Error::Environment(
            "running as root, where initdb refuses to run, and there is no `postgres` user to run \
             it as; install Debian package postgresql (it creates the user) or run the tests as a \
             non-root user"
                .into(),
        )
    })
}

fn find_sbin(name: &str) -> Option<PathBuf> {
    util::find_on_path(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| util::is_executable(path))
    })
}

/// A PostgreSQL server on `127.0.0.1:<port>`, stopped (`-m immediate`) and removed on drop.
///
/// It runs with default durability (`fsync=on`, `synchronous_commit=on`), trust authentication
/// and superuser `postgres`.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    pid: u32,
    running: bool,
    binaries: Binaries,
    run_as: Option<RunAs>,
    // Declared last so that it is removed after the server is gone.
    dir: TempDir,
}

impl Postgres {
    /// Creates a cluster with `initdb`, starts it with `pg_ctl` on a free port and waits until it
    /// accepts connections.
    pub fn start() -> Result<Self> {
        let binaries = find_binaries()?;
        let dir = TempDir::new()?;
        let socket_dir = dir.path().join(SOCKET_DIR);
        std::fs::create_dir(&socket_dir)
            .map_err(|e| Error::io(format!("create {}", socket_dir.display()), e))?;
        let run_as = if sys::is_root() {
            let (uid, gid) = postgres_ids()?;
            for path in [dir.path(), &socket_dir] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| Error::io(format!("chown {} to postgres", path.display()), e))?;
            }
            Some(if let Some(runuser) = find_sbin("runuser") {
                RunAs::Runuser(runuser)
            } else if let Some(su) = find_sbin("su") {
                RunAs::Su(su)
            } else {
                return Err(Error::BinaryNotFound {
                    binary: "runuser",
                    hint: "install Debian package util-linux (needed to run initdb as postgres while root)",
                });
            })
        } else {
            None
        };
        let mut server = Self {
            port: util::free_port()?,
            pid: 0,
            running: false,
            binaries,
            run_as,
            dir,
        };

        // --no-sync only skips flushing the freshly created template files at the end of initdb;
        // the running server keeps fsync=on.
        let mut initdb = server.as_postgres(&server.binaries.initdb);
        initdb.arg("-D").arg(server.data_dir()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        util::run(&mut initdb)?;

        let mut attempt = 1;
        loop {
            match server.pg_start() {
                Ok(()) => return Ok(server),
                Err(e @ Error::CommandFailed { .. }) if attempt < PORT_ATTEMPTS => {
                    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
                    if !log.contains("Address already in use") {
                        return Err(e);
                    }
                    attempt += 1;
                    server.port = util::free_port()?;
                    let _ = std::fs::remove_file(server.log_path());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The temporary directory holding the data directory, socket directory and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join(DATA_DIR)
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join(SOCKET_DIR)
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// The postmaster's process id (of the last one after [`kill`](Self::kill)).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.running && util::process_alive(self.pid)
    }

    /// Runs `sql` with `psql -X -A -t -v ON_ERROR_STOP=1` as user `postgres` over TCP and
    /// returns its output, trimmed (rows on separate lines, columns separated by `|`).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let psql = self.binaries.psql.as_ref().ok_or(Error::BinaryNotFound {
            binary: "psql",
            hint: "install Debian package postgresql-client",
        })?;
        let out = util::run(
            Command::new(psql)
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ])
                .env("PGCONNECT_TIMEOUT", "10"),
        )?;
        Ok(out.trim().to_owned())
    }

    /// Stops the server (`pg_ctl stop -m fast`) and starts it again on the same port and data
    /// directory, waiting until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            let mut stop = self.pg_ctl(&["stop", "-m", "fast"]);
            util::run(&mut stop)?;
        }
        self.running = false;
        self.start_again()
    }

    /// Kills the postmaster with SIGKILL, then the rest of its process group (backends,
    /// checkpointer, ...), as in a crash, and waits until they are gone. Does nothing if the
    /// server is not running.
    pub fn kill(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        self.kill_group()
    }

    /// Starts the server again after [`kill`](Self::kill) (crash recovery replays the WAL) and
    /// waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::State(format!(
                "postgres on port {} is still running; use restart()",
                self.port
            )));
        }
        // A SIGKILLed postmaster leaves its lock files behind (postmaster.pid and the socket's
        // .lock); if nobody reaps it, its pid stays a zombie that the new postmaster would take
        // for a live one and refuse to start. Its whole group is dead (kill_group waited for
        // that), so the files are stale.
        if self.pid > 1
            && !util::process_alive(self.pid)
            && util::group_members(self.pid).is_empty()
        {
            let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
            let socket_lock = format!(".s.PGSQL.{}.lock", self.port);
            let _ = std::fs::remove_file(self.socket_dir().join(socket_lock));
        }
        self.pg_start()
    }

    /// SIGKILLs the postmaster and its process group and waits until they are gone.
    fn kill_group(&mut self) -> Result<()> {
        let pid = i32::try_from(self.pid).unwrap_or(i32::MAX);
        if pid <= 1 {
            return Ok(());
        }
        sys::signal(pid, sys::SIGKILL);
        // pg_ctl makes the postmaster a session and process group leader (setsid).
        sys::signal(-pid, sys::SIGKILL);
        let gone = util::wait_until(SETTLE_TIMEOUT, || {
            !util::process_alive(self.pid) && util::group_members(self.pid).is_empty()
        });
        if gone {
            Ok(())
        } else {
            Err(Error::State(format!(
                "postgres processes of group {} still alive {SETTLE_TIMEOUT:?} after SIGKILL: {:?}",
                self.pid,
                util::group_members(self.pid)
            )))
        }
    }

    /// `program` run as the `postgres` user when we are root, else directly.
    fn as_postgres(&self, program: &Path) -> Command {
        let mut cmd = match &self.run_as {
            None => Command::new(program),
            Some(RunAs::Runuser(runuser)) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
            Some(RunAs::Su(su)) => {
                // su passes the arguments after -c's script to the shell as $0, $1, ...
                let mut cmd = Command::new(su);
                cmd.args(["-s", "/bin/sh", "postgres", "-c", "exec \"$0\" \"$@\""])
                    .arg(program);
                cmd
            }
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn pg_ctl(&self, action: &[&str]) -> Command {
        let mut cmd = self.as_postgres(&self.binaries.pg_ctl);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string()])
            .args(action);
        cmd
    }

    /// `pg_ctl start -w`, then reads the postmaster's pid and checks the TCP port.
    fn pg_start(&mut self) -> Result<()> {
        let socket_dir = self.socket_dir();
        // pg_ctl hands -o to a shell: quote the path.
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            socket_dir.display()
        );
        let log = self.log_path();
        let mut start = self.pg_ctl(&[]);
        start
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options)
            .arg("start");
        if let Err(e) = util::run(&mut start) {
            // pg_ctl -w gave up: make sure nothing half-started lingers.
            if let Some(pid) = self.read_pid() {
                self.pid = pid;
                let _ = self.kill_group();
            }
            return Err(match e {
                Error::CommandFailed {
                    command,
                    status,
                    output,
                } => Error::CommandFailed {
                    command,
                    status,
                    output: format!(
                        "{output}\nlast lines of {}:\n{}",
                        log.display(),
                        util::log_tail(&[&log], 20)
                    ),
                },
                other => other,
            });
        }
        self.pid = self.read_pid().ok_or_else(|| {
            Error::State(format!(
                "pg_ctl start succeeded but {}/postmaster.pid is unreadable",
                self.data_dir().display()
            ))
        })?;
        self.running = true;
        let port = self.port;
        if !util::wait_until(SETTLE_TIMEOUT, || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
        }) {
            return Err(Error::NotReady {
                what: format!("postgres on 127.0.0.1:{port}"),
                timeout: SETTLE_TIMEOUT,
                log: log.clone(),
                log_tail: util::log_tail(&[&log], 20),
            });
        }
        Ok(())
    }

    /// The postmaster pid from the first line of `postmaster.pid`.
    fn read_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = util::run(&mut self.pg_ctl(&["stop", "-m", "immediate"]));
            if util::process_alive(self.pid) || !util::group_members(self.pid).is_empty() {
                let _ = self.kill_group();
            }
            self.running = false;
        }
    }
}
