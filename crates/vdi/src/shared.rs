//! What both roles share about one set: its name, the mapped segments, abort and the
//! watchdog that turns a peer's death into an abort.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crate::error::{AbortCause, ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{
    ControlSegment, DeviceView, MAX_AREAS, QueueSegment, SetHeader, dev,
};
use crate::protocol::layout::{MAGIC, VERSION};
use crate::protocol::msg::{MAX_MSG, Msg, Role};
use crate::sys::poll::{Stopper, poll};
use crate::sys::shm::SharedMemory;
use crate::sys::socket::Conn;
use std::time::Duration;

/// Longest set name in bytes.
pub const MAX_SET_NAME: usize = 100;

/// Checks a set name: 1 to 100 bytes of ASCII letters, digits, `-`, `_`, `.`, `{` and `}`
/// (what a GUID, with or without braces, and the usual generated names need). Anything
/// else (a `/`, `\`, NUL, space, newline or control character, non-ASCII) is refused, so
/// a name is always safe to print in a log line or pass as one argument.
pub fn validate_set_name(name: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '{' | '}');
    let bad = match name.chars().find(|&c| !allowed(c)) {
        Some(c) => format!("{c:?} is not allowed"),
        None if name.is_empty() || name.len() > MAX_SET_NAME => format!("{} bytes", name.len()),
        None => return Ok(()),
    };
    Err(VdError::invalid(format!(
        "a set name is 1 to {MAX_SET_NAME} of the letters A-Z and a-z, the digits 0-9 and - _ . {{ }} ({bad}); a GUID is recommended"
    )))
}

/// The abstract socket name of a set.
pub fn socket_name(set: &str) -> Vec<u8> {
    let mut v = b"vdi/1/".to_vec();
    v.extend_from_slice(set.as_bytes());
    v
}

/// The segments of one set as mapped in this process.
pub struct Shared {
    /// The set name.
    pub name: String,
    /// The control segment.
    pub control: ControlSegment,
    /// The queue segment (from `EndConfiguration` on).
    pub queues: OnceLock<QueueSegment>,
    /// The buffer areas received so far.
    pub areas: [OnceLock<SharedMemory>; MAX_AREAS],
    /// The abort cause once seen: kept here so a peer cannot undo an abort by writing 0
    /// back into shared memory.
    local_abort: std::sync::atomic::AtomicU32,
    /// Set once by [`Shared::release_memory`] (under the lock, so no segment can be
    /// installed after it).
    released: std::sync::Mutex<bool>,
    /// Mirrors `released` for wait conditions: every wait ends once the set is closed.
    closed: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(name: String, control: ControlSegment) -> Shared {
        Shared {
            name,
            control,
            queues: OnceLock::new(),
            areas: std::array::from_fn(|_| OnceLock::new()),
            local_abort: std::sync::atomic::AtomicU32::new(0),
            released: std::sync::Mutex::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether `Close` has released the set in this process.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the set is over for this process (aborted or closed): what ends every wait.
    #[inline]
    pub fn ended(&self) -> bool {
        self.is_closed() || self.abort_cause().is_some()
    }

    /// `Err(VD_E_PROTOCOL)` once closed, `Err(VD_E_ABORT)` once aborted: the check after
    /// every wait.
    pub fn check_live(&self, call: &'static str) -> Result<()> {
        if self.is_closed() {
            return Err(VdError::protocol(call, "closed"));
        }
        self.check_abort()
    }

    /// Installs the queue segment. Refused (and the segment unmapped) if the set already
    /// has one or has been released by `Close`.
    pub fn install_queues(&self, q: QueueSegment) -> std::result::Result<(), &'static str> {
        let released = lock(&self.released);
        if *released {
            return Err("the set is closed");
        }
        self.queues
            .set(q)
            .map_err(|_| "the set already has a queue segment")
    }

    /// Installs buffer area `index`. Refused (and the area unmapped) if the index is out
    /// of range or taken, or the set has been released by `Close`.
    pub fn install_area(
        &self,
        index: usize,
        mem: SharedMemory,
    ) -> std::result::Result<(), &'static str> {
        let released = lock(&self.released);
        if *released {
            return Err("the set is closed");
        }
        self.areas
            .get(index)
            .ok_or("buffer area index out of range")?
            .set(mem)
            .map_err(|_| "buffer area installed twice")
    }

