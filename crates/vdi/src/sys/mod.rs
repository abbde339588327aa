//! The system layer: the only code that makes system calls.
//!
//! Shared memory ([`shm`]: sealed memfds mapped at 64 KiB-aligned addresses and
//! pre-faulted), futex waits and wakes of the *shared* kind ([`futex`]), the rendezvous
//! socket ([`socket`]: abstract Unix sequenced-packet sockets carrying file descriptors
//! and peer credentials) and a small poll/eventfd helper ([`poll`]). Everything above this
//! module is safe code over these wrappers.
//!
//! ```
//! use vdi::sys::shm::SharedMemory;
//! let seg = SharedMemory::create("example", 10_000)?;
//! assert_eq!(seg.len(), 12_288); // whole pages
//! assert_eq!(seg.as_ptr() as usize % vdi::sys::shm::MAP_ALIGN, 0);
//! # Ok::<(), rustix::io::Errno>(())
//! ```

pub mod futex;
pub mod poll;
pub mod shm;
pub mod socket;

/// The caller's user and group ids and its supplementary groups.
pub fn current_credentials() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

/// Gives the CPU to another runnable thread, if any (`sched_yield`).
pub fn yield_now() {
    rustix::thread::sched_yield();
}

/// The process id of the caller.
pub fn current_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine (the
/// statistics an observer compares across processes).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec.max(0) as u64)
}
