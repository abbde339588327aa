//! The processes of the crash campaign (`vdi-peer crash-server | crash-client |
//! crash-secondary`): an engine, a primary client and a secondary client that move
//! stamped buffers (not a verified pattern: the campaign is about dying, not about bytes,
//! and it runs in debug builds), print phase markers the campaign waits for, stop at
//! their marker to be killed when they are the victim, and, as survivors, print one
//! `REPORT` line that says what their calls returned, when (CLOCK_MONOTONIC, comparable
//! across processes), how their callbacks ran and what descriptors they still hold.
//!
//! Markers: `PHASE created|configured|config|stream|clearerror|close t=NS`.
//! Report: `REPORT role=server result=VD_E_ABORT t_first=NS t_done=NS sent=N cb_total=N
//! cb_aborted=N cb_twice=N cb_missing=N cb_bad=N outstanding=N close=OK fds_before=N
//! fds_after=N memfds=N mismatches=N cause=...`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vdi::{
    ClientDevice, ClientSet, Command, CommandCode, ErrorCode, ServerCommand, ServerDevice,
    ServerSet, Timeout, VdError, completion, features,
};

use crate::device_name;

/// Nanoseconds of CLOCK_MONOTONIC: the same clock in every process of the machine.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What one crash-campaign process does (all processes of a run get the same plan, plus
/// whether they are the victim).
#[derive(Clone, Debug, Default)]
pub struct CrashPlan {
    /// Set name.
    pub set: String,
    /// Devices.
    pub devices: u32,
    /// Bytes per transfer.
    pub transfer: u32,
    /// Commands in flight per device.
    pub depth: u32,
    /// Bytes per device.
    pub per_device: u64,
    /// Restore (Read) instead of backup (Write).
    pub restore: bool,
    /// Devices the secondary serves (empty: no secondary).
    pub which: Vec<u32>,
    /// This process prints the marker of `point` (and holds there if `hold`).
    pub marks: bool,
    /// `config`, `stream`, `clearerror`, `close` (where the victim prints its marker).
    pub point: String,
    /// 0 or 1: ClearError outstanding / just completed; devices closing / set closing.
    pub variant: u32,
    /// The stream marker's byte offset on this process's first device.
    pub at: u64,
    /// The victim stops at its marker until killed.
    pub hold: bool,
    /// The primary fails this data command (index on device 0) with ERROR_DISK_FULL.
    pub fail_at: Option<u64>,
    /// Clients: microseconds spent on each data command (a slower medium: a longer
    /// stream to kill in).
    pub pace_us: u64,
}

impl CrashPlan {
    /// As `key=value` arguments.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("set={}", self.set),
            format!("devices={}", self.devices),
            format!("transfer={}", self.transfer),
            format!("depth={}", self.depth),
            format!("per_device={}", self.per_device),
            format!("restore={}", self.restore),
            format!("marks={}", self.marks),
            format!("point={}", self.point),
            format!("variant={}", self.variant),
            format!("at={}", self.at),
            format!("hold={}", self.hold),
            format!("pace_us={}", self.pace_us),
        ];
        if !self.which.is_empty() {
            v.push(crate::device_list_arg(&self.which));
        }
        if let Some(f) = self.fail_at {
            v.push(format!("fail_at={f}"));
        }
        v
    }

    /// Parses `key=value` arguments.
    pub fn from_args(args: &[String]) -> Result<CrashPlan, String> {
        let mut p = CrashPlan {
            devices: 1,
            transfer: 65536,
            depth: 4,
            ..CrashPlan::default()
        };
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("bad argument {a}"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
            match k {
                "set" => p.set = v.to_owned(),
                "devices" => p.devices = num(v)? as u32,
                "transfer" => p.transfer = num(v)? as u32,
                "depth" => p.depth = num(v)? as u32,
                "per_device" => p.per_device = num(v)?,
                "restore" => p.restore = v == "true",
                "marks" => p.marks = v == "true",
                "point" => p.point = v.to_owned(),
                "variant" => p.variant = num(v)? as u32,
                "at" => p.at = num(v)?,
                "hold" => p.hold = v == "true",
                "pace_us" => p.pace_us = num(v)?,
                "which" => p.which = crate::parse_device_list(v)?,
                "fail_at" => p.fail_at = Some(num(v)?),
                _ => {}
            }
        }
        if p.devices == 0 || p.transfer < 64 || p.depth == 0 {
            return Err("devices, depth must be >= 1 and transfer >= 64".into());
        }
        Ok(p)
    }

    fn at_point(&self, point: &str, variant: Option<u32>) -> bool {
        self.marks && self.point == point && variant.is_none_or(|v| v == self.variant)
    }
}