    /// Releases every segment of the set in this process (`Close`): wakes every waiter
    /// (while its futex word is still shared), then replaces each shared mapping by private
    /// anonymous memory in place and closes its memfd ([`SharedMemory::release`]). No
    /// address into the set becomes invalid: device handles, buffers and commands kept
    /// past `Close` read dead memory, and their calls return codes because each role
    /// checks its own `closed` flag first. The mappings themselves go with the last
    /// handle. Idempotent.
    pub fn release_memory(&self) {
        let mut released = lock(&self.released);
        if *released {
            return;
        }
        *released = true;
        self.closed.store(true, Ordering::Release);
        self.wake_everyone();
        self.control.memory().release();
        if let Some(q) = self.queues.get() {
            q.memory().release();
        }
        for a in &self.areas {
            if let Some(m) = a.get() {
                m.release();
            }
        }
    }

    pub fn header(&self) -> &SetHeader {
        self.control.header()
    }

    /// The abort cause, if the set is aborted.
    #[inline]
    pub fn abort_cause(&self) -> Option<AbortCause> {
        let mut w = self.local_abort.load(Ordering::Relaxed);
        if w == 0 {
            w = self.header().abort.load(Ordering::Acquire);
            if w == 0 {
                return None;
            }
            self.local_abort.store(w, Ordering::Relaxed);
        }
        Some(AbortCause::from_word(w))
    }

    /// `Err(VD_E_ABORT)` if the set is aborted.
    #[inline]
    pub fn check_abort(&self) -> Result<()> {
        match self.abort_cause() {
            None => Ok(()),
            Some(c) => Err(VdError::aborted(c)),
        }
    }

    /// Aborts the set (first cause wins) and wakes every waiter in every process.
    pub fn abort(&self, cause: AbortCause) {
        let w = match self.header().abort.compare_exchange(
            0,
            cause.to_word(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => cause.to_word(),
            Err(0) => cause.to_word(),
            Err(earlier) => earlier,
        };
        let _ = self
            .local_abort
            .compare_exchange(0, w, Ordering::AcqRel, Ordering::Acquire);
        self.wake_everyone();
    }

    /// Aborts because the peer broke the protocol; returns the error for the caller.
    pub fn violation(&self, what: String) -> VdError {
        self.abort(AbortCause::ProtocolViolation);
        VdError::violation(what)
    }

    pub fn wake_everyone(&self) {
        let h = self.header();
        event::notify(&h.set_event);
        event::notify(&h.completion_event);
        if let Some(q) = self.queues.get() {
            for i in 0..q.geometry().device_count {
                if let Some(d) = q.device(i) {
                    event::notify(&d.block.sub_event);
                }
            }
        }
    }

    pub fn device(&self, i: u32) -> Option<DeviceView<'_>> {
        self.queues.get().and_then(|q| q.device(i))
    }

    pub fn device_count(&self) -> u32 {
        self.queues.get().map_or(0, |q| q.geometry().device_count)
    }

    /// Whether the client saw VD_E_CLOSE on every device (so it completed all it fetched).
    pub fn all_devices_client_done(&self) -> bool {
        let n = self.device_count();
        n > 0
            && (0..n).all(|i| {
                self.device(i)
                    .is_some_and(|d| d.block.state.load(Ordering::Acquire) & dev::CLIENT_DONE != 0)
            })
    }

    /// Whether the server closed every device (the set ended normally).
    pub fn all_devices_closed(&self) -> bool {
        let n = self.device_count();
        n > 0
            && (0..n).all(|i| {
                self.device(i).is_some_and(|d| {
                    d.block.state.load(Ordering::Acquire) & dev::SERVER_CLOSED != 0
                })
            })
    }

    /// The address of `len` bytes at `offset` in area `area`, if that range is mapped.
    pub fn buffer_ptr(&self, area: u32, offset: u64, len: u64) -> Option<*mut u8> {
        let m = self.areas.get(area as usize)?.get()?;
        let end = offset.checked_add(len)?;
        if end > m.len() as u64 {
            return None;
        }
        // `offset + len <= m.len()`, so the pointer stays inside the mapping.
        Some(m.as_ptr().wrapping_add(offset as usize))
    }

