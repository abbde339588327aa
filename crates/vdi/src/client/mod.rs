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

mod command;
mod device;
mod handles;
mod segments;
mod service;

pub(crate) use command::RawCommand;
pub use command::{Command, OwnedCommand};
pub use device::ClientDevice;
pub use handles::MappedBuffer;
use segments::{areas_received, receive_segment};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::config::{Timeout, VdConfig};
use crate::consts::features;
use crate::error::{AbortCause, ErrorCode, NameHolder, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{self, ControlSegment, MAGIC, VERSION, dev, phase};
use crate::protocol::msg::{Msg, Role};
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
            h.created_ns
                .store(crate::sys::monotonic_ns(), Ordering::Relaxed);
            layout::store_config(&h.client_config, &cfg);
            h.phase.store(phase::CREATED, Ordering::Release);
        }
        let listener = Listener::bind(&socket_name(name)).map_err(|e| {
            if e == rustix::io::Errno::ADDRINUSE {
                let holder = name_holder(name);
                let who = holder.map(|h| {
                    let (me, _) = crate::sys::current_credentials();
                    let whose = if h.uid == me {
                        "this user".to_owned()
                    } else {
                        format!("user {}, not this user ({me})", h.uid)
                    };
                    format!(" (created by {whose}, process {})", h.pid)
                });
                VdError::new(
                    ErrorCode::Busy,
                    Reason::NameInUse {
                        message: format!(
                            "a virtual device set named '{name}' already exists{}; choose another name (a GUID is recommended) or close the other set",
                            who.unwrap_or_default()
                        ),
                        holder,
                    },
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
            ..
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
        self.get_configuration_until(timeout.into(), None)
    }

    /// `GetConfiguration` whose wait also ends (with `VD_E_TIMEOUT`) when `stop` is set;
    /// whoever sets it while the call waits then calls [`ClientSet::wake_set_waiters`].
    pub(crate) fn get_configuration_until(
        &self,
        timeout: Timeout,
        stop: Option<&AtomicBool>,
    ) -> Result<VdConfig> {
        self.check_open("GetConfiguration")?;
        let sh = &self.inner.shared;
        sh.check_abort()?;
        if let Some(c) = *lock(&self.inner.config) {
            return Ok(c);
        }
        let h = sh.header();
        let configured = || {
            h.phase.load(Ordering::Acquire) >= phase::CONFIGURED
                && sh.queues.get().is_some()
                && areas_received(sh)
        };
        let stopped = || stop.is_some_and(|s| s.load(Ordering::Acquire));
        let ready = || sh.ended() || configured() || stopped();
        if !event::wait_until(&h.set_event, timeout.deadline(), ready) {
            return Err(VdError::timeout());
        }
        sh.check_live("GetConfiguration")?;
        if !configured() {
            return Err(VdError::timeout());
        }
        let cfg = self.read_final_config()?;
        *lock(&self.inner.config) = Some(cfg);
        self.inner.configured.store(true, Ordering::Release);
        if let Link::Primary { state, .. } = &self.inner.link {
            state.configured.store(true, Ordering::Release);
        }
        Ok(cfg)
    }

    /// Wakes the waits on `set_event` (`GetConfiguration`, `OpenDevice`), so that one
    /// whose `stop` was set ends at once; any other waiter of the word, in this process or
    /// the peer's, finds nothing changed and sleeps again (a spare wake is harmless).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wake_set_waiters(&self) {
        event::notify(&self.inner.shared.header().set_event);
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
        // After an abort the client need not wait for VD_E_CLOSE: Close
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

    /// Every device's statistics so far (bytes and commands completed, the time each
    /// side waited for the other): what `vdi sets` shows, for this process's own report.
    /// Empty before the server configured the set, and after `Close`.
    pub fn device_stats(&self) -> Vec<crate::observe::DeviceStats> {
        let sh = &self.inner.shared;
        match sh.queues.get() {
            Some(q) if !sh.is_closed() => crate::observe::stats_of(q),
            _ => Vec::new(),
        }
    }

    /// The process id the server wrote into the set when it opened it (`None` before,
    /// or after `Close`). The server writes it, so it is what the server says, not a
    /// proof: use it to name the peer in messages, never to signal a process.
    pub fn server_pid(&self) -> Option<u32> {
        if self.inner.shared.is_closed() {
            return None;
        }
        let pid = self
            .inner
            .shared
            .header()
            .server_pid
            .load(Ordering::Relaxed);
        (pid != 0).then_some(pid)
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

impl ClientInner {
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

/// Who holds set name `name`, for the error that says the name is taken: a name squatted
/// by another user is then plain to see. `None` if the holder cannot be asked (it went
/// away meanwhile). The probe connects and hangs up without a Hello, which the holder's
/// service thread drops without effect.
fn name_holder(name: &str) -> Option<NameHolder> {
    let conn = Conn::connect(&socket_name(name)).ok()?;
    let c = conn.peer_cred().ok()?;
    Some(NameHolder {
        uid: c.uid,
        pid: c.pid,
    })
}
