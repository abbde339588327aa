//! The backup application (the VDI client role): creates the set, stores what the engine
//! writes through each device (backup) or serves the stored streams to the engine's Reads
//! (restore), one thread per device.
//!
//! A backup ends when every device received `VDC_Complete` (negotiated with
//! `VDF_RequestComplete`) and then `VD_E_CLOSE`; only then, and only once the engine's
//! outcome is known, is the manifest written (see [`commit_backup`]).

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::Result;
use crate::codec::{self, StreamReader, StreamWriter, Written};
use crate::format::manifest::{self, BackupError, Compression, Manifest, SourceInfo, StreamEntry};
use crate::format::stream::{self, SourceKind, StreamHeader};
use crate::meter::{Meter, Show};
use crate::store::{self, Commit, ObjectWriter, Store, StoreWriter};
use crate::util::is_disk_full;
use vdi::{
    AbortCause, ClientDevice, ClientSet, Command, CommandCode, ErrorCode, Timeout, VdConfig,
    completion, features,
};

use crate::cancel;
use crate::error::{Kind, fail};
use crate::fault::{Action, Injector};
use crate::util::{
    ERROR_CRC, ERROR_READ_FAULT, ERROR_WRITE_FAULT, abort_cause, abort_sentence, device_name,
    now_secs, random_id, vd_fail,
};
use crate::watchdog;

/// What one device moved, as the `--json` summaries report it: bytes (and, for a backup,
/// bytes stored), throughput, commands, the time each side waited for the other (from
/// the set's shared statistics, [`ClientSet::device_stats`]) and retries.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeviceMetrics {
    /// The device index.
    pub device: u32,
    /// Stream bytes the device moved.
    pub bytes: u64,
    /// Bytes stored (after compression), for a backup.
    pub stored_bytes: Option<u64>,
    /// Bytes per second over the transfer.
    pub bytes_per_second: f64,
    /// Commands the backup application completed on it.
    pub commands: u64,
    /// Seconds the backup application waited for the engine's commands.
    pub client_waited_seconds: f64,
    /// Seconds the engine waited for the backup application's completions.
    pub engine_waited_seconds: f64,
    /// The side the other waited for most (`engine`, `client`, `-`).
    pub bottleneck: String,
    /// `VDC_ClearError`s received (the engine retrying after a failed command).
    pub retries: u64,
}

/// A failure of the client role: its own root cause, or the echo of an abort whose cause
/// the other role knows better.
#[derive(Debug)]
pub enum ClientErr {
    /// What went wrong here.
    Root(crate::Error),
    /// The set was aborted (by the engine, or because it died).
    Aborted(AbortCause),
}

impl ClientErr {
    /// As an error on its own (when nobody knows more).
    pub fn into_error(self) -> crate::Error {
        match self {
            ClientErr::Root(e) => e,
            ClientErr::Aborted(c) => {
                if cancel::interrupted() {
                    fail(
                        Kind::Interrupted,
                        format!("{}: the operation was aborted", cancel::what()),
                    )
                } else {
                    fail(Kind::PeerFailed, abort_sentence(c, "backup application"))
                }
            }
        }
    }
}

impl From<crate::Error> for ClientErr {
    fn from(e: crate::Error) -> ClientErr {
        ClientErr::Root(e)
    }
}

fn vd_err(e: &vdi::VdError, what: &str) -> ClientErr {
    match abort_cause(e) {
        Some(c) => ClientErr::Aborted(c),
        None => ClientErr::Root(vd_fail(e, "backup application", what)),
    }
}

/// What `vdi backup` / `vdi client backup` were asked to do.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    /// The set name.
    pub set: String,
    /// Devices.
    pub devices: u32,
    /// Compression of the stored streams.
    pub compression: Compression,
    /// Where to store.
    pub store: Arc<dyn Store>,
    /// Replace an existing backup.
    pub force: bool,
    /// The source, for the manifest.
    pub source: SourceInfo,
    /// How progress is shown.
    pub display: std::sync::Arc<dyn Show>,
    /// How long to wait for the engine (None: forever).
    pub wait: Option<Duration>,
    /// Log a hint on how to start the engine by hand.
    pub hint: Option<String>,
    /// A group whose members may also open the set.
    pub allow_group: Option<u32>,
    /// Faults to inject in this role (`--inject client:...`).
    pub inject: Arc<Injector>,
    /// Give up when the engine makes no progress for this long (None: never).
    pub stall: Option<Duration>,
    /// Encrypt the stored streams with this key or passphrase (None: not encrypted).
    pub secret: Option<Arc<crate::seal::Secret>>,
}

/// A set created and a destination ready.
#[derive(Debug)]
pub struct PreparedBackup {
    set: ClientSet,
    plan: BackupPlan,
    media: Vec<Box<dyn ObjectWriter>>,
    /// The store's writer: holding the store, and removing what this backup wrote
    /// unless it is committed.
    writer: Option<Box<dyn StoreWriter>>,
    backup_id: [u8; 16],
    started: u64,
    /// The backup's keys and what the manifest records of them, if it is encrypted.
    seal: Option<(Arc<crate::seal::Keys>, crate::seal::Encryption)>,
}

