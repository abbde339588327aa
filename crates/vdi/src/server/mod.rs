//! The server role: the engine that produces (BACKUP) or consumes (RESTORE) the data.
//!
//! The server opens a set the client created ([`ServerSet::open`]), reads the client's
//! wishes ([`ServerSet::get_configuration`]), configures the set
//! ([`begin_configuration`](ServerSet::begin_configuration),
//! [`request_buffers`](ServerSet::request_buffers),
//! [`end_configuration`](ServerSet::end_configuration)), runs the completion agent on a
//! thread of its own ([`execute_completion_agent`](ServerSet::execute_completion_agent)),
//! opens the devices ([`open_device`](ServerSet::open_device)), and sends commands
//! ([`ServerDevice::send_command`]) whose callbacks the agent runs as the client completes
//! them. A [`ServerBuffer`] is a value: sending a command moves it to the client side and
//! the [`Completion`] hands it back.
//!
//! ```no_run
//! use vdi::{ServerSet, ServerCommand, features, Completion};
//! # fn main() -> Result<(), vdi::VdError> {
//! let set = ServerSet::open("my-backup-set")?;
//! let _asked = set.get_configuration()?;
//! set.begin_configuration(features::WRITE_MEDIA, 512, 0, 1 << 20, 10_000)?;
//! set.request_buffers(1 << 20, 0, 4)?;
//! set.end_configuration()?;
//! std::thread::scope(|s| -> Result<(), vdi::VdError> {
//!     s.spawn(|| set.execute_completion_agent());
//!     let dev = set.open_device("my-backup-set")?;
//!     let mut buf = set.allocate_buffer(1 << 20, 0)?;
//!     buf.as_mut_slice().fill(7);
//!     dev.send_command(ServerCommand::write(buf, 1 << 20), |c: Completion| {
//!         assert!(c.is_success());
//!     })?;
//!     dev.close_device()?;
//!     Ok(())
//! })?;
//! set.close()?;
//! # Ok(()) }
//! ```

mod alloc;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{MAX_ALIGNMENT, MAX_BLOCK_SIZE, MAX_TRANSFER_SIZE, MIN_BLOCK_SIZE, VdConfig};
use crate::consts::{CommandCode, completion, features};
use crate::error::{AbortCause, ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{
    self, MAX_AREAS, MAX_NAME, NO_BUFFER, QueueGeometry, QueueSegment, dev, phase,
};
use crate::protocol::msg::{Msg, Role, SegmentKind};
use crate::protocol::ring::{Consumer, Producer};
use crate::shared::{AttachOptions, Attached, Shared, Watchdog, attach, lock, sys_err};
use crate::sys::shm::SharedMemory;
use crate::sys::socket::Conn;

use alloc::AreaAlloc;

/// The server set's state (reference §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// After `Open`.
    Connected,
    /// After `BeginConfiguration`.
    Configurable,
    /// After `EndConfiguration`.
    Initializing,
    /// After the first `OpenDevice` or `ExecuteCompletionAgent`.
    Active,
    /// Every device closed.
    NormallyTerminated,
    /// Aborted.
    AbnormallyTerminated,
    /// After `Close`.
    Closed,
}

impl ServerState {
    fn name(self) -> &'static str {
        match self {
            ServerState::Connected => "Connected",
            ServerState::Configurable => "Configurable",
            ServerState::Initializing => "Initializing",
            ServerState::Active => "Active",
            ServerState::NormallyTerminated => "Normally Terminated",
            ServerState::AbnormallyTerminated => "Abnormally Terminated",
            ServerState::Closed => "closed",
        }
    }
}

/// The outcome of a command, given to its callback with the buffer it carried.
#[derive(Debug)]
pub struct Completion {
    /// The device the command was sent to.
    pub device: u32,
    /// The command code.
    pub code: CommandCode,
    /// The size the command asked for.
    pub size: u32,
    /// The position the command carried.
    pub position: u64,
    /// The Win32 completion code (`ERROR_SUCCESS`, `ERROR_OPERATION_ABORTED`, ...).
    pub completion_code: u32,
    /// Bytes transferred (Read/Write).
    pub bytes_transferred: u32,
    /// The position reported (GetPosition/SetPosition).
    pub out_position: u64,
    /// The buffer the command carried, back in the server's hands.
    pub buffer: Option<ServerBuffer>,
}

impl Completion {
    /// Whether the command completed with `ERROR_SUCCESS`.
    pub fn is_success(&self) -> bool {
        self.completion_code == completion::ERROR_SUCCESS
    }
}

/// A command to send ([`ServerDevice::send_command`]).
#[derive(Debug)]
pub struct ServerCommand {
    code: CommandCode,
    size: u32,
    position: u64,
    buffer: Option<ServerBuffer>,
}

impl ServerCommand {
    /// A command without a buffer (Flush, ClearError, GetPosition, ...).
    pub fn new(code: CommandCode) -> ServerCommand {
        ServerCommand {
            code,
            size: 0,
            position: 0,
            buffer: None,
        }
    }