    /// Finds which area holds `p`: (area, offset).
    pub fn locate(&self, p: *const u8) -> Option<(u32, u64)> {
        self.areas.iter().enumerate().find_map(|(i, a)| {
            let m = a.get()?;
            m.contains(p)
                .then(|| (i as u32, (p as usize - m.as_ptr() as usize) as u64))
        })
    }
}

/// A thread that watches a connection and calls `on_hangup` once if the peer goes away
/// (it never reads: the owner may still use the connection for requests).
pub struct Watchdog {
    stopper: Arc<Stopper>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn spawn(conn: Conn, on_hangup: impl FnOnce() + Send + 'static) -> Result<Watchdog> {
        let stopper = Arc::new(Stopper::new().map_err(io_err("eventfd"))?);
        let s2 = stopper.clone();
        let thread = std::thread::Builder::new()
            .name("vdi-watchdog".into())
            .spawn(move || {
                loop {
                    let r = poll(&[conn.fd(), s2.fd()], &[false, true], None);
                    if r[1].readable {
                        return;
                    }
                    if r[0].hangup {
                        on_hangup();
                        return;
                    }
                }
            })
            .map_err(|e| {
                VdError::new(
                    ErrorCode::Unexpected,
                    Reason::System {
                        op: "spawning the watchdog thread",
                        errno: e.raw_os_error().unwrap_or(0),
                    },
                )
            })?;
        Ok(Watchdog {
            stopper,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stopper.signal();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

/// Options for attaching to a set another process created
/// ([`ServerSet::open_with`](crate::ServerSet::open_with),
/// [`ClientSet::open_in_secondary_with`](crate::ClientSet::open_in_secondary_with)).
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct AttachOptions {
    /// A user, besides this one and root, whose sets this process may open. By default a
    /// set created by another user is refused, so that nobody can pose as the backup
    /// application (or the primary client) under a name another process expects.
    pub trust_owner: Option<u32>,
}

impl AttachOptions {
    /// Also accept sets created by user `uid`.
    pub fn trust_owner(mut self, uid: u32) -> AttachOptions {
        self.trust_owner = Some(uid);
        self
    }
}

/// A process's attachment to a set it did not create.
pub struct Attached {
    /// The connection to the creator.
    pub conn: Conn,
    /// The control segment, checked.
    pub control: ControlSegment,
    /// How many Segment messages follow.
    pub segments: u32,
    /// The number the creator gave this process.
    pub process_no: u32,
    /// The creator's process id, as the kernel recorded it for its socket.
    pub creator_pid: u32,
}

/// Connects to set `name` as `role`: checks who created it, says Hello, and maps the
/// control segment of the Welcome (or returns the creator's refusal).
pub fn attach(name: &str, role: Role, trusted: Option<u32>) -> Result<Attached> {
    validate_set_name(name)?;
    // Open of a missing set is VD_E_INVALID for the server, VD_E_PROTOCOL for a secondary.
    let missing = |why: String| {
        let code = if role == Role::Server {
            ErrorCode::Invalid
        } else {
            ErrorCode::Protocol
        };
        VdError::new(code, Reason::NoSuchSet(why))
    };
    let conn = Conn::connect(&socket_name(name)).map_err(|_| {
        missing(format!(
            "no virtual device set named '{name}' is waiting; the backup application must create it first"
        ))
    })?;
    // An observer sends nothing but its Hello and takes nothing but segments to read,
    // so it may look at a set whatever user made it (the creator decides what it shows).
    let creator_pid = if role == Role::Observer {
        conn.peer_cred()
            .map_err(sys_err("reading the creator's credentials"))?
            .pid
    } else {
        check_creator(&conn, name, trusted)?
    };
    let hello = Msg::Hello {
        role,
        pid: crate::sys::current_pid(),
    };
    conn.send(&hello.encode(), &[])
        .map_err(sys_err("sending Hello"))?;
    let mut buf = [0u8; MAX_MSG];
    let (n, mut fds) = conn
        .recv(&mut buf, Some(Duration::from_secs(10)))
        .map_err(|e| {
            if e == rustix::io::Errno::TIMEDOUT {
                VdError::timeout()
            } else {
                missing(format!("the creator of set '{name}' closed the connection"))
            }
        })?;
    match Msg::decode(&buf[..n]) {
        Ok(Msg::Welcome {
            process_no,
            segments,
        }) if fds.len() == 1 => Ok(Attached {
            control: attach_control(fds.remove(0), role == Role::Observer)?,
            conn,
            segments: segments.min(MAX_AREAS as u32 + 1),
            process_no,
            creator_pid,
        }),
        Ok(Msg::Refused { code, reason }) => Err(refused(code, reason)),
        _ => Err(VdError::violation(
            "the set's creator sent an unexpected reply",
        )),
    }
}

/// Maps and checks a control segment received from the creator.
fn attach_control(fd: std::os::fd::OwnedFd, read_only: bool) -> Result<ControlSegment> {
    let len = Some(ControlSegment::SIZE as u64);
    let mem = if read_only {
        SharedMemory::attach_read_only(fd, len)
    } else {
        SharedMemory::attach(fd, len)
    }
    .map_err(|e| VdError::violation(format!("control segment refused: {e:?}")))?;
    let control =
        ControlSegment::new(mem).ok_or_else(|| VdError::violation("control segment too small"))?;
    let h: &SetHeader = control.header();
    if h.magic.load(Ordering::Acquire) != MAGIC
        || h.version.load(Ordering::Acquire) != VERSION
        || h.header_size.load(Ordering::Acquire) != ControlSegment::SIZE as u32
    {
        return Err(VdError::violation(
            "the control segment has a wrong magic number or version (a different vdi version?)",
        ));
    }
    Ok(control)
}

/// Checks who created the set at the other end of `conn` before anything is sent to it:
/// this user, root, or `trusted`. Another user could otherwise bind the name first and
/// pose as the backup application.
/// Returns the creator's process id.
pub fn check_creator(conn: &Conn, name: &str, trusted: Option<u32>) -> Result<u32> {
    let cred = conn
        .peer_cred()
        .map_err(sys_err("reading the creator's credentials"))?;
    let (me, _) = crate::sys::current_credentials();
    if cred.uid == me || cred.uid == 0 || trusted == Some(cred.uid) {
        return Ok(cred.pid);
    }
    Err(VdError::new(
        ErrorCode::Security,
        Reason::AccessDenied(format!(
            "virtual device set '{name}' was created by user {} (process {}), not by user {me} or root; refusing to attach (to accept it, trust that user: AttachOptions::trust_owner)",
            cred.uid, cred.pid
        )),
    ))
}

/// Locks a mutex; a panic elsewhere while it was held does not poison our state (every
/// critical section leaves it consistent).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The error for a creator's `Refused` answer.
pub fn refused(code: i32, reason: String) -> VdError {
    let code = ErrorCode::from_hresult(code).unwrap_or(ErrorCode::Unexpected);
    let reason = if code == ErrorCode::Security {
        Reason::AccessDenied(reason)
    } else {
        Reason::InvalidArgument(reason)
    };
    VdError::new(code, reason)
}

/// The error for a failed thread or eventfd creation.
pub fn io_err(op: &'static str) -> impl Fn(std::io::Error) -> VdError {
    move |e| {
        VdError::new(
            ErrorCode::Unexpected,
            Reason::System {
                op,
                errno: e.raw_os_error().unwrap_or(0),
            },
        )
    }
}

pub fn sys_err(op: &'static str) -> impl Fn(rustix::io::Errno) -> VdError {
    move |e| VdError::system(op, e)
}

#[cfg(test)]
mod tests {
    use super::validate_set_name;

    #[test]
    fn set_names_are_letters_digits_and_a_few_marks() {
        for good in [
            "a",
            "{6F9619FF-8B86-D011-B42D-00C04FC964FF}",
            "vdi-backup-123-ab.cd_ef",
        ] {
            assert!(validate_set_name(good).is_ok(), "{good:?}");
        }
        for bad in ["a b", "a\nb", "a\tb", "a\u{1}", "é", "a:b", "a/b", ""] {
            let e = validate_set_name(bad).unwrap_err();
            assert!(e.to_string().contains("set name"), "{bad:?}: {e}");
        }
    }
}
