//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: the first one interrupts the operation
//! ([`vdi_backup::cancel::interrupt`]: its hooks abort the virtual device set, so both
//! roles stop cleanly and nothing claims completion) and is remembered by name, so that
//! messages say which signal it was; a second one exits at once.
//!
//! A backup or a restore says at once what it does about the first one, and stops within
//! a second: if it is still running then (a device thread inside a slow zstd level cannot
//! be cut short), it exits without waiting for it, after removing what it wrote (the
//! [`cancel::before_exit`] hooks), as a second signal does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use vdi_backup::cancel;

/// How long a backup or a restore may take to stop after the first signal.
pub const STOP_WITHIN: Duration = Duration::from_millis(800);

static STOP_QUICKLY: AtomicBool = AtomicBool::new(false);

/// The command moves data (a backup or a restore): the first signal says what it does and
/// the process exits within [`STOP_WITHIN`].
pub fn stop_quickly() {
    STOP_QUICKLY.store(true, Ordering::Release);
}

/// Installs the handler (once per process): a thread that receives the signals.
pub fn install() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                // Signals arrive here one at a time, on this one thread.
                let quick = STOP_QUICKLY.load(Ordering::Acquire);
                // No progress bar stays behind the messages.
                crate::progress::clear_now();
                if !cancel::interrupt(name_of(sig)) {
                    crate::eprint_line(format_args!(
                        "error: {} again; exiting at once (removing what this operation wrote)",
                        name_of(sig)
                    ));
                    cancel::run_before_exit();
                    std::process::exit(130);
                }
                if quick {
                    crate::eprint_line(format_args!(
                        "vdi: {}: stopping: the set is aborted (the engine stops too), nothing is marked complete, and what was written is removed",
                        name_of(sig)
                    ));
                    let _ = std::thread::Builder::new()
                        .name("stop".into())
                        .spawn(|| {
                            std::thread::sleep(STOP_WITHIN);
                            crate::progress::clear_now();
                            crate::eprint_line(format_args!(
                                "error: {}: still finishing the data already received (compressing it) after {} ms; exiting now without it, removing what was written; nothing was marked complete",
                                cancel::what(),
                                STOP_WITHIN.as_millis()
                            ));
                            cancel::run_before_exit();
                            std::process::exit(130);
                        });
                }
            }
        });
}

fn name_of(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP (the terminal went away)",
        _ => "a signal",
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
