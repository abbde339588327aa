//! Event counts: how a side sleeps until a condition in shared memory holds, and how the
//! other side wakes it only when it actually sleeps.
//!
//! The word holds an epoch in its upper 31 bits and a "somebody sleeps" flag in bit 0.
//! A waiter first checks its condition, spins a short while, then sets the flag
//! (SeqCst), re-checks, and sleeps on the futex with the value it saw. A notifier makes
//! its change visible (release), issues a SeqCst fence, and reads the word: only when the
//! flag is set does it bump the epoch (clearing the flag) and make the wake system call.
//! The two SeqCst operations order "flag set, then condition read" against "condition
//! written, then flag read", so a wake-up is never lost; with nobody asleep, notifying
//! costs a fence and a load, and no system call.
//!
//! Blocking and time are injected: [`wait_with`] is the algorithm, over any
//! [`FutexWord`] and any [`Pace`] (how the waiter spins and when its deadline passes);
//! [`wait_until`] is that algorithm on a shared-memory word with the shared futex and the
//! monotonic clock ([`Monotonic`]). Under `RUSTFLAGS="--cfg loom"` the loom tests
//! (`crates/vdi/tests/loom.rs`) run the same [`wait_with`] and [`notify`] on a modelled
//! futex ([`sync::model`](super::sync)) whose sleeps never time out, so that a lost
//! wake-up is a deadlock loom reports instead of a 100 ms stall, with the deadline as an
//! explicit branch at every look at the clock. Removing either SeqCst fence makes that
//! model fail.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
//! use vdi::protocol::event::{notify, wait_until};
//! let (word, flag) = (AtomicU32::new(0), AtomicBool::new(false));
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         flag.store(true, Ordering::Release);
//!         notify(&word);
//!     });
//!     assert!(wait_until(&word, None, || flag.load(Ordering::Acquire)));
//! });
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::sync::FutexWord;

/// Bit 0: a waiter is (about to be) asleep.
pub const WAITING: u32 = 1;

/// How long a waiter spins (and yields) before it sleeps.
pub const SPIN: Duration = Duration::from_micros(50);

/// The pure spin every wait starts with: a peer that answers at once (a busy round trip
/// takes about 0.6 µs here) is seen without a system call.
pub const PURE_SPIN: Duration = Duration::from_micros(1);

/// After a yield that came back at once (nobody else wanted this CPU), how long the
/// waiter spins before it yields again to look.
pub const SPIN_BURST: Duration = Duration::from_micros(2);

/// A yield that took longer than this gave the CPU to somebody: the waiter is one of
/// more runnable threads than cores, and keeps yielding instead of spinning.
pub const CROWDED: Duration = Duration::from_micros(3);

/// Longest single sleep; waits re-check their condition at least this often.
pub const SLICE: Duration = Duration::from_millis(100);

/// Wakes whoever sleeps on `word`; free when nobody does.
#[inline]
pub fn notify<W: FutexWord>(word: &W) {
    W::fence(Ordering::SeqCst);
    let v = word.load(Ordering::Relaxed);
    if v & WAITING != 0 {
        // Bump the epoch and clear the flag in one step; wake even if a concurrent
        // notifier got there first (a spare wake is harmless, a lost one is not).
        let _ = word.compare_exchange(v, v.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed);
        word.futex_wake_all();
    }
}

/// Waits until `ready()` is true or `deadline` passes. Returns whether it became true.
///
/// `ready` is called many times; it must be cheap and must read the shared state with
/// acquire ordering.
#[inline]
pub fn wait_until(
    word: &AtomicU32,
    deadline: Option<Instant>,
    ready: impl FnMut() -> bool,
) -> bool {
    wait_with(word, &mut Monotonic { deadline }, ready)
}

/// How a waiter passes the time before and between its sleeps: how it spins, when its
/// deadline passes, and how long each sleep may last.
pub trait Pace {
    /// The spin phase, after a first look at `ready` found it false: looks at `ready`
    /// for a while without sleeping. `Some(r)`: the wait is over with result `r` (the
    /// condition became true, or the deadline passed); `None`: go to sleep.
    fn spin(&mut self, ready: &mut impl FnMut() -> bool) -> Option<bool>;

    /// Before each sleep: `None` if the deadline has passed, else the longest the sleep
    /// may last (`Some(None)`: no limit).
    fn sleep_limit(&mut self) -> Option<Option<Duration>>;
}

