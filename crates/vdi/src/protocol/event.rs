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

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use crate::sys::futex;

/// Bit 0: a waiter is (about to be) asleep.
pub const WAITING: u32 = 1;

/// How long a waiter spins before it sleeps.
pub const SPIN: Duration = Duration::from_micros(50);

/// How much of [`SPIN`] is pure spinning; the rest yields the CPU between looks.
pub const PURE_SPIN: Duration = Duration::from_micros(10);

/// Longest single sleep; waits re-check their condition at least this often.
pub const SLICE: Duration = Duration::from_millis(100);

/// Wakes whoever sleeps on `word`; free when nobody does.
#[inline]
pub fn notify(word: &AtomicU32) {
    fence(Ordering::SeqCst);
    let v = word.load(Ordering::Relaxed);
    if v & WAITING != 0 {
        // Bump the epoch and clear the flag in one step; wake even if a concurrent
        // notifier got there first (a spare wake is harmless, a lost one is not).
        let _ = word.compare_exchange(v, v.wrapping_add(1), Ordering::SeqCst, Ordering::Relaxed);
        futex::wake_all(word);
    }
}

/// Waits until `ready()` is true or `deadline` passes. Returns whether it became true.
///
/// `ready` is called many times; it must be cheap and must read the shared state with
/// acquire ordering.
pub fn wait_until(
    word: &AtomicU32,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    let start = Instant::now();
    if deadline.is_some_and(|d| d <= start) {
        return false;
    }
    let past = |now: Instant| deadline.is_some_and(|d| now >= d);
    // 1. Spin, looking at the condition after every pause (a pause is ~25 ns here; looking
    //    only every 64 of them cost 1.6 µs per hand-off) and at the clock every 64.
    let pure_end = start + PURE_SPIN;
    let mut n = 0u32;
    loop {
        std::hint::spin_loop();
        if ready() {
            return true;
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) {
            let now = Instant::now();
            if past(now) {
                return ready();
            }
            if now >= pure_end {
                break;
            }
        }
    }
    // 2. Keep looking, but give the CPU to whoever needs it between looks: with more
    //    spinning threads than cores (four device threads on two), pure spinning starves
    //    the very peer we wait for.
    let spin_end = start + SPIN;
    loop {
        crate::sys::yield_now();
        if ready() {
            return true;
        }
        let now = Instant::now();
        if past(now) {
            return ready();
        }
        if now >= spin_end {
            break;
        }
    }
    // 3. Sleep on the futex.
    loop {
        let seen = word.fetch_or(WAITING, Ordering::SeqCst) | WAITING;
        // Pairs with the notifier's fence: our flag store is ordered before the
        // condition's loads below even where acquire loads may be reordered (LDAPR).
        fence(Ordering::SeqCst);
        if ready() {
            return true;
        }
        let now = Instant::now();
        let sleep = match deadline {
            Some(d) if d <= now => return false,
            Some(d) => (d - now).min(SLICE),
            None => SLICE,
        };
        futex::wait(word, seen, Some(sleep));
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