    /// `VDC_Write` of the first `len` bytes of `buffer`.
    pub fn write(buffer: ServerBuffer, len: u32) -> ServerCommand {
        ServerCommand {
            code: CommandCode::WRITE,
            size: len,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// `VDC_Read` into the first `len` bytes of `buffer`.
    pub fn read(buffer: ServerBuffer, len: u32) -> ServerCommand {
        ServerCommand {
            code: CommandCode::READ,
            size: len,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// Any code with a buffer.
    pub fn with_buffer(code: CommandCode, buffer: ServerBuffer, len: u32) -> ServerCommand {
        ServerCommand {
            code,
            size: len,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// Sets `size` (the count of SkipMarks/SkipBlocks/Load, the whence of SetPosition).
    pub fn with_size(mut self, size: u32) -> ServerCommand {
        self.size = size;
        self
    }

    /// Sets the position (random-access Read/Write, SetPosition).
    pub fn with_position(mut self, position: u64) -> ServerCommand {
        self.position = position;
        self
    }

    /// The code.
    pub fn code(&self) -> CommandCode {
        self.code
    }

    fn into_completion(self, device: u32, completion_code: u32) -> Completion {
        Completion {
            device,
            code: self.code,
            size: self.size,
            position: self.position,
            completion_code,
            bytes_transferred: 0,
            out_position: 0,
            buffer: self.buffer,
        }
    }
}

type Callback = Box<dyn FnOnce(Completion) + Send + 'static>;

struct Record {
    code: CommandCode,
    size: u32,
    position: u64,
    buffer: Option<ServerBuffer>,
    callback: Callback,
}

struct DevLocal {
    producer: Producer,
    free: Vec<u32>,
    records: Vec<Option<Record>>,
    seq: u32,
}

struct DeviceLocal {
    local: Mutex<DevLocal>,
    consumer: Mutex<Consumer>,
    /// Our completion-ring head, mirrored for the agent's cheap "anything new?" check.
    comp_head: AtomicU32,
    open: AtomicBool,
    closed: AtomicBool,
}

/// The buffer areas and their allocators; buffers keep this (and so the mappings) alive.
struct Pool {
    shared: Arc<Shared>,
    prefix: u64,
    areas: Mutex<Vec<AreaAlloc>>,
}

struct Local {
    state: ServerState,
    config: VdConfig,
    requests: Vec<(u64, u64, u64)>,
    opened: u32,
    names: Vec<String>,
}

struct ServerInner {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    client_config: VdConfig,
    conn: Mutex<Option<Conn>>,
    watchdog: Mutex<Option<Watchdog>>,
    local: Mutex<Local>,
    devices: OnceLock<Box<[DeviceLocal]>>,
    outstanding: AtomicU32,
    /// maxTransferSize once configured (0 before).
    max_transfer: AtomicU32,
    closed_devices: Arc<AtomicU32>,
    /// The client's end of the socket hung up (set by the watchdog).
    client_gone: Arc<AtomicBool>,
    closed: AtomicBool,
    agent_running: Mutex<Option<std::thread::ThreadId>>,
    agent_done: Condvar,
}

/// A virtual device set, as the server (engine) sees it. Cheap to clone.
#[derive(Clone)]
pub struct ServerSet {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for ServerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSet")
            .field("name", &self.inner.shared.name)
            .finish()
    }
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl ServerSet {
    /// `Open`: attaches to the set `name` that a client created.
    ///
    /// Errors: `VD_E_INVALID` (bad name, or no set of that name is waiting),
    /// `VD_E_SECURITY` (this user may not open it; the message says what to change),
    /// `VD_E_ABORT` (the set is aborted or closing).
    pub fn open(name: &str) -> Result<ServerSet> {
        ServerSet::open_with(name, AttachOptions::default())
    }

    /// `Open` with options: by default the set must have been created by this user or by
    /// root (so that another user cannot pose as the backup application and receive the
    /// data); [`AttachOptions::trust_owner`] admits one more user.
    pub fn open_with(name: &str, options: AttachOptions) -> Result<ServerSet> {
        let Attached { conn, control, .. } = attach(name, Role::Server, options.trust_owner)?;
        let shared = Arc::new(Shared::new(name.to_owned(), control));
        let h = shared.header();
        let client_config = layout::load_config(&h.client_config);
        if client_config.validate_client().is_err() {
            return Err(VdError::violation(
                "the client's configuration in shared memory is invalid",
            ));
        }
        if h.phase
            .compare_exchange(
                phase::CREATED,
                phase::CONNECTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(VdError::violation("the set is not in the Created phase"));
        }
        h.server_pid
            .store(crate::sys::current_pid(), Ordering::Relaxed);
        shared.check_abort()?;
        let sh2 = shared.clone();
        let closed_devices = Arc::new(AtomicU32::new(0));
        let client_gone = Arc::new(AtomicBool::new(false));
        let (closed2, gone2) = (closed_devices.clone(), client_gone.clone());
        let device_count = client_config.device_count;
        // The client going away is an abort unless the set already ended normally: we
        // closed every device and the client saw VD_E_CLOSE on each (so it completed all
        // it fetched). Even then the agent aborts if, once it has taken every completion
        // the client left behind, commands are still outstanding.
        let watchdog = Watchdog::spawn(conn.try_clone().map_err(sys_err("dup"))?, move || {
            gone2.store(true, Ordering::Release);
            if closed2.load(Ordering::Acquire) == device_count && sh2.all_devices_client_done() {
                event::notify(&sh2.header().completion_event);
            } else {
                sh2.abort(AbortCause::ClientDied);
            }
        })?;
        let pool = Arc::new(Pool {
            shared: shared.clone(),
            prefix: u64::from(client_config.prefix_zone_size),
            areas: Mutex::new(Vec::new()),
        });
        Ok(ServerSet {
            inner: Arc::new(ServerInner {
                shared,
                pool,
                client_config,
                conn: Mutex::new(Some(conn)),
                watchdog: Mutex::new(Some(watchdog)),
                local: Mutex::new(Local {
                    state: ServerState::Connected,
                    config: client_config,
                    requests: Vec::new(),
                    opened: 0,
                    names: Vec::new(),
                }),
                devices: OnceLock::new(),
                outstanding: AtomicU32::new(0),
                max_transfer: AtomicU32::new(0),
                closed_devices,
                client_gone,
                closed: AtomicBool::new(false),
                agent_running: Mutex::new(None),
                agent_done: Condvar::new(),
            }),
        })
    }

    /// The set name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// The current state (reference §2.2).
    pub fn state(&self) -> ServerState {
        let l = lock(&self.inner.local);
        self.inner.effective_state(&l)
    }

    /// Commands sent and not yet called back.
    pub fn outstanding(&self) -> u32 {
        self.inner.outstanding.load(Ordering::Acquire)
    }

    /// Whether the set has been aborted, and why.
    pub fn abort_cause(&self) -> Option<AbortCause> {
        self.inner.shared.abort_cause()
    }

    /// `GetConfiguration`: the client's requested configuration (after
    /// `EndConfiguration`, the final one).
    pub fn get_configuration(&self) -> Result<VdConfig> {
        let l = lock(&self.inner.local);
        match self.inner.effective_state(&l) {
            ServerState::Closed => Err(VdError::protocol("GetConfiguration", "closed")),
            ServerState::AbnormallyTerminated => Err(self.inner.abort_error()),
            _ => Ok(l.config),
        }
    }

    /// `BeginConfiguration(features, blockSize, alignment, maxTransferSize, timeout)`
    /// (the header's order). `features` must name `WRITE_MEDIA` and/or `READ_MEDIA`
    /// (plus `COMPLETE_ENABLED` if the client asked for `REQUEST_COMPLETE`); the client's
    /// own feature bits are kept.
    ///
    /// Errors: `VD_E_PROTOCOL` (not Connected), `VD_E_INVALID` (a parameter; the message
    /// names it).
    pub fn begin_configuration(
        &self,
        features: u32,
        block_size: u32,
        alignment: u32,
        max_transfer_size: u32,
        timeout_ms: u32,
    ) -> Result<()> {
        let _ = timeout_ms; // Client-provided buffer areas are not part of this protocol.
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if st != ServerState::Connected {
            return Err(inner.state_error("BeginConfiguration", st));
        }
        let asked = inner.client_config;
        if features & !(features::SERVER_MASK | features::CLIENT_MASK) != 0 {
            return Err(VdError::invalid(format!(
                "features 0x{features:08X} has unknown bits"
            )));
        }
        if features & (features::WRITE_MEDIA | features::READ_MEDIA) == 0 {
            return Err(VdError::invalid(
                "features must include VDF_WriteMedia (backup) or VDF_ReadMedia (restore)",
            ));
        }
        if features & features::COMPLETE_ENABLED != 0
            && asked.features & features::REQUEST_COMPLETE == 0
        {
            return Err(VdError::invalid(
                "VDF_CompleteEnabled requires the client to request VDF_RequestComplete",
            ));
        }
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(VdError::invalid(format!(
                "blockSize {block_size} must be a power of two from 512 to 65536"
            )));
        }
        let align = if alignment == 0 {
            block_size
        } else {
            alignment
        };
        if !align.is_power_of_two() || align < block_size || align > MAX_ALIGNMENT {
            return Err(VdError::invalid(format!(
                "alignment {alignment} must be 0 or a power of two from blockSize ({block_size}) to 65536"
            )));
        }
        if max_transfer_size == 0
            || !max_transfer_size.is_multiple_of(65536)
            || max_transfer_size > MAX_TRANSFER_SIZE
        {
            return Err(VdError::invalid(format!(
                "maxTransferSize {max_transfer_size} must be a multiple of 65536 from 64 KiB to 4 MiB"
            )));
        }
        let mut cfg = asked;
        cfg.features = asked.features | (features & features::SERVER_MASK);
        cfg.block_size = block_size;
        cfg.alignment = align.max(asked.alignment);
        cfg.max_transfer_size = max_transfer_size;
        cfg.max_io_depth = crate::config::MAX_IO_DEPTH;
        l.config = cfg;
        l.state = ServerState::Configurable;
        inner
            .shared
            .header()
            .phase
            .store(phase::CONFIGURING, Ordering::Release);
        event::notify(&inner.shared.header().set_event);
        Ok(())
    }

    /// `RequestBuffers`: declares `count` buffers of `size` data bytes. During
    /// configuration requests are summed; afterwards each call adds a buffer area at once.
    ///
    /// Errors: `VD_E_PROTOCOL` (wrong state), `VD_E_INVALID`, `VD_E_MEMORY`.
    pub fn request_buffers(&self, size: u32, alignment: u32, count: u32) -> Result<()> {
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if !matches!(
            st,
            ServerState::Configurable | ServerState::Initializing | ServerState::Active
        ) {
            return Err(inner.state_error("RequestBuffers", st));
        }
        if size == 0 || size > MAX_TRANSFER_SIZE {
            return Err(VdError::invalid(format!(
                "buffer size {size} must be 1 to {MAX_TRANSFER_SIZE}"
            )));
        }
        if count == 0 || count > 1 << 16 {
            return Err(VdError::invalid(format!(
                "buffer count {count} must be 1 to 65536"
            )));
        }
        let align = inner.effective_alignment(&l.config, alignment)?;
        let req = (u64::from(size), align, u64::from(count));
        if st == ServerState::Configurable {
            l.requests.push(req);
            return Ok(());
        }
        let area_size = AreaAlloc::size_for(inner.pool.prefix, &[req]);
        inner.add_area(area_size)?;
        l.config.buffer_area_size = inner.total_area_bytes();
        Ok(())
    }

    /// `QueryAvailableBuffers`: how many buffers of this shape can still be allocated
    /// (during configuration: in the area that `EndConfiguration` would create).
    pub fn query_available_buffers(&self, size: u32, alignment: u32) -> Result<u32> {
        let inner = &self.inner;
        let l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if size == 0 {
            return Err(VdError::invalid("buffer size 0"));
        }
        let align = inner.effective_alignment(&l.config, alignment)?;
        let prefix = inner.pool.prefix;
        let n = match st {
            ServerState::Configurable => AreaAlloc::new(AreaAlloc::size_for(prefix, &l.requests))
                .count_fit(prefix, u64::from(size), align),
            ServerState::Initializing | ServerState::Active => lock(&inner.pool.areas)
                .iter()
                .map(|a| a.count_fit(prefix, u64::from(size), align))
                .sum(),
            _ => return Err(inner.state_error("QueryAvailableBuffers", st)),
        };
        Ok(n.min(u64::from(u32::MAX)) as u32)
    }

    /// `EndConfiguration`: allocates the buffer area and the device queues and releases
    /// the client's `GetConfiguration`.
    ///
    /// Errors: `VD_E_PROTOCOL` (not Configurable), `VD_E_ABORT`, `VD_E_MEMORY` (the area
    /// could not be had; the set stays Configurable so the request can shrink).
    pub fn end_configuration(&self) -> Result<()> {
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if st == ServerState::AbnormallyTerminated {
            return Err(inner.abort_error());
        }
        if st != ServerState::Configurable {
            return Err(inner.state_error("EndConfiguration", st));
        }
        let total_buffers: u64 = l.requests.iter().map(|r| r.2).sum();
        let geo = QueueGeometry::for_buffers(l.config.device_count, total_buffers);
        let area_size = AreaAlloc::size_for(inner.pool.prefix, &l.requests);
        if let Some(avail) = mem_available()
            && area_size > avail
        {
            return Err(VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!(
                    "the requested buffers need {area_size} bytes but only {avail} bytes of memory are available; request fewer or smaller buffers"
                )),
            ));
        }
        let qmem = SharedMemory::create("vdi-queues", geo.segment_size()).map_err(|e| {
            VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("device queues: {e}")),
            )
        })?;
        let qfd = qmem
            .dup_fd()
            .ok_or_else(|| VdError::new(ErrorCode::Memory, Reason::OutOfMemory("dup".into())))?;
        let queues =
            QueueSegment::new(qmem, geo).ok_or_else(|| VdError::violation("queue segment"))?;
        let area0 = if area_size > 0 {
            Some(inner.create_area(0, area_size)?)
        } else {
            None
        };
        {
            let conn = lock(&inner.conn);
            let c = conn
                .as_ref()
                .ok_or_else(|| VdError::protocol("EndConfiguration", "closed"))?;
            c.send(
                &Msg::Segment {
                    kind: SegmentKind::Queues,
                    index: geo.capacity,
                    size: geo.segment_size() as u64,
                }
                .encode(),
                &[std::os::fd::AsFd::as_fd(&qfd)],
            )
            .map_err(|_| inner.client_gone())?;
            if area_size > 0 {
                let areas = &inner.shared.areas;
                let fd = areas[0]
                    .get()
                    .and_then(SharedMemory::dup_fd)
                    .ok_or_else(|| VdError::protocol("EndConfiguration", "closed"))?;
                c.send(
                    &Msg::Segment {
                        kind: SegmentKind::Area,
                        index: 0,
                        size: area_size,
                    }
                    .encode(),
                    &[std::os::fd::AsFd::as_fd(&fd)],
                )
                .map_err(|_| inner.client_gone())?;
            }
        }
        let cap = geo.capacity as usize;
        let devices: Box<[DeviceLocal]> = (0..geo.device_count)
            .map(|i| {
                let d = queues.device(i);
                let (producer, consumer) = match d {
                    Some(d) => (
                        Producer::attach(&d.sub_ring()),
                        Consumer::attach(&d.comp_ring()),
                    ),
                    None => (Producer::default(), Consumer::default()),
                };
                DeviceLocal {
                    local: Mutex::new(DevLocal {
                        producer,
                        free: (0..cap as u32).rev().collect(),
                        records: (0..cap).map(|_| None).collect(),
                        seq: 0,
                    }),
                    consumer: Mutex::new(consumer),
                    comp_head: AtomicU32::new(0),
                    open: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                }
            })
            .collect();
        inner
            .shared
            .install_queues(queues)
            .map_err(|why| VdError::protocol("EndConfiguration", why))?;
        let _ = inner.devices.set(devices);
        l.config.buffer_area_size = area_size.min(u64::from(u32::MAX)) as u32;
        let h = inner.shared.header();
        h.queue_capacity.store(geo.capacity, Ordering::Relaxed);
        inner
            .max_transfer
            .store(l.config.max_transfer_size, Ordering::Release);
        h.area_count
            .store(u32::from(area_size > 0), Ordering::Release);
        layout::store_config(&h.final_config, &l.config);
        h.phase.store(phase::CONFIGURED, Ordering::Release);
        event::notify(&h.set_event);
        if let Some(real) = area0 {
            inner.enable_area(0, real);
        }
        l.state = ServerState::Initializing;
        Ok(())
    }

    /// `ExecuteCompletionAgent`: runs the completion agent on the calling thread. It calls
    /// each command's callback as the client completes it, and returns `Ok` once every
    /// device is closed and nothing is outstanding, or `VD_E_ABORT` after an abort, once
    /// every outstanding command has been called back with `ERROR_OPERATION_ABORTED`.
    ///
    /// Errors: `VD_E_PROTOCOL` (before `EndConfiguration`, or an agent already runs).
    pub fn execute_completion_agent(&self) -> Result<()> {
        let inner = &self.inner;
        {
            let mut l = lock(&inner.local);
            let st = inner.effective_state(&l);
            match st {
                ServerState::Initializing | ServerState::Active => {}
                ServerState::AbnormallyTerminated if inner.devices.get().is_some() => {}
                _ => return Err(inner.state_error("ExecuteCompletionAgent", st)),
            }
            let mut running = lock(&inner.agent_running);
            if running.is_some() {
                return Err(VdError::protocol(
                    "ExecuteCompletionAgent",
                    "already running the completion agent",
                ));
            }
            *running = Some(std::thread::current().id());
            if l.state == ServerState::Initializing {
                l.state = ServerState::Active;
            }
        }
        // Cleared even if a callback panics, so Close never waits for a dead agent.
        struct Running<'a>(&'a ServerInner);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                *lock(&self.0.agent_running) = None;
                self.0.agent_done.notify_all();
            }
        }
        let _running = Running(inner);
        inner.agent_loop()
    }

    /// `OpenDevice`: opens the next unopened device under `name` (device 0 must have the
    /// set's name; the client opens the others by the names given here).
    ///
    /// Errors: `VD_E_OPEN` (all devices open), `VD_E_INVALID` (bad or repeated name),
    /// `VD_E_PROTOCOL` (wrong state), `VD_E_ABORT`.
    pub fn open_device(&self, name: &str) -> Result<ServerDevice> {
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if st == ServerState::AbnormallyTerminated {
            return Err(inner.abort_error());
        }
        if !matches!(st, ServerState::Initializing | ServerState::Active) {
            return Err(inner.state_error("OpenDevice", st));
        }
        let index = l.opened;
        if index >= l.config.device_count {
            return Err(VdError::new(ErrorCode::Open, Reason::AllDevicesOpen));
        }
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return Err(VdError::invalid(format!(
                "device name must be 1 to {MAX_NAME} bytes without NUL"
            )));
        }
        if index == 0 && name != inner.shared.name {
            return Err(VdError::invalid(format!(
                "device 0 must have the set's name '{}' (got '{name}')",
                inner.shared.name
            )));
        }
        if l.names.iter().any(|n| n == name) {
            return Err(VdError::invalid(format!(
                "device name '{name}' is already used in this set"
            )));
        }
        let d = inner
            .shared
            .device(index)
            .ok_or_else(|| VdError::violation("device out of range"))?;
        layout::store_name(d.block, name);
        d.block.state.fetch_or(dev::SERVER_OPEN, Ordering::AcqRel);
        if let Some(devs) = inner.devices.get() {
            devs[index as usize].open.store(true, Ordering::Release);
        }
        event::notify(&inner.shared.header().set_event);
        l.opened += 1;
        l.names.push(name.to_owned());
        l.state = ServerState::Active;
        Ok(ServerDevice {
            set: self.inner.clone(),
            index,
        })
    }

    /// `AllocateBuffer`: a buffer of `size` data bytes from the shared area, its data
    /// start aligned to `alignment` (0 = the set's alignment), with the client's prefix
    /// zone in front. Dropping it (or [`free_buffer`](Self::free_buffer)) returns it.
    ///
    /// Errors: `VD_E_MEMORY` (no room: request more buffers), `VD_E_INVALID`,
    /// `VD_E_PROTOCOL`, `VD_E_ABORT`.
    pub fn allocate_buffer(&self, size: u32, alignment: u32) -> Result<ServerBuffer> {
        let inner = &self.inner;
        let l = lock(&inner.local);
        inner.buffer_row(&l, "AllocateBuffer")?;
        if size == 0 || size > MAX_TRANSFER_SIZE {
            return Err(VdError::invalid(format!(
                "buffer size {size} must be 1 to {MAX_TRANSFER_SIZE}"
            )));
        }
        let align = inner.effective_alignment(&l.config, alignment)?;
        drop(l);
        let pool = &inner.pool;
        let mut areas = lock(&pool.areas);
        for (i, a) in areas.iter_mut().enumerate() {
            if let Some(off) = a.alloc(pool.prefix, u64::from(size), align) {
                let ptr = pool.shared.buffer_ptr(i as u32, off, u64::from(size));
                let Some(ptr) = ptr else {
                    a.free(off);
                    return Err(VdError::violation("buffer outside its area"));
                };
                return Ok(ServerBuffer {
                    pool: pool.clone(),
                    area: i as u32,
                    offset: off,
                    len: size,
                    ptr,
                });
            }
        }
        Err(VdError::new(
            ErrorCode::Memory,
            Reason::OutOfMemory(format!(
                "no free buffer of {size} bytes is left in the shared area; request more with RequestBuffers or free some"
            )),
        ))
    }

    /// `FreeBuffer`: returns a buffer (the same as dropping it). The buffer is returned
    /// in every case; the result is the state table's row (shared with AllocateBuffer):
    /// `NOERROR` while Initializing or Active, `VD_E_PROTOCOL` before `EndConfiguration`,
    /// after the normal end or after `Close`, `VD_E_ABORT` after an abort, and
    /// `VD_E_INVALID` for a buffer of another set.
    pub fn free_buffer(&self, buffer: ServerBuffer) -> Result<()> {
        if !Arc::ptr_eq(&buffer.pool, &self.inner.pool) {
            return Err(VdError::invalid("the buffer belongs to another set"));
        }
        drop(buffer);
        self.check_buffer_row("FreeBuffer")
    }

    /// The AllocateBuffer/FreeBuffer row of the state table for the current state.
    pub(crate) fn check_buffer_row(&self, call: &'static str) -> Result<()> {
        let l = lock(&self.inner.local);
        self.inner.buffer_row(&l, call)
    }

    /// `IsSharedBuffer`: whether `p` points into a buffer allocated from this set.
    pub fn is_shared_buffer(&self, p: *const u8) -> bool {
        let pool = &self.inner.pool;
        match pool.shared.locate(p) {
            Some((area, off)) => lock(&pool.areas)
                .get(area as usize)
                .is_some_and(|a| a.is_inside(off)),
            None => false,
        }
    }

    /// `SignalAbort`: aborts the set; the agent completes every outstanding command with
    /// `ERROR_OPERATION_ABORTED` and returns.
    pub fn signal_abort(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(VdError::protocol("SignalAbort", "closed"));
        }
        self.inner.shared.abort(AbortCause::ServerSignalled);
        Ok(())
    }

    /// `Close`: releases the set. With devices still open (and no abort yet) it returns
    /// `VD_E_PROTOCOL` after abort processing: every outstanding command is called back
    /// with `ERROR_OPERATION_ABORTED` (by the running completion agent, which then
    /// returns, or here if none runs).
    ///
    /// In every case, errors included, everything the set holds in this process is
    /// released before `Close` returns, whatever devices and buffers the caller still
    /// holds: the watchdog thread, the socket, every memfd and shared mapping. Devices and
    /// clones kept past `Close` return `VD_E_PROTOCOL` (or `VD_E_ABORT`); a
    /// [`ServerBuffer`] kept past `Close` stays valid memory but is no longer shared (its
    /// pages were replaced in place by private ones: `docs/shm-layout.md`, "Close"). A
    /// second `Close` returns `VD_E_PROTOCOL`.
    pub fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Err(VdError::protocol("Close", "closed"));
        }
        // In the Abnormally Terminated state Close is the normal way out (NOERROR).
        let (devices_open, ended_normally) = {
            let l = lock(&inner.local);
            let all_closed = l.opened == l.config.device_count
                && inner.closed_devices.load(Ordering::Acquire) == l.config.device_count;
            (
                l.opened > inner.closed_devices.load(Ordering::Acquire)
                    && inner.shared.abort_cause().is_none(),
                all_closed && inner.outstanding.load(Ordering::Acquire) == 0,
            )
        };
        // Closing a set that did not end normally (devices open or never opened,
        // commands outstanding) ends it for the client too: abort, so that its waits
        // return VD_E_ABORT instead of running into their time-outs.
        if !ended_normally {
            inner.shared.abort(AbortCause::ServerSignalled);
        }
        event::notify(&inner.shared.header().completion_event);
        {
            let me = std::thread::current().id();
            let mut running = lock(&inner.agent_running);
            while running.is_some_and(|t| t != me) {
                running = inner
                    .agent_done
                    .wait(running)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        inner.abort_processing();
        inner.release();
        if devices_open {
            return Err(VdError::new(ErrorCode::Protocol, Reason::DevicesStillOpen));
        }
        Ok(())
    }
}