/// Production pacing: the monotonic clock; [`PURE_SPIN`] of pure spinning; then, until
/// [`SPIN`], a yield to whoever else wants the CPU followed, only when the yield came
/// straight back, by [`SPIN_BURST`] of spinning; then sleeps of at most [`SLICE`] (or
/// what is left until the deadline).
///
/// Why the spin adapts: with as many runnable threads as cores (one device, one thread a
/// side) spinning costs nothing anybody needs and sees a hand-off within nanoseconds; with
/// more (four device threads, or a sender thread per device, on two cores) every
/// microsecond spun is taken from a thread that has work, often the very peer waited for.
/// A `sched_yield` tells the two apart: it returns at once when nobody else is runnable
/// on this CPU, and takes a time slice of somebody else's work when somebody is. Measured
/// with `vdi-bench` (docs in its README): spinning 10 µs before yielding (the earlier
/// pacing) made a 64 KiB, 1-device, sender-thread-per-device engine run at 4-9 GB/s,
/// yielding from the start at 9-10 GB/s but doubled the busy round trip (1.4 µs), and
/// this pacing keeps both (10.7 GB/s, 0.62 µs with the two threads on different CPUs;
/// 11.5 µs instead of 28 µs when both must share one). Figures: `docs/benchmarks.md`.
#[derive(Clone, Copy, Debug)]
pub struct Monotonic {
    /// When the wait gives up (`None`: never).
    pub deadline: Option<Instant>,
}

impl Monotonic {
    /// Spins until `end`, looking at `ready` after every pause (a pause is ~25 ns here;
    /// looking only every 64 of them cost 1.6 µs per hand-off) and at the clock every 64.
    /// `Some(r)`: the wait is over (`ready`, or the deadline); `None`: `end` passed.
    #[inline]
    fn spin_until(&self, end: Instant, ready: &mut impl FnMut() -> bool) -> Option<bool> {
        let mut n = 0u32;
        loop {
            std::hint::spin_loop();
            if ready() {
                return Some(true);
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) {
                let now = Instant::now();
                if self.deadline.is_some_and(|d| now >= d) {
                    return Some(ready());
                }
                if now >= end {
                    return None;
                }
            }
        }
    }
}

impl Pace for Monotonic {
    #[inline]
    fn spin(&mut self, ready: &mut impl FnMut() -> bool) -> Option<bool> {
        let start = Instant::now();
        if self.deadline.is_some_and(|d| d <= start) {
            return Some(false);
        }
        // 1. A short pure spin, for the peer that answers at once.
        if let Some(r) = self.spin_until(start + PURE_SPIN, ready) {
            return Some(r);
        }
        // 2. Yield, look; spin a burst only if the yield found nobody else to run.
        let spin_end = start + SPIN;
        loop {
            let before = Instant::now();
            crate::sys::yield_now();
            if ready() {
                return Some(true);
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                return Some(ready());
            }
            if now >= spin_end {
                return None;
            }
            if now - before < CROWDED
                && let Some(r) = self.spin_until(now + SPIN_BURST, ready)
            {
                return Some(r);
            }
        }
    }

    #[inline]
    fn sleep_limit(&mut self) -> Option<Option<Duration>> {
        let now = Instant::now();
        match self.deadline {
            Some(d) if d <= now => None,
            Some(d) => Some(Some((d - now).min(SLICE))),
            None => Some(Some(SLICE)),
        }
    }
}

/// The wait algorithm: looks at `ready`, spins as `pace` says, then sleeps on `word`
/// until `ready()` holds or `pace` says the deadline passed. Returns whether it became
/// true.
#[inline]
pub fn wait_with<W: FutexWord, P: Pace>(
    word: &W,
    pace: &mut P,
    mut ready: impl FnMut() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    if let Some(r) = pace.spin(&mut ready) {
        return r;
    }
    // 3. Sleep on the futex.
    loop {
        let seen = word.fetch_or(WAITING, Ordering::SeqCst) | WAITING;
        // Pairs with the notifier's fence: our flag store is ordered before the
        // condition's loads below even where acquire loads may be reordered (LDAPR).
        W::fence(Ordering::SeqCst);
        if ready() {
            return true;
        }
        let Some(sleep) = pace.sleep_limit() else {
            return false;
        };
        word.futex_wait(seen, sleep);
        if ready() {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn wakes_a_sleeper_and_times_out() {
        let word = AtomicU32::new(0);
        let flag = AtomicBool::new(false);
        assert!(!wait_until(
            &word,
            Some(Instant::now() + Duration::from_millis(5)),
            || { flag.load(Ordering::Acquire) }
        ));
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                flag.store(true, Ordering::Release);
                notify(&word);
            });
            assert!(wait_until(&word, None, || flag.load(Ordering::Acquire)));
        });
    }

    #[test]
    fn notify_without_sleeper_leaves_word_alone() {
        let word = AtomicU32::new(4);
        notify(&word);
        assert_eq!(word.load(Ordering::Relaxed), 4);
    }
}
