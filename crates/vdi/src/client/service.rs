//! The primary client's service thread: the set's rendezvous point.
//!
//! It listens on the set's socket, checks who connects (`SO_PEERCRED`: the creating user,
//! or a member of the group the creator named), hands the control segment to the server
//! and to secondary clients, receives the server's queue and buffer segments, serves
//! secondaries' requests for buffer areas, and turns a peer's hang-up into an abort.
//! It never touches the data path.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{AbortCause, ErrorCode};
use crate::protocol::event;
use crate::protocol::layout::{MAX_AREAS, QueueGeometry, QueueSegment, dev};
use crate::protocol::msg::{MAX_MSG, Msg, Role, SegmentKind};
use crate::shared::Shared;
use crate::sys::poll::{Stopper, poll};
use crate::sys::shm::SharedMemory;
use crate::sys::socket::{Conn, Listener, process_groups};

/// Who may attach to the set besides the creating user.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Access {
    pub uid: u32,
    pub group: Option<u32>,
}

/// State the service thread shares with the primary's API.
pub(crate) struct ServiceState {
    pub shared: Arc<Shared>,
    pub access: Access,
    /// The primary's GetConfiguration has returned: secondaries may attach.
    pub configured: AtomicBool,
    /// The primary called Close: refuse newcomers.
    pub closing: AtomicBool,
    next_process_no: AtomicU32,
    server_attached: AtomicBool,
    /// The shapes of the segments received, to forward them to secondaries (the memfds
    /// themselves are the mapped segments' own, in `shared`).
    segments: Mutex<Segments>,
}

#[derive(Default)]
struct Segments {
    /// Capacity and size of the queue segment.
    queues: Option<(u32, u64)>,
    /// Size of each buffer area received.
    areas: Vec<Option<u64>>,
}

impl ServiceState {
    pub fn new(shared: Arc<Shared>, access: Access) -> ServiceState {
        ServiceState {
            shared,
            access,
            configured: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            next_process_no: AtomicU32::new(2),
            server_attached: AtomicBool::new(false),
            segments: Mutex::new(Segments::default()),
        }
    }
}

struct Peer {
    conn: Conn,
    role: Role,
    process_no: u32,
    said_bye: bool,
}

/// Runs until `stop` is signalled.
pub(crate) fn run(listener: Listener, stop: Arc<Stopper>, st: Arc<ServiceState>) {
    let mut peers: Vec<Peer> = Vec::new();
    loop {
        let mut fds = vec![stop.fd(), listener.fd()];
        let mut input = vec![true, true];
        for p in &peers {
            fds.push(p.conn.fd());
            input.push(true);
        }
        let ready = poll(&fds, &input, None);
        if ready[0].readable {
            return;
        }
        let mut gone = Vec::new();
        // The server first, and all it has sent by now (looked at again here, not only
        // as the poll above saw it): it sends a segment before it publishes it, so a
        // secondary's request for a published area, read below, finds it. Bounded: a
        // server sends at most 1 + MAX_AREAS segments and one goodbye.
        for (k, p) in peers.iter_mut().enumerate() {
            if p.role != Role::Server {
                continue;
            }
            for _ in 0..MAX_AREAS + 2 {
                let now = poll(&[p.conn.fd()], &[true], Some(Duration::ZERO))[0];
                if !(now.readable || now.hangup) {
                    break;
                }
                if !serve_message(&st, p) {
                    gone.push(k);
                    break;
                }
            }
        }
        for (i, r) in ready.iter().enumerate().skip(2) {
            let k = i - 2;
            if peers[k].role == Role::Secondary && (r.readable || r.hangup) {
                let ok = serve_message(&st, &mut peers[k]);
                if !ok {
                    gone.push(k);
                }
            }
        }
        gone.sort_unstable();
        gone.dedup();
        for k in gone.into_iter().rev() {
            let p = peers.remove(k);
            peer_gone(&st, &p);
        }
        if ready[1].readable
            && let Ok(conn) = listener.accept()
            && let Some(peer) = welcome(&st, conn)
        {
            peers.push(peer);
        }
    }
}

