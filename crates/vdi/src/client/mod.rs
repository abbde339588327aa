//! The client role: the backup application.
//!
//! The client creates a named set ([`ClientSet::create`]), waits for the server to
//! configure it ([`ClientSet::get_configuration`]), opens its devices
//! ([`ClientSet::open_device`]) and serves each device's commands
//! ([`ClientDevice::get_command`], [`Command::complete`]) until `VD_E_CLOSE`. Other
//! processes may serve some devices ([`ClientSet::open_in_secondary`]) and pass buffers
//! by handle ([`ClientSet::get_buffer_handle`], [`ClientSet::map_buffer_handle`]).
//!
//! A [`Command`] lends its buffer — `&[u8]` to read a Write's data, `&mut [u8]` to fill a
//! Read — until it is completed; completing consumes it, so the buffer cannot be touched
//! afterwards. Several commands may be outstanding on a device (fetch, then complete in
//! any order, from any thread).
//!
//! ```no_run
//! use vdi::{ClientSet, VdConfig, Timeout, CommandCode, completion, ErrorCode};
//! # fn main() -> Result<(), vdi::VdError> {
//! let set = ClientSet::create("my-backup-set", &VdConfig::with_devices(1))?;
//! // ... start the engine: it opens "my-backup-set" with vdi::ServerSet::open ...
//! let cfg = set.get_configuration(Timeout::from_millis(10_000))?;
//! let dev = set.open_device("my-backup-set")?;
//! let mut out = Vec::new();
//! loop {
//!     let cmd = match dev.get_command(Timeout::Infinite) {
//!         Ok(cmd) => cmd,
//!         Err(e) if e.code() == ErrorCode::Close => break,
//!         Err(e) => return Err(e),
//!     };
//!     match cmd.code() {
//!         CommandCode::WRITE => {
//!             let data = cmd.buffer().unwrap_or(&[]);
//!             out.extend_from_slice(data);
//!             let n = data.len() as u32;
//!             cmd.complete(completion::ERROR_SUCCESS, n, 0)?;
//!         }
//!         CommandCode::FLUSH | CommandCode::CLEAR_ERROR => cmd.complete_ok()?,
//!         _ => cmd.complete(completion::ERROR_NOT_SUPPORTED, 0, 0)?,
//!     }
//! }
//! set.close()?;
//! # let _ = cfg; Ok(()) }
//! ```

mod service;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Timeout, VdConfig};
use crate::consts::{CommandCode, completion, features};
use crate::error::{AbortCause, ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{
    self, ControlSegment, DeviceView, MAGIC, MAX_AREAS, NO_BUFFER, QueueGeometry, QueueSegment,
    VERSION, dev, phase,
};
use crate::protocol::msg::{MAX_MSG, Msg, Role, SegmentKind};
use crate::protocol::ring::{Consumer, Producer};
use crate::shared::{
    AttachOptions, Attached, Shared, Watchdog, attach, io_err, lock, socket_name, sys_err,
    validate_set_name,
};
use crate::sys::poll::Stopper;
use crate::sys::shm::SharedMemory;
use crate::sys::socket::{Conn, Listener};

use service::{Access, ServiceState};

/// Options for [`ClientSet::create_with`].
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    /// A group whose members may also open the set (as server or secondary client).
    /// By default only processes of the creating user may.
    pub allow_group: Option<u32>,
}

impl ClientOptions {
    /// Admits processes of group `gid` besides the creating user.
    pub fn allow_group(mut self, gid: u32) -> ClientOptions {
        self.allow_group = Some(gid);
        self
    }
}

enum Link {
    Primary {
        state: Arc<ServiceState>,
        stopper: Mutex<Option<Arc<Stopper>>>,
        thread: Mutex<Option<JoinHandle<()>>>,
    },
    Secondary {
        conn: Mutex<Option<Conn>>,
        watchdog: Mutex<Option<Watchdog>>,
    },
}

struct ClientInner {
    shared: Arc<Shared>,
    link: Link,
    process_no: u32,
    /// GetConfiguration has returned (the set is Initializing for this client).
    configured: AtomicBool,
    /// Close was called (DNE for this object).
    closed: AtomicBool,
    /// Devices opened and not yet normally terminated.
    open_devices: AtomicU32,
    config: Mutex<Option<VdConfig>>,
    /// Buffer ranges lent to outstanding commands, (area, start) -> end, prefix included:
    /// no two outstanding commands may hold overlapping bytes.
    lent: Mutex<std::collections::BTreeMap<(u32, u64), u64>>,
}

/// A virtual device set, as the client (backup application) sees it.
///
/// Cheap to clone; all clones refer to the same set. The set is released at
/// [`ClientSet::close`], or when the last clone, device and command is gone.
#[derive(Clone)]
pub struct ClientSet {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for ClientSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSet")
            .field("name", &self.inner.shared.name)
            .field("process_no", &self.inner.process_no)
            .finish()
    }
}

fn wrong_state(call: &'static str, state: &'static str) -> VdError {
    VdError::protocol(call, state)
}

impl ClientSet {
    /// `CreateEx`: creates the set `name` with the client's configuration, readable by
    /// processes of the same user. See [`ClientSet::create_with`].
    pub fn create(name: &str, config: &VdConfig) -> Result<ClientSet> {
        ClientSet::create_with(name, config, ClientOptions::default())
    }