fn create_set(name: &str, devices: u32, allow_group: Option<u32>) -> Result<ClientSet> {
    let mut cfg = VdConfig::with_devices(devices);
    cfg.features |= features::REQUEST_COMPLETE;
    let mut opts = vdi::ClientOptions::default();
    if let Some(g) = allow_group {
        opts = opts.allow_group(g);
    }
    ClientSet::create_with(name, &cfg, opts).map_err(|e| {
        if e.code() == ErrorCode::Busy {
            // The library's reason names who holds the name (user and process).
            let holder = match e.reason() {
                vdi::Reason::NameInUse {
                    holder: Some(h), ..
                } => {
                    let me = rustix::process::getuid().as_raw();
                    let whose = if h.uid == me {
                        "this user".to_owned()
                    } else {
                        format!("user {}, not this user ({me})", h.uid)
                    };
                    format!(" (created by {whose}, process {})", h.pid)
                }
                _ => String::new(),
            };
            fail(
                Kind::SetBusy,
                format!(
                    "the set name '{name}' is already in use{holder} ({}); any process on this machine can hold a name, so choose another one with --set NAME (letters, digits and - _ . {{ }}; without --set, vdi picks a new unique name), or wait for the holder to finish",
                    e.code()
                ),
            )
        } else {
            vd_fail(&e, "backup application", &format!("creating set '{name}'"))
        }
    })
}

/// Makes the destination ready (locked for the whole backup; a backup in it is replaced
/// only with `--force`, and only once the new one is complete), then creates the set.
pub fn prepare_backup(plan: BackupPlan) -> Result<PreparedBackup> {
    let most = plan.store.properties().max_streams;
    if plan.devices > most {
        return Err(fail(
            Kind::Usage,
            if most == 1 {
                format!(
                    "destination {} holds a single stream: use --devices 1, not {}",
                    plan.store.describe(),
                    plan.devices
                )
            } else {
                format!(
                    "destination {} holds at most {most} streams: use at most --devices {most}, not {}",
                    plan.store.describe(),
                    plan.devices
                )
            },
        ));
    }
    let backup_id = random_id();
    let seal = match &plan.secret {
        None => None,
        Some(_) if !plan.store.properties().keeps_manifest => {
            return Err(fail(
                Kind::Usage,
                format!(
                    "--encrypt needs a destination that keeps a manifest (a directory or a repository), not {}: the manifest records how to find the key; encrypt a stream on standard output with another tool",
                    plan.store.describe()
                ),
            ));
        }
        Some(secret) => {
            let (keys, info) = crate::seal::Keys::create(secret, backup_id)
                .map_err(|e| fail(Kind::Other, format!("cannot encrypt the backup: {e}")))?;
            Some((Arc::new(keys), info))
        }
    };
    let encrypted = seal.is_some();
    let mut writer = plan.store.begin(plan.force)?;
    let set = create_set(&plan.set, plan.devices, plan.allow_group)?;
    let mut media = Vec::new();
    for i in 0..plan.devices {
        media.push(writer.create(&manifest::stored_file_name(i, plan.compression, encrypted))?);
    }
    Ok(PreparedBackup {
        set,
        plan,
        media,
        writer: Some(writer),
        backup_id,
        started: now_secs(),
        seal,
    })
}

fn wait_config(
    set: &ClientSet,
    alive: &dyn Fn() -> Result<()>,
    wait: Option<Duration>,
    hint: Option<&str>,
) -> Result<VdConfig, ClientErr> {
    let deadline = wait.map(|w| Instant::now() + w);
    if let Some(h) = hint {
        tracing::info!("set '{}' is waiting for an engine: {h}", set.name());
    }
    loop {
        match set.get_configuration(Timeout::from_millis(200)) {
            Ok(c) => return Ok(c),
            Err(e) if e.code() == ErrorCode::Timeout => {
                alive()?;
                if cancel::interrupted() {
                    return Err(ClientErr::Root(fail(
                        Kind::Interrupted,
                        format!("{} while waiting for the engine", cancel::what()),
                    )));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(ClientErr::Root(fail(
                        Kind::PeerFailed,
                        format!(
                            "no engine configured set '{}' within {} s",
                            set.name(),
                            wait.unwrap_or_default().as_secs()
                        ),
                    )));
                }
            }
            Err(e) => return Err(vd_err(&e, "waiting for the engine")),
        }
    }
}

/// Watches the engine's progress on `set` (see [`watchdog`]).
fn watch_engine(
    set: &ClientSet,
    stall: Option<Duration>,
    pid: Option<u32>,
    op: &'static str,
) -> watchdog::Guard {
    let (s1, s2) = (set.clone(), set.clone());
    watchdog::Watch {
        limit: stall,
        peer: "the engine",
        // The engine this process started, or the one that opened the set (its own word).
        pid: pid.or_else(|| set.server_pid()),
        lacking: "sent no command on any device",
        op,
        waiting: Box::new(watchdog::idle),
        aborted: Box::new(move || s1.abort_cause().is_some()),
        abort: Box::new(move || {
            let _ = s2.signal_abort();
        }),
    }
    .start()
}

/// What a served backup produced (not yet committed).
#[derive(Debug)]
pub struct ServedBackup {
    prep: PreparedBackup,
    config: VdConfig,
    streams: Vec<Written>,
    stream_id: Option<String>,
    header: Option<StreamHeader>,
    /// Time spent moving data.
    pub elapsed: Duration,
    /// What each device moved.
    pub devices: Vec<DeviceMetrics>,
}

struct DeviceOutcome {
    written: Written,
    /// The stream header the engine wrote first, if it is a vdi stream.
    stream_id: Option<StreamHeader>,
}

fn complete(cmd: Command<'_>, code: u32, n: u32) -> Result<(), ClientErr> {
    watchdog::completed();
    cmd.complete(code, n, 0)
        .map_err(|e| vd_err(&e, "completing a command"))
}

/// What the injected faults do to a command just received.
enum Injected<'d> {
    /// Nothing (after any delay): do the command.
    Go(Command<'d>),
    /// The command was completed with the fault's code; the operation must fail with
    /// this error.
    Failed(crate::Error),
}

