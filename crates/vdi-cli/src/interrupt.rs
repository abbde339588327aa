//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: the first one interrupts the operation
//! ([`vdi_backup::cancel::interrupt`]: its hooks abort the virtual device set, so both
//! roles stop cleanly and nothing claims completion) and is remembered by name, so that
//! messages say which signal it was; a second one exits at once.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use vdi_backup::cancel;

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
                if !cancel::interrupt(name_of(sig)) {
                    crate::eprint_line(format_args!(
                        "error: {} again; exiting at once",
                        name_of(sig)
                    ));
                    cancel::run_before_exit();
                    std::process::exit(130);
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
