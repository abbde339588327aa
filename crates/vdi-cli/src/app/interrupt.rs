//! Ctrl-C (SIGINT) and SIGTERM: the first one runs the registered hooks (which abort the
//! virtual device set, so both roles stop cleanly and nothing claims completion); a
//! second one exits at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type Hook = Box<dyn Fn() + Send>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static NEXT: AtomicU64 = AtomicU64::new(0);
static HOOKS: Mutex<Vec<(u64, Hook)>> = Mutex::new(Vec::new());
static BEFORE_EXIT: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Installs the handler (once per process).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::AcqRel) {
            super::eprint_line(format_args!("error: interrupted again; exiting at once"));
            for h in BEFORE_EXIT.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                h();
            }
            std::process::exit(130);
        }
        let hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
        for (_, h) in hooks.iter() {
            h();
        }
    });
}

/// Runs `hook` before a second interrupt exits the process at once (no destructor runs
/// then).
pub fn before_exit(hook: impl Fn() + Send + 'static) {
    BEFORE_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(hook));
}

/// Whether Ctrl-C (or SIGTERM) was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
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