    /// `CreateEx` with options (for example, a group that may attach).
    ///
    /// Errors: `VD_E_INVALID` (bad name), `VD_E_NOTSUPPORTED` (a configuration field is
    /// invalid; the message names it), `VD_E_BUSY` (a set of that name exists).
    pub fn create_with(name: &str, config: &VdConfig, options: ClientOptions) -> Result<ClientSet> {
        validate_set_name(name)?;
        config.validate_client()?;
        let mut cfg = *config;
        // Output fields are ignored on input.
        cfg.block_size = 0;
        cfg.max_io_depth = 0;
        cfg.max_transfer_size = 0;
        cfg.buffer_area_size = 0;
        let mem = SharedMemory::create("vdi-control", ControlSegment::SIZE).map_err(|e| {
            VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("control segment: {e}")),
            )
        })?;
        let control = ControlSegment::new(mem).ok_or_else(|| {
            VdError::new(
                ErrorCode::Unexpected,
                Reason::InvalidArgument("control segment too small".into()),
            )
        })?;
        let (uid, _gid) = crate::sys::current_credentials();
        {
            let h = control.header();
            h.magic.store(MAGIC, Ordering::Relaxed);
            h.version.store(VERSION, Ordering::Relaxed);
            h.header_size
                .store(ControlSegment::SIZE as u32, Ordering::Relaxed);
            h.client_pid
                .store(crate::sys::current_pid(), Ordering::Relaxed);
            h.client_uid.store(uid, Ordering::Relaxed);
            layout::store_config(&h.client_config, &cfg);
            h.phase.store(phase::CREATED, Ordering::Release);
        }
        let listener = Listener::bind(&socket_name(name)).map_err(|e| {
            if e == rustix::io::Errno::ADDRINUSE {
                VdError::new(
                    ErrorCode::Busy,
                    Reason::NameInUse(format!(
                        "a virtual device set named '{name}' already exists{}; choose another name (a GUID is recommended) or close the other set",
                        name_holder(name)
                    )),
                )
            } else {
                VdError::system("binding the set's socket", e)
            }
        })?;
        let shared = Arc::new(Shared::new(name.to_owned(), control));
        let state = Arc::new(ServiceState::new(
            shared.clone(),
            Access {
                uid,
                group: options.allow_group,
            },
        ));
        let stopper = Arc::new(Stopper::new().map_err(io_err("eventfd"))?);
        let (st2, stop2) = (state.clone(), stopper.clone());
        let thread = std::thread::Builder::new()
            .name("vdi-set".into())
            .spawn(move || service::run(listener, stop2, st2))
            .map_err(|e| {
                VdError::new(
                    ErrorCode::Unexpected,
                    Reason::System {
                        op: "spawning the set thread",
                        errno: e.raw_os_error().unwrap_or(0),
                    },
                )
            })?;
        Ok(ClientSet {
            inner: Arc::new(ClientInner {
                shared,
                link: Link::Primary {
                    state,
                    stopper: Mutex::new(Some(stopper)),
                    thread: Mutex::new(Some(thread)),
                },
                process_no: 1,
                configured: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                open_devices: AtomicU32::new(0),
                config: Mutex::new(None),
                lent: Mutex::new(std::collections::BTreeMap::new()),
            }),
        })
    }

    /// `OpenInSecondary`: opens, from another process, a set whose primary has completed
    /// `GetConfiguration`. The secondary then opens and serves devices like the primary.
    ///
    /// Errors: `VD_E_INVALID` (bad name), `VD_E_PROTOCOL` (no such set, or not ready for
    /// secondaries), `VD_E_SECURITY` (this user may not open it), `VD_E_ABORT`.
    pub fn open_in_secondary(name: &str) -> Result<ClientSet> {
        ClientSet::open_in_secondary_with(name, AttachOptions::default())
    }

    /// `OpenInSecondary` with options: by default the set must have been created by this
    /// user or by root; [`AttachOptions::trust_owner`] admits one more user (for a
    /// secondary admitted through the creator's `allow_group`).
    pub fn open_in_secondary_with(name: &str, options: AttachOptions) -> Result<ClientSet> {
        let Attached {
            conn,
            control,
            segments,
            process_no,
        } = attach(name, Role::Secondary, options.trust_owner)?;
        let shared = Arc::new(Shared::new(name.to_owned(), control));
        let cfg = layout::load_config(&shared.header().client_config);
        for _ in 0..segments {
            receive_segment(&conn, &shared, cfg.device_count, None)?;
        }
        if shared.queues.get().is_none() {
            return Err(VdError::violation("the primary sent no queue segment"));
        }
        let sh2 = shared.clone();
        // The primary going away is an abort unless every device already ended normally.
        let watchdog = Watchdog::spawn(conn.try_clone().map_err(sys_err("dup"))?, move || {
            if !sh2.all_devices_closed() {
                sh2.abort(AbortCause::ClientDied);
            }
        })?;
        let inner = ClientInner {
            shared,
            link: Link::Secondary {
                conn: Mutex::new(Some(conn)),
                watchdog: Mutex::new(Some(watchdog)),
            },
            process_no,
            configured: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            open_devices: AtomicU32::new(0),
            config: Mutex::new(None),
            lent: Mutex::new(std::collections::BTreeMap::new()),
        };
        let set = ClientSet {
            inner: Arc::new(inner),
        };
        let final_cfg = set.read_final_config()?;
        *lock(&set.inner.config) = Some(final_cfg);
        Ok(set)
    }

    /// The set name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Whether this object opened the set as a secondary client.
    pub fn is_secondary(&self) -> bool {
        matches!(self.inner.link, Link::Secondary { .. })
    }

    fn check_open(&self, call: &'static str) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(wrong_state(call, "closed"));
        }
        Ok(())
    }

    /// `GetConfiguration`: waits until the server has configured the set and returns the
    /// final configuration (with `WRITE_MEDIA` for a backup, `READ_MEDIA` for a restore).
    ///
    /// Errors: `VD_E_TIMEOUT`, `VD_E_ABORT` (the set was aborted, the server died),
    /// `VD_E_PROTOCOL` (closed, or the server published an invalid configuration).
    pub fn get_configuration(&self, timeout: impl Into<Timeout>) -> Result<VdConfig> {
        self.check_open("GetConfiguration")?;
        let sh = &self.inner.shared;
        sh.check_abort()?;
        if let Some(c) = *lock(&self.inner.config) {
            return Ok(c);
        }
        let h = sh.header();
        let ready = || {
            sh.ended()
                || (h.phase.load(Ordering::Acquire) >= phase::CONFIGURED
                    && sh.queues.get().is_some()
                    && areas_received(sh))
        };
        if !event::wait_until(&h.set_event, timeout.into().deadline(), ready) {
            return Err(VdError::timeout());
        }
        sh.check_live("GetConfiguration")?;
        let cfg = self.read_final_config()?;
        *lock(&self.inner.config) = Some(cfg);
        self.inner.configured.store(true, Ordering::Release);
        if let Link::Primary { state, .. } = &self.inner.link {
            state.configured.store(true, Ordering::Release);
        }
        Ok(cfg)
    }

    fn read_final_config(&self) -> Result<VdConfig> {
        let sh = &self.inner.shared;
        let h = sh.header();
        let asked = layout::load_config(&h.client_config);
        let c = layout::load_config(&h.final_config);
        let problem = validate_final(&asked, &c);
        if let Some(p) = problem {
            return Err(sh.violation(format!(
                "the server published an invalid configuration: {p}"
            )));
        }
        Ok(c)
    }

    /// `OpenDevice`: opens the device called `name` (device 0 has the set's name; the
    /// others have the names the server gave them). Waits, if needed, until the server
    /// has opened a device of that name.
    ///
    /// Errors: `VD_E_PROTOCOL` (before `GetConfiguration`, after `Close`, or this device
    /// is already open), `VD_E_OPEN` (every device is already open), `VD_E_INVALID` (no
    /// device has that name), `VD_E_ABORT`.
    pub fn open_device(&self, name: &str) -> Result<ClientDevice> {
        self.check_open("OpenDevice")?;
        let inner = &self.inner;
        let sh = &inner.shared;
        sh.check_abort()?;
        if !inner.configured.load(Ordering::Acquire) {
            return Err(wrong_state(
                "OpenDevice",
                "not yet configured (call GetConfiguration first)",
            ));
        }
        let n = sh.device_count();
        let all_owned = || {
            (0..n).all(|i| {
                sh.device(i)
                    .is_some_and(|d| d.block.owner.load(Ordering::Acquire) != 0)
            })
        };
        if all_owned() {
            return Err(VdError::new(ErrorCode::Open, Reason::AllDevicesOpen));
        }
        let mut found = None;
        let h = sh.header();
        event::wait_until(&h.set_event, None, || {
            if sh.ended() {
                return true;
            }
            // "All open" first, then the name: a device the server opens between the two
            // looks is then found, never reported missing.
            let all_open = (0..n).all(|i| {
                sh.device(i)
                    .is_some_and(|d| d.block.state.load(Ordering::Acquire) & dev::SERVER_OPEN != 0)
            });
            found = find_device(sh, name);
            found.is_some() || all_open
        });
        sh.check_live("OpenDevice")?;
        let Some(index) = found else {
            return Err(VdError::invalid(format!(
                "no device of set '{}' is named '{name}'",
                sh.name
            )));
        };
        let Some(d) = sh.device(index) else {
            return Err(VdError::invalid(format!("no device {index}")));
        };
        if d.block
            .owner
            .compare_exchange(0, inner.process_no, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(wrong_state(
                "OpenDevice",
                "already open (this device is served by another thread or process)",
            ));
        }
        d.block.state.fetch_or(dev::CLIENT_OPEN, Ordering::AcqRel);
        inner.open_devices.fetch_add(1, Ordering::AcqRel);
        let cfg = lock(&inner.config).unwrap_or_default();
        Ok(ClientDevice {
            set: self.inner.clone(),
            index,
            name: name.to_owned(),
            prefix: cfg.prefix_zone_size,
            max_transfer: cfg.max_transfer_size,
            consumer: Mutex::new(ConsumerState {
                consumer: Consumer::attach(&d.sub_ring()),
                pending_clear: None,
            }),
            producer: Mutex::new(Producer::attach(&d.comp_ring())),
            outstanding: AtomicU32::new(0),
            clear_pending: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
            in_flight: (0..d.slots.len()).map(|_| AtomicBool::new(false)).collect(),
            head: AtomicU32::new(d.block.sub_head.pos.load(Ordering::Relaxed)),
        })
    }

    /// `SignalAbort`: aborts the set. Blocked and later calls on both sides return
    /// `VD_E_ABORT`; the server's outstanding commands complete with
    /// `ERROR_OPERATION_ABORTED`.
    pub fn signal_abort(&self) -> Result<()> {
        self.check_open("SignalAbort")?;
        self.inner.shared.abort(AbortCause::ClientSignalled);
        Ok(())
    }

    /// `Close`: releases the set. With devices still open (not yet at `VD_E_CLOSE`) it
    /// aborts the set and returns `VD_E_OPEN`; after an abort it returns `NOERROR` (the
    /// state table's Abort column).
    ///
    /// In every case, errors included, everything the set holds in this process is
    /// released before `Close` returns, whatever devices and commands the caller still
    /// holds: the set thread (socket, eventfd, connections), every memfd and shared
    /// mapping. Devices kept past `Close` return `VD_E_PROTOCOL`; a buffer address kept
    /// past `Close` stays valid memory but is no longer shared (`docs/shm-layout.md`,
    /// "Close"). A second `Close` returns `VD_E_PROTOCOL`.
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(wrong_state("Close", "closed"));
        }
        // After an abort the client need not wait for VD_E_CLOSE (reference §3.1): Close
        // is then the normal way out and returns NOERROR.
        // Devices still open here, or (for the primary) still served by a secondary:
        // closing the set ends theirs too, so that is a Close with devices open.
        let open = (self.inner.open_devices.load(Ordering::Acquire) > 0
            || self.secondary_devices_open())
            && self.inner.shared.abort_cause().is_none();
        if open {
            self.inner.shared.abort(AbortCause::ClientSignalled);
        }
        self.inner.release();
        if open {
            return Err(VdError::new(ErrorCode::Open, Reason::DevicesStillOpen));
        }
        Ok(())
    }

    /// For the primary: whether a secondary process has a device open that it has not
    /// finished (no `VD_E_CLOSE` delivered yet). A secondary that died or left with one
    /// unfinished has already aborted the set.
    fn secondary_devices_open(&self) -> bool {
        if !matches!(self.inner.link, Link::Primary { .. }) {
            return false;
        }
        let sh = &self.inner.shared;
        (0..sh.device_count()).any(|i| {
            sh.device(i).is_some_and(|d| {
                let owner = d.block.owner.load(Ordering::Acquire);
                let state = d.block.state.load(Ordering::Acquire);
                owner != 0
                    && owner != self.inner.process_no
                    && state & dev::CLIENT_OPEN != 0
                    && state & dev::CLIENT_DONE == 0
            })
        })
    }

    /// Whether the set has been aborted, and why.
    pub fn abort_cause(&self) -> Option<AbortCause> {
        self.inner.shared.abort_cause()
    }

    /// `GetBufferHandle`: a process-independent handle for the buffer at `ptr` (the data
    /// start of a command's buffer), for another process of the same set.
    ///
    /// Errors: `VD_E_PROTOCOL` (closed), `VD_E_INVALID` (not a buffer address).
    pub fn get_buffer_handle(&self, ptr: *const u8) -> Result<u32> {
        self.check_open("GetBufferHandle")?;
        let (area, offset) = self.inner.shared.locate(ptr).ok_or_else(|| {
            VdError::invalid("the address is not inside a buffer area of this set")
        })?;
        encode_handle(area, offset)
            .ok_or_else(|| VdError::invalid("the address is not the start of a buffer"))
    }

    /// `MapBufferHandle`: the buffer behind `handle` in this process.
    ///
    /// Errors: `VD_E_PROTOCOL` (closed), `VD_E_INVALID` (not a handle of this set).
    pub fn map_buffer_handle(&self, handle: u32) -> Result<MappedBuffer<'_>> {
        self.check_open("MapBufferHandle")?;
        let (area, offset) = decode_handle(handle);
        self.inner.ensure_area(area)?;
        let m = self.inner.shared.areas[area as usize]
            .get()
            .ok_or_else(|| {
                VdError::invalid(format!(
                    "buffer handle 0x{handle:08X} names no area of this set"
                ))
            })?;
        if offset >= m.len() as u64 {
            return Err(VdError::invalid(format!(
                "buffer handle 0x{handle:08X} is out of range"
            )));
        }
        let len = m.len() - offset as usize;
        let ptr = self
            .inner
            .shared
            .buffer_ptr(area, offset, len as u64)
            .ok_or_else(|| VdError::invalid("buffer handle out of range"))?;
        Ok(MappedBuffer {
            ptr,
            len,
            _set: std::marker::PhantomData,
        })
    }
}