/// Applies the backup application's injected faults to `cmd`, just received on device
/// `index` during `op`: stalls for a delay; for a fail, completes it with the fault's
/// code instead of doing it; for an abort, calls SignalAbort.
fn inject<'d>(
    inj: &Injector,
    set: &ClientSet,
    cmd: Command<'d>,
    index: u32,
    op: &str,
) -> Result<Injected<'d>, ClientErr> {
    let (_, hit) = inj.next();
    if !hit.delay.is_zero() {
        std::thread::sleep(hit.delay);
    }
    let Some(f) = hit.fault else {
        return Ok(Injected::Go(cmd));
    };
    let what = format!("a {} on device {index}", cmd.code());
    match f.action {
        Action::Fail(code) => {
            complete(cmd, code, 0)?;
            Ok(Injected::Failed(f.error(&what, op)))
        }
        Action::Kill => crate::fault::kill_self(),
        _ => {
            let _ = set.signal_abort();
            // Dropped: completed with ERROR_OPERATION_ABORTED.
            drop(cmd);
            Err(ClientErr::Root(f.error(&what, op)))
        }
    }
}

/// Opens device `index` (named by the convention of [`device_name`]).
fn open_device(set: &ClientSet, index: u32) -> Result<ClientDevice, ClientErr> {
    let name = device_name(set.name(), index);
    let mut tries = 0;
    loop {
        match set.open_device(&name) {
            Ok(d) => return Ok(d),
            // `ClientSet::open_device` can give up with VD_E_INVALID when the engine opens
            // this device between the two checks of its wait (every device open, this
            // name not seen yet); the device exists by then, so asking again is enough.
            Err(e) if e.code() == ErrorCode::Invalid && tries < 3 => tries += 1,
            Err(e) => return Err(vd_err(&e, &format!("opening device {index}"))),
        }
    }
}

/// Hashes each Write's data in stream order and completes it: runs beside the thread
/// that stores the data, so storing and hashing overlap.
fn hash_and_complete(
    rx: Receiver<Command<'_>>,
    index: u32,
    progress: &Meter,
    mut h: blake3::Hasher,
) -> Result<blake3::Hasher, ClientErr> {
    for cmd in rx {
        let n = cmd.buffer().map_or(0, |b| {
            h.update(b);
            b.len()
        });
        progress.add(index, n as u64);
        complete(cmd, completion::ERROR_SUCCESS, n as u32)?;
    }
    Ok(h)
}

/// An object writer that counts what reaches the store (after compression) on the meter.
#[derive(Debug)]
struct CountStored {
    inner: Box<dyn ObjectWriter>,
    meter: Arc<Meter>,
    index: u32,
}

impl std::io::Write for CountStored {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.add_stored(self.index, n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for CountStored {
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.inner.finish()
    }
}

fn serve_backup_device(
    set: &ClientSet,
    index: u32,
    media: Box<dyn ObjectWriter>,
    where_: String,
    (plan, keys): (&BackupPlan, Option<&Arc<crate::seal::Keys>>),
    complete_enabled: bool,
    progress: &Arc<Meter>,
) -> Result<DeviceOutcome, ClientErr> {
    let dev = open_device(set, index)?;
    let store_err = |e: &std::io::Error| -> (u32, crate::Error) {
        if is_disk_full(e) {
            (
                completion::ERROR_DISK_FULL,
                fail(
                    Kind::DiskFull,
                    format!("disk full: cannot store device {index}'s stream {where_}: {e}"),
                ),
            )
        } else {
            (
                ERROR_WRITE_FAULT,
                fail(
                    Kind::Other,
                    format!("cannot store device {index}'s stream {where_}: {e}"),
                ),
            )
        }
    };
    if plan.compression != Compression::None {
        progress.set_compressed();
    }
    let media: Box<dyn ObjectWriter> = Box::new(CountStored {
        inner: media,
        meter: progress.clone(),
        index,
    });
    let seal = keys.map(|k| codec::Sealing {
        keys: k.clone(),
        device: index,
    });
    let mut w = StreamWriter::sealed(media, plan.compression, seal, false)
        .map_err(|e| ClientErr::Root(store_err(&e).1))?;
    let dev = &dev;
    let h0 = codec::stream_hasher(keys.map(|k| &**k));
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<Command<'_>>();
        let hasher = s.spawn(move || hash_and_complete(rx, index, progress, h0));
        let served = store_loop(
            dev,
            index,
            &mut w,
            &tx,
            &store_err,
            (set, &plan.inject),
            progress,
        );
        drop(tx);
        let hashed = hasher.join().unwrap_or_else(|_| {
            Err(ClientErr::Root(crate::Error::other(
                "a hashing thread panicked",
            )))
        });
        let (finished, stream_id) = match (served, hashed) {
            (Err(ClientErr::Root(e)), _) | (_, Err(ClientErr::Root(e))) => {
                return Err(ClientErr::Root(e));
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
            (Ok((finished, id)), Ok(h)) => (
                finished.map(|mut wr| {
                    wr.blake3 = h.finalize().to_hex().to_string();
                    wr
                }),
                (id, h),
            ),
        };
        let (stream_id, h) = stream_id;
        let written = match finished {
            Some(w) => w,
            None if !complete_enabled => {
                // An engine without VDC_Complete: the normal close after its last Flush
                // ends it.
                let mut wr = w.finish().map_err(|e| ClientErr::Root(store_err(&e).1))?;
                wr.blake3 = h.finalize().to_hex().to_string();
                wr
            }
            None => {
                return Err(ClientErr::Root(fail(
                    Kind::PeerFailed,
                    format!(
                        "device {index} was closed without VDC_Complete: the engine did not finish the backup"
                    ),
                )));
            }
        };
        Ok(DeviceOutcome { written, stream_id })
    })
}

