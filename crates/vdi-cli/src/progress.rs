//! Progress on screen: a bar per device (bytes, throughput, ETA) on a terminal, a plain log line
//! every few seconds otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vdi_backup::meter::{Meter, Show};
use vdi_backup::units::human_bytes;

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

/// The bars being drawn, so that a signal can clear them before it prints a line.
static ACTIVE: std::sync::Mutex<Option<MultiProgress>> = std::sync::Mutex::new(None);

/// Clears the bars now (before a message, or an exit that skips the drawing thread's
/// own clean-up): nothing stale stays on the terminal.
pub fn clear_now() {
    // The drawing thread updates the bars only while it holds this lock and they are
    // still here: once taken, nothing draws them again.
    if let Some(mp) = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = mp.clear();
        mp.set_draw_target(ProgressDrawTarget::hidden());
    }
    restore_echo();
}

/// The terminal's settings before the bars turned off the echo of control characters.
static SAVED_TERMIOS: std::sync::Mutex<Option<rustix::termios::Termios>> =
    std::sync::Mutex::new(None);

/// While bars are drawn, a Ctrl-C is not echoed as `^C`: the echo would move the cursor
/// to a new line below the bars (they end at the last column), so that clearing them
/// would leave the first one on the screen.
fn quiet_echo() {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let err = std::io::stderr();
    let Ok(t) = tcgetattr(&err) else { return };
    if !t.local_modes.contains(LocalModes::ECHOCTL) {
        return;
    }
    let mut quiet = t.clone();
    quiet.local_modes.remove(LocalModes::ECHOCTL);
    if tcsetattr(&err, OptionalActions::Now, &quiet).is_ok() {
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }
}

fn restore_echo() {
    if let Some(t) = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = rustix::termios::tcsetattr(
            std::io::stderr(),
            rustix::termios::OptionalActions::Now,
            &t,
        );
    }
}

/// The columns of a bar line before its text: the prefix (6), ` [`, the bar (14), `] `.
const BAR_COLUMNS: usize = 6 + 2 + 14 + 2;

/// How far back the rate (and so the ETA) looks.
const WINDOW: Duration = Duration::from_secs(5);

/// A rate over the last [`WINDOW`]: samples of a counter.
#[derive(Debug, Default)]
struct Recent {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Recent {
    /// Adds the counter's value `n` at `t`; returns bytes per second over the window
    /// (None until two samples span some time).
    fn rate(&mut self, t: Instant, n: u64) -> Option<f64> {
        self.samples.push_back((t, n));
        while self
            .samples
            .front()
            .is_some_and(|(t0, _)| t.duration_since(*t0) > WINDOW)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
        let (t0, n0) = *self.samples.front()?;
        let dt = t.duration_since(t0).as_secs_f64();
        (dt >= 0.2).then(|| n.saturating_sub(n0) as f64 / dt)
    }
}

/// The ETA of `left` bytes at `rate`: whole seconds rounded up (never `0s` while bytes
/// are left), `<1s` under a second, `?` without a rate.
fn eta(left: u64, rate: Option<f64>) -> String {
    match rate {
        _ if left == 0 => "0s".into(),
        Some(r) if r > 0.0 => {
            let secs = left as f64 / r;
            if secs < 1.0 {
                "<1s".into()
            } else {
                let s = secs.ceil() as u64;
                if s >= 3600 {
                    format!("{}h{:02}m", s / 3600, s % 3600 / 60)
                } else if s >= 60 {
                    format!("{}m{:02}s", s / 60, s % 60)
                } else {
                    format!("{s}s")
                }
            }
        }
        _ => "?".into(),
    }
}

/// `12.0MiB`: a size without the space, for the narrow bar lines.
fn short(n: u64) -> String {
    human_bytes(n).replace(' ', "")
}

/// The text after a device's bar: received (of the expected share), the recent rate, the
/// ETA and, when compressing, what was stored.
fn bar_text(pos: u64, len: Option<u64>, rate: Option<f64>, stored: Option<u64>) -> String {
    let mut t = match len {
        Some(l) => format!("{}/{}", short(pos), short(l)),
        None => short(pos),
    };
    t.push_str(&format!(
        " {}/s",
        rate.map_or_else(|| "?".into(), |r| short(r as u64))
    ));
    if let Some(l) = len {
        t.push_str(&format!(" ETA {}", eta(l.saturating_sub(pos), rate)));
    }
    if let Some(s) = stored {
        t.push_str(&format!(" stored {}", short(s)));
    }
    t
}

fn bars(inner: &Meter, stop: &AtomicBool) {
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    // A fixed bar and the text in what is left of the line, cut to fit: a line never
    // wraps, whatever the terminal's width. A few columns stay free, so that the
    // terminal's "^C" echo does not wrap the last line either (the bars would then be
    // cleared one line short).
    let style = ProgressStyle::with_template("{prefix:>6} [{bar:14.cyan/blue}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let n = u64::from(inner.devices());
    let bars: Vec<ProgressBar> = (0..n)
        .map(|i| {
            let b = mp.add(ProgressBar::new(1));
            b.set_style(style.clone());
            b.set_prefix(format!("dev {i}"));
            b
        })
        .collect();
    let width = console_width();
    let _ = mp.println(cut(inner.label(), width));
    quiet_echo();
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(mp.clone());
    let mut recent: Vec<Recent> = (0..n).map(|_| Recent::default()).collect();
    loop {
        if vdi_backup::cancel::interrupted() {
            break;
        }
        let now = Instant::now();
        let total = inner.total();
        let done = inner.per_device();
        let stored = inner.stored_per_device();
        let sum: u64 = done.iter().sum();
        let active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        if active.is_none() {
            // Cleared (a signal): draw no more.
            break;
        }
        for (i, (b, &pos)) in bars.iter().zip(&done).enumerate() {
            let rate = recent[i].rate(now, pos);
            // Devices take what they can (dynamic distribution): each is expected to
            // take an equal share of what is left.
            let len = total.map(|t| pos + t.saturating_sub(sum) / n.max(1));
            b.set_length(len.unwrap_or(pos.max(1)));
            b.set_position(pos);
            b.set_message(cut(
                &bar_text(pos, len, rate, inner.compressed().then(|| stored[i])),
                width.saturating_sub(BAR_COLUMNS + 4),
            ));
        }
        drop(active);
        if !pause(stop, Duration::from_millis(100)) {
            break;
        }
    }
    clear_now();
    for b in &bars {
        b.finish_and_clear();
    }
    let _ = mp.clear();
}

/// The terminal's width (80 if it cannot be told).
fn console_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|&w| w > 0)
        .unwrap_or(80)
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(['…']).collect()
    }
}

