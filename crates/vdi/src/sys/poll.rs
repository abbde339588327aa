//! Waiting on several descriptors at once, and an eventfd to stop such a wait.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};

/// What `poll` reported for one descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    /// Data (or a connection) is waiting.
    pub readable: bool,
    /// The peer hung up or the descriptor failed.
    pub hangup: bool,
}

/// Waits until one of `fds` is ready or `timeout` passes; `watch_input[i]` says whether
/// input on `fds[i]` counts, or only a hang-up.
pub fn poll(fds: &[BorrowedFd<'_>], watch_input: &[bool], timeout: Option<Duration>) -> Vec<Ready> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .zip(watch_input)
        .map(|(fd, &input)| {
            let mut ev = PollFlags::RDHUP;
            if input {
                ev |= PollFlags::IN;
            }
            PollFd::from_borrowed_fd(*fd, ev)
        })
        .collect();
    let ts = timeout.map(|d| rustix::event::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    // EINTR and friends: report nothing ready; callers loop.
    let _ = rustix::event::poll(&mut pfds, ts.as_ref());
    pfds.iter()
        .map(|p| {
            let r = p.revents();
            Ready {
                readable: r.contains(PollFlags::IN),
                hangup: r.intersects(
                    PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL,
                ),
            }
        })
        .collect()
}

/// A wake-up descriptor: `signal` makes it readable for good.
#[derive(Debug)]
pub struct Stopper {
    fd: OwnedFd,
}

impl Stopper {
    /// A new, unsignalled stopper.
    pub fn new() -> std::io::Result<Stopper> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Stopper { fd })
    }

    /// Makes the descriptor readable (idempotent).
    pub fn signal(&self) {
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
