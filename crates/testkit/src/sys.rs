//! The two libc calls testkit needs: sending signals and reading the effective uid.
#![allow(unsafe_code)]

/// Sends `signal` to `pid` (a negative pid addresses a process group).
/// Returns false when the target does not exist (or the signal was refused).
pub(crate) fn signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes two plain integers and touches no memory of ours; an invalid or
    // vanished pid only makes it return -1 with errno set.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) use libc::{SIGKILL, SIGTERM};

/// Registers `handler` to run when the process exits normally (returning from `main` or
/// `std::process::exit`, which is how test harnesses end). Returns false if it could not.
pub(crate) fn at_exit(handler: extern "C" fn()) -> bool {
    // SAFETY: atexit(3) only stores the function pointer; `handler` is a plain `extern "C" fn`
    // with no captured state, valid for the whole life of the process.
    unsafe { libc::atexit(handler) == 0 }
}
