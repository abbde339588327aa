//! Looking at live sets without taking part in them (`vdi sets`): which sets exist on
//! this machine, who made them, and, where their creator admits this user, their state
//! and each device's statistics.
//!
//! [`list`] reads the kernel's list of abstract sockets. [`look`] connects to one set as
//! an *observer*: the creator checks this process's credentials as it checks a secondary
//! client's and, if it admits it, sends the control segment and the queue segment (never
//! a buffer area), which this process maps **read-only**; then the connection is dropped.
//! An observer sends nothing but its Hello, holds no device and has no say in the set:
//! its coming and going is ignored by the set, and nothing it could do through a
//! read-only mapping changes the set. The statistics are counters each role keeps on
//! cache lines it writes anyway (`protocol::layout::stat`): bytes and commands completed,
//! and the time each side waited for the other.
//!
//! ```no_run
//! for name in vdi::observe::list() {
//!     let set = vdi::observe::look(&name);
//!     println!("{name}: made by user {:?}", set.creator_uid);
//!     if let Ok(v) = &set.view {
//!         for d in &v.devices {
//!             println!("  device {}: {} bytes", d.index, d.bytes);
//!         }
//!     }
//! }
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::VdConfig;
use crate::error::AbortCause;
use crate::protocol::layout::{self, QueueGeometry, QueueSegment, dev, phase, stat};
use crate::protocol::msg::{MAX_MSG, Msg, Role, SegmentKind};
use crate::shared::{attach, socket_name};
use crate::sys::shm::SharedMemory;
use crate::sys::socket::Conn;

/// The names of the sets that exist on this machine now (from `/proc/net/unix`).
pub fn list() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter_map(|p| p.strip_prefix("@vdi/1/"))
        .filter(|n| crate::shared::validate_set_name(n).is_ok())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What can be seen of one set.
#[derive(Clone, Debug)]
pub struct LiveSet {
    /// The set's name.
    pub name: String,
    /// The user whose process made the set (the kernel's record), if it could be asked.
    pub creator_uid: Option<u32>,
    /// That process.
    pub creator_pid: Option<u32>,
    /// Its state and devices, or why they cannot be seen (the creator does not admit
    /// this user, or the set went away).
    pub view: Result<SetView, String>,
}

/// Where a set is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetState {
    /// Created; no engine yet.
    Waiting,
    /// An engine opened it and is configuring it.
    Configuring,
    /// Configured: data moves.
    Active,
    /// Every device was closed by the engine.
    Ending,
    /// Aborted (the cause).
    Aborting(AbortCause),
}

impl SetState {
    /// A word for a table.
    pub fn name(self) -> &'static str {
        match self {
            SetState::Waiting => "waiting",
            SetState::Configuring => "configuring",
            SetState::Active => "active",
            SetState::Ending => "ending",
            SetState::Aborting(_) => "aborting",
        }
    }
}

/// A set's state and devices, as its control and queue segments say now.
#[derive(Clone, Debug)]
pub struct SetView {
    /// Where it is in its life.
    pub state: SetState,
    /// The backup application's process (as it wrote it).
    pub client_pid: u32,
    /// The engine's process (as it wrote it), once one opened the set.
    pub server_pid: Option<u32>,
    /// The configuration: the final one once configured, else the one asked for.
    pub config: VdConfig,
    /// Time since the set was created.
    pub age: Duration,
    /// The devices (none before the engine configured the set).
    pub devices: Vec<DeviceStats>,
}

/// One device's statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStats {
    /// Its index.
    pub index: u32,
    /// Its name, once the engine opened it.
    pub name: Option<String>,
    /// The engine opened it.
    pub open: bool,
    /// The engine closed it.
    pub closed: bool,
    /// It is in the IO-ERROR state.
    pub io_error: bool,
    /// The client process serving it (1 = the primary), if any.
    pub owner: Option<u32>,
    /// Bytes the client completed.
    pub bytes: u64,
    /// Commands the client completed.
    pub commands: u64,
    /// Commands sent and not yet taken back by the engine.
    pub outstanding: u32,
    /// Time the client waited for the engine.
    pub client_waited: Duration,
    /// Time the engine waited for the client (while this device had commands out).
    pub engine_waited: Duration,
}

impl DeviceStats {
    /// Which side waited more for the other, as a word: `engine` when the client waited
    /// for the engine most of the time (the engine is the bottleneck), `client` in the
    /// other case, `-` when neither waited.
    pub fn bottleneck(&self) -> &'static str {
        match (self.client_waited, self.engine_waited) {
            (a, b) if a.is_zero() && b.is_zero() => "-",
            (a, b) if a >= b => "engine",
            _ => "client",
        }
    }
}

