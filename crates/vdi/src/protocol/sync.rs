//! The atomic words the rings and the event counts run on, and the futex they sleep on.
//!
//! [`ring`](super::ring) and [`event`](super::event) are written against two tiny traits
//! rather than against `std::sync::atomic::AtomicU32` directly, so that the *same* code runs
//! on two memory models:
//!
//! - **production**: `std`'s `AtomicU32` (the words in the `#[repr(C)]` structures of
//!   [`layout`](super::layout)), `std`'s fences, and the shared futex of
//!   [`sys::futex`](crate::sys::futex). Every method is `#[inline(always)]` and forwards to
//!   the inherent method of the same name, so the generic code compiles to exactly what it
//!   compiled to before (the data path is benchmarked);
//! - **model checking** (`RUSTFLAGS="--cfg loom"`, module `model`): loom's `AtomicU32`
//!   and `fence`, and a futex modelled with a loom `Mutex` and `Condvar`, so that a lost
//!   wake-up shows up as a loom deadlock.
//!
//! Why traits and not a `cfg`-switched type alias: the shared-memory structures store
//! `std` atomics, and the rest of the crate (client, server, shared) keeps using them
//! under `--cfg loom`; only the loom tests (`crates/vdi/tests/loom.rs`) instantiate the
//! rings and event counts with loom's types. The crate therefore builds, and behaves,
//! the same with and without `--cfg loom`.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use vdi::protocol::sync::AtomicWord;
//! fn bump<W: AtomicWord>(w: &W) -> u32 {
//!     w.fetch_or(1, Ordering::SeqCst)
//! }
//! let w = AtomicU32::new(4);
//! assert_eq!(bump(&w), 4);
//! assert_eq!(w.load(Ordering::Relaxed), 5);
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A 32-bit atomic word, as the rings and event counts use it.
pub trait AtomicWord: Sync {
    /// `AtomicU32::load`.
    fn load(&self, order: Ordering) -> u32;
    /// `AtomicU32::store`.
    fn store(&self, value: u32, order: Ordering);
    /// `AtomicU32::fetch_or`.
    fn fetch_or(&self, value: u32, order: Ordering) -> u32;
    /// `AtomicU32::compare_exchange`.
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
    /// A fence of the memory model this word lives in (`std`'s, or loom's).
    fn fence(order: Ordering)
    where
        Self: Sized;
}

/// A word a thread can sleep on until another one wakes it: a futex.
pub trait FutexWord: AtomicWord {
    /// Sleeps while the word equals `expected`, at most `timeout` (`None`: no limit).
    /// May return early for any reason; the caller re-checks its condition.
    fn futex_wait(&self, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread (and process) sleeping on the word.
    fn futex_wake_all(&self);
}

impl AtomicWord for AtomicU32 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }

    #[inline(always)]
    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order);
    }

    #[inline(always)]
    fn fetch_or(&self, value: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_or(self, value, order)
    }

    #[inline(always)]
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32> {
        AtomicU32::compare_exchange(self, current, new, success, failure)
    }

    #[inline(always)]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order);
    }
}

/// Production: the shared futex (never the private flag, which cannot wake another
/// process).
impl FutexWord for AtomicU32 {
    #[inline(always)]
    fn futex_wait(&self, expected: u32, timeout: Option<Duration>) {
        crate::sys::futex::wait(self, expected, timeout);
    }

    #[inline(always)]
    fn futex_wake_all(&self) {
        crate::sys::futex::wake_all(self);
    }
}

/// The loom models: loom's atomics, a futex, and a clock whose deadline passes at a chosen
/// look (only with `--cfg loom`).
#[cfg(loom)]
pub mod model {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    pub use loom::sync::atomic::AtomicU32;
    use loom::sync::{Condvar, Mutex, MutexGuard};

    use super::{AtomicWord, FutexWord};
    use crate::protocol::event::Pace;

    impl AtomicWord for AtomicU32 {
        #[inline]
        fn load(&self, order: Ordering) -> u32 {
            AtomicU32::load(self, order)
        }

        #[inline]
        fn store(&self, value: u32, order: Ordering) {
            AtomicU32::store(self, value, order);
        }

        #[inline]
        fn fetch_or(&self, value: u32, order: Ordering) -> u32 {
            AtomicU32::fetch_or(self, value, order)
        }

