//! Cancellation: the process-wide "interrupted" flag a front end raises on a signal
//! ([`interrupt`]), the hooks that run then (they abort the virtual device set, so both
//! roles stop cleanly and nothing claims completion), and the "the operation is over"
//! flag ([`stop`], [`stopping`]): a read of standard input that waits for a producer gives
//! up once it is set (an aborted set, a dead peer, a signal), instead of blocking for ever.
//!
//! One operation runs at a time in a process, so the flags are process-wide. The library
//! installs no signal handler: the front end does (the `vdi` binary handles SIGINT,
//! SIGTERM and SIGHUP) and calls [`interrupt`].
//!
//! ```
//! use vdi_backup::cancel;
//! let hook = cancel::on_interrupt(|| { /* abort the set */ });
//! assert!(!cancel::interrupted());
//! drop(hook);
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type Hook = Box<dyn Fn() + Send>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: Mutex<&'static str> = Mutex::new("a signal");
static STOPPING: AtomicBool = AtomicBool::new(false);
static NEXT: AtomicU64 = AtomicU64::new(0);
static HOOKS: Mutex<Vec<(u64, Hook)>> = Mutex::new(Vec::new());
static BEFORE_EXIT: Mutex<Vec<(u64, Hook)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The operation is interrupted by `signal` (as messages name it: `"SIGTERM"`): the first
/// call runs every registered hook and returns true; later calls do nothing and return
/// false (a front end then exits at once, after [`run_before_exit`]).
pub fn interrupt(signal: &'static str) -> bool {
    if INTERRUPTED.load(Ordering::Acquire) {
        return false;
    }
    *lock(&SIGNAL) = signal;
    INTERRUPTED.store(true, Ordering::Release);
    STOPPING.store(true, Ordering::Release);
    for (_, h) in lock(&HOOKS).iter() {
        h();
    }
    true
}

/// Runs `hook` before a second interrupt exits the process at once (no destructor runs
/// then).
pub fn before_exit(hook: impl Fn() + Send + 'static) {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock(&BEFORE_EXIT).push((id, Box::new(hook)));
}

/// Runs `hook` before a front end exits at once (as [`before_exit`]) while the returned
/// guard lives: a backup being written removes what it wrote, even when the process does
/// not wait for its threads.
pub fn before_exit_while(hook: impl Fn() + Send + 'static) -> ExitGuard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock(&BEFORE_EXIT).push((id, Box::new(hook)));
    ExitGuard(id)
}

/// Unregisters its [`before_exit_while`] hook when dropped.
#[derive(Debug)]
pub struct ExitGuard(u64);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        lock(&BEFORE_EXIT).retain(|(id, _)| *id != self.0);
    }
}

/// Runs the [`before_exit`] hooks (a front end calls it just before it exits at once).
pub fn run_before_exit() {
    for (_, h) in lock(&BEFORE_EXIT).iter() {
        h();
    }
}

/// Whether the operation was interrupted.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// The signal, as messages name it.
pub fn signal() -> &'static str {
    *lock(&SIGNAL)
}

/// `interrupted (SIGTERM)`: how messages name the interruption.
pub fn what() -> String {
    format!("interrupted ({})", signal())
}

/// Says that the operation is over (its set aborted, or its peer gone): reads that wait
/// for a producer give up.
pub fn stop() {
    STOPPING.store(true, Ordering::Release);
}

/// A new operation starts (the previous one's [`stop`] no longer holds, unless a signal
/// came).
pub fn go_on() {
    if !interrupted() {
        STOPPING.store(false, Ordering::Release);
    }
}

/// Whether the operation is over ([`stop`], or a signal).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Runs `hook` on an interrupt while the returned guard lives (at once if one came
/// already).
pub fn on_interrupt(hook: impl Fn() + Send + 'static) -> Guard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut hooks = lock(&HOOKS);
    if interrupted() {
        hook();
    }
    hooks.push((id, Box::new(hook)));
    Guard(id)
}

/// Unregisters its hook when dropped.
#[derive(Debug)]
pub struct Guard(u64);

impl Drop for Guard {
    fn drop(&mut self) {
        lock(&HOOKS).retain(|(id, _)| *id != self.0);
    }
}
