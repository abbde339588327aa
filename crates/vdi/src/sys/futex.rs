//! Futex wait and wake on a word in shared memory.
//!
//! Always the shared kind (no `FUTEX_PRIVATE_FLAG`): the private flag silently fails to
//! wake a waiter in another process.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// Sleeps while `*word == expected`, at most `timeout` (forever if `None`).
///
/// Returns on a wake, a time-out, a signal, or at once if the word already differs; the
/// caller re-checks its condition in every case.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| rustix::thread::futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    // Every outcome (woken, EAGAIN, ETIMEDOUT, EINTR) leads the caller to re-check.
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes every process and thread sleeping on `word`.
pub fn wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}