fn log_lines(inner: &Meter, stop: &AtomicBool) {
    let mut recent = Recent::default();
    while pause(stop, Duration::from_secs(2)) {
        let total = inner.total();
        let done = inner.per_device();
        let sum: u64 = done.iter().sum();
        let rate = recent.rate(Instant::now(), sum);
        let of = match total {
            None => String::new(),
            Some(total) => format!(
                " of {} ({:.0}%, ETA {})",
                human_bytes(total),
                100.0 * sum as f64 / total.max(1) as f64,
                eta(total.saturating_sub(sum), rate)
            ),
        };
        let stored = if inner.compressed() {
            format!(
                ", stored {}",
                human_bytes(inner.stored_per_device().iter().sum())
            )
        } else {
            String::new()
        };
        let per: Vec<String> = done
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i}:{}", human_bytes(*b)))
            .collect();
        tracing::info!(
            "{}: received {}{of}{stored}, {}/s; devices {}",
            inner.label(),
            human_bytes(sum),
            rate.map_or_else(|| "?".into(), |r| human_bytes(r as u64)),
            per.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_never_says_0s_while_bytes_are_left() {
        assert_eq!(eta(0, None), "0s");
        assert_eq!(eta(10, None), "?");
        assert_eq!(eta(10, Some(0.0)), "?");
        assert_eq!(eta(10, Some(100.0)), "<1s");
        assert_eq!(eta(150, Some(100.0)), "2s");
        assert_eq!(eta(100 * 61, Some(100.0)), "1m01s");
        assert_eq!(eta(100 * 3700, Some(100.0)), "1h01m");
    }

    #[test]
    fn the_rate_is_over_a_recent_window() {
        let t0 = Instant::now();
        let mut r = Recent::default();
        assert_eq!(r.rate(t0, 0), None);
        // Fast for 10 s, then slow: the rate follows the last seconds, not the average.
        for s in 1..=10u64 {
            r.rate(t0 + Duration::from_secs(s), (s * 100) << 20);
        }
        let mut last = None;
        for s in 11..=20u64 {
            last = r.rate(
                t0 + Duration::from_secs(s),
                (1000 << 20) + (s - 10) * (1 << 20),
            );
        }
        let rate = last.unwrap_or(0.0);
        assert!(rate < f64::from(2u32 << 20), "{rate}");
    }

    #[test]
    fn a_bar_line_fits_80_columns_and_shows_what_was_stored() {
        let t = bar_text(
            999 << 30,
            Some(1000 << 30),
            Some(f64::from(999u32 << 20)),
            Some(998 << 30),
        );
        assert!(t.contains("stored 998.0GiB"), "{t}");
        // prefix, bar and text, and the 4 columns kept free.
        let line = BAR_COLUMNS + t.chars().count() + 4;
        assert!(line <= 80, "{line}: {t}");
        assert!(!bar_text(1, Some(2), None, None).contains("stored"));
    }
}
