//! The system-wide monotonic clock in nanoseconds, comparable between processes (the
//! producer stamps the start, the consumer the end of a sample).
//!
//! ```
//! let a = vdi_bench::clock::now_ns();
//! assert!(vdi_bench::clock::now_ns() >= a);
//! ```

use rustix::time::{ClockId, clock_gettime};

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}