/// The device's next command for the serve loops, after the injected faults: `None` at
/// `VD_E_CLOSE`. A command an injected fault failed is recorded in `failed` (the loop
/// goes on, so the engine sees its completion) and the next one is fetched; an error of
/// the device is the first recorded failure, if any, else its own.
fn next_command<'d>(
    dev: &'d ClientDevice,
    index: u32,
    (set, inj): (&ClientSet, &Injector),
    op: &str,
    failed: &mut Option<crate::Error>,
) -> Result<Option<Command<'d>>, ClientErr> {
    loop {
        let cmd = match dev.get_command(Timeout::Infinite) {
            Ok(c) => {
                watchdog::received();
                c
            }
            Err(e) if e.code() == ErrorCode::Close => return Ok(None),
            Err(e) => {
                return Err(match failed.take() {
                    Some(f) => ClientErr::Root(f),
                    None => vd_err(&e, &format!("device {index}")),
                });
            }
        };
        match inject(inj, set, cmd, index, op)? {
            Injected::Go(c) => return Ok(Some(c)),
            Injected::Failed(e) => {
                failed.get_or_insert(e);
            }
        }
    }
}

/// Stores each Write (then hands it to the hashing thread), makes the stream durable at
/// Flush and finishes it at Complete, until `VD_E_CLOSE`. Returns what Complete wrote
/// (if it came) and the stream's id.
#[allow(clippy::type_complexity)]
fn store_loop<'d>(
    dev: &'d ClientDevice,
    index: u32,
    w: &mut StreamWriter<Box<dyn ObjectWriter>>,
    tx: &mpsc::Sender<Command<'d>>,
    store_err: &dyn Fn(&std::io::Error) -> (u32, crate::Error),
    (set, inj): (&ClientSet, &Injector),
    progress: &Meter,
) -> Result<(Option<Written>, Option<StreamHeader>), ClientErr> {
    let mut failed: Option<crate::Error> = None;
    let mut finished: Option<Written> = None;
    let mut stream_id: Option<StreamHeader> = None;
    let mut first = true;
    loop {
        let Some(cmd) = next_command(dev, index, (set, inj), "backup", &mut failed)? else {
            break;
        };
        match cmd.code() {
            CommandCode::WRITE => {
                if failed.is_some() {
                    complete(cmd, ERROR_WRITE_FAULT, 0)?;
                    continue;
                }
                if finished.is_some() {
                    failed = Some(fail(
                        Kind::PeerFailed,
                        format!("the engine sent a Write on device {index} after VDC_Complete"),
                    ));
                    complete(cmd, ERROR_WRITE_FAULT, 0)?;
                    continue;
                }
                let data = cmd.buffer().unwrap_or(&[]);
                if first {
                    first = false;
                    stream_id = StreamHeader::peek(data);
                }
                match w.write(data) {
                    Ok(()) => {
                        if tx.send(cmd).is_err() {
                            // The hashing thread stopped; its error says why.
                            break;
                        }
                    }
                    Err(e) => {
                        let (code, err) = store_err(&e);
                        failed = Some(err);
                        complete(cmd, code, 0)?;
                    }
                }
            }
            CommandCode::FLUSH => {
                let r = if failed.is_some() || finished.is_some() {
                    Ok(())
                } else {
                    w.sync()
                };
                match r {
                    Ok(()) => complete(cmd, completion::ERROR_SUCCESS, 0)?,
                    Err(e) => {
                        let (code, err) = store_err(&e);
                        failed.get_or_insert(err);
                        complete(cmd, code, 0)?;
                    }
                }
            }
            CommandCode::COMPLETE => {
                if failed.is_some() {
                    complete(cmd, ERROR_WRITE_FAULT, 0)?;
                    continue;
                }
                // The end of the backup: harden the stream before acknowledging it.
                match w.finish() {
                    Ok(wr) => {
                        finished = Some(wr);
                        complete(cmd, completion::ERROR_SUCCESS, 0)?;
                    }
                    Err(e) => {
                        let (code, err) = store_err(&e);
                        failed = Some(err);
                        complete(cmd, code, 0)?;
                    }
                }
            }
            CommandCode::CLEAR_ERROR => {
                progress.add_retry(index);
                complete(cmd, completion::ERROR_SUCCESS, 0)?
            }
            CommandCode::READ => {
                failed.get_or_insert(fail(
                    Kind::PeerFailed,
                    "the engine is restoring (it sent a Read), but this backup application was started for a backup",
                ));
                complete(cmd, completion::ERROR_NOT_SUPPORTED, 0)?;
            }
            _ => complete(cmd, completion::ERROR_NOT_SUPPORTED, 0)?,
        }
    }
    match failed {
        Some(f) => Err(ClientErr::Root(f)),
        None => Ok((finished, stream_id)),
    }
}

fn first_error<T>(results: Vec<Result<T, ClientErr>>) -> Result<Vec<T>, ClientErr> {
    let mut ok = Vec::new();
    let mut echo = None;
    let mut root = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(ClientErr::Root(e)) => {
                root.get_or_insert(e);
            }
            Err(ClientErr::Aborted(c)) => {
                echo.get_or_insert(c);
            }
        }
    }
    if let Some(e) = root {
        return Err(ClientErr::Root(e));
    }
    if let Some(c) = echo {
        return Err(ClientErr::Aborted(c));
    }
    Ok(ok)
}

/// What the two serve loops (backup and restore) share: the set, how long to wait for
/// the engine and how to tell it is alive, what progress is shown, and what the engine
/// must have opened the set for.
struct Session<'a> {
    set: &'a ClientSet,
    alive: &'a dyn Fn() -> Result<()>,
    wait: Option<Duration>,
    hint: Option<&'a str>,
    stall: Option<Duration>,
    engine_pid: Option<u32>,
    /// `backup` or `restore`.
    op: &'static str,
    /// `features::WRITE_MEDIA` (backup) or `features::READ_MEDIA` (restore).
    media: u32,
    display: &'a dyn Show,
    label: String,
    total: Option<u64>,
}