fn validate_final(asked: &VdConfig, c: &VdConfig) -> Option<String> {
    if c.device_count != asked.device_count {
        return Some(format!(
            "deviceCount {} != {}",
            c.device_count, asked.device_count
        ));
    }
    if !c.block_size.is_power_of_two() || !(512..=65536).contains(&c.block_size) {
        return Some(format!("blockSize {}", c.block_size));
    }
    if !c.alignment.is_power_of_two() || c.alignment < c.block_size || c.alignment > 65536 {
        return Some(format!("alignment {}", c.alignment));
    }
    if c.max_transfer_size == 0
        || !c.max_transfer_size.is_multiple_of(65536)
        || c.max_transfer_size > 4 << 20
    {
        return Some(format!("maxTransferSize {}", c.max_transfer_size));
    }
    if c.features & (features::WRITE_MEDIA | features::READ_MEDIA) == 0 {
        return Some("neither VDF_WriteMedia nor VDF_ReadMedia".into());
    }
    if c.prefix_zone_size != asked.prefix_zone_size {
        return Some("prefixZoneSize changed".into());
    }
    None
}

fn areas_received(sh: &Shared) -> bool {
    let n = (sh.header().area_count.load(Ordering::Acquire) as usize).min(MAX_AREAS);
    sh.areas[..n].iter().all(|a| a.get().is_some())
}

