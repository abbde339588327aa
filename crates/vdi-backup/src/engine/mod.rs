//! The reference engine (the VDI server role): backs a source up through every device of
//! a set, and restores a target from them, in the stream format of `crate::format::stream`.
//!
//! Backup: one thread reads the source straight into shared buffers (zero copy), seals
//! each buffer as a chunk and sends it as a Write on whichever device has a buffer free
//! (dynamic distribution; 4 buffers per device by default, so every device stays busy),
//! then a trailer, Flush and Complete on every device, and closes them.
//!
//! Restore: one thread per device keeps its Reads in flight, decodes what they return in
//! the order they were sent (whatever size each Read had), and writes each chunk's payload
//! where it belongs in the target, until the client answers `ERROR_HANDLE_EOF`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use crate::Result;
use crate::codec::read_full;
use crate::format::stream::{
    self, Decoder, DeviceStream, HeaderFields, Sink, StreamError, Trailer,
};
use crate::util::is_disk_full;
use serde::{Deserialize, Serialize};
use vdi::{
    AbortCause, CommandCode, Completion, ErrorCode, Reason, ServerBuffer, ServerCommand,
    ServerDevice, ServerSet, completion, features,
};

use crate::error::{Kind, fail, kind_of};
use crate::fault::{Action, Fault, Injector, Role};
use crate::source::{Spec, TargetOptions};
use crate::util::{abort_cause, abort_sentence, code_name, device_name, is_full_code, vd_fail};

/// The prefix of the report line an engine started by `vdi backup`/`vdi restore` prints
/// on standard error.
pub const REPORT_PREFIX: &str = "VDI-ENGINE-REPORT ";

/// How the engine drives the devices (the client offers the modes it supports in its
/// `VDConfig.features`; SQL Server uses what the client offers).
///
/// - `Pipe`: sequential Writes (backup) and Reads (restore) only.
/// - `Tape`: the client offered `VDF_FileMarks` and `VDF_Rewind` (`VDF_LikeTape`): a
///   backup rewinds each device first and ends each stream with a WriteMark; a restore
///   rewinds first and takes `ERROR_FILEMARK_DETECTED` as the end of the stream.
/// - `Disk`: the client offered `VDF_RandomAccess` (`VDF_LikeDisk`): every Read and Write
///   carries its byte position; a restore asks for the stream's length with
///   SetPosition(0, VDC_End), then reads it in another order than it was written
///   (segments swapped in pairs: 1, 0, 3, 2, ...), as positioned reads allow.
/// - `Auto` (the default): disk-like if the client offered `VDF_RandomAccess`, tape-like
///   if it offered `VDF_FileMarks`, else pipe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceMode {
    /// As the client offers.
    #[default]
    Auto,
    /// Sequential.
    Pipe,
    /// Tape-like.
    Tape,
    /// Disk-like.
    Disk,
}

impl DeviceMode {
    /// Parses `auto`, `pipe`, `tape` or `disk`.
    pub fn parse(s: &str) -> std::result::Result<DeviceMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceMode::Auto),
            "pipe" => Ok(DeviceMode::Pipe),
            "tape" => Ok(DeviceMode::Tape),
            "disk" => Ok(DeviceMode::Disk),
            o => Err(format!(
                "'{o}' is not a device mode: write pipe, tape, disk or auto"
            )),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceMode::Auto => "auto",
            DeviceMode::Pipe => "pipe",
            DeviceMode::Tape => "tape",
            DeviceMode::Disk => "disk",
        }
    }

    /// The mode to use with a client that offered `offered`, and the feature bits the
    /// engine answers with; fails if the client did not offer what `self` needs.
    pub fn resolve(self, offered: u32) -> Result<(DeviceMode, u32)> {
        let tape = features::FILE_MARKS | features::REWIND;
        let mode = match self {
            DeviceMode::Auto if offered & features::RANDOM_ACCESS != 0 => DeviceMode::Disk,
            DeviceMode::Auto if offered & tape == tape => DeviceMode::Tape,
            DeviceMode::Auto => DeviceMode::Pipe,
            m => m,
        };
        let missing = |what: &str, bits: u32| {
            fail(
                Kind::PeerFailed,
                format!(
                    "the engine was asked for {what} devices, but the backup application offered features 0x{offered:x} in its VDConfig: a {what} client sets {} (0x{bits:x}) before Create",
                    if bits == features::RANDOM_ACCESS {
                        "VDF_LikeDisk"
                    } else {
                        "VDF_LikeTape"
                    }
                ),
            )
        };
        let bits = match mode {
            DeviceMode::Disk if offered & features::RANDOM_ACCESS == 0 => {
                return Err(missing("disk-like", features::RANDOM_ACCESS));
            }
            DeviceMode::Tape if offered & tape != tape => {
                return Err(missing("tape-like", features::LIKE_TAPE));
            }
            DeviceMode::Disk => features::RANDOM_ACCESS,
            DeviceMode::Tape => offered & features::LIKE_TAPE,
            _ => 0,
        };
        Ok((mode, bits))
    }
}

