//! The client role for async code (feature `tokio`): [`AsyncClientSet`] and
//! [`AsyncClientDevice`], whose waits (`GetConfiguration`, `OpenDevice`, `GetCommand`)
//! are `async fn`s that never block the runtime's worker threads, and whose commands are
//! [`OwnedCommand`]s: `Send + 'static`, so each can be moved into a spawned task and
//! completed there, in any order.
//!
//! The calls, codes and command rules are those of the synchronous client
//! ([`ClientSet`], [`ClientDevice`]), which these types wrap: `VD_E_CLOSE` is the normal
//! end of a device (returned once every fetched command has been completed, so complete
//! them from other tasks while one task awaits the next command), `VD_E_ABORT` ends every
//! wait when either side aborts or the server dies, `VD_E_TIMEOUT` when the time-out
//! passes, and [`ClientSet::close`] ends every wait in progress at once with
//! `VD_E_PROTOCOL` (the set is closed; a `Close` with devices still open also aborts the
//! set, so the engine sees `VD_E_ABORT`).
//!
//! **How it waits.** [`AsyncClientDevice::get_command`] first takes a queued command on
//! the calling task, with no system call and no thread hop: a busy device costs what the
//! synchronous call costs. Only when nothing is queued does it wait, on a thread of
//! tokio's blocking pool (`spawn_blocking`), on the device's futex, as the synchronous
//! call does; that thread only *waits*, it takes nothing, and the task fetches the
//! command itself once woken. The shared futex of a peer process cannot be awaited by an
//! event loop (the kernel offers no file descriptor for it), so a thread must sleep on
//! it; one per waiting call, not one per command in flight.
//!
//! **Cancellation.** Every `async fn` here is cancel-safe: dropping its future (a
//! `select!` that picked another branch, a task aborted, a `timeout` wrapper that fired)
//! loses nothing. `get_command` takes a command only inside a poll of its future and
//! returns it from that same poll, so a dropped future has taken nothing: a command that
//! arrives afterwards stays queued for the next `get_command`. The dropped future's
//! waiting thread is told to stop and wakes at once. An `open_device` whose future is
//! dropped just as its thread opened the device parks that device in the
//! [`AsyncClientSet`], and the next `open_device` of that name returns it.
//!
//! The waits need a tokio runtime (any flavour; only `rt` is enabled); called outside one,
//! a call that would wait returns `VD_E_UNEXPECTED` ([`Reason::AsyncRuntime`]) instead.
//!
//! ```no_run
//! use vdi::async_client::AsyncClientSet;
//! use vdi::{CommandCode, ErrorCode, Timeout, VdConfig, completion};
//!
//! async fn serve_backup() -> Result<u64, vdi::VdError> {
//!     let set = AsyncClientSet::create("my-backup-set", &VdConfig::with_devices(1))?;
//!     // ... start the engine, which opens "my-backup-set" ...
//!     set.get_configuration(Timeout::from_millis(30_000)).await?;
//!     let dev = set.open_device("my-backup-set").await?;
//!     let mut tasks = tokio::task::JoinSet::new();
//!     loop {
//!         let cmd = match dev.get_command(Timeout::Infinite).await {
//!             Ok(cmd) => cmd,
//!             // The normal end: the server closed the device and every command fetched
//!             // before has been completed (by the tasks below).
//!             Err(e) if e.code() == ErrorCode::Close => break,
//!             Err(e) => return Err(e),
//!         };
//!         // Each command is completed by a task of its own, in whatever order they end.
//!         tasks.spawn(async move {
//!             match cmd.code() {
//!                 CommandCode::WRITE => {
//!                     let data = cmd.buffer().unwrap_or(&[]); // lent until completed
//!                     let n = data.len() as u32;
//!                     // ... upload `data` (an .await here does not hold up the others) ...
//!                     cmd.complete(completion::ERROR_SUCCESS, n, 0)?;
//!                     Ok(u64::from(n))
//!                 }
//!                 CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
//!                     cmd.complete_ok().map(|()| 0)
//!                 }
//!                 _ => cmd.complete(completion::ERROR_NOT_SUPPORTED, 0, 0).map(|()| 0),
//!             }
//!         });
//!     }
//!     let mut stored = 0;
//!     while let Some(done) = tasks.join_next().await {
//!         stored += done.expect("completion task")?;
//!     }
//!     set.close()?;
//!     Ok(stored)
//! }
//!
//! fn main() -> Result<(), vdi::VdError> {
//!     let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
//!     let stored = rt.block_on(serve_backup())?;
//!     println!("stored {stored} bytes");
//!     Ok(())
//! }
//! ```
//!
//! The synchronous client gets the same owned commands from
//! [`ClientDevice::get_owned_command`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::client::{ClientDevice, ClientSet, OwnedCommand};
use crate::config::{Timeout, VdConfig};
use crate::error::{ErrorCode, Reason, Result, VdError};
use crate::protocol::event::SPIN;
use crate::shared::lock;

