//! Shared helpers: free ports, polling, temporary directories, processes and executables.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Offset between a Redis Cluster node's client port and its cluster bus port.
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;

fn handed_out() -> MutexGuard<'static, HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A listener on a port of 127.0.0.1 the kernel picked, and that port.
fn bind_loopback() -> Result<(TcpListener, u16)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::NoFreePort(format!("bind 127.0.0.1:0: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::NoFreePort(format!("local_addr: {e}")))?
        .port();
    Ok((listener, port))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0); a port is never handed out twice within one process.
/// Another process may still take it before the caller binds it, so servers started by this
/// crate retry on a new port when theirs turns out to be taken.
pub fn free_port() -> Result<u16> {
    let mut used = handed_out();
    for _ in 0..1_000 {
        let (_listener, port) = bind_loopback()?;
        if used.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::NoFreePort(
        "the kernel kept returning ports this process already handed out".into(),
    ))
}

/// A server on 127.0.0.1 that accepts every connection and never says a word (a peer that hangs after
/// the TCP handshake); its port. The connections are held until the process ends.
pub fn silent_server() -> Result<u16> {
    let (listener, port) = bind_loopback()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    Ok(port)
}

/// A port `p` such that both `p` and `p + 10000` (a Redis Cluster bus port) are free on 127.0.0.1.
///
/// Never hands out a port (or bus port) twice within one process.
pub fn free_port_with_bus() -> Result<u16> {
    let mut used = handed_out();
    // Start somewhere random in [15000, 45000) so that parallel test processes rarely collide.
    let span = 30_000u64;
    let seed = RandomState::new().hash_one((std::process::id(), Instant::now()));
    let start = 15_000 + (seed % span);
    for i in 0..span {
        let port = u16::try_from(15_000 + (start - 15_000 + i * 7) % span).unwrap_or(15_000);
        let bus = port + CLUSTER_BUS_OFFSET;
        if used.contains(&port) || used.contains(&bus) {
            continue;
        }
        if bindable(port) && bindable(bus) {
            used.insert(port);
            used.insert(bus);
            return Ok(port);
        }
    }
    Err(Error::NoFreePort(
        "no port p in 15000..45000 with p and p+10000 both free".into(),
    ))
}

/// Polls `condition` until it returns true or `timeout` passes; returns whether it became true.
///
/// The condition is checked at least once, and once more at the deadline.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The state letter and process group of `pid`, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether process `pid` exists and is not a zombie (an exited process nobody reaped yet).
pub fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Live (non-zombie) members of process group `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            matches!(proc_stat(pid), Some((state, pgrp))
                if state != 'Z' && state != 'X' && pgrp == i64::from(pgid))
        })
        .collect()
}

/// Temporary directories of this process that are still alive, for the exit-time cleanup.
fn live_dirs_mutex() -> &'static Mutex<HashSet<PathBuf>> {
    static DIRS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn live_dirs() -> MutexGuard<'static, HashSet<PathBuf>> {
    live_dirs_mutex()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const DIR_PREFIX: &str = "dispatcher-testkit-";

/// SIGKILLs every process whose working directory is `dir` or below it (a redis-server runs in
/// its directory, a postmaster and its backends in the data directory), waits briefly for them
/// to die, then removes `dir`.
fn reap_dir(dir: &Path) {
    let victims: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            pid != std::process::id()
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect();
    for &pid in &victims {
        if let Ok(pid) = i32::try_from(pid) {
            crate::sys::signal(pid, crate::sys::SIGKILL);
        }
    }
    wait_until(Duration::from_secs(2), || {
        !victims.iter().any(|&pid| process_alive(pid))
    });
    if std::fs::remove_dir_all(dir).is_err() {
        std::thread::sleep(Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs at process exit: servers held in statics are never dropped, so kill whatever still
/// runs in this process's directories and remove them.
extern "C" fn reap_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // try_lock: another thread may hold the lock while the process exits; never hang.
        let dirs: Vec<PathBuf> = match live_dirs_mutex().try_lock() {
            Ok(mut dirs) => dirs.drain().collect(),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                poisoned.into_inner().drain().collect()
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        for dir in dirs {
            reap_dir(&dir);
        }
    });
}

/// Reaps directories left by testkit processes that are gone (killed by a test timeout, say),
/// with whatever servers still run in them.
fn reap_orphans(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner != std::process::id() && !process_alive(owner) {
            reap_dir(&entry.path());
        }
    }
}

/// A directory `<temp_dir>/dispatcher-testkit-<pid>-<n>`, removed with its contents on drop.
///
/// Should it never be dropped (a server kept in a `static`), the processes running in it are
/// killed and it is removed when the process exits; should the process die without exiting
/// (SIGKILL), the next process that creates a `TempDir` does the same.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        static FIRST_USE: std::sync::Once = std::sync::Once::new();
        let base = std::env::temp_dir();
        FIRST_USE.call_once(|| {
            reap_orphans(&base);
            crate::sys::at_exit(reap_at_exit);
        });
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    live_dirs().insert(path.clone());
                    return Ok(Self { path });
                }
                // Left over by an earlier process that had our pid: take the next number.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(format!("create {}", path.display()), e));
                }
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        live_dirs().remove(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The first `name` found in the directories of `$PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last `lines` lines of each of `files` that exist, headed by their names.
pub(crate) fn log_tail(files: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        if all.is_empty() {
            continue;
        }
        if files.len() > 1 {
            out.push_str(&format!("==> {} <==\n", file.display()));
        }
        for line in &all[all.len().saturating_sub(lines)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    if out.is_empty() {
        out.push_str("(log is empty or missing)\n");
    }
    out
}

/// Renders a command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s: &OsStr| {
            let s = s.to_string_lossy();
            if s.is_empty() || s.contains(char::is_whitespace) {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with stdin closed, returning its stdout; a non-zero exit becomes
/// [`Error::CommandFailed`] carrying stdout and stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run `{line}`"), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(Error::CommandFailed {
            command: line,
            status: output.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() -> Result<()> {
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let port = free_port()?;
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        let port = free_port_with_bus()?;
        assert!(!seen.contains(&port));
        assert!(bindable(port) && bindable(port + CLUSTER_BUS_OFFSET));
        Ok(())
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
    }

    #[test]
    fn own_process_is_alive_and_temp_dir_is_removed() -> Result<()> {
        assert!(process_alive(std::process::id()));
        let dir = TempDir::new()?;
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        assert!(path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with(&format!("dispatcher-testkit-{}-", std::process::id()))
        }));
        drop(dir);
        assert!(!path.exists());
        Ok(())
    }
}
