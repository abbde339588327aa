//! Progress on screen: a bar per device (bytes, throughput, ETA) on a terminal, a plain log line
//! every few seconds otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vdi_backup::meter::{Meter, Show};
use vdi_backup::units::{human_bytes, human_rate};

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

/// Shows a meter as [`Mode`] says, on a thread of its own until dropped.
struct Shown {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Show for Mode {
    fn show(&self, meter: Arc<Meter>) -> Box<dyn Send> {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = match self {
            Mode::Quiet => None,
            Mode::Bars => std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || bars(&meter, &s2))
                .ok(),
            Mode::Log => std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || log_lines(&meter, &s2))
                .ok(),
        };
        Box::new(Shown { stop, thread })
    }
}

fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(50).min(end - Instant::now()));
    }
    !stop.load(Ordering::Acquire)
}

fn bars(inner: &Meter, stop: &AtomicBool) {
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
    let n = u64::from(inner.devices());
    let bars: Vec<ProgressBar> = (0..n)
        .map(|i| {
            let b = mp.add(ProgressBar::new(0));
            b.set_prefix(format!("device {i}"));
            b
        })
        .collect();
    let _ = mp.println(inner.label());
    loop {
        let total = inner.total();
        let done = inner.per_device();
        let sum: u64 = done.iter().sum();
        for (b, &pos) in bars.iter().zip(&done) {
            if let Some(total) = total {
                // Devices take what they can (dynamic distribution): each is expected to
                // take an equal share of what is left.
                let left = total.saturating_sub(sum);
                b.set_style(known.clone());
                b.set_length(pos + left / n.max(1));
            } else {
                b.set_style(unknown.clone());
            }
            b.set_position(pos);
        }
        if !pause(stop, Duration::from_millis(100)) {
            break;
        }
    }
    for b in &bars {
        b.finish();
    }
    let _ = mp.clear();
}

fn log_lines(inner: &Meter, stop: &AtomicBool) {
    while pause(stop, Duration::from_secs(2)) {
        let total = inner.total();
        let done = inner.per_device();
        let sum: u64 = done.iter().sum();
        let el = inner.elapsed();
        let of = match total {
            None => String::new(),
            Some(total) => format!(
                " of {} ({:.0}%)",
                human_bytes(total),
                100.0 * sum as f64 / total.max(1) as f64
            ),
        };
        let per: Vec<String> = done
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i}:{}", human_bytes(*b)))
            .collect();
        tracing::info!(
            "{}: {}{of}, {}; devices {}",
            inner.label(),
            human_bytes(sum),
            human_rate(sum, el),
            per.join(" ")
        );
    }
}