/// How the engine configures the set.
#[derive(Clone, Debug)]
pub struct EngineCfg {
    /// The set name.
    pub set: String,
    /// Total buffers (default 4 per device).
    pub buffer_count: Option<u32>,
    /// maxTransferSize.
    pub max_transfer: u32,
    /// blockSize.
    pub block_size: u32,
    /// How long to wait for the set to appear.
    pub wait: Duration,
    /// Another user whose sets may be opened.
    pub trust_owner: Option<u32>,
    /// Faults to inject (`--inject`; only the engine's act here).
    pub faults: Vec<Fault>,
    /// The `vdi backup`/`vdi restore` process that started this engine (`--parent-pid`):
    /// once it is gone, its set is gone too, and waiting for it is pointless.
    pub parent: Option<u32>,
    /// Give up when the backup application makes no progress for this long.
    pub stall: Option<Duration>,
    /// The devices' names, in order, as a T-SQL statement lists them (the first is the
    /// set's name); empty: `SET`, `SET#1`, `SET#2`, ... for as many devices as the set
    /// has. When given, the set must have exactly this many devices.
    pub device_names: Vec<String>,
    /// The device mode.
    pub mode: DeviceMode,
    /// A command code to send on every device before the data, one the client was not
    /// offered (for `vdi check-client`): the client must answer it with an error
    /// (`ERROR_NOT_SUPPORTED`) and then complete the ClearError that follows.
    pub probe: Option<u32>,
}

/// What the engine did (also the report line's JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EngineReport {
    /// Whether it succeeded.
    pub ok: bool,
    /// `backup` or `restore`.
    pub op: String,
    /// The failure's kind name, if it failed.
    pub kind: Option<String>,
    /// The failure's message, if it failed.
    pub message: Option<String>,
    /// The engine's process id.
    pub pid: u32,
    /// Source bytes moved.
    pub source_bytes: u64,
    /// Chunks moved.
    pub chunks: u64,
    /// Devices used.
    pub devices: u32,
    /// The backup's stream id.
    pub stream_id: Option<String>,
    /// Seconds from opening the set to closing it.
    pub seconds: f64,
    /// Seconds the database snapshot took (sqlite sources).
    pub snapshot_seconds: f64,
    /// The integrity check of a restored database (`ok`).
    pub integrity_check: Option<String>,
    /// Injected faults that never acted (the operation had fewer commands), as warnings.
    #[serde(default)]
    pub unfired: Vec<String>,
    /// What the engine chose differently from what it was asked (fewer buffers), as
    /// warnings.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The device mode used (pipe, tape, disk).
    #[serde(default)]
    pub mode: Option<String>,
}

/// The failure of an engine whose parent `vdi` (pid `parent`) is gone, if it is: the
/// process that started it exited or was killed (the engine was then reparented, so its
/// parent pid changed).
pub fn parent_gone(parent: Option<u32>, set: &str) -> Result<()> {
    match parent {
        Some(p) if std::os::unix::process::parent_id() != p => Err(fail(
            Kind::PeerFailed,
            format!(
                "the vdi process that started this engine (pid {p}) is gone; set '{set}' went with it"
            ),
        )),
        _ => Ok(()),
    }
}