        #[inline]
        fn compare_exchange(
            &self,
            current: u32,
            new: u32,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u32, u32> {
            AtomicU32::compare_exchange(self, current, new, success, failure)
        }

        #[inline]
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order);
        }
    }

    /// An event word with a modelled futex: `futex_wait` checks the word under a mutex
    /// and sleeps on a condition variable, `futex_wake_all` takes the mutex and notifies
    /// every sleeper. Like the kernel's futex, the check and the sleep are atomic with
    /// respect to a wake; unlike it, a sleep never times out (loom's timed waits do not
    /// either), so a lost wake-up is a deadlock that loom reports, not a 100 ms stall.
    #[derive(Debug)]
    pub struct ModelFutex {
        word: AtomicU32,
        lock: Mutex<()>,
        sleepers: Condvar,
    }

    impl ModelFutex {
        /// A word holding `value`.
        pub fn new(value: u32) -> ModelFutex {
            ModelFutex {
                word: AtomicU32::new(value),
                lock: Mutex::new(()),
                sleepers: Condvar::new(),
            }
        }

        fn guard(&self) -> MutexGuard<'_, ()> {
            self.lock.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl AtomicWord for ModelFutex {
        #[inline]
        fn load(&self, order: Ordering) -> u32 {
            self.word.load(order)
        }

        #[inline]
        fn store(&self, value: u32, order: Ordering) {
            self.word.store(value, order);
        }

        #[inline]
        fn fetch_or(&self, value: u32, order: Ordering) -> u32 {
            self.word.fetch_or(value, order)
        }

        #[inline]
        fn compare_exchange(
            &self,
            current: u32,
            new: u32,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u32, u32> {
            self.word.compare_exchange(current, new, success, failure)
        }

        #[inline]
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order);
        }
    }

    impl FutexWord for ModelFutex {
        /// The time-out is ignored: a sleep ends only by a wake (see the type's docs).
        fn futex_wait(&self, expected: u32, _timeout: Option<Duration>) {
            let g = self.guard();
            // Relaxed: the kernel adds no ordering of its own beyond the bucket lock,
            // which the mutex models.
            if self.word.load(Ordering::Relaxed) != expected {
                return;
            }
            drop(self.sleepers.wait(g));
        }

        fn futex_wake_all(&self) {
            let _g = self.guard();
            self.sleepers.notify_all();
        }
    }

    /// The waiter's clock under loom: it counts its own looks at the time instead of
    /// reading a real clock (which would make executions irreproducible), and the
    /// deadline, if any, passes at a chosen look. A model that runs the same wait once
    /// for every look therefore explores "the deadline passes here" as an explicit branch
    /// at each point where the real waiter reads the clock.
    ///
    /// The spin phases become `spin_checks` looks at the condition, each after a
    /// `loom::thread::yield_now`, each followed by one look at the clock.
    #[derive(Clone, Copy, Debug)]
    pub struct ModelPace {
        spin_checks: u32,
        deadline_at: Option<u32>,
        looks: u32,
    }

    impl ModelPace {
        /// No deadline; `spin_checks` looks at the condition before the first sleep.
        pub fn new(spin_checks: u32) -> ModelPace {
            ModelPace {
                spin_checks,
                deadline_at: None,
                looks: 0,
            }
        }

        /// The deadline has passed from the `look`-th look at the clock on (0: at the
        /// start of the wait).
        pub fn with_deadline(spin_checks: u32, look: u32) -> ModelPace {
            ModelPace {
                spin_checks,
                deadline_at: Some(look),
                looks: 0,
            }
        }

        /// How many times the waiter has looked at the clock.
        pub fn looks(&self) -> u32 {
            self.looks
        }

        fn deadline_passed(&mut self) -> bool {
            let passed = self.deadline_at.is_some_and(|d| self.looks >= d);
            self.looks += 1;
            passed
        }
    }

    impl Pace for ModelPace {
        fn spin(&mut self, ready: &mut impl FnMut() -> bool) -> Option<bool> {
            if self.deadline_passed() {
                return Some(false);
            }
            for _ in 0..self.spin_checks {
                loom::thread::yield_now();
                if ready() {
                    return Some(true);
                }
                if self.deadline_passed() {
                    return Some(ready());
                }
            }
            None
        }

        fn sleep_limit(&mut self) -> Option<Option<Duration>> {
            if self.deadline_passed() {
                None
            } else {
                Some(None)
            }
        }
    }
}
