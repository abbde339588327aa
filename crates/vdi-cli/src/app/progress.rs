//! Progress: a bar per device (bytes, throughput, ETA) on a terminal, a plain log line
//! every few seconds otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vdi_cli::units::{human_bytes, human_rate};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bars on standard error (a terminal).
    Bars,
    /// Log lines on standard error.
    Log,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// Bars if standard error is a terminal, log lines otherwise, nothing if `quiet`.
    pub fn pick(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Log
        }
    }
}

struct Inner {
    label: String,
    bytes: Vec<AtomicU64>,
    total: AtomicU64,
    started: Instant,
    stop: AtomicBool,
}

/// Counters per device and the thread that shows them.
pub struct Progress {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("label", &self.inner.label)
            .finish()
    }
}

const UNKNOWN: u64 = u64::MAX;

impl Progress {
    /// Starts showing `devices` counters; `total` is the expected sum, if known.
    pub fn start(label: &str, devices: u32, total: Option<u64>, mode: Mode) -> Progress {
        let inner = Arc::new(Inner {
            label: label.to_owned(),
            bytes: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(total.unwrap_or(UNKNOWN)),
            started: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let i2 = inner.clone();
        let thread = match mode {
            Mode::Quiet => None,
            Mode::Bars => std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || bars(&i2))
                .ok(),
            Mode::Log => std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || log_lines(&i2))
                .ok(),
        };
        Progress { inner, thread }
    }

    /// Adds `n` bytes to device `device`.
    pub fn add(&self, device: u32, n: u64) {
        if let Some(b) = self.inner.bytes.get(device as usize) {
            b.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Stops showing progress; returns the elapsed time.
    pub fn finish(mut self) -> Duration {
        self.stop();
        self.inner.started.elapsed()
    }

    fn stop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pause(inner: &Inner, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if inner.stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(50).min(end - Instant::now()));
    }
    !inner.stop.load(Ordering::Acquire)
}

fn bars(inner: &Inner) {
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let known = ProgressStyle::with_template(
        "{prefix:>10} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let unknown = ProgressStyle::with_template(
        "{prefix:>10} {spinner} {bytes:>10} {bytes_per_sec:>12} {elapsed}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let n = inner.bytes.len() as u64;
    let bars: Vec<ProgressBar> = (0..n)
        .map(|i| {
            let b = mp.add(ProgressBar::new(0));
            b.set_prefix(format!("device {i}"));
            b
        })
        .collect();
    let _ = mp.println(&inner.label);
    loop {
        let total = inner.total.load(Ordering::Relaxed);
        let done: Vec<u64> = inner
            .bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum: u64 = done.iter().sum();
        for (b, &pos) in bars.iter().zip(&done) {
            if total == UNKNOWN {
                b.set_style(unknown.clone());
            } else {
                // Devices take what they can (dynamic distribution): each is expected to
                // take an equal share of what is left.
                let left = total.saturating_sub(sum);
                b.set_style(known.clone());
                b.set_length(pos + left / n.max(1));
            }
            b.set_position(pos);
        }
        if !pause(inner, Duration::from_millis(100)) {
            break;
        }
    }
    for b in &bars {
        b.finish();
    }
    let _ = mp.clear();
}

fn log_lines(inner: &Inner) {
    while pause(inner, Duration::from_secs(2)) {
        let total = inner.total.load(Ordering::Relaxed);
        let done: Vec<u64> = inner
            .bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum: u64 = done.iter().sum();
        let el = inner.started.elapsed();
        let of = if total == UNKNOWN {
            String::new()
        } else {
            format!(
                " of {} ({:.0}%)",
                human_bytes(total),
                100.0 * sum as f64 / total.max(1) as f64
            )
        };
        let per: Vec<String> = done
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i}:{}", human_bytes(*b)))
            .collect();
        tracing::info!(
            "{}: {}{of}, {}; devices {}",
            inner.label,
            human_bytes(sum),
            human_rate(sum, el),
            per.join(" ")
        );
    }
}