impl Session<'_> {
    /// Waits for the engine's configuration, then runs `device` for each device on a
    /// thread of its own (device `i` gets `per_device[i]`), with the watchdog and the
    /// progress shown, and closes the set in every case. A device's own failure aborts
    /// the set at once, so the engine stops too; the first root cause is returned.
    fn serve<I: Send, T: Send>(
        &self,
        per_device: Vec<I>,
        on_config: impl FnOnce(&VdConfig),
        device: impl Fn(u32, I, &Arc<Meter>) -> Result<T, ClientErr> + Sync,
    ) -> Result<(VdConfig, Vec<T>, Duration, Vec<DeviceMetrics>), ClientErr> {
        let set = self.set;
        let _guard = {
            let s = set.clone();
            cancel::on_interrupt(move || {
                let _ = s.signal_abort();
            })
        };
        let result = (|| {
            let cfg = tracing::debug_span!("configure", set = set.name())
                .in_scope(|| wait_config(set, self.alive, self.wait, self.hint))?;
            if cfg.features & self.media == 0 {
                let (opened, started) = if self.op == "backup" {
                    ("a restore", "a backup")
                } else {
                    ("a backup", "a restore")
                };
                return Err(ClientErr::Root(fail(
                    Kind::PeerFailed,
                    format!(
                        "the engine opened the set for {opened}, but this backup application was started for {started}"
                    ),
                )));
            }
            on_config(&cfg);
            let watch = watch_engine(set, self.stall, self.engine_pid, self.op);
            let progress = Meter::new(&self.label, per_device.len() as u32, self.total);
            let shown = self.display.show(progress.clone());
            let stream = tracing::debug_span!("stream", devices = per_device.len(), op = self.op);
            let results: Vec<Result<T, ClientErr>> = std::thread::scope(|s| {
                let hs: Vec<_> = per_device
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let (device, progress) = (&device, &progress);
                        let span = tracing::debug_span!(parent: &stream, "device", index = i);
                        s.spawn(move || {
                            let _in = span.entered();
                            let r = device(i as u32, x, progress);
                            if matches!(r, Err(ClientErr::Root(_))) {
                                // A failure here fails the whole operation: stop the
                                // engine now.
                                let _ = set.signal_abort();
                            }
                            r
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ClientErr::Root(crate::Error::other(
                                "a device thread panicked",
                            )))
                        })
                    })
                    .collect()
            });
            drop(shown);
            drop(stream);
            let elapsed = progress.elapsed();
            drop(watch);
            if let Some(e) = watchdog::take_failure() {
                return Err(ClientErr::Root(e));
            }
            let metrics = device_metrics(set, &progress, elapsed, self.op == "backup");
            Ok((cfg, first_error(results)?, elapsed, metrics))
        })();
        let closed = set.close();
        let r = result?;
        closed.map_err(|e| vd_err(&e, "closing the set"))?;
        Ok(r)
    }
}

/// Each device's metrics: what the meter counted here, and what the set's shared
/// statistics say of the commands and of each side's waiting.
fn device_metrics(
    set: &ClientSet,
    progress: &Meter,
    elapsed: Duration,
    backup: bool,
) -> Vec<DeviceMetrics> {
    let stats = set.device_stats();
    let bytes = progress.per_device();
    let stored = progress.stored_per_device();
    let retries = progress.retries_per_device();
    let secs = elapsed.as_secs_f64().max(1e-9);
    (0..bytes.len())
        .map(|i| {
            let st = stats.iter().find(|d| d.index == i as u32);
            DeviceMetrics {
                device: i as u32,
                bytes: bytes[i],
                stored_bytes: backup.then(|| stored[i]),
                bytes_per_second: bytes[i] as f64 / secs,
                commands: st.map_or(0, |d| d.commands),
                client_waited_seconds: st.map_or(0.0, |d| d.client_waited.as_secs_f64()),
                engine_waited_seconds: st.map_or(0.0, |d| d.engine_waited.as_secs_f64()),
                bottleneck: st.map_or("-", |d| d.bottleneck()).to_owned(),
                retries: retries[i],
            }
        })
        .collect()
}

/// Serves the engine's backup until every device ends; `alive` is asked while waiting
/// for the engine (it fails if the engine process is gone).
pub fn serve_backup(
    mut prep: PreparedBackup,
    alive: &dyn Fn() -> Result<()>,
    engine_pid: Option<u32>,
) -> Result<ServedBackup, ClientErr> {
    let writer = prep
        .writer
        .as_ref()
        .ok_or_else(|| ClientErr::Root(crate::Error::other("the backup is already committed")))?;
    let plan = &prep.plan;
    let encrypted = prep.seal.is_some();
    let keys = prep.seal.as_ref().map(|(k, _)| k.clone());
    let devices: Vec<(Box<dyn ObjectWriter>, String)> = std::mem::take(&mut prep.media)
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let name = manifest::stored_file_name(i as u32, plan.compression, encrypted);
            (m, writer.where_(&name))
        })
        .collect();
    let complete_enabled = std::sync::atomic::AtomicBool::new(false);
    let session = Session {
        set: &prep.set,
        alive,
        wait: plan.wait,
        hint: plan.hint.as_deref(),
        stall: plan.stall,
        engine_pid,
        op: "backup",
        media: features::WRITE_MEDIA,
        display: plan.display.as_ref(),
        label: format!(
            "backup {} through {}",
            plan.source.name,
            crate::util::devices(plan.devices)
        ),
        total: plan.source.bytes,
    };
    let (cfg, outcomes, elapsed, metrics) = session.serve(
        devices,
        |cfg| {
            let on = cfg.features & features::COMPLETE_ENABLED != 0;
            complete_enabled.store(on, std::sync::atomic::Ordering::Release);
            if !on {
                tracing::warn!(
                    "the engine did not enable VDC_Complete; the backup ends at the devices' close"
                );
            }
        },
        |i, (m, where_), progress| {
            let complete = complete_enabled.load(std::sync::atomic::Ordering::Acquire);
            serve_backup_device(
                &prep.set,
                i,
                m,
                where_,
                (plan, keys.as_ref()),
                complete,
                progress,
            )
        },
    )?;
    let header = outcomes.first().and_then(|o| o.stream_id.clone());
    let stream_id = header.as_ref().map(|h| stream::hex_id(&h.stream_id));
    Ok(ServedBackup {
        prep,
        config: cfg,
        streams: outcomes.into_iter().map(|o| o.written).collect(),
        stream_id,
        header,
        elapsed,
        devices: metrics,
    })
}

