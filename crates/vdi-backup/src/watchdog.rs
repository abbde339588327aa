//! The progress watchdog: a peer that makes no progress (a stopped engine or backup
//! application, a producer that stopped writing) is warned about, then, after
//! `--stall-timeout`, the operation is aborted with a message naming the side that
//! stalled; and once the set is aborted, reads that wait for a producer are released
//! ([`crate::cancel::stop`]).
//!
//! "No progress" is judged only while this side waits for the peer: the engine while
//! commands are outstanding and none completes; the backup application while it has
//! every command done and no new one comes. Time spent in this side's own work (reading
//! a slow source, writing to a slow disk) is never blamed on the peer.
//!
//! One operation runs at a time in a process, so the counters are process-wide: the
//! roles call [`received`] and [`completed`] as commands come and go.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Kind, fail};

/// The default `--stall-timeout`.
pub const DEFAULT_STALL: &str = "5m";

static BASE: OnceLock<Instant> = OnceLock::new();
static LAST: AtomicU64 = AtomicU64::new(0);
static BUSY: AtomicI64 = AtomicI64::new(0);
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn now_ms() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A command was received (backup application) or completed (engine): progress.
pub fn progress() {
    LAST.store(now_ms(), Ordering::Release);
}

/// The backup application received a command: progress, and it is busy with it.
pub fn received() {
    BUSY.fetch_add(1, Ordering::AcqRel);
    progress();
}

/// The backup application completed a command.
pub fn completed() {
    BUSY.fetch_sub(1, Ordering::AcqRel);
    progress();
}

/// Whether the backup application has no command in hand (it waits for the engine).
pub fn idle() -> bool {
    BUSY.load(Ordering::Acquire) <= 0
}

/// The failure the watchdog aborted the operation with, if it did.
pub fn take_failure() -> Option<crate::Error> {
    FAILURE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map(|m| fail(Kind::PeerFailed, m))
}

/// What the watchdog watches.
pub struct Watch {
    /// Give up after this long without progress (None: never).
    pub limit: Option<Duration>,
    /// The peer, as messages name it: "the engine", "the backup application".
    pub peer: &'static str,
    /// Its process id, if known.
    pub pid: Option<u32>,
    /// What the peer did not do: "sent no command", "completed none of the commands".
    pub lacking: &'static str,
    /// `backup` or `restore`.
    pub op: &'static str,
    /// Whether this side now waits for the peer.
    pub waiting: Box<dyn Fn() -> bool + Send>,
    /// Whether the set is aborted.
    pub aborted: Box<dyn Fn() -> bool + Send>,
    /// Aborts the set.
    pub abort: Box<dyn Fn() + Send>,
}

/// The running watchdog; stops when dropped.
pub struct Guard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// How a process is doing, from `/proc/PID/stat`, when that explains a stall.
fn process_state(pid: u32) -> Option<&'static str> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    match state {
        "T" | "t" => Some("it is stopped, by SIGSTOP or a debugger"),
        "D" => Some("it is waiting for a disk or the network"),
        "Z" => Some("it has exited"),
        _ => None,
    }
}

impl Watch {
    fn who(&self) -> String {
        match self.pid {
            Some(p) => format!("{} (pid {p})", self.peer),
            None => self.peer.to_owned(),
        }
    }

    fn why(&self) -> String {
        self.pid
            .and_then(process_state)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    }

    /// Starts watching (the clock starts now).
    pub fn start(self) -> Guard {
        progress();
        BUSY.store(0, Ordering::Release);
        crate::cancel::go_on();
        *FAILURE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || self.run(&s2))
            .ok();
        Guard { stop, thread }
    }

    fn run(self, stop: &AtomicBool) {
        let warn_after = self.limit.map(|l| (l / 2).min(Duration::from_secs(60)));
        let mut warned: Option<u64> = None;
        while !stop.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(200));
            if (self.aborted)() {
                // The operation is over: nothing may keep waiting for a producer.
                crate::cancel::stop();
                return;
            }
            let now = now_ms();
            if !(self.waiting)() {
                // This side is at work, not waiting: the peer is not late.
                LAST.store(now, Ordering::Release);
            }
            let last = LAST.load(Ordering::Acquire);
            let idle = Duration::from_millis(now.saturating_sub(last));
            if let Some(since) = warned
                && last > since
            {
                tracing::info!(
                    "{} went on after {} s",
                    self.who(),
                    last.saturating_sub(since) / 1000
                );
                warned = None;
            }
            let (Some(limit), Some(warn)) = (self.limit, warn_after) else {
                continue;
            };
            if idle >= limit {
                let msg = format!(
                    "{} made no progress for {} s: it {}{}; the {} was aborted (if it needs longer, raise --stall-timeout)",
                    self.who(),
                    limit.as_secs(),
                    self.lacking,
                    self.why(),
                    self.op
                );
                *FAILURE.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                (self.abort)();
                crate::cancel::stop();
                return;
            }
            if idle >= warn && warned.is_none() {
                tracing::warn!(
                    "{} has made no progress for {} s: it {}{}; vdi gives up after {} s (--stall-timeout)",
                    self.who(),
                    idle.as_secs(),
                    self.lacking,
                    self.why(),
                    limit.as_secs()
                );
                warned = Some(last);
            }
        }
    }
}