fn find_device(sh: &Shared, name: &str) -> Option<u32> {
    if name == sh.name {
        return Some(0);
    }
    (1..sh.device_count()).find(|&i| {
        sh.device(i).is_some_and(|d| {
            d.block.state.load(Ordering::Acquire) & dev::SERVER_OPEN != 0
                && layout::load_name(d.block).as_deref() == Some(name)
        })
    })
}

/// Handles: area in the top 6 bits, offset / 512 in the low 26.
fn encode_handle(area: u32, offset: u64) -> Option<u32> {
    if area >= 64 || !offset.is_multiple_of(512) || offset / 512 >= 1 << 26 {
        return None;
    }
    Some(area << 26 | (offset / 512) as u32)
}

fn decode_handle(h: u32) -> (u32, u64) {
    (h >> 26, u64::from(h & ((1 << 26) - 1)) * 512)
}

/// Receives one Segment message (`want`: the area asked for, if any).
fn receive_segment(conn: &Conn, sh: &Shared, devices: u32, want: Option<u32>) -> Result<()> {
    let mut buf = [0u8; MAX_MSG];
    let (n, mut fds) = conn
        .recv(&mut buf, Some(Duration::from_secs(10)))
        .map_err(|_| VdError::aborted(AbortCause::ClientDied))?;
    match Msg::decode(&buf[..n]) {
        Ok(Msg::Segment { kind, index, size }) if fds.len() == 1 => {
            let fd = fds.remove(0);
            match kind {
                SegmentKind::Queues => {
                    let geo = QueueGeometry {
                        device_count: devices,
                        capacity: index,
                    };
                    if !geo.is_valid() || size != geo.segment_size() as u64 {
                        return Err(VdError::violation("invalid queue segment"));
                    }
                    let mem = SharedMemory::attach(fd, Some(size))
                        .map_err(|e| VdError::violation(format!("queue segment refused: {e:?}")))?;
                    let q = QueueSegment::new(mem, geo)
                        .ok_or_else(|| VdError::violation("queue segment too small"))?;
                    sh.install_queues(q).map_err(|why| {
                        VdError::violation(format!("the primary's queue segment: {why}"))
                    })?;
                }
                SegmentKind::Area => {
                    if index as usize >= MAX_AREAS || want.is_some_and(|w| w != index) {
                        return Err(VdError::violation(format!(
                            "the primary sent buffer area {index}, which was not asked for"
                        )));
                    }
                    let mem = SharedMemory::attach(fd, Some(size))
                        .map_err(|e| VdError::violation(format!("buffer area refused: {e:?}")))?;
                    sh.install_area(index as usize, mem).map_err(|why| {
                        VdError::violation(format!("the primary's buffer area {index}: {why}"))
                    })?;
                }
            }
            Ok(())
        }
        Ok(Msg::Refused { reason, .. }) => Err(VdError::invalid(reason)),
        _ => Err(VdError::violation("expected a segment message")),
    }
}