/// Summary of a committed backup.
#[derive(Debug)]
pub struct BackupDone {
    /// The manifest (also for a stream on standard output, where it is not stored).
    pub manifest: Manifest,
    /// Time spent moving data.
    pub elapsed: Duration,
    /// What storing it did besides (replaced a backup, moved files).
    pub commit: Commit,
    /// What each device moved.
    pub devices: Vec<DeviceMetrics>,
}

impl BackupDone {
    /// Says what storing the backup did besides (replacing a backup, keeping files vdi
    /// did not write); warnings even when `quiet`.
    pub fn report_commit(&self, quiet: bool) {
        if !self.manifest.source.checked {
            tracing::warn!(
                "the source was {}, an unchecked stream: vdi stored everything that arrived until its end, but cannot tell whether the program writing it finished or was killed; check that program's exit status (in a shell: set -o pipefail). The manifest records the source as unchecked.",
                if self.manifest.source.kind == "stdin" {
                    "standard input"
                } else {
                    "the engine's standard input"
                }
            );
        }
        if !quiet {
            for n in &self.commit.notes {
                tracing::info!("{n}");
            }
        }
        for w in &self.commit.warnings {
            tracing::warn!("{w}");
        }
    }
}

/// What the manifest records of the source: what this process was told, completed by
/// what the engine's stream header says (an engine started by hand tells its source
/// there); a source that cannot report that it ended normally (standard input) is
/// recorded as unchecked.
fn source_info(told: &SourceInfo, header: Option<&StreamHeader>) -> SourceInfo {
    let mut s = told.clone();
    match header {
        Some(h) if s.kind == "unknown" => {
            s.kind = h.source_kind.name().into();
            s.name = h.source_name.clone();
            s.bytes = (h.source_size != stream::UNKNOWN_SIZE).then_some(h.source_size);
            s.checked = h.source_kind != SourceKind::Stdin;
        }
        Some(h) if h.source_kind == SourceKind::Stdin => s.checked = false,
        _ => {}
    }
    s
}

/// Writes the manifest (the completion marker), last, after every stream is durable.
pub fn commit_backup(mut served: ServedBackup) -> Result<BackupDone> {
    let plan = &served.prep.plan;
    let encryption = served.prep.seal.as_ref().map(|(_, e)| e.clone());
    let streams: Vec<StreamEntry> = served
        .streams
        .iter()
        .enumerate()
        .map(|(i, w)| StreamEntry {
            device: i as u32,
            file: manifest::stored_file_name(i as u32, plan.compression, encryption.is_some()),
            stream_bytes: w.stream_bytes,
            stored_bytes: w.stored_bytes,
            blake3: w.blake3.clone(),
        })
        .collect();
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::version_for(plan.compression, encryption.is_some()),
        backup_id: stream::hex_id(&served.prep.backup_id),
        stream_id: served.stream_id.clone(),
        set_name: plan.set.clone(),
        tool: format!("vdi {}", env!("CARGO_PKG_VERSION")),
        host: Some(crate::util::host_name()),
        started: served.prep.started,
        completed: now_secs(),
        source: source_info(&plan.source, served.header.as_ref()),
        device_count: plan.devices,
        block_size: served.config.block_size,
        max_transfer_size: served.config.max_transfer_size,
        compression: plan.compression,
        encryption,
        total_stream_bytes: streams.iter().map(|s| s.stream_bytes).sum(),
        total_stored_bytes: streams.iter().map(|s| s.stored_bytes).sum(),
        streams,
        complete: true,
    };
    let bytes = manifest::manifest_bytes(&manifest)
        .map_err(|e| fail(Kind::Other, format!("encoding the manifest: {e}")))?;
    let writer = served
        .prep
        .writer
        .take()
        .ok_or_else(|| crate::Error::other("the backup is already committed"))?;
    // The manifest last: the store refuses it while any stream is not finished.
    let commit = tracing::debug_span!("commit", backup_id = %manifest.backup_id)
        .in_scope(|| writer.commit(&bytes))?;
    Ok(BackupDone {
        manifest,
        elapsed: served.elapsed,
        commit,
        devices: served.devices,
    })
}

/// A backup opened for a restore.
pub struct OpenedBackup {
    /// Its manifest (None for a stream on standard input).
    pub manifest: Option<Manifest>,
    readers: Vec<(StreamReader, Option<StreamEntry>)>,
    /// The backup's keys, if it is encrypted.
    keys: Option<Arc<crate::seal::Keys>>,
}

impl std::fmt::Debug for OpenedBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedBackup")
            .field("manifest", &self.manifest)
            .finish()
    }
}

impl OpenedBackup {
    /// Devices = streams.
    pub fn devices(&self) -> u32 {
        self.readers.len() as u32
    }
}

/// Opens a stored backup: the manifest with its completion marker, and every stream file
/// with the size the manifest records. `devices`, if given, must be the backup's count.
/// (An encrypted backup needs [`open_backup_with`].)
pub fn open_backup(store: &dyn Store, devices: Option<u32>) -> Result<OpenedBackup> {
    open_backup_with(store, devices, None)
}