/// A client set for async code: [`ClientSet`] with async `get_configuration` and
/// `open_device`. Cheap to clone; clones share the set (and its parked devices).
#[derive(Clone)]
pub struct AsyncClientSet {
    set: ClientSet,
    /// Devices opened by an `open_device` whose future was dropped meanwhile, by name:
    /// the next `open_device` of that name returns it.
    parked: Arc<Mutex<HashMap<String, ClientDevice>>>,
}

impl std::fmt::Debug for AsyncClientSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClientSet")
            .field("set", &self.set)
            .finish()
    }
}

impl From<ClientSet> for AsyncClientSet {
    fn from(set: ClientSet) -> AsyncClientSet {
        AsyncClientSet::new(set)
    }
}

impl AsyncClientSet {
    /// Wraps a set (created, or opened in secondary, with the synchronous calls).
    pub fn new(set: ClientSet) -> AsyncClientSet {
        AsyncClientSet {
            set,
            parked: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// `CreateEx`, as [`ClientSet::create`] (it does not wait).
    pub fn create(name: &str, config: &VdConfig) -> Result<AsyncClientSet> {
        ClientSet::create(name, config).map(AsyncClientSet::new)
    }

    /// The synchronous set underneath (for `close`, `signal_abort`, buffer handles, ...).
    pub fn set(&self) -> &ClientSet {
        &self.set
    }

    /// The set name.
    pub fn name(&self) -> &str {
        self.set.name()
    }

    /// `GetConfiguration`, as [`ClientSet::get_configuration`]: waits (without blocking
    /// the runtime) until the server has configured the set. Cancel-safe: the
    /// configuration, once the server has published it, is kept by the set, so a later
    /// call returns it.
    pub async fn get_configuration(&self, timeout: impl Into<Timeout>) -> Result<VdConfig> {
        let timeout = timeout.into();
        let deadline = timeout.deadline();
        match self.set.get_configuration(Timeout::POLL) {
            Err(e) if e.code() == ErrorCode::Timeout && timeout != Timeout::POLL => {}
            r => return r,
        }
        let (set, waker) = (self.set.clone(), self.set.clone());
        run_blocking(
            move |stop| set.get_configuration_until(remaining(deadline), Some(stop)),
            move || waker.wake_set_waiters(),
            drop,
        )
        .await?
    }

    /// `OpenDevice`, as [`ClientSet::open_device`]: waits (without blocking the runtime)
    /// until the server has opened a device called `name`, opens it, and returns it
    /// wrapped for async use. Cancel-safe: a device opened by a call whose future was
    /// dropped meanwhile is kept here and returned by the next `open_device` of `name`.
    pub async fn open_device(&self, name: &str) -> Result<AsyncClientDevice> {
        if let Some(dev) = lock(&self.parked).remove(name) {
            return Ok(AsyncClientDevice::new(Arc::new(dev)));
        }
        // A stop set beforehand makes the call a poll: the device if it can be opened
        // now, `VD_E_TIMEOUT` if it would wait.
        match self
            .set
            .open_device_until(name, Some(&AtomicBool::new(true)))
        {
            Ok(dev) => return Ok(AsyncClientDevice::new(Arc::new(dev))),
            Err(e) if e.code() == ErrorCode::Timeout => {}
            Err(e) => return Err(e),
        }
        let (set, waker) = (self.set.clone(), self.set.clone());
        let (owned, key, parked) = (name.to_owned(), name.to_owned(), self.parked.clone());
        let dev = run_blocking(
            move |stop| set.open_device_until(&owned, Some(stop)),
            move || waker.wake_set_waiters(),
            move |r: Result<ClientDevice>| {
                if let Ok(dev) = r {
                    lock(&parked).insert(key.clone(), dev);
                }
            },
        )
        .await??;
        Ok(AsyncClientDevice::new(Arc::new(dev)))
    }

    /// `SignalAbort`, as [`ClientSet::signal_abort`]: every wait on both sides ends with
    /// `VD_E_ABORT`.
    pub fn signal_abort(&self) -> Result<()> {
        self.set.signal_abort()
    }

    /// `Close`, as [`ClientSet::close`] (it does not wait): releases everything, and
    /// waits in progress on any task end at once with `VD_E_PROTOCOL`. With devices still
    /// open (not yet at `VD_E_CLOSE`) it aborts the set and returns `VD_E_OPEN`. Devices
    /// parked by cancelled `open_device` calls are dropped with it.
    pub fn close(&self) -> Result<()> {
        let r = self.set.close();
        lock(&self.parked).clear();
        r
    }
}

/// One device of a set, for async code: [`ClientDevice`] with an async
/// [`get_command`](AsyncClientDevice::get_command) that returns [`OwnedCommand`]s. Cheap
/// to clone; clones (and every command fetched) share the device, so one task may await
/// the next command while others complete earlier ones.
#[derive(Clone, Debug)]
pub struct AsyncClientDevice {
    dev: Arc<ClientDevice>,
    /// Calls that had to wait on a blocking thread (`blocking_waits`).
    blocking_waits: Arc<AtomicU64>,
}

impl From<Arc<ClientDevice>> for AsyncClientDevice {
    fn from(dev: Arc<ClientDevice>) -> AsyncClientDevice {
        AsyncClientDevice::new(dev)
    }
}

impl AsyncClientDevice {
    /// Wraps a device (opened with the synchronous [`ClientSet::open_device`]).
    pub fn new(dev: Arc<ClientDevice>) -> AsyncClientDevice {
        AsyncClientDevice {
            dev,
            blocking_waits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The synchronous device underneath.
    pub fn device(&self) -> &Arc<ClientDevice> {
        &self.dev
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        self.dev.name()
    }

    /// The device's index in the set (0 = the set's name).
    pub fn index(&self) -> u32 {
        self.dev.index()
    }

    /// Whether `GetCommand` has returned `VD_E_CLOSE` (Normally Terminated).
    pub fn is_terminated(&self) -> bool {
        self.dev.is_terminated()
    }

    /// Commands fetched and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.dev.outstanding()
    }

    /// `GetCommand`: the next command, waiting up to `timeout` without blocking the
    /// runtime. A queued command is taken at once on the calling task (no system call,
    /// no thread hop); otherwise the wait runs on tokio's blocking pool and the task
    /// fetches when woken. [`Timeout::POLL`] never leaves the task.
    ///
    /// Errors are those of [`ClientDevice::get_command`]: `VD_E_CLOSE` (the normal end,
    /// once every command fetched before has been completed: complete them from other
    /// tasks meanwhile), `VD_E_TIMEOUT`, `VD_E_ABORT` (either side aborted, or the server
    /// died: noticed within the protocol's bound), `VD_E_PROTOCOL` (the set was closed, or
    /// the server broke the protocol); and `VD_E_UNEXPECTED` ([`Reason::AsyncRuntime`])
    /// if it must wait outside a tokio runtime.
    ///
    /// Cancel-safe: dropping the future never loses a command (see the module doc).
    pub async fn get_command(&self, timeout: impl Into<Timeout>) -> Result<OwnedCommand> {
        let deadline = timeout.into().deadline();
        loop {
            if let Some(cmd) = self.poll_command()? {
                return Ok(cmd);
            }
            // Look again between yields to the runtime for as long as the synchronous wait
            // spins: other tasks run between the looks, and a device whose queue is only
            // momentarily empty (the engine refilling a buffer) then costs no thread hop.
            let now = Instant::now();
            let spin_end = deadline.map_or(now + SPIN, |d| d.min(now + SPIN));
            while Instant::now() < spin_end {
                tokio::task::yield_now().await;
                if let Some(cmd) = self.poll_command()? {
                    return Ok(cmd);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(VdError::timeout());
            }
            self.blocking_waits.fetch_add(1, Ordering::Relaxed);
            let (dev, waker) = (self.dev.clone(), self.dev.clone());
            let woken = run_blocking(
                move |stop| dev.wait_for_fetch(deadline, stop),
                move || waker.wake_fetch_waiters(),
                drop,
            )
            .await?;
            if !woken {
                // One last look, so a command that arrived at the deadline is not lost.
                return match self.poll_command()? {
                    Some(cmd) => Ok(cmd),
                    None => Err(VdError::timeout()),
                };
            }
        }
    }

    /// How many `get_command` calls on this device (and its clones) found nothing queued
    /// and waited on a blocking thread; the others took a command on their own task. A
    /// figure for tuning: a busy stream should rarely wait.
    pub fn blocking_waits(&self) -> u64 {
        self.blocking_waits.load(Ordering::Relaxed)
    }

    /// One fetch without waiting, on the calling task: `Ok(None)` if nothing can be
    /// delivered now.
    fn poll_command(&self) -> Result<Option<OwnedCommand>> {
        match self.dev.get_raw(Timeout::POLL) {
            Ok(raw) => Ok(Some(OwnedCommand::new(self.dev.clone(), raw))),
            Err(e) if e.code() == ErrorCode::Timeout => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What is left of `deadline`, as a time-out for a synchronous call.
fn remaining(deadline: Option<Instant>) -> Timeout {
    match deadline {
        None => Timeout::Infinite,
        Some(d) => Timeout::After(d.saturating_duration_since(Instant::now())),
    }
}

/// The result of a blocking wait, handed from its thread to its future.
enum Slot<T> {
    /// The wait is running.
    Running,
    /// The wait returned; its future has not taken the result yet.
    Done(T),
    /// The future was dropped: a result that arrives now is the orphan handler's.
    Abandoned,
}

/// A wait run on tokio's blocking pool, shared between its thread and its future.
struct Handoff<T, W, O> {
    /// Set when the future is dropped; the wait checks it and returns.
    stop: AtomicBool,
    slot: Mutex<Slot<T>>,
    /// Ends the wait at once once `stop` is set (notifies the futex it sleeps on).
    wake: W,
    /// Takes a result nobody will await (for `open_device`: parks the device).
    orphan: O,
}

/// Drops with the future: stops the wait, and gives a result that arrived meanwhile to
/// the orphan handler, under the slot's lock, so that no result falls between the two.
struct Abandon<T, W: Fn(), O: Fn(T)> {
    handoff: Arc<Handoff<T, W, O>>,
    armed: bool,
}

impl<T, W: Fn(), O: Fn(T)> Drop for Abandon<T, W, O> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let h = &self.handoff;
        h.stop.store(true, Ordering::Release);
        (h.wake)();
        let left = std::mem::replace(&mut *lock(&h.slot), Slot::Abandoned);
        if let Slot::Done(r) = left {
            (h.orphan)(r);
        }
    }
}

/// Runs `work` (a wait that returns when its `stop` flag is set, among other things) on
/// tokio's blocking pool and awaits its result. If the future is dropped first, `stop` is
/// set, `wake` ends the wait at once, and the result, whenever it comes, goes to `orphan`.
async fn run_blocking<T, F, W, O>(work: F, wake: W, orphan: O) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&AtomicBool) -> T + Send + 'static,
    W: Fn() + Send + Sync + 'static,
    O: Fn(T) + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
        runtime_error(format!(
            "the async client must wait, and needs a tokio runtime to wait in ({e}); call it from a task of a tokio runtime, or poll with Timeout::POLL"
        ))
    })?;
    let handoff = Arc::new(Handoff {
        stop: AtomicBool::new(false),
        slot: Mutex::new(Slot::Running),
        wake,
        orphan,
    });
    let mut guard = Abandon {
        handoff: handoff.clone(),
        armed: true,
    };
    let h = handoff.clone();
    let join = runtime.spawn_blocking(move || {
        let r = work(&h.stop);
        let mut slot = lock(&h.slot);
        if matches!(*slot, Slot::Abandoned) {
            drop(slot);
            (h.orphan)(r);
        } else {
            *slot = Slot::Done(r);
        }
    });
    let joined = join.await;
    guard.armed = false;
    let left = std::mem::replace(&mut *lock(&handoff.slot), Slot::Abandoned);
    match (joined, left) {
        (_, Slot::Done(r)) => Ok(r),
        (Err(e), _) if e.is_cancelled() => Err(runtime_error(
            "the tokio runtime is shutting down: the wait was cancelled".into(),
        )),
        _ => Err(runtime_error(
            "the async client's wait thread failed".into(),
        )),
    }
}

fn runtime_error(message: String) -> VdError {
    VdError::new(ErrorCode::Unexpected, Reason::AsyncRuntime(message))
}