impl ClientInner {
    /// Records `[start, end)` of `area` as lent; false if it overlaps a lent range.
    fn lend(&self, area: u32, start: u64, end: u64) -> bool {
        let mut lent = lock(&self.lent);
        if let Some((&(a, _), &e)) = lent.range(..=(area, start)).next_back()
            && a == area
            && e > start
        {
            return false;
        }
        if let Some((&(a, s), _)) = lent.range((area, start)..).next()
            && a == area
            && s < end
        {
            return false;
        }
        lent.insert((area, start), end);
        true
    }

    fn give_back(&self, area: u32, start: u64) {
        lock(&self.lent).remove(&(area, start));
    }

    /// Makes sure buffer area `area` is mapped here (a secondary asks the primary).
    fn ensure_area(&self, area: u32) -> Result<()> {
        let sh = &self.shared;
        let Some(slot) = sh.areas.get(area as usize) else {
            return Err(VdError::invalid(format!("buffer area {area} out of range")));
        };
        if slot.get().is_some() {
            return Ok(());
        }
        let published = sh.header().area_count.load(Ordering::Acquire);
        if area >= published.min(MAX_AREAS as u32) {
            return Err(VdError::invalid(format!(
                "buffer area {area} does not exist"
            )));
        }
        match &self.link {
            Link::Primary { .. } => {
                // The server sends the segment before publishing it; the set thread
                // maps it promptly. Wait for it (or an abort).
                let h = sh.header();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                event::wait_until(&h.set_event, Some(deadline), || {
                    slot.get().is_some() || sh.ended()
                });
                sh.check_live("buffer access")?;
                if slot.get().is_none() {
                    return Err(
                        sh.violation(format!("buffer area {area} was published but never sent"))
                    );
                }
                Ok(())
            }
            Link::Secondary { conn, .. } => {
                let conn = lock(conn);
                let Some(conn) = conn.as_ref() else {
                    return Err(wrong_state("buffer access", "closed"));
                };
                // Another thread may have fetched it while we waited for the connection.
                if slot.get().is_some() {
                    return Ok(());
                }
                conn.send(&Msg::AreaRequest { index: area }.encode(), &[])
                    .map_err(|_| VdError::aborted(AbortCause::ClientDied))?;
                let devices = sh.device_count();
                receive_segment(conn, sh, devices, Some(area))
            }
        }
    }

    /// Releases everything the set holds in this process, whatever handles remain: stops
    /// the set thread (its socket, eventfd and connections) or says goodbye to the
    /// primary, then releases the shared segments (`Shared::release_memory`).
    fn release(&self) {
        match &self.link {
            Link::Primary {
                state,
                stopper,
                thread,
            } => {
                state.closing.store(true, Ordering::Release);
                let stopper = lock(stopper).take();
                if let Some(s) = &stopper {
                    s.signal();
                }
                if let Some(t) = lock(thread).take()
                    && t.thread().id() != std::thread::current().id()
                {
                    let _ = t.join();
                }
                drop(stopper);
            }
            Link::Secondary { conn, watchdog } => {
                drop(lock(watchdog).take());
                if let Some(c) = lock(conn).take() {
                    let _ = c.send(&Msg::Bye.encode(), &[]);
                }
            }
        }
        self.shared.release_memory();
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if self.open_devices.load(Ordering::Acquire) > 0 {
                self.shared.abort(AbortCause::ClientSignalled);
            }
            self.release();
        }
    }
}

struct ConsumerState {
    consumer: Consumer,
    /// A ClearError held back until the outstanding commands are completed.
    pending_clear: Option<(u32, SlotRead)>,
}

/// A slot's input fields, read once from shared memory (so the server cannot change
/// them between our checks and our use).
#[derive(Clone, Copy)]
struct SlotRead {
    code: CommandCode,
    size: u32,
    position: u64,
    area: u32,
    offset: u64,
}

impl SlotRead {
    fn load(s: &layout::CommandSlot) -> SlotRead {
        SlotRead {
            code: CommandCode::from(s.code.load(Ordering::Relaxed)),
            size: s.size.load(Ordering::Relaxed),
            position: s.position.load(Ordering::Relaxed),
            area: s.area.load(Ordering::Relaxed),
            offset: s.offset.load(Ordering::Relaxed),
        }
    }
}

/// One virtual device, as the client serves it.
///
/// `Sync`: one thread may wait in [`get_command`](ClientDevice::get_command) while others
/// complete earlier commands.
pub struct ClientDevice {
    set: Arc<ClientInner>,
    index: u32,
    name: String,
    prefix: u32,
    max_transfer: u32,
    consumer: Mutex<ConsumerState>,
    producer: Mutex<Producer>,
    outstanding: AtomicU32,
    clear_pending: AtomicBool,
    terminated: AtomicBool,
    /// Slots handed out and not yet completed: a server that submits a slot twice is
    /// caught here instead of lending the same buffer twice.
    in_flight: Box<[AtomicBool]>,
    /// Our consumer position, for the wait condition (never read back from the peer).
    head: AtomicU32,
}

impl std::fmt::Debug for ClientDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDevice")
            .field("index", &self.index)
            .field("name", &self.name)
            .finish()
    }
}