impl ServerInner {
    fn effective_state(&self, l: &Local) -> ServerState {
        if self.closed.load(Ordering::Acquire) {
            return ServerState::Closed;
        }
        if self.shared.abort_cause().is_some() {
            return ServerState::AbnormallyTerminated;
        }
        if l.state == ServerState::Active
            && l.opened == l.config.device_count
            && self.closed_devices.load(Ordering::Acquire) == l.config.device_count
            && self.outstanding.load(Ordering::Acquire) == 0
        {
            return ServerState::NormallyTerminated;
        }
        l.state
    }

    /// The client's end of the socket is gone: abort and say so.
    fn client_gone(&self) -> VdError {
        self.shared.abort(AbortCause::ClientDied);
        VdError::aborted(AbortCause::ClientDied)
    }

    /// The AllocateBuffer/FreeBuffer row: Initializing and Active `NOERROR`, Abnormally
    /// Terminated `VD_E_ABORT`, every other state `VD_E_PROTOCOL`.
    fn buffer_row(&self, l: &Local, call: &'static str) -> Result<()> {
        match self.effective_state(l) {
            ServerState::Initializing | ServerState::Active => Ok(()),
            ServerState::AbnormallyTerminated => Err(self.abort_error()),
            st => Err(self.state_error(call, st)),
        }
    }