fn say(s: &str) {
    println!("{s}");
}

fn phase(name: &str) {
    say(&format!("PHASE {name} t={}", mono_ns()));
}

/// The victim's marker: prints it and, when the plan says so, waits there to be killed.
fn marker(plan: &CrashPlan, name: &str) {
    phase(name);
    if plan.hold {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// When this process first saw the abort (0 = not yet).
#[derive(Default)]
struct Seen {
    first: AtomicU64,
}

impl Seen {
    fn note(&self) {
        let _ = self
            .first
            .compare_exchange(0, mono_ns(), Ordering::AcqRel, Ordering::Acquire);
    }

    fn track<T>(&self, r: Result<T, VdError>) -> Result<T, VdError> {
        if let Err(e) = &r
            && e.code() == ErrorCode::Abort
        {
            self.note();
        }
        r
    }
}

fn stamp(buf: &mut [u8], device: u32, offset: u64) {
    if buf.len() >= 12 {
        buf[..4].copy_from_slice(&device.to_le_bytes());
        buf[4..12].copy_from_slice(&offset.to_le_bytes());
    }
}

fn stamp_ok(buf: &[u8], device: u32, offset: u64) -> bool {
    buf.len() < 12 || (buf[..4] == device.to_le_bytes() && buf[4..12] == offset.to_le_bytes())
}

fn stamped_offset(buf: &[u8], device: u32) -> Option<u64> {
    if buf.len() >= 12 && buf[..4] == device.to_le_bytes() {
        let mut o = [0u8; 8];
        o.copy_from_slice(&buf[4..12]);
        Some(u64::from_le_bytes(o))
    } else {
        None
    }
}

fn code_name(r: &Result<(), VdError>) -> &'static str {
    match r {
        Ok(()) => "OK",
        Err(e) => e.code().name(),
    }
}

/// Per command: how often its callback ran and with which code.
#[derive(Default)]
struct Calls {
    v: Mutex<Vec<(u32, u32)>>,
    cv: Condvar,
}

impl Calls {
    fn slot(&self) -> usize {
        let mut v = self.v.lock().unwrap_or_else(|e| e.into_inner());
        v.push((0, 0));
        v.len() - 1
    }

    fn ran(&self, id: usize, code: u32) {
        let mut v = self.v.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = v.get_mut(id) {
            s.0 += 1;
            s.1 = code;
        }
        drop(v);
        self.cv.notify_all();
    }

    /// Waits until command `id`'s callback ran (the agent runs every callback, also
    /// after an abort, so this ends unless the library loses a callback: then the
    /// campaign sees a hang).
    fn wait(&self, id: usize) {
        let mut v = self.v.lock().unwrap_or_else(|e| e.into_inner());
        while v.get(id).is_some_and(|s| s.0 == 0) {
            v = self.cv.wait(v).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until at most `n` of the commands in `ids` are without a callback.
    fn wait_below(&self, ids: &Mutex<Vec<usize>>, n: usize) {
        let mut v = self.v.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let pending = ids
                .lock()
                .map(|ids| {
                    ids.iter()
                        .filter(|&&i| v.get(i).is_some_and(|s| s.0 == 0))
                        .count()
                })
                .unwrap_or(0);
            if pending <= n {
                return;
            }
            v = self.cv.wait(v).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs a campaign role; returns the exit code.
pub fn main(mode: &str, args: &[String]) -> i32 {
    let plan = match CrashPlan::from_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vdi-peer {mode}: {e}");
            return 64;
        }
    };
    match mode {
        "crash-server" => server(&plan),
        "crash-client" => client(&plan, false),
        "crash-secondary" => client(&plan, true),
        _ => 64,
    }
}

fn report(role: &str, fields: &[(&str, String)]) {
    let mut s = format!("REPORT role={role}");
    for (k, v) in fields {
        s.push_str(&format!(" {k}={v}"));
    }
    say(&s);
}

fn server(plan: &CrashPlan) -> i32 {
    let fds_before = fd_count();
    let seen = Seen::default();
    let calls = Arc::new(Calls::default());
    let set = match ServerSet::open(&plan.set) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("ERROR {} {e}", e.code().name()));
            return 3;
        }
    };
    phase("opened");
    let r = server_body(&set, plan, &seen, &calls);
    let t_done = mono_ns();
    let outstanding = set.outstanding();
    let cause = set.abort_cause();
    let close = set.close();
    drop(set);
    let v = calls.v.lock().map(|v| v.clone()).unwrap_or_default();
    let allowed = |c: u32| {
        matches!(
            c,
            completion::ERROR_SUCCESS
                | completion::ERROR_OPERATION_ABORTED
                | completion::ERROR_IO_DEVICE
                | completion::ERROR_DISK_FULL
        )
    };
    report(
        "server",
        &[
            ("result", code_name(&r).to_owned()),
            ("t_first", first_of(&seen).to_string()),
            ("t_done", t_done.to_string()),
            ("sent", v.len().to_string()),
            (
                "cb_total",
                v.iter().map(|s| u64::from(s.0)).sum::<u64>().to_string(),
            ),
            (
                "cb_aborted",
                v.iter()
                    .filter(|s| s.0 > 0 && s.1 == completion::ERROR_OPERATION_ABORTED)
                    .count()
                    .to_string(),
            ),
            ("cb_twice", v.iter().filter(|s| s.0 > 1).count().to_string()),
            (
                "cb_missing",
                v.iter().filter(|s| s.0 == 0).count().to_string(),
            ),
            (
                "cb_bad",
                v.iter()
                    .filter(|s| s.0 > 0 && !allowed(s.1))
                    .count()
                    .to_string(),
            ),
            ("outstanding", outstanding.to_string()),
            ("close", code_name(&close).to_owned()),
            ("fds_before", fds_before.to_string()),
            ("fds_after", fd_count().to_string()),
            ("memfds", crate::open_vdi_memfds().to_string()),
            ("mismatches", "0".into()),
            ("cause", cause.map_or("none".into(), |c| format!("{c:?}"))),
        ],
    );
    match r {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

fn server_body(
    set: &ServerSet,
    plan: &CrashPlan,
    seen: &Seen,
    calls: &Arc<Calls>,
) -> Result<(), VdError> {
    let asked = seen.track(set.get_configuration())?;
    let mut feats = if plan.restore {
        features::READ_MEDIA
    } else {
        features::WRITE_MEDIA
    };
    if asked.features & features::REQUEST_COMPLETE != 0 {
        feats |= features::COMPLETE_ENABLED;
    }
    seen.track(set.begin_configuration(feats, 512, 0, plan.transfer, 10_000))?;
    if plan.at_point("config", None) {
        marker(plan, "config");
    }
    seen.track(set.request_buffers(plan.transfer, 0, plan.devices * plan.depth))?;
    seen.track(set.end_configuration())?;
    let complete = seen.track(set.get_configuration())?.features & features::COMPLETE_ENABLED != 0;
    let mut devs = Vec::new();
    for i in 0..plan.devices {
        devs.push(seen.track(set.open_device(&device_name(&plan.set, i)))?);
    }
    std::thread::scope(|s| -> Result<(), VdError> {
        let agent = s.spawn(|| seen.track(set.execute_completion_agent()));
        let workers: Vec<_> = devs
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                s.spawn(move || server_device(set, dev, i as u32, plan, seen, calls, complete))
            })
            .collect();
        let mut first_err = None;
        for w in workers {
            let r = w.join().unwrap_or_else(|_| Err(panicked("device thread")));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        if first_err.is_some() {
            let _ = set.signal_abort();
        }
        let a = agent.join().unwrap_or_else(|_| Err(panicked("agent")));
        match first_err {
            Some(e) => Err(e),
            None => a,
        }
    })?;
    if plan.at_point("close", Some(1)) {
        marker(plan, "close");
    }
    Ok(())
}

fn panicked(what: &str) -> VdError {
    VdError::new(
        ErrorCode::Unexpected,
        vdi::Reason::InvalidArgument(format!("{what} panicked")),
    )
}

fn server_device(
    set: &ServerSet,
    dev: &ServerDevice,
    i: u32,
    plan: &CrashPlan,
    seen: &Seen,
    calls: &Arc<Calls>,
    complete: bool,
) -> Result<(), VdError> {
    let mine: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let send = |cmd: ServerCommand| -> (usize, Result<(), VdError>) {
        let id = calls.slot();
        if let Ok(mut m) = mine.lock() {
            m.push(id);
        }
        let c = calls.clone();
        let r = dev.send_command(cmd, move |done| {
            if done.completion_code == completion::ERROR_OPERATION_ABORTED {
                // The agent (or the failed send) saw the abort.
                seen_note_global();
            }
            c.ran(id, done.completion_code);
        });
        (id, seen.track(r))
    };
    let clear_error = || -> Result<(), VdError> {
        let (id, r) = send(ServerCommand::new(CommandCode::CLEAR_ERROR));
        r?;
        if i == 0 && plan.at_point("clearerror", Some(0)) {
            marker(plan, "clearerror");
        }
        calls.wait(id);
        if i == 0 && plan.at_point("clearerror", Some(1)) {
            marker(plan, "clearerror");
        }
        Ok(())
    };
    let mut off = 0u64;
    let mut marked = false;
    while off < plan.per_device {
        calls.wait_below(&mine, plan.depth as usize - 1);
        if dev.in_io_error() {
            clear_error()?;
        }
        let mut buf = loop {
            match set.allocate_buffer(plan.transfer, 0) {
                Ok(b) => break b,
                // Buffers come back through callbacks a moment after the slot frees.
                Err(e) if e.code() == ErrorCode::Memory => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => {
                    if e.code() == ErrorCode::Abort {
                        seen.note();
                    }
                    return Err(e);
                }
            }
        };
        let n = (plan.per_device - off).min(u64::from(plan.transfer)) as u32;
        let cmd = if plan.restore {
            ServerCommand::read(buf, n)
        } else {
            stamp(buf.as_mut_slice(), i, off);
            ServerCommand::write(buf, n)
        };
        let (_, r) = send(cmd);
        match r {
            Ok(()) => {}
            Err(e) if e.code() == ErrorCode::IoError => clear_error()?,
            Err(e) => return Err(e),
        }
        off += u64::from(n);
        if i == 0 && !marked && off >= plan.at {
            marked = true;
            if plan.at_point("stream", None) {
                marker(plan, "stream");
            }
        }
    }
    let finish = |code: CommandCode| -> Result<(), VdError> {
        calls.wait_below(&mine, 0);
        for _ in 0..2 {
            if dev.in_io_error() {
                clear_error()?;
            }
            let (id, r) = send(ServerCommand::new(code));
            match r {
                Ok(()) => {
                    calls.wait(id);
                    return Ok(());
                }
                Err(e) if e.code() == ErrorCode::IoError => clear_error()?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    finish(CommandCode::FLUSH)?;
    if complete {
        finish(CommandCode::COMPLETE)?;
    }
    calls.wait_below(&mine, 0);
    if i == 0 && plan.at_point("close", Some(0)) {
        marker(plan, "close");
    }
    seen.track(dev.close_device())
}

/// The first time a callback ran with ERROR_OPERATION_ABORTED, for the report.
static CB_ABORT: AtomicU64 = AtomicU64::new(0);

fn first_of(seen: &Seen) -> u64 {
    let a = seen.first.load(Ordering::Acquire);
    let b = CB_ABORT.load(Ordering::Acquire);
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

fn seen_note_global() {
    let _ = CB_ABORT.compare_exchange(0, mono_ns(), Ordering::AcqRel, Ordering::Acquire);
}

fn client(plan: &CrashPlan, secondary: bool) -> i32 {
    let fds_before = fd_count();
    let seen = Seen::default();
    let role = if secondary { "secondary" } else { "client" };
    let set = if secondary {
        ClientSet::open_in_secondary(&plan.set)
    } else {
        let mut cfg = vdi::VdConfig::with_devices(plan.devices);
        cfg.features |= features::REQUEST_COMPLETE;
        ClientSet::create(&plan.set, &cfg)
    };
    let set = match set {
        Ok(s) => s,
        Err(e) => {
            say(&format!("ERROR {} {e}", e.code().name()));
            return 3;
        }
    };
    phase("created");
    let mismatches = AtomicU64::new(0);
    let r = client_body(&set, plan, secondary, &seen, &mismatches);
    let t_done = mono_ns();
    if plan.at_point("close", Some(1)) {
        marker(plan, "close");
    }
    if !secondary && !plan.which.is_empty() {
        // The primary closes the set only after its secondary has finished (the campaign
        // says `go` on standard input once the secondary process is gone): closing it
        // earlier would end the secondary's devices too.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    let cause = set.abort_cause();
    let close = set.close();
    drop(set);
    report(
        role,
        &[
            ("result", code_name(&r).to_owned()),
            ("t_first", seen.first.load(Ordering::Acquire).to_string()),
            ("t_done", t_done.to_string()),
            ("sent", "0".into()),
            ("cb_total", "0".into()),
            ("cb_aborted", "0".into()),
            ("cb_twice", "0".into()),
            ("cb_missing", "0".into()),
            ("cb_bad", "0".into()),
            ("outstanding", "0".into()),
            ("close", code_name(&close).to_owned()),
            ("fds_before", fds_before.to_string()),
            ("fds_after", fd_count().to_string()),
            ("memfds", crate::open_vdi_memfds().to_string()),
            ("mismatches", mismatches.load(Ordering::Relaxed).to_string()),
            ("cause", cause.map_or("none".into(), |c| format!("{c:?}"))),
        ],
    );
    match r {
        Ok(()) if mismatches.load(Ordering::Relaxed) == 0 => 0,
        Ok(()) => 1,
        Err(_) => 2,
    }
}

fn client_body(
    set: &ClientSet,
    plan: &CrashPlan,
    secondary: bool,
    seen: &Seen,
    mismatches: &AtomicU64,
) -> Result<(), VdError> {
    let which: Vec<u32> = if secondary {
        plan.which.clone()
    } else {
        seen.track(set.get_configuration(Timeout::from_millis(30_000)))?;
        phase("configured");
        (0..plan.devices)
            .filter(|d| !plan.which.contains(d))
            .collect()
    };
    let mut devs = Vec::new();
    for &i in &which {
        devs.push((i, seen.track(set.open_device(&device_name(&plan.set, i)))?));
    }
    if plan.at_point("config", None) {
        marker(plan, "config");
    }
    let first = which.first().copied();
    let results: Vec<Result<(), VdError>> = std::thread::scope(|s| {
        let hs: Vec<_> = devs
            .iter()
            .map(|(i, dev)| {
                let i = *i;
                s.spawn(move || client_device(dev, i, Some(i) == first, plan, seen, mismatches))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked("device thread"))))
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, VdError>>()?;
    Ok(())
}

fn client_device(
    dev: &ClientDevice,
    i: u32,
    first: bool,
    plan: &CrashPlan,
    seen: &Seen,
    mismatches: &AtomicU64,
) -> Result<(), VdError> {
    let mut held: Vec<(Command<'_>, u32, u32)> = Vec::new();
    let mut off = 0u64;
    let mut data_cmds = 0u64;
    let mut marked = false;
    let complete_all = |held: &mut Vec<(Command<'_>, u32, u32)>| -> Result<(), VdError> {
        held.reverse();
        for (cmd, code, n) in held.drain(..) {
            seen.track(cmd.complete(code, n, 0))?;
        }
        Ok(())
    };
    loop {
        let t = if held.is_empty() {
            Timeout::from_millis(30_000)
        } else {
            Timeout::POLL
        };
        match seen.track(dev.get_command(t)) {
            Ok(mut cmd) => {
                let code = cmd.code();
                if code == CommandCode::WRITE || code == CommandCode::READ {
                    let n = cmd.size();
                    if code == CommandCode::WRITE {
                        let b = cmd.buffer().unwrap_or(&[]);
                        // After an IO error the engine skips the commands that were
                        // flushed or refused: the stream may jump ahead on device 0.
                        if i == 0
                            && plan.fail_at.is_some()
                            && let Some(at) = stamped_offset(b, i)
                            && at > off
                        {
                            off = at;
                        }
                        if !stamp_ok(b, i, off) {
                            mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if let Some(b) = cmd.buffer_mut() {
                        stamp(b, i, off);
                    }
                    if plan.pace_us > 0 {
                        std::thread::sleep(Duration::from_micros(plan.pace_us));
                    }
                    let fail = i == 0 && plan.fail_at == Some(data_cmds);
                    data_cmds += 1;
                    off += u64::from(n);
                    if fail {
                        held.push((cmd, completion::ERROR_DISK_FULL, 0));
                    } else {
                        held.push((cmd, completion::ERROR_SUCCESS, n));
                    }
                    if first && !marked && off >= plan.at {
                        marked = true;
                        if plan.at_point("stream", None) {
                            marker(plan, "stream");
                        }
                    }
                } else if code == CommandCode::CLEAR_ERROR {
                    if plan.at_point("clearerror", Some(0)) {
                        // Killed with ClearError fetched and not completed.
                        marker(plan, "clearerror");
                    }
                    held.push((cmd, completion::ERROR_SUCCESS, 0));
                    if plan.at_point("clearerror", Some(1)) {
                        complete_all(&mut held)?;
                        marker(plan, "clearerror");
                    }
                } else if matches!(code, CommandCode::FLUSH | CommandCode::COMPLETE) {
                    held.push((cmd, completion::ERROR_SUCCESS, 0));
                } else {
                    held.push((cmd, completion::ERROR_NOT_SUPPORTED, 0));
                }
                if held.len() >= plan.depth as usize {
                    complete_all(&mut held)?;
                }
            }
            Err(e) if e.code() == ErrorCode::Timeout && !held.is_empty() => {
                complete_all(&mut held)?;
            }
            Err(e) if e.code() == ErrorCode::Close => {
                complete_all(&mut held)?;
                if first && plan.at_point("close", Some(0)) {
                    marker(plan, "close");
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}