impl ClientDevice {
    /// The device's index in the set (0 = the set's name).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn view(&self) -> Result<DeviceView<'_>> {
        self.set
            .shared
            .device(self.index)
            .ok_or_else(|| VdError::violation("device vanished"))
    }

    /// Whether `GetCommand` has returned `VD_E_CLOSE` (Normally Terminated).
    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// Commands fetched and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// `GetCommand`: the next command, waiting up to `timeout`.
    ///
    /// Errors: `VD_E_CLOSE` (the server closed the device and every command fetched
    /// before has been completed: the normal end, the device is Normally Terminated;
    /// returned again on every later call. While fetched commands are outstanding, a
    /// closed device waits for their completion instead, so complete them from another
    /// thread or poll with a short time-out), `VD_E_TIMEOUT`, `VD_E_ABORT`, `VD_E_PROTOCOL` (the set was
    /// closed, or the server broke the protocol).
    pub fn get_command(&self, timeout: impl Into<Timeout>) -> Result<Command<'_>> {
        let raw = self.get_raw(timeout.into())?;
        Ok(Command {
            dev: self,
            raw,
            done: false,
        })
    }

    /// `GetCommand` without the borrow: the object layer keeps commands in a table.
    pub(crate) fn get_raw(&self, timeout: Timeout) -> Result<RawCommand> {
        let sh = &self.set.shared;
        if self.set.closed.load(Ordering::Acquire) {
            return Err(wrong_state("GetCommand", "closed"));
        }
        let d = self.view()?;
        let deadline = timeout.deadline();
        loop {
            sh.check_live("GetCommand")?;
            if self.terminated.load(Ordering::Acquire) {
                return Err(VdError::new(ErrorCode::Close, Reason::DeviceClosed));
            }
            {
                let mut cons = lock(&self.consumer);
                if let Some(cmd) = self.try_next(&d, &mut cons)? {
                    return Ok(cmd);
                }
                let state = d.block.state.load(Ordering::Acquire);
                // VD_E_CLOSE (Normally Terminated) only once nothing is left: no command
                // queued, none held back, none fetched and not yet completed.
                if state & dev::SERVER_CLOSED != 0
                    && !cons.consumer.has_next(&d.sub_ring())
                    && cons.pending_clear.is_none()
                    && self.outstanding.load(Ordering::Acquire) == 0
                {
                    if !self.terminated.swap(true, Ordering::AcqRel) {
                        d.block.state.fetch_or(dev::CLIENT_DONE, Ordering::AcqRel);
                        self.set.open_devices.fetch_sub(1, Ordering::AcqRel);
                    }
                    return Err(VdError::new(ErrorCode::Close, Reason::DeviceClosed));
                }
            }
            // Whatever woke us (a predicate that holds without anything to deliver, a
            // peer's garbage), the time-out still ends the call.
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(VdError::timeout());
            }
            let ring = d.sub_ring();
            let ready = event::wait_until(&d.block.sub_event, deadline, || {
                let clear = self.clear_pending.load(Ordering::Acquire);
                sh.ended()
                    // Nothing queued behind a held-back ClearError can be delivered
                    // before it, so new submissions do not count then (note N19).
                    || (!clear
                        && ring.tail.load(Ordering::Acquire) != self.head.load(Ordering::Relaxed))
                    || ((d.block.state.load(Ordering::Acquire) & dev::SERVER_CLOSED != 0
                        || clear)
                        && self.outstanding.load(Ordering::Acquire) == 0)
            });
            if !ready {
                // One last look, so a command that arrived at the deadline is not lost.
                let mut cons = lock(&self.consumer);
                if let Some(cmd) = self.try_next(&d, &mut cons)? {
                    return Ok(cmd);
                }
                sh.check_live("GetCommand")?;
                return Err(VdError::timeout());
            }
        }
    }

    fn try_next(&self, d: &DeviceView<'_>, cons: &mut ConsumerState) -> Result<Option<RawCommand>> {
        if let Some((idx, read)) = cons.pending_clear {
            if self.outstanding.load(Ordering::Acquire) > 0 {
                return Ok(None);
            }
            cons.pending_clear = None;
            self.clear_pending.store(false, Ordering::Release);
            return self.deliver(d, idx, read).map(Some);
        }
        loop {
            let Some((idx, read)) = self.pop(d, cons)? else {
                return Ok(None);
            };
            let io_error = d.block.state.load(Ordering::Acquire) & dev::IO_ERROR != 0;
            if read.code == CommandCode::CLEAR_ERROR {
                if self.outstanding.load(Ordering::Acquire) > 0 {
                    cons.pending_clear = Some((idx, read));
                    self.clear_pending.store(true, Ordering::Release);
                    return Ok(None);
                }
                return self.deliver(d, idx, read).map(Some);
            }
            if io_error {
                // Flushed: the client never sees commands queued behind an error.
                self.push_completion(d, idx, completion::ERROR_IO_DEVICE, 0, 0)?;
                event::notify(&self.set.shared.header().completion_event);
                continue;
            }
            return self.deliver(d, idx, read).map(Some);
        }
    }

    /// Takes the next submission, checks its slot index and reads the slot once.
    fn pop(&self, d: &DeviceView<'_>, cons: &mut ConsumerState) -> Result<Option<(u32, SlotRead)>> {
        let sh = &self.set.shared;
        let r = cons.consumer.pop(&d.sub_ring());
        self.head.store(cons.consumer.position(), Ordering::Relaxed);
        let idx = match r {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(None),
            Err(_) => return Err(sh.violation("submission ring positions are corrupt".into())),
        };
        let Some(slot) = d.slots.get(idx as usize) else {
            return Err(sh.violation(format!("a submission names slot {idx}, beyond the queue")));
        };
        if self.in_flight[idx as usize].load(Ordering::Acquire) {
            return Err(sh.violation(format!(
                "slot {idx} was submitted again while still outstanding"
            )));
        }
        Ok(Some((idx, SlotRead::load(slot))))
    }

    /// Validates a command's buffer and hands the command out.
    fn deliver(&self, d: &DeviceView<'_>, idx: u32, read: SlotRead) -> Result<RawCommand> {
        let sh = &self.set.shared;
        let SlotRead {
            code,
            size,
            position,
            area,
            offset,
        } = read;
        let _ = d;
        let mut buffer = None;
        let mut lent = None;
        if area != NO_BUFFER {
            if self.set.ensure_area(area).is_err() {
                return Err(sh.violation(format!(
                    "command {code} names buffer area {area}, which does not exist"
                )));
            }
            let prefix = u64::from(self.prefix);
            let ok = size <= self.max_transfer && offset >= prefix;
            let start = offset.wrapping_sub(prefix);
            let end = offset.saturating_add(u64::from(size));
            let ptr = ok
                .then(|| sh.buffer_ptr(area, start, end - start))
                .flatten();
            let Some(p) = ptr else {
                return Err(sh.violation(format!(
                    "command {code} names bytes {offset}..+{size} of area {area}: outside the area, or larger than maxTransferSize"
                )));
            };
            if !self.set.lend(area, start, end) {
                return Err(sh.violation(format!(
                    "command {code} names bytes {offset}..+{size} of area {area}, which another outstanding command holds"
                )));
            }
            lent = Some((area, start));
            // SAFETY: `buffer_ptr` checked `[offset - prefix, offset + size)` lies in the
            // area, so adding `prefix` stays in range.
            buffer = Some(unsafe { p.add(prefix as usize) });
        } else if code.carries_data() && size > 0 {
            return Err(sh.violation(format!("{code} of {size} bytes without a buffer")));
        }
        self.in_flight[idx as usize].store(true, Ordering::Release);
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Ok(RawCommand {
            slot: idx,
            code,
            size,
            position,
            buffer,
            lent,
        })
    }

    fn push_completion(
        &self,
        d: &DeviceView<'_>,
        idx: u32,
        code: u32,
        bytes: u32,
        pos: u64,
    ) -> Result<()> {
        let s = &d.slots[idx as usize];
        s.completion_code.store(code, Ordering::Relaxed);
        s.bytes_transferred.store(bytes, Ordering::Relaxed);
        s.out_position.store(pos, Ordering::Relaxed);
        let mut p = lock(&self.producer);
        p.push(&d.comp_ring(), idx).map_err(|_| {
            self.set
                .shared
                .violation("completion ring positions are corrupt".into())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn complete_slot(
        &self,
        idx: u32,
        cmd_code: CommandCode,
        lent: Option<(u32, u64)>,
        code: u32,
        bytes: u32,
        pos: u64,
    ) -> Result<()> {
        let sh = &self.set.shared;
        // The buffer and the slot stop being ours here, before the completion is published.
        if let Some((area, start)) = lent {
            self.set.give_back(area, start);
        }
        if let Some(f) = self.in_flight.get(idx as usize) {
            f.store(false, Ordering::Release);
        }
        let result = (|| {
            if self.set.closed.load(Ordering::Acquire) {
                return Err(wrong_state("CompleteCommand", "closed"));
            }
            sh.check_abort()?;
            let d = self.view()?;
            if code == completion::ERROR_SUCCESS {
                if cmd_code == CommandCode::CLEAR_ERROR {
                    d.block.state.fetch_and(!dev::IO_ERROR, Ordering::AcqRel);
                }
                self.push_completion(&d, idx, code, bytes, pos)?;
            } else {
                // IO-ERROR: mark the device, report this command, then flush what the
                // server queued behind it (reference §2.4).
                let mut cons = lock(&self.consumer);
                d.block.state.fetch_or(dev::IO_ERROR, Ordering::AcqRel);
                self.push_completion(&d, idx, code, bytes, pos)?;
                while cons.pending_clear.is_none() {
                    let Some((i, read)) = self.pop(&d, &mut cons)? else {
                        break;
                    };
                    if read.code == CommandCode::CLEAR_ERROR {
                        cons.pending_clear = Some((i, read));
                        self.clear_pending.store(true, Ordering::Release);
                    } else {
                        self.push_completion(&d, i, completion::ERROR_IO_DEVICE, 0, 0)?;
                    }
                }
            }
            event::notify(&sh.header().completion_event);
            Ok(())
        })();
        // The last outstanding command: a held-back ClearError or the device's VD_E_CLOSE
        // may now be delivered to a waiting GetCommand.
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(d) = self.view()
            && (self.clear_pending.load(Ordering::Acquire)
                || d.block.state.load(Ordering::Acquire) & dev::SERVER_CLOSED != 0)
        {
            event::notify(&d.block.sub_event);
        }
        result
    }
}

/// A command fetched by [`ClientDevice::get_command`]. It lends the command's buffer
/// until it is completed; dropping it without completing completes it with
/// `ERROR_OPERATION_ABORTED` (which puts the device in IO-ERROR).
pub struct Command<'d> {
    dev: &'d ClientDevice,
    raw: RawCommand,
    done: bool,
}

/// A fetched command's fields, without the borrow of its device.
#[derive(Debug)]
pub(crate) struct RawCommand {
    pub slot: u32,
    pub code: CommandCode,
    pub size: u32,
    pub position: u64,
    pub buffer: Option<*mut u8>,
    pub lent: Option<(u32, u64)>,
}

impl ClientDevice {
    /// `CompleteCommand` on a detached command.
    pub(crate) fn complete_raw(
        &self,
        raw: &RawCommand,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        if raw.code.carries_data() && bytes_transferred > raw.size {
            let _ = self.complete_slot(
                raw.slot,
                raw.code,
                raw.lent,
                completion::ERROR_INVALID_DATA,
                0,
                0,
            );
            return Err(VdError::invalid(format!(
                "bytesTransferred {bytes_transferred} is more than the command's size {}",
                raw.size
            )));
        }
        self.complete_slot(
            raw.slot,
            raw.code,
            raw.lent,
            completion_code,
            bytes_transferred,
            position,
        )
    }
}

// SAFETY: the buffer pointer is into a mapping kept alive by `dev` (which is Sync); the
// protocol gives this command exclusive use of the buffer until it is completed, so
// moving the command to another thread moves that exclusive use with it.
unsafe impl Send for Command<'_> {}
// SAFETY: `&Command` only gives shared (read) access to the buffer.
unsafe impl Sync for Command<'_> {}

impl std::fmt::Debug for Command<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("code", &self.raw.code)
            .field("size", &self.raw.size)
            .field("position", &self.raw.position)
            .field("has_buffer", &self.raw.buffer.is_some())
            .finish()
    }
}