/// [`open_backup`], with the key or passphrase of an encrypted backup: without it, or
/// with a wrong one, it fails at once, saying which option to give.
pub fn open_backup_with(
    store: &dyn Store,
    devices: Option<u32>,
    secret: Option<&crate::seal::Secret>,
) -> Result<OpenedBackup> {
    if !store.properties().keeps_manifest {
        // One bare stream (standard input): no manifest to check it against.
        if let Some(n) = devices.filter(|&n| n != 1) {
            return Err(fail(
                Kind::Usage,
                format!(
                    "mismatched device count: a stream on standard input is one device, not {n}: leave out --devices"
                ),
            ));
        }
        let reader = store.open().map_err(store::backup_failure)?;
        let name = manifest::stream_file_name(0, Compression::None);
        let media = reader
            .open(&name)
            .map_err(|e| fail(Kind::Usage, format!("backup -: {} {e}", reader.place())))?
            .reader;
        let r = codec::detect_compression(media)
            .and_then(|(m, c)| StreamReader::new_unhashed(m, c))
            .map_err(|e| fail(Kind::Input, format!("reading standard input: {e}")))?;
        return Ok(OpenedBackup {
            manifest: None,
            readers: vec![(r, None)],
            keys: None,
        });
    }
    let opened = store::open_backup(store).map_err(|e| match &e {
        BackupError::Unreadable(_) => fail(Kind::Input, e.to_string()),
        _ => fail(Kind::Damaged, format!("cannot restore: {e}")),
    })?;
    let place = opened.reader.place();
    let m = opened.manifest;
    if let Some(n) = devices
        && n != m.device_count
    {
        return Err(fail(
            Kind::Usage,
            format!(
                "mismatched device count: backup {place} was made with {}; it must be restored with {}, not {n} (leave out --devices)",
                crate::util::devices(m.device_count),
                crate::util::devices(m.device_count)
            ),
        ));
    }
    let keys = crate::seal::unlock_backup(&m, secret, &place)?;
    let mut readers = Vec::new();
    for (e, f) in m.streams.iter().zip(opened.streams) {
        let f = f.map_err(|p| fail(Kind::Damaged, format!("backup {place} is damaged: {p}")))?;
        let seal = keys.as_ref().map(|k| codec::Sealing {
            keys: k.clone(),
            device: e.device,
        });
        let r = StreamReader::sealed(f.reader, m.compression, seal, false)
            .map_err(|err| fail(Kind::Damaged, format!("stream file {}: {err}", e.file)))?;
        readers.push((r, Some(e.clone())));
    }
    Ok(OpenedBackup {
        manifest: Some(m),
        readers,
        keys,
    })
}

/// A set created to serve a restore.
#[derive(Debug)]
pub struct PreparedRestore {
    set: ClientSet,
    backup: OpenedBackup,
    display: std::sync::Arc<dyn Show>,
    wait: Option<Duration>,
    hint: Option<String>,
    label: String,
    inject: Arc<Injector>,
    stall: Option<Duration>,
}

/// How to serve a restore.
#[derive(Debug)]
pub struct RestorePlan {
    /// The set name.
    pub set: String,
    /// How progress is shown.
    pub display: std::sync::Arc<dyn Show>,
    /// How long to wait for the engine (None: forever).
    pub wait: Option<Duration>,
    /// Log a hint on how to start the engine by hand.
    pub hint: Option<String>,
    /// The progress label.
    pub label: String,
    /// A group whose members may also open the set.
    pub allow_group: Option<u32>,
    /// Faults to inject in this role (`--inject client:...`).
    pub inject: Arc<Injector>,
    /// Give up when the engine makes no progress for this long (None: never).
    pub stall: Option<Duration>,
}

/// Creates the set for serving `backup`.
pub fn prepare_restore(plan: RestorePlan, backup: OpenedBackup) -> Result<PreparedRestore> {
    let set = create_set(&plan.set, backup.devices(), plan.allow_group)?;
    Ok(PreparedRestore {
        set,
        backup,
        display: plan.display,
        wait: plan.wait,
        hint: plan.hint,
        label: plan.label,
        inject: plan.inject,
        stall: plan.stall,
    })
}

/// What a served restore moved.
#[derive(Debug)]
pub struct ServedRestore {
    /// Stream bytes served per device.
    pub stream_bytes: Vec<u64>,
    /// Time spent moving data.
    pub elapsed: Duration,
    /// The manifest, if any.
    pub manifest: Option<Manifest>,
    /// What each device moved.
    pub devices: Vec<DeviceMetrics>,
}

/// What the hashing thread of a restore does with a filled Read.
struct Filled<'d> {
    cmd: Command<'d>,
    n: usize,
    eof: bool,
}

/// Hashes each filled Read in stream order and completes it; at the end of the stream,
/// checks the whole stream against the manifest before answering `ERROR_HANDLE_EOF`.
fn hash_and_serve(
    rx: Receiver<Filled<'_>>,
    index: u32,
    entry: Option<&StreamEntry>,
    file: &str,
    progress: &Meter,
    mut h: blake3::Hasher,
) -> Result<(), ClientErr> {
    let mut bytes = 0u64;
    for f in rx {
        if let Some(b) = f.cmd.buffer() {
            h.update(&b[..f.n]);
        }
        bytes += f.n as u64;
        progress.add(index, f.n as u64);
        if !f.eof {
            complete(f.cmd, completion::ERROR_SUCCESS, f.n as u32)?;
            continue;
        }
        let digest = h.finalize().to_hex().to_string();
        let bad = entry.and_then(|e| {
            if bytes != e.stream_bytes {
                Some(format!(
                    "it holds {bytes} stream bytes, the manifest records {}",
                    e.stream_bytes
                ))
            } else if digest != e.blake3 {
                Some(format!(
                    "its blake3 digest {digest} does not match the manifest's {}",
                    e.blake3
                ))
            } else {
                None
            }
        });
        match bad {
            None => complete(f.cmd, completion::ERROR_HANDLE_EOF, f.n as u32)?,
            Some(why) => {
                complete(f.cmd, ERROR_CRC, 0)?;
                return Err(ClientErr::Root(fail(
                    Kind::Damaged,
                    format!("{file} (device {index}) is corrupted: {why}"),
                )));
            }
        }
    }
    Ok(())
}