    fn abort_error(&self) -> VdError {
        VdError::aborted(self.shared.abort_cause().unwrap_or(AbortCause::Unknown))
    }

    fn state_error(&self, call: &'static str, st: ServerState) -> VdError {
        if st == ServerState::AbnormallyTerminated {
            return VdError::new(
                ErrorCode::Protocol,
                Reason::Aborted(self.shared.abort_cause().unwrap_or(AbortCause::Unknown)),
            );
        }
        VdError::protocol(call, st.name())
    }

    fn effective_alignment(&self, cfg: &VdConfig, alignment: u32) -> Result<u64> {
        if alignment != 0 && (!alignment.is_power_of_two() || alignment > MAX_ALIGNMENT) {
            return Err(VdError::invalid(format!(
                "alignment {alignment} must be 0 or a power of two up to 65536"
            )));
        }
        Ok(u64::from(alignment.max(cfg.alignment).max(1)))
    }

    fn total_area_bytes(&self) -> u32 {
        let n = self.shared.header().area_count.load(Ordering::Acquire) as usize;
        // Client-writable words: summed without overflow (note N20).
        let total: u64 = self.shared.header().area_sizes[..n.min(MAX_AREAS)]
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.load(Ordering::Relaxed)));
        total.min(u64::from(u32::MAX)) as u32
    }

    /// Creates area `index` here (mapped, pre-faulted) and its allocator.
    fn create_area(&self, index: usize, size: u64) -> Result<u64> {
        let mem = SharedMemory::create("vdi-buffers", size as usize).map_err(|e| {
            VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("buffer area of {size} bytes: {e}")),
            )
        })?;
        let real = mem.len() as u64;
        self.shared
            .install_area(index, mem)
            .map_err(|why| VdError::protocol("RequestBuffers", why))?;
        self.shared.header().area_sizes[index].store(size, Ordering::Relaxed);
        Ok(real)
    }

    /// Lets AllocateBuffer use area `index` (only once the client has it).
    fn enable_area(&self, index: usize, real: u64) {
        let mut areas = lock(&self.pool.areas);
        while areas.len() < index {
            areas.push(AreaAlloc::new(0));
        }
        areas.push(AreaAlloc::new(real));
    }

    /// After configuration: a new area, sent to the client, published, then usable.
    fn add_area(&self, size: u64) -> Result<()> {
        let h = self.shared.header();
        let Some(index) = (0..MAX_AREAS).find(|&i| self.shared.areas[i].get().is_none()) else {
            return Err(VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("a set may have at most {MAX_AREAS} buffer areas")),
            ));
        };
        let real = self.create_area(index, size)?;
        let fd = self.shared.areas[index]
            .get()
            .and_then(SharedMemory::dup_fd)
            .ok_or_else(|| VdError::protocol("RequestBuffers", "closed"))?;
        {
            let conn = lock(&self.conn);
            let c = conn
                .as_ref()
                .ok_or_else(|| VdError::protocol("RequestBuffers", "closed"))?;
            c.send(
                &Msg::Segment {
                    kind: SegmentKind::Area,
                    index: index as u32,
                    size,
                }
                .encode(),
                &[std::os::fd::AsFd::as_fd(&fd)],
            )
            .map_err(|_| self.client_gone())?;
        }
        let total: u64 = h.area_sizes[..=index]
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.load(Ordering::Relaxed)));
        h.final_config[10].store(total.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
        h.area_count.store(index as u32 + 1, Ordering::Release);
        event::notify(&h.set_event);
        self.enable_area(index, real);
        Ok(())
    }

    fn agent_loop(&self) -> Result<()> {
        let sh = &self.shared;
        let h = sh.header();
        let Some(devs) = self.devices.get() else {
            return Err(VdError::protocol(
                "ExecuteCompletionAgent",
                "not configured",
            ));
        };
        let device_count = devs.len() as u32;
        // serverTimeOut counts only time with commands pending: from the later of the
        // last completion and the moment the agent saw itself busy again after an idle
        // spell (it looks at least every `event::SLICE`, so the clock may start up to that
        // much after the send: never earlier, in the client's favour).
        let interval = self.client_config.server_time_out;
        let mut last_progress = Instant::now();
        let mut busy_since: Option<Instant> = None;
        loop {
            if sh.abort_cause().is_some() {
                self.abort_processing();
                return Err(self.abort_error());
            }
            if sh.is_closed() {
                self.abort_processing();
                return Err(VdError::protocol("ExecuteCompletionAgent", "closed"));
            }
            let mut progressed = false;
            for (i, d) in devs.iter().enumerate() {
                if !d.open.load(Ordering::Acquire) {
                    continue;
                }
                loop {
                    match self.finish_next(i as u32, d) {
                        Ok(true) => progressed = true,
                        Ok(false) => break,
                        Err(_) => break,
                    }
                }
            }
            if progressed {
                last_progress = Instant::now();
                continue;
            }
            // The close count first, then the outstanding count: a send increments
            // `outstanding` before its device's close increments `closed_devices` (both
            // under the device lock), so "all closed" read first and "none outstanding"
            // read after cannot miss a command sent just before the last close. Read
            // the other way round, the agent could return with that command's callback
            // not yet run (found by the loom model `close_racing_with_send`).
            let all_closed = self.closed_devices.load(Ordering::Acquire) == device_count
                || self.closed.load(Ordering::Acquire);
            let outstanding = self.outstanding.load(Ordering::Acquire);
            if outstanding > 0 && self.client_gone.load(Ordering::Acquire) {
                // Every completion the client left is taken; nobody will send the rest.
                sh.abort(AbortCause::ClientDied);
                continue;
            }
            if outstanding == 0 && all_closed {
                return Ok(());
            }
            if outstanding == 0 {
                busy_since = None;
            } else if busy_since.is_none() {
                busy_since = Some(Instant::now());
            }
            let deadline = (interval > 0 && outstanding > 0).then(|| {
                let start = busy_since.map_or(last_progress, |b| b.max(last_progress));
                start + Duration::from_millis(u64::from(interval) * 2)
            });
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                sh.abort(AbortCause::ServerTimeout);
                continue;
            }
            // With a server time-out and nothing outstanding, also wake (at the next
            // re-check) when commands are sent, to start the clock.
            let watch_sends = interval > 0 && outstanding == 0;
            event::wait_until(&h.completion_event, deadline, || {
                sh.ended()
                    || self.client_gone.load(Ordering::Acquire)
                    || (watch_sends && self.outstanding.load(Ordering::Acquire) != 0)
                    || devs.iter().enumerate().any(|(i, d)| {
                        d.open.load(Ordering::Acquire)
                            && sh.device(i as u32).is_some_and(|v| {
                                v.block.comp_tail.pos.load(Ordering::Acquire)
                                    != d.comp_head.load(Ordering::Relaxed)
                            })
                    })
                    || (self.outstanding.load(Ordering::Acquire) == 0
                        && (self.closed_devices.load(Ordering::Acquire) == device_count
                            || self.closed.load(Ordering::Acquire)))
            });
        }
    }

    /// Takes one completion from device `i`, if any, and runs its callback.
    fn finish_next(&self, i: u32, d: &DeviceLocal) -> Result<bool> {
        let sh = &self.shared;
        let Some(v) = sh.device(i) else {
            return Ok(false);
        };
        let idx = {
            let mut c = lock(&d.consumer);
            let r = c.pop(&v.comp_ring());
            // Our own position, never read back from the segment the client can write.
            d.comp_head.store(c.position(), Ordering::Relaxed);
            match r {
                Ok(Some(idx)) => idx,
                Ok(None) => return Ok(false),
                Err(_) => {
                    return Err(
                        sh.violation(format!("device {i}: completion ring positions are corrupt"))
                    );
                }
            }
        };
        // Take the record and read the slot's outputs before the slot goes back on the
        // free list: once it is there, a sender may reuse (and reset) it.
        let taken = {
            let mut l = lock(&d.local);
            let rec = l.records.get_mut(idx as usize).and_then(Option::take);
            rec.map(|rec| {
                let s = &v.slots[idx as usize];
                let out = (
                    s.completion_code.load(Ordering::Relaxed),
                    s.bytes_transferred.load(Ordering::Relaxed),
                    s.out_position.load(Ordering::Relaxed),
                );
                l.free.push(idx);
                (rec, out)
            })
        };
        let Some((rec, (mut code, mut bytes, out_position))) = taken else {
            return Err(sh.violation(format!(
                "device {i}: completion for slot {idx}, which has no command in flight"
            )));
        };
        if rec.code.carries_data() && bytes > rec.size {
            sh.violation(format!(
                "device {i}: {} completed with {bytes} bytes of {}",
                rec.code, rec.size
            ));
            code = completion::ERROR_OPERATION_ABORTED;
            bytes = 0;
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        (rec.callback)(Completion {
            device: i,
            code: rec.code,
            size: rec.size,
            position: rec.position,
            completion_code: code,
            bytes_transferred: bytes,
            out_position,
            buffer: rec.buffer,
        });
        Ok(true)
    }

    /// Completes what the client already completed, then every other outstanding command
    /// with `ERROR_OPERATION_ABORTED`.
    fn abort_processing(&self) {
        let Some(devs) = self.devices.get() else {
            return;
        };
        for (i, d) in devs.iter().enumerate() {
            while let Ok(true) = self.finish_next(i as u32, d) {}
        }
        for (i, d) in devs.iter().enumerate() {
            let taken: Vec<Record> = {
                let mut l = lock(&d.local);
                let mut v = Vec::new();
                for (k, r) in l.records.iter_mut().enumerate() {
                    if let Some(rec) = r.take() {
                        v.push((k, rec));
                    }
                }
                for (k, _) in &v {
                    l.free.push(*k as u32);
                }
                v.into_iter().map(|(_, r)| r).collect()
            };
            for rec in taken {
                self.outstanding.fetch_sub(1, Ordering::AcqRel);
                (rec.callback)(Completion {
                    device: i as u32,
                    code: rec.code,
                    size: rec.size,
                    position: rec.position,
                    completion_code: completion::ERROR_OPERATION_ABORTED,
                    bytes_transferred: 0,
                    out_position: 0,
                    buffer: rec.buffer,
                });
            }
        }
    }

    /// Releases everything the set holds in this process, whatever devices and buffers
    /// the caller still has: the watchdog thread and its eventfd, the socket (after a
    /// goodbye), and the shared segments (`Shared::release_memory`).
    fn release(&self) {
        drop(lock(&self.watchdog).take());
        if let Some(c) = lock(&self.conn).take() {
            let _ = c.send(&Msg::Bye.encode(), &[]);
        }
        self.shared.release_memory();
    }
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            // Dropped without Close: as Close, a set that did not end normally aborts.
            let l = lock(&self.local);
            let ended_normally = l.opened == l.config.device_count
                && self.closed_devices.load(Ordering::Acquire) == l.config.device_count
                && self.outstanding.load(Ordering::Acquire) == 0;
            drop(l);
            if !ended_normally {
                self.shared.abort(AbortCause::ServerSignalled);
            }
        }
        self.abort_processing();
        self.release();
    }
}