/// Looks at set `name`.
pub fn look(name: &str) -> LiveSet {
    let cred = Conn::connect(&socket_name(name))
        .ok()
        .and_then(|c| c.peer_cred().ok());
    LiveSet {
        name: name.to_owned(),
        creator_uid: cred.map(|c| c.uid),
        creator_pid: cred.map(|c| c.pid),
        view: view(name),
    }
}

fn view(name: &str) -> Result<SetView, String> {
    let a = attach(name, Role::Observer, None).map_err(|e| e.to_string())?;
    let h = a.control.header();
    let asked = layout::load_config(&h.client_config);
    let mut queues = None;
    if a.segments > 0 {
        queues = receive_queues(&a.conn, asked.device_count);
    }
    let ph = h.phase.load(Ordering::Acquire);
    let abort = h.abort.load(Ordering::Acquire);
    let config = if ph >= phase::CONFIGURED {
        layout::load_config(&h.final_config)
    } else {
        asked
    };
    let mut devices = Vec::new();
    if let Some(q) = &queues {
        devices = stats_of(q);
    }
    let state = if abort != 0 {
        SetState::Aborting(AbortCause::from_word(abort))
    } else if !devices.is_empty() && devices.iter().all(|d| d.closed) {
        SetState::Ending
    } else {
        match ph {
            phase::CONFIGURED => SetState::Active,
            phase::CONNECTED | phase::CONFIGURING => SetState::Configuring,
            _ => SetState::Waiting,
        }
    };
    let server_pid = h.server_pid.load(Ordering::Relaxed);
    let created = h.created_ns.load(Ordering::Relaxed);
    Ok(SetView {
        state,
        client_pid: h.client_pid.load(Ordering::Relaxed),
        server_pid: (server_pid != 0).then_some(server_pid),
        config,
        age: Duration::from_nanos(crate::sys::monotonic_ns().saturating_sub(created)),
        devices,
    })
}

/// Receives and maps (read-only) the queue segment the creator sends an observer.
fn receive_queues(conn: &Conn, device_count: u32) -> Option<QueueSegment> {
    let mut buf = [0u8; MAX_MSG];
    let (n, mut fds) = conn.recv(&mut buf, Some(Duration::from_secs(2))).ok()?;
    match Msg::decode(&buf[..n]) {
        Ok(Msg::Segment {
            kind: SegmentKind::Queues,
            index,
            size,
        }) if fds.len() == 1 => {
            let geo = QueueGeometry {
                device_count,
                capacity: index,
            };
            if !geo.is_valid() || size != geo.segment_size() as u64 {
                return None;
            }
            let mem = SharedMemory::attach_read_only(fds.remove(0), Some(size)).ok()?;
            QueueSegment::new(mem, geo)
        }
        _ => None,
    }
}

/// Every device's statistics in queue segment `q`.
pub(crate) fn stats_of(q: &QueueSegment) -> Vec<DeviceStats> {
    let cap = q.geometry().capacity;
    (0..q.geometry().device_count)
        .filter_map(|i| {
            let b = q.device(i)?.block;
            let st = b.state.load(Ordering::Relaxed);
            let owner = b.owner.load(Ordering::Relaxed);
            let ns =
                |x: &std::sync::atomic::AtomicU64| Duration::from_nanos(x.load(Ordering::Relaxed));
            Some(DeviceStats {
                index: i,
                name: (st & dev::SERVER_OPEN != 0)
                    .then(|| layout::load_name(b))
                    .flatten(),
                open: st & dev::SERVER_OPEN != 0,
                closed: st & dev::SERVER_CLOSED != 0,
                io_error: st & dev::IO_ERROR != 0,
                owner: (owner != 0).then_some(owner),
                bytes: b.comp_tail.counters[stat::BYTES].load(Ordering::Relaxed),
                commands: b.comp_tail.counters[stat::COMMANDS].load(Ordering::Relaxed),
                outstanding: b
                    .sub_tail
                    .pos
                    .load(Ordering::Relaxed)
                    .wrapping_sub(b.comp_head.pos.load(Ordering::Relaxed))
                    .min(cap),
                client_waited: ns(&b.sub_head.counters[stat::CLIENT_WAIT_NS]),
                engine_waited: ns(&b.comp_head.counters[stat::SERVER_WAIT_NS]),
            })
        })
        .collect()
}
