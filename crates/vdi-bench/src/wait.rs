//! Spin-then-futex waiting on a word in shared memory, written out by hand for the raw
//! ring (the same strategy as the library's event counts, without the library).
//!
//! The word holds an epoch in its upper bits and a "somebody sleeps" flag in bit 0. A
//! waiter checks its condition while spinning for [`SPIN`], then sets the flag (SeqCst),
//! checks again and sleeps on the futex with the value it saw. A notifier makes its
//! change visible, issues a SeqCst fence and reads the word: only when the flag is set
//! does it bump the epoch and make the wake system call. The futex is the shared kind
//! (no private flag), so it wakes a waiter in another process.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
//! use vdi_bench::wait;
//! let (word, flag) = (AtomicU32::new(0), AtomicBool::new(false));
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         flag.store(true, Ordering::Release);
//!         wait::notify(&word);
//!     });
//!     wait::wait_until(&word, || flag.load(Ordering::Acquire));
//! });
//! ```

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// Bit 0 of the word: a waiter is (about to be) asleep.
pub const WAITING: u32 = 1;

/// How long a waiter spins before it sleeps (the library's figure).
pub const SPIN: Duration = Duration::from_micros(50);

/// Longest single sleep; the condition is re-checked at least this often.
const SLICE: Duration = Duration::from_millis(100);

/// Wakes whoever sleeps on `word`; a fence and a load when nobody does.
#[inline]
pub fn notify(word: &AtomicU32) {
    fence(Ordering::SeqCst);
    let v = word.load(Ordering::Relaxed);
    if v & WAITING != 0 {
        let _ = word.compare_exchange(v, v.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed);
        let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
    }
}

/// Waits until `ready()` holds: spins (checking at every step) for [`SPIN`], then sleeps
/// on the futex. `ready` must read the shared state with acquire ordering.
#[inline]
pub fn wait_until(word: &AtomicU32, mut ready: impl FnMut() -> bool) {
    if ready() {
        return;
    }
    let spin_end = Instant::now() + SPIN;
    let mut n = 0u32;
    loop {
        std::hint::spin_loop();
        if ready() {
            return;
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(256) && Instant::now() >= spin_end {
            break;
        }
    }
    loop {
        let seen = word.fetch_or(WAITING, Ordering::SeqCst) | WAITING;
        fence(Ordering::SeqCst);
        if ready() {
            return;
        }
        let ts = futex::Timespec {
            tv_sec: 0,
            tv_nsec: SLICE.as_nanos() as i64,
        };
        // Woken, EAGAIN (the word moved), a time-out or a signal: re-check in every case.
        let _ = futex::wait(word, futex::Flags::empty(), seen, Some(&ts));
        if ready() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_sleeper_is_woken() {
        let word = AtomicU32::new(0);
        let flag = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                flag.store(true, Ordering::Release);
                notify(&word);
            });
            wait_until(&word, || flag.load(Ordering::Acquire));
        });
        assert_eq!(word.load(Ordering::Relaxed) & WAITING, 0);
    }

    #[test]
    fn notify_without_a_sleeper_changes_nothing() {
        let word = AtomicU32::new(6);
        notify(&word);
        assert_eq!(word.load(Ordering::Relaxed), 6);
    }
}