/// One virtual device, as the server drives it. `Sync`: commands may be sent from any
/// thread, including from completion callbacks.
pub struct ServerDevice {
    set: Arc<ServerInner>,
    index: u32,
}

impl std::fmt::Debug for ServerDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDevice")
            .field("index", &self.index)
            .finish()
    }
}

impl ServerDevice {
    /// The device's index in the set.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether the device is in the IO-ERROR state.
    pub fn in_io_error(&self) -> bool {
        self.set
            .shared
            .device(self.index)
            .is_some_and(|d| d.block.state.load(Ordering::Acquire) & dev::IO_ERROR != 0)
    }

    /// `SendCommand`: queues `command`; `on_complete` runs on the completion agent's
    /// thread when the client completes it. If sending fails, `on_complete` runs at once,
    /// on this thread, with the mapped completion code (and the buffer), and the error is
    /// returned: `VD_E_ABORT` (`ERROR_OPERATION_ABORTED`), `VD_E_PROTOCOL`
    /// (`ERROR_INVALID_HANDLE`: the device is closed), `VD_E_IO_ERROR` (`ERROR_IO_DEVICE`:
    /// only ClearError may be sent), `VD_E_QUEUE_FULL` (`ERROR_NO_SYSTEM_RESOURCES`),
    /// `VD_E_INVALID` (`ERROR_INVALID_PARAMETER`: the buffer is too small or foreign).
    pub fn send_command(
        &self,
        command: ServerCommand,
        on_complete: impl FnOnce(Completion) + Send + 'static,
    ) -> Result<()> {
        match self.try_send(command, Box::new(on_complete)) {
            Ok(()) => Ok(()),
            Err((err, command, callback)) => {
                callback(command.into_completion(self.index, err.code().send_completion_code()));
                Err(err)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_send(
        &self,
        command: ServerCommand,
        callback: Callback,
    ) -> std::result::Result<(), (VdError, ServerCommand, Callback)> {
        let inner = &self.set;
        let sh = &inner.shared;
        if inner.closed.load(Ordering::Acquire) {
            return Err((
                VdError::protocol("SendCommand", "closed"),
                command,
                callback,
            ));
        }
        if let Some(c) = sh.abort_cause() {
            return Err((VdError::aborted(c), command, callback));
        }
        let (Some(devs), Some(v)) = (inner.devices.get(), sh.device(self.index)) else {
            return Err((
                VdError::protocol("SendCommand", "not configured"),
                command,
                callback,
            ));
        };
        let d = &devs[self.index as usize];
        if d.closed.load(Ordering::Acquire) {
            return Err((
                VdError::protocol("SendCommand", "device closed"),
                command,
                callback,
            ));
        }
        let max = inner.max_transfer.load(Ordering::Acquire);
        if (command.code.carries_data() || command.buffer.is_some()) && command.size > max {
            return Err((
                VdError::invalid(format!(
                    "{} of {} bytes is larger than maxTransferSize ({max})",
                    command.code, command.size
                )),
                command,
                callback,
            ));
        }
        let (area, offset) = match &command.buffer {
            Some(b) => {
                if !Arc::ptr_eq(&b.pool, &inner.pool) {
                    return Err((
                        VdError::invalid("the buffer belongs to another set"),
                        command,
                        callback,
                    ));
                }
                if command.size > b.len {
                    return Err((
                        VdError::invalid(format!(
                            "size {} is larger than the buffer ({} bytes)",
                            command.size, b.len
                        )),
                        command,
                        callback,
                    ));
                }
                (b.area, b.offset)
            }
            None => {
                if command.code.carries_data() && command.size > 0 {
                    return Err((
                        VdError::invalid(format!(
                            "{} of {} bytes needs a buffer",
                            command.code, command.size
                        )),
                        command,
                        callback,
                    ));
                }
                (NO_BUFFER, 0)
            }
        };
        let mut l = lock(&d.local);
        // Checked under the device lock: abort processing takes the same lock, so a
        // command is either refused here or called back by it, never lost.
        if let Some(c) = sh.abort_cause() {
            drop(l);
            return Err((VdError::aborted(c), command, callback));
        }
        if d.closed.load(Ordering::Acquire) {
            drop(l);
            return Err((
                VdError::protocol("SendCommand", "device closed"),
                command,
                callback,
            ));
        }
        if v.block.state.load(Ordering::Acquire) & dev::IO_ERROR != 0
            && command.code != CommandCode::CLEAR_ERROR
        {
            drop(l);
            return Err((
                VdError::new(ErrorCode::IoError, Reason::DeviceIoError),
                command,
                callback,
            ));
        }
        let Some(idx) = l.free.pop() else {
            drop(l);
            return Err((
                VdError::new(ErrorCode::QueueFull, Reason::QueueFull),
                command,
                callback,
            ));
        };
        let s = &v.slots[idx as usize];
        l.seq = l.seq.wrapping_add(1);
        s.code.store(command.code.value(), Ordering::Relaxed);
        s.size.store(command.size, Ordering::Relaxed);
        s.position.store(command.position, Ordering::Relaxed);
        s.area.store(area, Ordering::Relaxed);
        s.offset.store(offset, Ordering::Relaxed);
        s.seq.store(l.seq, Ordering::Relaxed);
        s.completion_code.store(0, Ordering::Relaxed);
        s.bytes_transferred.store(0, Ordering::Relaxed);
        s.out_position.store(0, Ordering::Relaxed);
        let ServerCommand {
            code,
            size,
            position,
            buffer,
        } = command;
        l.records[idx as usize] = Some(Record {
            code,
            size,
            position,
            buffer,
            callback,
        });
        inner.outstanding.fetch_add(1, Ordering::AcqRel);
        let ring = v.sub_ring();
        if l.producer.push(&ring, idx).is_err() {
            let rec = l.records[idx as usize].take();
            l.free.push(idx);
            drop(l);
            inner.outstanding.fetch_sub(1, Ordering::AcqRel);
            let err = sh.violation(format!(
                "device {}: submission ring positions are corrupt",
                self.index
            ));
            return match rec {
                Some(r) => Err((
                    err,
                    ServerCommand {
                        code: r.code,
                        size: r.size,
                        position: r.position,
                        buffer: r.buffer,
                    },
                    r.callback,
                )),
                None => Ok(()),
            };
        }
        drop(l);
        event::notify(&v.block.sub_event);
        Ok(())
    }

    /// `CloseDevice`: the client's `GetCommand` returns `VD_E_CLOSE` once it has fetched
    /// every command sent before.
    ///
    /// Errors: `VD_E_CLOSE` (already closed), `VD_E_ABORT` (no action after an abort),
    /// `VD_E_PROTOCOL` (the set is closed).
    pub fn close_device(&self) -> Result<()> {
        let inner = &self.set;
        let sh = &inner.shared;
        if inner.closed.load(Ordering::Acquire) {
            return Err(VdError::protocol("CloseDevice", "closed"));
        }
        sh.check_abort()?;
        let (Some(devs), Some(v)) = (inner.devices.get(), sh.device(self.index)) else {
            return Err(VdError::protocol("CloseDevice", "not configured"));
        };
        let d = &devs[self.index as usize];
        {
            // Under the device lock: a concurrent SendCommand either queued before this
            // (the client fetches it before VD_E_CLOSE) or sees the device closed.
            let _l = lock(&d.local);
            if d.closed.swap(true, Ordering::AcqRel) {
                return Err(VdError::new(ErrorCode::Close, Reason::DeviceClosed));
            }
            // Counted before the client can see it: the watchdog compares the count.
            inner.closed_devices.fetch_add(1, Ordering::AcqRel);
            v.block.state.fetch_or(dev::SERVER_CLOSED, Ordering::AcqRel);
        }
        event::notify(&v.block.sub_event);
        event::notify(&sh.header().completion_event);
        Ok(())
    }
}

/// A buffer in the shared area, owned by the server. Sending it in a command moves it to
/// the client; the command's [`Completion`] gives it back. Dropping it frees it.
pub struct ServerBuffer {
    pool: Arc<Pool>,
    area: u32,
    offset: u64,
    len: u32,
    ptr: *mut u8,
}

// SAFETY: the pointer is into a mapping kept alive by `pool`; the buffer's bytes are owned
// by this value alone (the allocator never hands the same range out twice), so moving it
// between threads moves that ownership.
unsafe impl Send for ServerBuffer {}
// SAFETY: `&ServerBuffer` gives only read access to the bytes.
unsafe impl Sync for ServerBuffer {}

impl std::fmt::Debug for ServerBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuffer")
            .field("area", &self.area)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl ServerBuffer {
    /// Data bytes (without the prefix zone).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false: buffers have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The data start in this process.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The data.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocator gave this value `len` bytes at `ptr` inside a live
        // mapping; while the server holds the buffer the client does not touch it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }

    /// The data, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len as usize) }
    }
}

impl Drop for ServerBuffer {
    fn drop(&mut self) {
        if let Some(a) = lock(&self.pool.areas).get_mut(self.area as usize) {
            a.free(self.offset);
        }
    }
}
