//! The rendezvous socket: abstract Unix sequenced-packet sockets.
//!
//! A set is a listening socket in the abstract namespace (nothing on the file system, so
//! nothing to clean up after a crash: the kernel drops the name when the creator dies).
//! Messages keep their boundaries (`SOCK_SEQPACKET`) and may carry file descriptors
//! (`SCM_RIGHTS`); the kernel tells each side who is at the other end (`SO_PEERCRED`),
//! and reports the peer's death as a hang-up.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// Who is at the other end of a connection, as the kernel recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// A listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

/// A connected socket.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

fn address(name: &[u8]) -> Result<SocketAddrUnix, Errno> {
    SocketAddrUnix::new_abstract_name(name)
}

fn new_socket() -> Result<OwnedFd, Errno> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

impl Listener {
    /// Binds `name` in the abstract namespace and listens. `EADDRINUSE` if taken.
    pub fn bind(name: &[u8]) -> Result<Listener, Errno> {
        let fd = new_socket()?;
        rustix::net::bind(&fd, &address(name)?)?;
        rustix::net::listen(&fd, 64)?;
        Ok(Listener { fd })
    }

    /// Accepts one pending connection (non-blocking: `EAGAIN` if none).
    pub fn accept(&self) -> Result<Conn, Errno> {
        let fd = rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?;
        // The accepted socket is used with explicit polls and timeouts; make it blocking.
        let _ = rustix::io::ioctl_fionbio(&fd, false);
        Ok(Conn { fd })
    }

    /// The descriptor, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Conn {
    /// Connects to the set listening on `name`. `ECONNREFUSED` if nobody listens.
    pub fn connect(name: &[u8]) -> Result<Conn, Errno> {
        let fd = new_socket()?;
        rustix::net::connect(&fd, &address(name)?)?;
        Ok(Conn { fd })
    }

    /// Who is at the other end.
    pub fn peer_cred(&self) -> Result<PeerCred, Errno> {
        let c = rustix::net::sockopt::socket_peercred(&self.fd)?;
        Ok(PeerCred {
            pid: c.pid.as_raw_nonzero().get() as u32,
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
        })
    }

    /// Sends one message with `fds` attached.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
        self.send_with(bytes, fds, SendFlags::NOSIGNAL)
    }

    /// Sends one message without ever blocking: a peer that does not read its replies
    /// gets `EAGAIN` here instead of stalling the sender.
    pub fn send_nowait(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
        self.send_with(bytes, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
    }

    fn send_with(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        flags: SendFlags,
    ) -> Result<(), Errno> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty()
            && (fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)))
        {
            return Err(Errno::TOOBIG);
        }
        let n = rustix::net::sendmsg(&self.fd, &[IoSlice::new(bytes)], &mut control, flags)?;
        if n != bytes.len() {
            return Err(Errno::MSGSIZE);
        }
        Ok(())
    }

    /// Receives one message into `buf`, waiting at most `timeout` (forever if `None`).
    /// Returns the length and the descriptors it carried. A closed peer gives `EPIPE`;
    /// a time-out `ETIMEDOUT`.
    pub fn recv(
        &self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<(usize, Vec<OwnedFd>), Errno> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = super::poll::poll(&[self.fd.as_fd()], &[true], left);
            if ready[0].readable || ready[0].hangup {
                break;
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                return Err(Errno::TIMEDOUT);
            }
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            &self.fd,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        )?;
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Err(Errno::PIPE);
        }
        if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
            return Err(Errno::MSGSIZE);
        }
        Ok((msg.bytes, fds))
    }

    /// The descriptor, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second handle on the same connection (for a watchdog thread).
    pub fn try_clone(&self) -> Result<Conn, Errno> {
        Ok(Conn {
            fd: self.fd.try_clone().map_err(|_| Errno::MFILE)?,
        })
    }
}

/// The supplementary groups of process `pid`, from `/proc/PID/status`.
pub fn process_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_fd_and_credentials() {
        let name = format!("vdi-test/sock-{}", std::process::id());
        let l = Listener::bind(name.as_bytes()).unwrap();
        assert_eq!(
            Listener::bind(name.as_bytes()).unwrap_err(),
            Errno::ADDRINUSE
        );
        let c = Conn::connect(name.as_bytes()).unwrap();
        let s = l.accept().unwrap();
        let cred = s.peer_cred().unwrap();
        assert_eq!(cred.pid, std::process::id());
        let (r, w) = rustix::pipe::pipe().unwrap();
        c.send(b"hello", &[w.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = s.recv(&mut buf, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        rustix::io::write(&fds[0], b"x").unwrap();
        let mut one = [0u8; 1];
        rustix::io::read(&r, &mut one).unwrap();
        assert_eq!(&one, b"x");
        assert_eq!(
            s.recv(&mut buf, Some(Duration::from_millis(10)))
                .unwrap_err(),
            Errno::TIMEDOUT
        );
        drop(c);
        assert_eq!(
            s.recv(&mut buf, Some(Duration::from_secs(5))).unwrap_err(),
            Errno::PIPE
        );
    }
}
