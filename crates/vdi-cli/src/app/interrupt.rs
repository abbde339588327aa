//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: the first one runs the registered hooks (which
//! abort the virtual device set, so both roles stop cleanly and nothing claims
//! completion) and is remembered by name, so that messages say which signal it was; a
//! second one exits at once.
//!
//! Also the process-wide "the operation is over" flag ([`stop`], [`stopping`]): a read
//! of standard input that waits for a producer gives up once it is set (an aborted set,
//! a dead peer, a signal), instead of blocking for ever.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

type Hook = Box<dyn Fn() + Send>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
static NEXT: AtomicU64 = AtomicU64::new(0);
static HOOKS: Mutex<Vec<(u64, Hook)>> = Mutex::new(Vec::new());
static BEFORE_EXIT: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Installs the handler (once per process): a thread that receives the signals.
pub fn install() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                received(sig);
            }
        });
}

fn received(sig: i32) {
    // Signals arrive here one at a time, on this one thread.
    if INTERRUPTED.load(Ordering::Acquire) {
        super::eprint_line(format_args!(
            "error: {} again; exiting at once",
            name_of(sig)
        ));
        for h in BEFORE_EXIT.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h();
        }
        std::process::exit(130);
    }
    SIGNAL.store(sig, Ordering::Release);
    INTERRUPTED.store(true, Ordering::Release);
    STOPPING.store(true, Ordering::Release);
    let hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    for (_, h) in hooks.iter() {
        h();
    }
}

fn name_of(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP (the terminal went away)",
        _ => "a signal",
    }
}

/// Runs `hook` before a second interrupt exits the process at once (no destructor runs
/// then).
pub fn before_exit(hook: impl Fn() + Send + 'static) {
    BEFORE_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(hook));
}

/// Whether SIGINT, SIGTERM or SIGHUP was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// `interrupted (SIGTERM)`: how messages name the interruption.
pub fn what() -> String {
    format!("interrupted ({})", name_of(SIGNAL.load(Ordering::Acquire)))
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
    let mut hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
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
        HOOKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named() {
        assert_eq!(name_of(SIGTERM), "SIGTERM");
        assert_eq!(name_of(SIGINT), "SIGINT (Ctrl-C)");
    }
}