impl Command<'_> {
    /// The command code.
    pub fn code(&self) -> CommandCode {
        self.raw.code
    }

    /// Bytes to transfer (Read/Write), or the command's parameter (SkipMarks count,
    /// SetPosition whence, ...).
    pub fn size(&self) -> u32 {
        self.raw.size
    }

    /// The position (random access Read/Write, SetPosition).
    pub fn position(&self) -> u64 {
        self.raw.position
    }

    /// The device that delivered the command.
    pub fn device(&self) -> &ClientDevice {
        self.dev
    }

    /// The buffer's `size` data bytes (a Write's data to store), if the command has one.
    pub fn buffer(&self) -> Option<&[u8]> {
        // SAFETY: `deliver` checked `size` bytes at `p` lie inside a mapped area; the
        // protocol lends them to this command until completion (the server does not touch
        // a buffer while its command is outstanding), and `&self` prevents a concurrent
        // `&mut` from `buffer_mut`.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts(p, self.raw.size as usize) })
    }

    /// The buffer's `size` data bytes, writable (to fill for a Read).
    pub fn buffer_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as in `buffer`, and `&mut self` makes this the only reference.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p, self.raw.size as usize) })
    }

    /// The client's prefix zone in front of the buffer (`prefixZoneSize` bytes).
    pub fn prefix_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.dev.prefix as usize;
        // SAFETY: `deliver` checked that the `prefix` bytes before the data start lie in
        // the same area; they belong to the client while the command is outstanding.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p.sub(n), n) })
    }

    /// The buffer's handle, for [`ClientSet::map_buffer_handle`] in another process.
    pub fn buffer_handle(&self) -> Option<u32> {
        let p = self.raw.buffer?;
        let (area, offset) = self.dev.set.shared.locate(p)?;
        encode_handle(area, offset)
    }

    /// `CompleteCommand`: reports the outcome. `bytes_transferred` is for Read and Write,
    /// `position` for GetPosition and SetPosition. Any code other than `ERROR_SUCCESS`
    /// puts the device in IO-ERROR.
    ///
    /// Errors: `VD_E_INVALID` (more bytes than the command asked for; the command is then
    /// completed with `ERROR_INVALID_DATA`), `VD_E_ABORT`, `VD_E_PROTOCOL`.
    pub fn complete(
        mut self,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        self.done = true;
        self.dev
            .complete_raw(&self.raw, completion_code, bytes_transferred, position)
    }

    /// Completes with `ERROR_SUCCESS`, the full size for Read/Write, position 0.
    pub fn complete_ok(self) -> Result<()> {
        let n = if self.raw.code.carries_data() {
            self.raw.size
        } else {
            0
        };
        self.complete(completion::ERROR_SUCCESS, n, 0)
    }
}

