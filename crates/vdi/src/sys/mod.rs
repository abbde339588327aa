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