/// Sends an admitted observer the control segment and, once the server has sent it, the
/// queue segment (never a buffer area: the data stays between the roles). Nothing is
/// waited for: a reply that cannot be sent at once is dropped.
fn observe(st: &ServiceState, conn: &Conn) {
    let sh = &st.shared;
    let Some(control) = sh.control.memory().dup_fd() else {
        return;
    };
    let queues = {
        let segs = st.segments.lock().unwrap_or_else(|e| e.into_inner());
        segs.queues.and_then(|(cap, size)| {
            let fd = sh.queues.get()?.memory().dup_fd()?;
            Some((cap, size, fd))
        })
    };
    let welcome = Msg::Welcome {
        process_no: 0,
        segments: u32::from(queues.is_some()),
    };
    if conn
        .send_nowait(&welcome.encode(), &[control.as_fd()])
        .is_err()
    {
        return;
    }
    if let Some((cap, size, fd)) = queues {
        let _ = conn.send_nowait(
            &Msg::Segment {
                kind: SegmentKind::Queues,
                index: cap,
                size,
            }
            .encode(),
            &[fd.as_fd()],
        );
    }
}

fn peer_gone(st: &ServiceState, p: &Peer) {
    let sh = &st.shared;
    match p.role {
        // Never kept as a peer.
        Role::Observer => {}
        Role::Server => {
            // A server that closes its set says goodbye first; one that just vanishes
            // died, whatever state its devices were in (its last callbacks may never
            // have run), so the operation did not end normally. One that said goodbye
            // with a device not SERVER_CLOSED as we see it (an honest server has aborted
            // before such a Bye; garbage can clear the bit) left a device that no
            // command and no close can reach any more: abort too, or a GetCommand
            // would wait forever (note N21).
            if !p.said_bye || !sh.all_devices_closed() {
                sh.abort(AbortCause::ServerDied);
            }
        }
        Role::Secondary => {
            // Abort if it left any device it served unfinished (a device stays assigned
            // to the process that opened it).
            let mut unfinished = false;
            for i in 0..sh.device_count() {
                if let Some(d) = sh.device(i)
                    && d.block.owner.load(Ordering::Acquire) == p.process_no
                {
                    let s = d.block.state.load(Ordering::Acquire);
                    if s & dev::CLIENT_DONE == 0 {
                        unfinished = true;
                    }
                }
            }
            // (With a goodbye, its Close has already aborted the set if it had to.)
            if unfinished && !p.said_bye {
                sh.abort(AbortCause::SecondaryDied);
            }
        }
    }
}

/// Handles one readable connection; false when it is finished.
fn serve_message(st: &ServiceState, p: &mut Peer) -> bool {
    let mut buf = [0u8; MAX_MSG];
    let (n, mut fds) = match p.conn.recv(&mut buf, Some(Duration::from_millis(100))) {
        Ok(x) => x,
        Err(rustix::io::Errno::TIMEDOUT) => return true,
        Err(_) => return false,
    };
    let msg = match Msg::decode(&buf[..n]) {
        Ok(m) => m,
        Err(e) => {
            st.shared
                .violation(format!("bad message on the set socket: {}", e.0));
            return false;
        }
    };
    if p.said_bye {
        st.shared
            .violation(format!("the {:?} kept sending after its goodbye", p.role));
        return false;
    }
    match (p.role, msg) {
        (Role::Server, Msg::Segment { kind, index, size }) if fds.len() == 1 => {
            let fd = fds.remove(0);
            if let Err(why) = store_segment(st, kind, index, size, fd) {
                st.shared.violation(why);
                return false;
            }
            event::notify(&st.shared.header().set_event);
            true
        }
        (Role::Secondary, Msg::AreaRequest { index }) => {
            let segs = st.segments.lock().unwrap_or_else(|e| e.into_inner());
            let size = segs.areas.get(index as usize).copied().flatten();
            let fd = st
                .shared
                .areas
                .get(index as usize)
                .and_then(|a| a.get())
                .and_then(SharedMemory::dup_fd);
            let sent = match (size, fd) {
                (Some(size), Some(fd)) => p.conn.send_nowait(
                    &Msg::Segment {
                        kind: SegmentKind::Area,
                        index,
                        size,
                    }
                    .encode(),
                    &[fd.as_fd()],
                ),
                _ => p.conn.send_nowait(
                    &Msg::Refused {
                        code: ErrorCode::Invalid.as_hresult(),
                        reason: format!("buffer area {index} does not exist"),
                    }
                    .encode(),
                    &[],
                ),
            };
            sent.is_ok()
        }
        (_, Msg::Bye) if !p.said_bye => {
            p.said_bye = true;
            true
        }
        (role, m) => {
            st.shared
                .violation(format!("unexpected message {m:?} from the {role:?}"));
            false
        }
    }
}