impl Drop for Command<'_> {
    fn drop(&mut self) {
        if !self.done {
            let r = &self.raw;
            let _ = self.dev.complete_slot(
                r.slot,
                r.code,
                r.lent,
                completion::ERROR_OPERATION_ABORTED,
                0,
                0,
            );
        }
    }
}

/// A buffer mapped from a handle ([`ClientSet::map_buffer_handle`]).
///
/// The bytes belong to the command that lent them, which another process holds; this
/// view gives the address and the bytes up to the end of the buffer area. Reading or
/// writing them is only sound while that command is outstanding and nobody else touches
/// the same bytes, which this type cannot check: hence the `unsafe` accessors.
pub struct MappedBuffer<'s> {
    ptr: *mut u8,
    len: usize,
    _set: std::marker::PhantomData<&'s ClientSet>,
}

impl std::fmt::Debug for MappedBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedBuffer")
            .field("ptr", &self.ptr)
            .field("capacity", &self.len)
            .finish()
    }
}

impl MappedBuffer<'_> {
    /// The address of the buffer's data in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes from the data start to the end of its area.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// The first `len` bytes.
    ///
    /// # Safety
    /// The command that lent this buffer must be outstanding for as long as the slice is
    /// used, and nobody may write these bytes meanwhile.
    pub unsafe fn as_slice(&self, len: usize) -> Option<&[u8]> {
        // SAFETY: `len <= capacity` keeps the slice inside the mapping (checked below);
        // exclusivity is the caller's promise.
        (len <= self.len).then(|| unsafe { std::slice::from_raw_parts(self.ptr, len) })
    }

    /// The first `len` bytes, writable.
    ///
    /// # Safety
    /// As for [`as_slice`](Self::as_slice), and nobody else may read or write these bytes
    /// while the slice is used.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self, len: usize) -> Option<&mut [u8]> {
        // SAFETY: in range as checked; exclusivity is the caller's promise.
        (len <= self.len).then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr, len) })
    }
}

/// Who holds set name `name`, as " (created by user U, process P)", for the error that
/// says the name is taken: a name squatted by another user is then plain to see. Empty
/// if the holder cannot be asked (it went away meanwhile). The probe connects and hangs
/// up without a Hello, which the holder's service thread drops without effect.
fn name_holder(name: &str) -> String {
    let Ok(conn) = Conn::connect(&socket_name(name)) else {
        return String::new();
    };
    match conn.peer_cred() {
        Ok(c) => {
            let (me, _) = crate::sys::current_credentials();
            let whose = if c.uid == me {
                "this user".to_owned()
            } else {
                format!("user {}, not this user ({me})", c.uid)
            };
            format!(" (created by {whose}, process {})", c.pid)
        }
        Err(_) => String::new(),
    }
}
