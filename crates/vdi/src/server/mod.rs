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

mod agent;
mod alloc;
mod buffer;
mod command;
mod config;
mod device;

use buffer::Pool;
pub use buffer::ServerBuffer;
pub use command::{Completion, ServerCommand};
pub use config::ServerConfig;
pub use device::ServerDevice;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::config::VdConfig;
use crate::consts::CommandCode;
use crate::error::{AbortCause, ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{self, phase};
use crate::protocol::msg::{Msg, Role};
use crate::protocol::ring::{Consumer, Producer};
use crate::shared::{AttachOptions, Attached, Shared, Watchdog, attach, lock, sys_err};
use crate::sys::socket::Conn;

/// The server set's state.
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
    /// The creator's pid (SO_PEERCRED at attach).
    client_pid: u32,
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
        let Attached {
            conn,
            control,
            creator_pid: client_pid,
            ..
        } = attach(name, Role::Server, options.trust_owner)?;
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
                client_pid,
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

    /// The current state.
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

    /// Every device's statistics so far (see [`ClientSet::device_stats`](crate::ClientSet::device_stats)).
    pub fn device_stats(&self) -> Vec<crate::observe::DeviceStats> {
        let sh = &self.inner.shared;
        match sh.queues.get() {
            Some(q) if !sh.is_closed() => crate::observe::stats_of(q),
            _ => Vec::new(),
        }
    }

    /// The process id of the client that created the set, as the kernel recorded it when
    /// this process connected (so it cannot be forged through shared memory).
    pub fn client_pid(&self) -> u32 {
        self.inner.client_pid
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