fn store_segment(
    st: &ServiceState,
    kind: SegmentKind,
    index: u32,
    size: u64,
    fd: OwnedFd,
) -> Result<(), String> {
    let sh = &st.shared;
    let mut segs = st.segments.lock().unwrap_or_else(|e| e.into_inner());
    match kind {
        SegmentKind::Queues => {
            let devices =
                crate::protocol::layout::load_config(&sh.header().client_config).device_count;
            let geo = QueueGeometry {
                device_count: devices,
                capacity: index,
            };
            if !geo.is_valid() || size != geo.segment_size() as u64 || sh.queues.get().is_some() {
                return Err(format!(
                    "queue segment with capacity {index} and size {size} is invalid"
                ));
            }
            let mem = SharedMemory::attach(fd, Some(size))
                .map_err(|e| format!("queue segment refused: {e:?}"))?;
            let q = QueueSegment::new(mem, geo).ok_or("queue segment too small")?;
            sh.install_queues(q)?;
            segs.queues = Some((index, size));
        }
        SegmentKind::Area => {
            let i = index as usize;
            if i >= MAX_AREAS || sh.areas[i].get().is_some() || size == 0 {
                return Err(format!(
                    "buffer area {index} (size {size}) is invalid or repeated"
                ));
            }
            let mem = SharedMemory::attach(fd, Some(size))
                .map_err(|e| format!("buffer area {index} refused: {e:?}"))?;
            sh.install_area(i, mem)?;
            if segs.areas.len() <= i {
                segs.areas.resize_with(i + 1, || None);
            }
            segs.areas[i] = Some(size);
        }
    }
    Ok(())
}

fn refuse(conn: &Conn, code: ErrorCode, reason: String) {
    let _ = conn.send_nowait(
        &Msg::Refused {
            code: code.as_hresult(),
            reason,
        }
        .encode(),
        &[],
    );
}