fn serve_restore_device(
    set: &ClientSet,
    index: u32,
    mut r: StreamReader,
    entry: Option<&StreamEntry>,
    progress: &Meter,
    inj: &Injector,
    h0: blake3::Hasher,
) -> Result<u64, ClientErr> {
    let dev = open_device(set, index)?;
    let file = entry.map_or_else(
        || "standard input".to_owned(),
        |e| format!("stream file {}", e.file),
    );
    let dev = &dev;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<Filled<'_>>();
        let file = file.as_str();
        let hasher = s.spawn(move || hash_and_serve(rx, index, entry, file, progress, h0));
        let served = read_loop(dev, index, &mut r, &tx, file, (set, inj), progress);
        drop(tx);
        let hashed = hasher.join().unwrap_or_else(|_| {
            Err(ClientErr::Root(crate::Error::other(
                "a hashing thread panicked",
            )))
        });
        match (served, hashed) {
            (Err(ClientErr::Root(e)), _) | (_, Err(ClientErr::Root(e))) => Err(ClientErr::Root(e)),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(()), Ok(())) if !r.at_eof() => Err(ClientErr::Root(fail(
                Kind::PeerFailed,
                format!(
                    "the engine closed device {index} after {} bytes, before the end of {file}",
                    r.stream_bytes()
                ),
            ))),
            (Ok(()), Ok(())) => Ok(r.stream_bytes()),
        }
    })
}

/// Fills each Read from the stored stream (then hands it to the hashing thread) until
/// `VD_E_CLOSE`.
fn read_loop<'d>(
    dev: &'d ClientDevice,
    index: u32,
    r: &mut StreamReader,
    tx: &mpsc::Sender<Filled<'d>>,
    file: &str,
    (set, inj): (&ClientSet, &Injector),
    progress: &Meter,
) -> Result<(), ClientErr> {
    let mut failed: Option<crate::Error> = None;
    loop {
        let Some(mut cmd) = next_command(dev, index, (set, inj), "restore", &mut failed)? else {
            break;
        };
        match cmd.code() {
            CommandCode::READ => {
                if failed.is_some() {
                    complete(cmd, ERROR_READ_FAULT, 0)?;
                    continue;
                }
                if r.at_eof() {
                    complete(cmd, completion::ERROR_HANDLE_EOF, 0)?;
                    continue;
                }
                let size = cmd.size() as usize;
                let got = match cmd.buffer_mut() {
                    Some(buf) => r.read_full(buf),
                    None => Ok(0),
                };
                match got {
                    Ok(n) => {
                        let eof = n < size;
                        if tx.send(Filled { cmd, n, eof }).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        failed = Some(fail(
                            Kind::Damaged,
                            format!(
                                "{file} (device {index}) cannot be read after {} stream bytes: {e}",
                                r.stream_bytes()
                            ),
                        ));
                        complete(cmd, ERROR_CRC, 0)?;
                    }
                }
            }
            // After a failure, the end of the restore must not look like a success to
            // the engine: it would put the target in place (a Read failed after the
            // stream's end is otherwise lost in the reads the engine expects to fail).
            CommandCode::COMPLETE if failed.is_some() => complete(cmd, ERROR_READ_FAULT, 0)?,
            CommandCode::CLEAR_ERROR => {
                progress.add_retry(index);
                complete(cmd, completion::ERROR_SUCCESS, 0)?;
            }
            CommandCode::FLUSH | CommandCode::COMPLETE => {
                complete(cmd, completion::ERROR_SUCCESS, 0)?;
            }
            CommandCode::WRITE => {
                failed.get_or_insert(fail(
                    Kind::PeerFailed,
                    "the engine is backing up (it sent a Write), but this backup application was started for a restore",
                ));
                complete(cmd, completion::ERROR_NOT_SUPPORTED, 0)?;
            }
            _ => complete(cmd, completion::ERROR_NOT_SUPPORTED, 0)?,
        }
    }
    match failed {
        Some(f) => Err(ClientErr::Root(f)),
        None => Ok(()),
    }
}

/// Serves the stored backup to the engine's Reads until every device ends; `alive` is
/// asked while waiting for the engine.
pub fn serve_restore(
    prep: PreparedRestore,
    alive: &dyn Fn() -> Result<()>,
    engine_pid: Option<u32>,
) -> Result<ServedRestore, ClientErr> {
    let manifest = prep.backup.manifest.clone();
    let session = Session {
        set: &prep.set,
        alive,
        wait: prep.wait,
        hint: prep.hint.as_deref(),
        stall: prep.stall,
        engine_pid,
        op: "restore",
        media: features::READ_MEDIA,
        display: prep.display.as_ref(),
        label: prep.label.clone(),
        total: manifest.as_ref().map(|m| m.total_stream_bytes),
    };
    let inj = &*prep.inject;
    let keys = prep.backup.keys.clone();
    let (_, stream_bytes, elapsed, metrics) = session.serve(
        prep.backup.readers,
        |_| {},
        |i, (r, e), progress| {
            let h0 = codec::stream_hasher(keys.as_deref());
            serve_restore_device(&prep.set, i, r, e.as_ref(), progress, inj, h0)
        },
    )?;
    Ok(ServedRestore {
        stream_bytes,
        elapsed,
        manifest,
        devices: metrics,
    })
}