/// Opens the set, waiting up to `cfg.wait` for the backup application to create it (and
/// not at all once the `vdi` that started this engine is gone).
fn open_set(cfg: &EngineCfg) -> Result<ServerSet> {
    let deadline = Instant::now() + cfg.wait;
    let mut said = false;
    loop {
        let mut opts = vdi::AttachOptions::default();
        if let Some(uid) = cfg.trust_owner {
            opts = opts.trust_owner(uid);
        }
        match ServerSet::open_with(&cfg.set, opts) {
            Ok(s) => return Ok(s),
            Err(e) if matches!(e.reason(), Reason::NoSuchSet(_)) && cfg.parent.is_some() => {
                // Started by `vdi backup`/`vdi restore`, which created the set before it
                // started this engine: a missing set means that process is gone (or gave
                // up on the set), and no set will come.
                parent_gone(cfg.parent, &cfg.set)?;
                return Err(fail(
                    Kind::PeerFailed,
                    format!(
                        "set '{}' is gone: the backup application that started this engine removed it before the engine could open it",
                        cfg.set
                    ),
                ));
            }
            Err(e) if matches!(e.reason(), Reason::NoSuchSet(_)) && Instant::now() < deadline => {
                if !said {
                    tracing::info!(
                        "waiting for the backup application to create set '{}'",
                        cfg.set
                    );
                    said = true;
                }
                if crate::cancel::interrupted() {
                    return Err(fail(
                        Kind::Interrupted,
                        format!("{} while waiting for the set", crate::cancel::what()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if matches!(e.reason(), Reason::NoSuchSet(_)) => {
                return Err(fail(
                    Kind::PeerFailed,
                    format!(
                        "no virtual device set named '{}' appeared within {} s: start the backup application first (vdi client backup|restore --set {})",
                        cfg.set,
                        cfg.wait.as_secs(),
                        cfg.set
                    ),
                ));
            }
            Err(e) => return Err(vd_fail(&e, "engine", &format!("opening set '{}'", cfg.set))),
        }
    }
}

/// A completion, as the agent thread hands it to the engine's threads.
struct Ev {
    dev: u32,
    code: CommandCode,
    size: u32,
    completion: u32,
    bytes: u32,
    out_position: u64,
    buffer: Option<ServerBuffer>,
    tag: u64,
    /// The injected fault that failed this command, and what the command was.
    injected: Option<(Fault, String)>,
}

/// Applies the engine's injected faults to the command it is about to send: stalls for a
/// delay; for an abort, calls SignalAbort and fails; for a fail, returns the fault, which
/// the completion then carries.
fn inject(
    inj: &Injector,
    set: &ServerSet,
    code: CommandCode,
    dev: u32,
    op: &str,
) -> Result<Option<(Fault, String)>> {
    let (_, hit) = inj.next();
    if !hit.delay.is_zero() {
        std::thread::sleep(hit.delay);
    }
    let Some(f) = hit.fault else {
        return Ok(None);
    };
    let what = format!("a {code} on device {dev}");
    if f.action == Action::Kill {
        crate::fault::kill_self();
    }
    if f.action == Action::Abort {
        let _ = set.signal_abort();
        return Err(f.error(&what, op));
    }
    Ok(Some((f, what)))
}

fn send(
    dev: &ServerDevice,
    cmd: ServerCommand,
    tx: &Sender<Ev>,
    tag: u64,
    injected: Option<(Fault, String)>,
) -> Result<(), vdi::VdError> {
    let tx = tx.clone();
    dev.send_command(cmd, move |c: Completion| {
        crate::watchdog::progress();
        let mut completion = c.completion_code;
        let mut injected = injected;
        match injected {
            // An abort is not this fault's doing: report the abort.
            _ if completion == completion::ERROR_OPERATION_ABORTED => injected = None,
            Some((
                Fault {
                    action: Action::Fail(code),
                    ..
                },
                _,
            )) => completion = code,
            _ => {}
        }
        let _ = tx.send(Ev {
            dev: c.device,
            code: c.code,
            size: c.size,
            completion,
            bytes: c.bytes_transferred,
            out_position: c.out_position,
            buffer: c.buffer,
            tag,
            injected,
        });
    })
}

/// The failure for a command the client did not complete with success.
fn command_failure(set: &ServerSet, ev: &Ev, op: &str) -> crate::Error {
    if let Some((f, what)) = &ev.injected {
        return f.error(what, op);
    }
    if ev.completion == completion::ERROR_OPERATION_ABORTED {
        let cause = set.abort_cause().unwrap_or(AbortCause::Unknown);
        return fail(Kind::PeerFailed, abort_sentence(cause, "engine"));
    }
    if is_full_code(ev.completion) {
        return fail(
            Kind::DiskFull,
            format!(
                "the backup application's media is full: it answered {} to a {} on device {}",
                code_name(ev.completion),
                ev.code,
                ev.dev
            ),
        );
    }
    fail(
        Kind::PeerFailed,
        format!(
            "the backup application failed a {} on device {} with {}",
            ev.code,
            ev.dev,
            code_name(ev.completion)
        ),
    )
}

/// The backup engine's sending loop.
struct Pump<'a> {
    set: &'a ServerSet,
    devs: &'a [ServerDevice],
    tx: Sender<Ev>,
    rx: Receiver<Ev>,
    free: Vec<ServerBuffer>,
    credits: VecDeque<u32>,
    in_flight: u32,
    /// Commands sent so far (each one's tag).
    sent: u64,
    inj: &'a Injector,
    /// Disk-like: each Write carries its position; the next one of each device.
    positions: Option<Vec<u64>>,
}

impl Pump<'_> {
    /// Sends a Write of `len` bytes of `buf` on `dev` (at its position, disk-like).
    fn write(&mut self, dev: u32, buf: ServerBuffer, len: u32) -> Result<()> {
        let mut cmd = ServerCommand::write(buf, len);
        if let Some(p) = self
            .positions
            .as_mut()
            .and_then(|v| v.get_mut(dev as usize))
        {
            cmd = cmd.with_position(*p);
            *p += u64::from(len);
        }
        self.send(dev, cmd)
    }

    fn send(&mut self, dev: u32, cmd: ServerCommand) -> Result<()> {
        let code = cmd.code();
        let injected = inject(self.inj, self.set, code, dev, "backup")?;
        self.in_flight += 1;
        let tag = self.sent;
        self.sent += 1;
        match send(&self.devs[dev as usize], cmd, &self.tx, tag, injected) {
            Ok(()) => Ok(()),
            // The device is in IO-ERROR: an earlier command failed, and its completion
            // (perhaps not delivered yet) says why; this one's only echoes it.
            Err(e) if e.code() == ErrorCode::IoError => {
                Err(self.first_failure(tag).unwrap_or_else(|| {
                    vd_fail(&e, "engine", &format!("sending {code} on device {dev}"))
                }))
            }
            Err(e) => Err(vd_fail(
                &e,
                "engine",
                &format!("sending {code} on device {dev}"),
            )),
        }
    }

    /// Waits for the commands in flight until one failed (not the one tagged `skip`,
    /// which was rejected); returns its failure.
    fn first_failure(&mut self, skip: u64) -> Option<crate::Error> {
        while self.in_flight > 0 {
            let ev = self.rx.recv().ok()?;
            if ev.tag == skip {
                self.in_flight -= 1;
                continue;
            }
            if let Err(e) = self.judge(ev) {
                return Some(e);
            }
        }
        None
    }

    fn wait_one(&mut self) -> Result<()> {
        let ev = self
            .rx
            .recv()
            .map_err(|_| crate::Error::other("the completion channel closed"))?;
        self.judge(ev)
    }

    /// Takes back a completed command's device credit and buffer; fails if it failed.
    fn judge(&mut self, ev: Ev) -> Result<()> {
        self.in_flight -= 1;
        self.credits.push_back(ev.dev);
        let ok = ev.completion == completion::ERROR_SUCCESS
            && (!ev.code.carries_data() || ev.bytes == ev.size);
        let err = if ok {
            None
        } else if ev.injected.is_some() {
            Some(command_failure(self.set, &ev, "backup"))
        } else if ev.completion == completion::ERROR_SUCCESS {
            Some(fail(
                Kind::PeerFailed,
                format!(
                    "the backup application stored {} of the {} bytes of a Write on device {}",
                    ev.bytes, ev.size, ev.dev
                ),
            ))
        } else {
            Some(command_failure(self.set, &ev, "backup"))
        };
        if let Some(b) = ev.buffer {
            self.free.push(b);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends `code`, a command the client was not offered, on every device: it must fail
    /// it (ERROR_NOT_SUPPORTED), then complete the ClearError that follows.
    fn probe(&mut self, code: CommandCode) -> Result<()> {
        self.drain()?;
        for d in 0..self.devs.len() as u32 {
            for cmd in [code, CommandCode::CLEAR_ERROR] {
                let tag = self.sent;
                self.sent += 1;
                send(
                    &self.devs[d as usize],
                    ServerCommand::new(cmd),
                    &self.tx,
                    tag,
                    None,
                )
                .map_err(|e| vd_fail(&e, "engine", &format!("sending {cmd} on device {d}")))?;
                let ev = self
                    .rx
                    .recv()
                    .map_err(|_| crate::Error::other("the completion channel closed"))?;
                if ev.completion == completion::ERROR_OPERATION_ABORTED {
                    return Err(command_failure(self.set, &ev, "backup"));
                }
                if cmd == code && ev.completion == completion::ERROR_SUCCESS {
                    return Err(fail(
                        Kind::PeerFailed,
                        format!(
                            "the backup application completed {code} on device {d}, a command it was not offered, with ERROR_SUCCESS"
                        ),
                    ));
                }
                if cmd == CommandCode::CLEAR_ERROR && ev.completion != completion::ERROR_SUCCESS {
                    return Err(fail(
                        Kind::PeerFailed,
                        format!(
                            "the backup application failed the ClearError after {code} on device {d} with {}",
                            code_name(ev.completion)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        Ok(())
    }

    fn take(&mut self) -> Result<(u32, ServerBuffer)> {
        loop {
            if !self.credits.is_empty()
                && let Some(b) = self.free.pop()
            {
                let d = self.credits.pop_front().unwrap_or(0);
                return Ok((d, b));
            }
            self.wait_one()?;
        }
    }

    fn each_device(&mut self, code: CommandCode) -> Result<()> {
        for d in 0..self.devs.len() as u32 {
            self.send(d, ServerCommand::new(code))?;
        }
        self.drain()
    }
}

/// The most shared memory the engine asks for its buffers (allocated, and touched, up
/// front): more does not make a transfer faster.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;

/// How many buffers to request: `requested` (default 4 per device, at least one per
/// device), but no more than the source needs (its chunks, plus the header and trailer
/// of each device) nor than [`MAX_BUFFER_BYTES`] in all. Says why when it asked for fewer
/// than `requested`.
pub fn buffer_count(
    requested: Option<u32>,
    devices: u32,
    max_transfer: u32,
    source: Option<u64>,
) -> (u32, Option<String>) {
    let want = requested.unwrap_or(4 * devices).max(devices);
    let per = u64::from(max_transfer);
    let by_memory = (MAX_BUFFER_BYTES / per).max(u64::from(devices));
    let by_source = source.map(|n| {
        let chunks = n.div_ceil(u64::from(stream::max_payload(max_transfer)));
        (chunks + u64::from(devices)).max(u64::from(devices))
    });
    let cap = by_source.unwrap_or(u64::MAX).min(by_memory);
    if u64::from(want) <= cap {
        return (want, None);
    }
    let count = cap as u32;
    let total = u64::from(want) * per;
    let why = match (requested, by_source) {
        (None, _) => None,
        (Some(_), Some(b)) if b <= by_memory => Some(format!(
            "--buffer-count {want}: the source ({}) fills {} chunk(s) of {}, so {count} buffers are all it can use; more would only take shared memory, which is allocated up front ({want} buffers: {})",
            crate::units::human_bytes(source.unwrap_or(0)),
            b - u64::from(devices),
            crate::units::human_bytes(per),
            crate::units::human_bytes(total)
        )),
        (Some(_), _) => Some(format!(
            "--buffer-count {want}: {want} buffers of {} would take {} of shared memory, allocated up front; capped at {count} ({} in all): more buffers do not make the transfer faster",
            crate::units::human_bytes(per),
            crate::units::human_bytes(total),
            crate::units::human_bytes(MAX_BUFFER_BYTES)
        )),
    };
    (count, why)
}

fn configure(
    set: &ServerSet,
    cfg: &EngineCfg,
    media: u32,
    source: Option<u64>,
    notes: &mut Vec<String>,
) -> Result<(u32, u32, bool, DeviceMode)> {
    let what = "configuring the set";
    let asked = set
        .get_configuration()
        .map_err(|e| vd_fail(&e, "engine", what))?;
    let devices = asked.device_count;
    if !cfg.device_names.is_empty() && cfg.device_names.len() as u64 != u64::from(devices) {
        return Err(fail(
            Kind::Usage,
            format!(
                "the statement names {} virtual device(s), but the backup application created set '{}' with deviceCount {devices}: name every device of the set, in order ('{}' first), once",
                cfg.device_names.len(),
                cfg.set,
                cfg.set
            ),
        ));
    }
    let complete = asked.features & features::REQUEST_COMPLETE != 0;
    let (mode, mode_bits) = cfg.mode.resolve(asked.features)?;
    let feats = media
        | mode_bits
        | if complete {
            features::COMPLETE_ENABLED
        } else {
            0
        };
    let (buffers, why) = buffer_count(cfg.buffer_count, devices, cfg.max_transfer, source);
    if let Some(w) = why {
        tracing::warn!("{w}");
        notes.push(w);
    }
    set.begin_configuration(feats, cfg.block_size, 0, cfg.max_transfer, 10_000)
        .map_err(|e| vd_fail(&e, "engine", what))?;
    set.request_buffers(cfg.max_transfer, 0, buffers)
        .map_err(|e| vd_fail(&e, "engine", what))?;
    set.end_configuration()
        .map_err(|e| vd_fail(&e, "engine", what))?;
    Ok((devices, buffers, complete, mode))
}

fn open_devices(set: &ServerSet, cfg: &EngineCfg, devices: u32) -> Result<Vec<ServerDevice>> {
    (0..devices)
        .map(|i| {
            let name = cfg
                .device_names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| device_name(set.name(), i));
            set.open_device(&name)
                .map_err(|e| vd_fail(&e, "engine", &format!("opening device {i} ('{name}')")))
        })
        .collect()
}

/// Runs `body` with the completion agent on its own thread; aborts the set if `body`
/// fails, and closes the set in every case.
fn with_agent<T>(
    set: &ServerSet,
    cfg: &EngineCfg,
    op: &'static str,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let _guard = {
        let s = set.clone();
        crate::cancel::on_interrupt(move || {
            let _ = s.signal_abort();
        })
    };
    let (s1, s2, s3) = (set.clone(), set.clone(), set.clone());
    let watch = crate::watchdog::Watch {
        limit: cfg.stall,
        peer: "the backup application",
        // The creator of the set (the kernel's record), whoever started this engine.
        pid: Some(set.client_pid()),
        lacking: "completed none of the commands it was given",
        op,
        waiting: Box::new(move || s1.outstanding() > 0),
        aborted: Box::new(move || s2.abort_cause().is_some()),
        abort: Box::new(move || {
            let _ = s3.signal_abort();
        }),
    }
    .start();
    let r = std::thread::scope(|s| {
        let agent = s.spawn(|| set.execute_completion_agent());
        let r = body();
        if r.is_err() {
            let _ = set.signal_abort();
        }
        let a = agent.join();
        match (r, a) {
            (Err(e), _) => Err(e),
            (Ok(v), Ok(Ok(()))) => Ok(v),
            (Ok(_), Ok(Err(e))) => Err(vd_fail(&e, "engine", "completion agent")),
            (Ok(_), Err(_)) => Err(crate::Error::other("the completion agent panicked")),
        }
    });
    drop(watch);
    let _ = set.close();
    if r.is_err()
        && let Some(e) = crate::watchdog::take_failure()
    {
        return Err(e);
    }
    if crate::cancel::interrupted()
        && let Err(e) = &r
        && kind_of(e) == Kind::PeerFailed
    {
        return Err(fail(
            Kind::Interrupted,
            format!("{}: the operation was aborted", crate::cancel::what()),
        ));
    }
    r
}

/// `vdi engine backup`: streams `spec` through every device of set `cfg.set`.
pub fn backup(cfg: &EngineCfg, spec: &Spec) -> Result<EngineReport> {
    let mut src = spec.open_source()?;
    let set = open_set(cfg)?;
    let started = Instant::now();
    let mut notes = Vec::new();
    let (devices, buffers, complete, mode) =
        match configure(&set, cfg, features::WRITE_MEDIA, src.size(), &mut notes) {
            Ok(v) => v,
            Err(e) => {
                let _ = set.signal_abort();
                let _ = set.close();
                return Err(e);
            }
        };
    let stream_id = crate::util::random_id();
    let label = spec.label();
    let inj = Injector::new(Role::Engine, &cfg.faults);
    let (bytes, chunks) = with_agent(&set, cfg, "backup", || {
        let devs = open_devices(&set, cfg, devices)?;
        let depth = (buffers / devices).max(1);
        let mut free = Vec::new();
        for _ in 0..devices * depth {
            free.push(
                set.allocate_buffer(cfg.max_transfer, 0)
                    .map_err(|e| vd_fail(&e, "engine", "allocating buffers"))?,
            );
        }
        let (tx, rx) = mpsc::channel();
        let mut p = Pump {
            set: &set,
            devs: &devs,
            tx,
            rx,
            free,
            credits: (1..depth).flat_map(|_| 0..devices).collect(),
            in_flight: 0,
            sent: 0,
            inj: &inj,
            positions: (mode == DeviceMode::Disk).then(|| vec![0; devices as usize]),
        };
        if mode == DeviceMode::Tape {
            p.each_device(CommandCode::REWIND)?;
        }
        if let Some(code) = cfg.probe {
            p.probe(CommandCode::from(code))?;
        }
        let block = cfg.block_size as usize;
        let fields = HeaderFields {
            stream_id,
            devices,
            block_size: cfg.block_size,
            max_transfer: cfg.max_transfer,
            source_kind: src.kind(),
            source_size: src.size().unwrap_or(stream::UNKNOWN_SIZE),
            source_name: &label,
        };
        for d in 0..devices {
            let mut buf = p
                .free
                .pop()
                .ok_or_else(|| crate::Error::other("no buffer"))?;
            fields.device(d).encode(&mut buf.as_mut_slice()[..block])?;
            p.write(d, buf, cfg.block_size)?;
        }
        let max = stream::max_payload(cfg.max_transfer) as usize;
        let mut per = vec![(0u64, 0u64); devices as usize];
        let (mut seq, mut offset) = (0u64, 0u64);
        loop {
            let (d, mut buf) = p.take()?;
            let slice =
                &mut buf.as_mut_slice()[stream::CHUNK_HEADER_LEN..stream::CHUNK_HEADER_LEN + max];
            let n = read_full(&mut *src, slice)
                .map_err(|e| fail(Kind::Input, format!("reading the source {label}: {e}")))?;
            if n == 0 {
                p.free.push(buf);
                p.credits.push_front(d);
                break;
            }
            let len = stream::seal_chunk(buf.as_mut_slice(), seq, offset, n as u32, cfg.block_size);
            p.write(d, buf, len as u32)?;
            per[d as usize].0 += 1;
            per[d as usize].1 += n as u64;
            seq += 1;
            offset += n as u64;
        }
        p.drain()?;
        // The producer's verdict, before anything says the backup is whole.
        src.finish()?;
        for d in 0..devices {
            let mut buf = p
                .free
                .pop()
                .ok_or_else(|| crate::Error::other("no buffer"))?;
            Trailer {
                device: d,
                devices,
                stream_id,
                chunks: per[d as usize].0,
                bytes: per[d as usize].1,
                total_chunks: seq,
                total_bytes: offset,
            }
            .encode(&mut buf.as_mut_slice()[..block])?;
            p.write(d, buf, cfg.block_size)?;
        }
        p.drain()?;
        if mode == DeviceMode::Tape {
            p.each_device(CommandCode::WRITE_MARK)?;
        }
        p.each_device(CommandCode::FLUSH)?;
        if complete {
            p.each_device(CommandCode::COMPLETE)?;
        }
        for (i, d) in devs.iter().enumerate() {
            d.close_device()
                .map_err(|e| vd_fail(&e, "engine", &format!("closing device {i}")))?;
        }
        Ok((offset, seq))
    })?;
    Ok(EngineReport {
        ok: true,
        op: "backup".into(),
        pid: std::process::id(),
        source_bytes: bytes,
        chunks,
        devices,
        stream_id: Some(stream::hex_id(&stream_id)),
        seconds: started.elapsed().as_secs_f64(),
        snapshot_seconds: src.prepare_seconds(),
        mode: Some(mode.name().into()),
        unfired: unfired(&inj),
        notes,
        ..EngineReport::default()
    })
}

/// A device thread's failure: its own root cause, or only the echo of an abort.
enum DevErr {
    Root(crate::Error),
    Aborted(AbortCause),
}

fn damaged(dev: u32, e: StreamError) -> DevErr {
    match e {
        StreamError::Sink(io) if is_disk_full(&io) => DevErr::Root(fail(
            Kind::DiskFull,
            format!(
                "disk full: writing the restored data from device {dev}: {io}; free space where the target is, or restore somewhere with room"
            ),
        )),
        StreamError::Sink(io) => DevErr::Root(fail(
            if io.kind() == std::io::ErrorKind::InvalidData {
                // The target found the restored data unusable (a hostile tar stream).
                Kind::Damaged
            } else {
                Kind::Other
            },
            format!("writing the restored data from device {dev}: {io}"),
        )),
        e => DevErr::Root(fail(
            Kind::Damaged,
            format!("the stream of device {dev} is damaged: {e}"),
        )),
    }
}

struct ReadLoop<'a> {
    set: &'a ServerSet,
    dev: &'a ServerDevice,
    index: u32,
    max_transfer: u32,
    inj: &'a Injector,
}

impl ReadLoop<'_> {
    /// Sends `cmd` (tagged `tag`) after applying the injected faults.
    fn send(&self, cmd: ServerCommand, tx: &Sender<Ev>, tag: u64) -> Result<(), DevErr> {
        let injected =
            inject(self.inj, self.set, cmd.code(), self.index, "restore").map_err(DevErr::Root)?;
        match send(self.dev, cmd, tx, tag, injected) {
            // A short stream may be at its end (the device in IO-ERROR) before every Read
            // is sent; the callback then reports ERROR_IO_DEVICE, handled in order.
            Err(e) if e.code() != ErrorCode::IoError => Err(match abort_cause(&e) {
                Some(c) => DevErr::Aborted(c),
                None => DevErr::Root(vd_fail(
                    &e,
                    "engine",
                    &format!("sending a command on device {}", self.index),
                )),
            }),
            _ => Ok(()),
        }
    }

    /// Sends `code` (with `pos` and `size`) and waits for its completion; fails unless it
    /// succeeded. Returns the completion's out-position.
    fn one(&self, cmd: ServerCommand, tx: &Sender<Ev>, rx: &Receiver<Ev>) -> Result<u64, DevErr> {
        let d = self.index;
        let code = cmd.code();
        let injected = inject(self.inj, self.set, code, d, "restore").map_err(DevErr::Root)?;
        send(self.dev, cmd, tx, u64::MAX, injected).map_err(|e| match abort_cause(&e) {
            Some(c) => DevErr::Aborted(c),
            None => DevErr::Root(vd_fail(&e, "engine", &format!("sending on device {d}"))),
        })?;
        let ev = rx
            .recv()
            .map_err(|_| DevErr::Aborted(AbortCause::Unknown))?;
        if ev.completion == completion::ERROR_OPERATION_ABORTED && ev.injected.is_none() {
            // Only the echo of an abort: another device's thread knows its cause.
            return Err(DevErr::Aborted(
                self.set.abort_cause().unwrap_or(AbortCause::Unknown),
            ));
        }
        if ev.completion != completion::ERROR_SUCCESS {
            return Err(DevErr::Root(command_failure(self.set, &ev, "restore")));
        }
        Ok(ev.out_position)
    }

    fn run(
        &self,
        depth: u32,
        sink: &mut dyn Sink,
        complete: bool,
        mode: DeviceMode,
    ) -> Result<DeviceStream, DevErr> {
        let d = self.index;
        let vd = |e: vdi::VdError, what: &str| match abort_cause(&e) {
            Some(c) => DevErr::Aborted(c),
            None => DevErr::Root(vd_fail(&e, "engine", &format!("{what} on device {d}"))),
        };
        let (tx, rx) = mpsc::channel::<Ev>();
        let mut bufs = Vec::new();
        for _ in 0..depth {
            bufs.push(
                self.set
                    .allocate_buffer(self.max_transfer, 0)
                    .map_err(|e| vd(e, "allocating buffers"))?,
            );
        }
        if mode == DeviceMode::Tape {
            self.one(ServerCommand::new(CommandCode::REWIND), &tx, &rx)?;
        }
        // Disk-like: the stream's length (SetPosition to the end), then positioned Reads
        // of its segments, in pairs swapped (1, 0, 3, 2, ...) when two buffers allow.
        let mt = u64::from(self.max_transfer);
        let disk = if mode == DeviceMode::Disk {
            let len = self.one(
                ServerCommand::new(CommandCode::SET_POSITION)
                    .with_position(0)
                    .with_size(vdi::whence::END),
                &tx,
                &rx,
            )?;
            let segments = len.div_ceil(mt);
            let swap = depth >= 2;
            let order: Vec<u64> = (0..segments)
                .map(|i| if swap && (i ^ 1) < segments { i ^ 1 } else { i })
                .collect();
            Some((len, order))
        } else {
            None
        };
        let positioned = |seg: u64, b: ServerBuffer, len: u64| {
            let size = (len - seg * mt).min(mt) as u32;
            ServerCommand::read(b, size).with_position(seg * mt)
        };
        let mut dec = Decoder::new(Some(d));
        let (mut next_send, mut next_done, mut in_flight) = (0u64, 0u64, 0u32);
        let mut pending: BTreeMap<u64, Ev> = BTreeMap::new();
        let mut eof = false;
        let mut failure: Option<DevErr> = None;
        // The next command to send: its tag (a segment, disk-like) and the command.
        let next_cmd = |b: ServerBuffer, next_send: &mut u64| -> Option<(u64, ServerCommand)> {
            match &disk {
                Some((len, order)) => {
                    let seg = *order.get(*next_send as usize)?;
                    *next_send += 1;
                    Some((seg, positioned(seg, b, *len)))
                }
                None => {
                    let tag = *next_send;
                    *next_send += 1;
                    Some((tag, ServerCommand::read(b, self.max_transfer)))
                }
            }
        };
        while let Some(b) = bufs.pop() {
            let Some((tag, cmd)) = next_cmd(b, &mut next_send) else {
                break;
            };
            // A failed send still completes the command (the callback runs at once),
            // except for an injected abort, which never sends it.
            match self.send(cmd, &tx, tag) {
                Ok(()) => in_flight += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        while in_flight > 0 {
            let Ok(ev) = rx.recv() else {
                break;
            };
            in_flight -= 1;
            pending.insert(ev.tag, ev);
            while let Some(ev) = pending.remove(&next_done) {
                next_done += 1;
                if failure.is_some() {
                    continue;
                }
                // An injected failure acts even on a Read past the end of the stream
                // (whose ERROR_IO_DEVICE the engine otherwise expects and ignores).
                if let Some((f, what)) = &ev.injected {
                    failure = Some(DevErr::Root(f.error(what, "restore")));
                    let _ = self.set.signal_abort();
                    continue;
                }
                if eof {
                    continue;
                }
                match ev.completion {
                    completion::ERROR_SUCCESS
                    | completion::ERROR_HANDLE_EOF
                    | completion::ERROR_NO_DATA_DETECTED
                    | completion::ERROR_FILEMARK_DETECTED => {
                        let n = ev.bytes.min(ev.size) as usize;
                        if disk.is_some()
                            && (ev.completion != completion::ERROR_SUCCESS || n != ev.size as usize)
                        {
                            failure = Some(DevErr::Root(fail(
                                Kind::PeerFailed,
                                format!(
                                    "the backup application served {n} of the {} bytes of a positioned Read at byte {} on device {d} (with {}), inside the {} bytes its SetPosition(0, VDC_End) reported",
                                    ev.size,
                                    ev.tag * mt,
                                    code_name(ev.completion),
                                    disk.as_ref().map_or(0, |x| x.0)
                                ),
                            )));
                            let _ = self.set.signal_abort();
                            continue;
                        }
                        let data = ev
                            .buffer
                            .as_ref()
                            .map(|b| &b.as_slice()[..n])
                            .unwrap_or(&[]);
                        if let Err(e) = dec.feed(data, sink) {
                            failure = Some(damaged(d, e));
                            let _ = self.set.signal_abort();
                            continue;
                        }
                        if ev.completion != completion::ERROR_SUCCESS {
                            eof = true;
                            continue;
                        }
                        if let Some(b) = ev.buffer
                            && let Some((tag, cmd)) = next_cmd(b, &mut next_send)
                        {
                            // A Read sent after the client already answered EOF to a later
                            // one finds the device in IO-ERROR; its callback reports
                            // ERROR_IO_DEVICE, which is handled in order below.
                            match self.send(cmd, &tx, tag) {
                                Ok(()) => in_flight += 1,
                                Err(e) => failure = Some(e),
                            }
                        }
                    }
                    completion::ERROR_OPERATION_ABORTED => {
                        failure = Some(DevErr::Aborted(
                            self.set.abort_cause().unwrap_or(AbortCause::Unknown),
                        ));
                    }
                    code => {
                        let kind = if code == crate::util::ERROR_CRC {
                            Kind::Damaged
                        } else {
                            Kind::PeerFailed
                        };
                        failure = Some(DevErr::Root(fail(
                            kind,
                            format!(
                                "the backup application failed a Read on device {d} with {}",
                                code_name(code)
                            ),
                        )));
                        let _ = self.set.signal_abort();
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        let stream = dec.finish().map_err(|e| damaged(d, e))?;
        if self.dev.in_io_error() {
            self.one(ServerCommand::new(CommandCode::CLEAR_ERROR), &tx, &rx)?;
        }
        if mode == DeviceMode::Tape {
            self.one(ServerCommand::new(CommandCode::REWIND), &tx, &rx)?;
        }
        if complete {
            self.one(ServerCommand::new(CommandCode::COMPLETE), &tx, &rx)?;
        }
        self.dev.close_device().map_err(|e| vd(e, "closing"))?;
        Ok(stream)
    }
}

/// `vdi engine restore`: rebuilds `spec` from what the devices of set `cfg.set` serve.
pub fn restore(cfg: &EngineCfg, spec: &Spec, force: bool, integrity: bool) -> Result<EngineReport> {
    let out = spec.open_target(TargetOptions { force })?;
    let set = open_set(cfg)?;
    let started = Instant::now();
    let mut notes = Vec::new();
    let (devices, buffers, complete, mode) =
        match configure(&set, cfg, features::READ_MEDIA, None, &mut notes) {
            Ok(v) => v,
            Err(e) => {
                let _ = set.signal_abort();
                let _ = set.close();
                return Err(e);
            }
        };
    out.begin(devices);
    let inj = Injector::new(Role::Engine, &cfg.faults);
    let streams = with_agent(&set, cfg, "restore", || {
        let devs = open_devices(&set, cfg, devices)?;
        let depth = (buffers / devices).max(1);
        let results: Vec<Result<DeviceStream, DevErr>> = std::thread::scope(|s| {
            let handles: Vec<_> = devs
                .iter()
                .enumerate()
                .map(|(i, dev)| {
                    let mut sink = out.sink();
                    let (set, out, inj) = (&set, &out, &inj);
                    s.spawn(move || {
                        let r = ReadLoop {
                            set,
                            dev,
                            index: i as u32,
                            max_transfer: cfg.max_transfer,
                            inj,
                        }
                        .run(depth, sink.as_mut(), complete, mode);
                        if r.is_err() {
                            let _ = set.signal_abort();
                        }
                        out.device_done(r.is_err());
                        r
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(DevErr::Root(crate::Error::other(
                            "a device thread panicked",
                        )))
                    })
                })
                .collect()
        });
        let mut ok = Vec::new();
        let mut root = None;
        let mut echo = None;
        for r in results {
            match r {
                Ok(s) => ok.push(s),
                Err(DevErr::Root(e)) => {
                    root.get_or_insert(e);
                }
                Err(DevErr::Aborted(c)) => {
                    echo.get_or_insert(c);
                }
            }
        }
        if let Some(e) = root {
            return Err(e);
        }
        if let Some(c) = echo {
            return Err(fail(Kind::PeerFailed, abort_sentence(c, "engine")));
        }
        Ok(ok)
    })?;
    let summary = stream::check_set(&streams).map_err(|e| {
        fail(
            Kind::Damaged,
            format!("the backup's streams do not make a whole: {e}"),
        )
    })?;
    let verdict = out.commit(summary.total_bytes, integrity)?;
    Ok(EngineReport {
        ok: true,
        op: "restore".into(),
        pid: std::process::id(),
        source_bytes: summary.total_bytes,
        chunks: summary.total_chunks,
        devices,
        stream_id: Some(stream::hex_id(&summary.stream_id)),
        seconds: started.elapsed().as_secs_f64(),
        mode: Some(mode.name().into()),
        integrity_check: verdict,
        unfired: unfired(&inj),
        notes,
        ..EngineReport::default()
    })
}

/// The injected faults that never acted, as typed.
fn unfired(inj: &Injector) -> Vec<String> {
    let (left, n) = inj.unfired();
    left.iter()
        .map(|f| format!("--inject {f} never acted: the engine sent only {n} command(s)"))
        .collect()
}

/// The report of a failed engine.
pub fn failed_report(op: &str, e: &crate::Error) -> EngineReport {
    let kind = kind_of(e);
    let message = e.own_message();
    EngineReport {
        ok: false,
        op: op.into(),
        kind: Some(kind.name().into()),
        message: Some(message),
        pid: std::process::id(),
        ..EngineReport::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn device_modes_follow_what_the_client_offers() {
        let tape = features::LIKE_TAPE;
        let disk = features::LIKE_DISK;
        assert_eq!(DeviceMode::Auto.resolve(0).unwrap(), (DeviceMode::Pipe, 0));
        assert_eq!(
            DeviceMode::Auto.resolve(tape).unwrap(),
            (DeviceMode::Tape, tape)
        );
        assert_eq!(
            DeviceMode::Auto
                .resolve(disk | features::REQUEST_COMPLETE)
                .unwrap(),
            (DeviceMode::Disk, disk)
        );
        // A pipe is always possible; tape and disk only when offered, and the refusal
        // names what the client must set.
        assert_eq!(
            DeviceMode::Pipe.resolve(tape).unwrap(),
            (DeviceMode::Pipe, 0)
        );
        let e = DeviceMode::Tape
            .resolve(features::REQUEST_COMPLETE)
            .unwrap_err();
        assert!(e.to_string().contains("VDF_LikeTape"), "{e}");
        let e = DeviceMode::Disk.resolve(tape).unwrap_err();
        assert!(e.to_string().contains("VDF_LikeDisk"), "{e}");
        assert_eq!(DeviceMode::parse(" Disk ").unwrap(), DeviceMode::Disk);
        assert!(
            DeviceMode::parse("floppy")
                .unwrap_err()
                .contains("pipe, tape, disk")
        );
    }

    #[test]
    fn buffer_counts_are_capped_and_say_why() {
        // The default: 4 per device, fewer for a small source, silently.
        assert_eq!(buffer_count(None, 2, 1 << 20, None), (8, None));
        assert_eq!(buffer_count(None, 4, 1 << 20, Some(1000)).0, 5);
        // Asked for more than the source can use: said so.
        let (n, why) = buffer_count(Some(2048), 1, 1 << 20, Some(20 << 20));
        assert_eq!(n, 22);
        assert!(why.unwrap().contains("fills 21 chunk(s)"));
        // More than 1 GiB in all: capped, said so.
        let (n, why) = buffer_count(Some(2048), 4, 4 << 20, None);
        assert_eq!(n, 256);
        assert!(why.unwrap().contains("8.0 GiB of shared memory"));
        // Never fewer than one per device.
        assert_eq!(buffer_count(Some(1), 3, 1 << 20, Some(0)), (3, None));
    }
}