/// Reads the newcomer's Hello, checks its credentials, and welcomes or refuses it.
fn welcome(st: &ServiceState, conn: Conn) -> Option<Peer> {
    let sh = &st.shared;
    // Credentials first (the kernel recorded them at connect): a stranger is refused at
    // once, without waiting for anything it sends.
    let Ok(cred) = conn.peer_cred() else {
        return None;
    };
    let a = st.access;
    let allowed = cred.uid == a.uid
        || a.group
            .is_some_and(|g| cred.gid == g || process_groups(cred.pid).contains(&g));
    if !allowed {
        let fix = match a.group {
            Some(g) => format!(
                "add user {} to group {g}, or run it as user {}",
                cred.uid, a.uid
            ),
            None => format!(
                "run it as user {}, or have the client create the set with a group that user {} belongs to (allow_group)",
                a.uid, cred.uid
            ),
        };
        // Take its Hello off the socket first (closing with unread data would turn our
        // answer into ECONNRESET on its side); a silent stranger costs at most 100 ms.
        let mut hello = [0u8; MAX_MSG];
        let _ = conn.recv(&mut hello, Some(Duration::from_millis(100)));
        refuse(
            &conn,
            ErrorCode::Security,
            format!(
                "access to virtual device set '{}' denied: process {} runs as user {} (group {}), but the set belongs to user {}{}; {fix}",
                sh.name,
                cred.pid,
                cred.uid,
                cred.gid,
                a.uid,
                a.group
                    .map(|g| format!(" and admits group {g}"))
                    .unwrap_or_default()
            ),
        );
        return None;
    }
    let mut buf = [0u8; MAX_MSG];
    let Ok((n, _fds)) = conn.recv(&mut buf, Some(Duration::from_millis(500))) else {
        return None;
    };
    let Ok(Msg::Hello { role, .. }) = Msg::decode(&buf[..n]) else {
        refuse(
            &conn,
            ErrorCode::Protocol,
            "expected a vdi Hello message".into(),
        );
        return None;
    };
    if role == Role::Observer {
        // Shown whatever state the set is in, aborted included; then the connection is
        // dropped: an observer takes no part in the set.
        observe(st, &conn);
        return None;
    }
    if st.closing.load(Ordering::Acquire) || sh.abort_cause().is_some() {
        refuse(
            &conn,
            ErrorCode::Abort,
            format!("virtual device set '{}' is closing or aborted", sh.name),
        );
        return None;
    }
    let Some(control) = sh.control.memory().dup_fd() else {
        refuse(
            &conn,
            ErrorCode::Abort,
            format!("virtual device set '{}' is closing", sh.name),
        );
        return None;
    };
    let control = control.as_fd();
    match role {
        Role::Observer => None,
        Role::Server => {
            if st.server_attached.swap(true, Ordering::AcqRel) {
                refuse(
                    &conn,
                    ErrorCode::Invalid,
                    format!(
                        "virtual device set '{}' already has a server attached",
                        sh.name
                    ),
                );
                return None;
            }
            if conn
                .send_nowait(
                    &Msg::Welcome {
                        process_no: 0,
                        segments: 0,
                    }
                    .encode(),
                    &[control],
                )
                .is_err()
            {
                // The server went away while attaching: no other server may take its
                // place (the name is the first VIRTUAL_DEVICE clause), so the set is over.
                sh.abort(AbortCause::ServerDied);
                return None;
            }
            Some(Peer {
                conn,
                role,
                process_no: 0,
                said_bye: false,
            })
        }
        Role::Secondary => {
            if !st.configured.load(Ordering::Acquire) {
                refuse(
                    &conn,
                    ErrorCode::Protocol,
                    format!(
                        "virtual device set '{}' is not ready for secondary clients: the primary has not completed GetConfiguration",
                        sh.name
                    ),
                );
                return None;
            }
            let segs = st.segments.lock().unwrap_or_else(|e| e.into_inner());
            let areas: Vec<(u32, u64, OwnedFd)> = segs
                .areas
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    let fd = sh.areas.get(i)?.get()?.dup_fd()?;
                    a.map(|s| (i as u32, s, fd))
                })
                .collect();
            let (cap, qsize) = segs.queues?;
            let qfd = sh.queues.get()?.memory().dup_fd()?;
            let process_no = st.next_process_no.fetch_add(1, Ordering::AcqRel);
            let total = 1 + areas.len() as u32;
            conn.send_nowait(
                &Msg::Welcome {
                    process_no,
                    segments: total,
                }
                .encode(),
                &[control],
            )
            .ok()?;
            conn.send_nowait(
                &Msg::Segment {
                    kind: SegmentKind::Queues,
                    index: cap,
                    size: qsize,
                }
                .encode(),
                &[qfd.as_fd()],
            )
            .ok()?;
            for (i, size, fd) in areas {
                conn.send_nowait(
                    &Msg::Segment {
                        kind: SegmentKind::Area,
                        index: i,
                        size,
                    }
                    .encode(),
                    &[fd.as_fd()],
                )
                .ok()?;
            }
            drop(segs);
            Some(Peer {
                conn,
                role,
                process_no,
                said_bye: false,
            })
        }
    }
}
