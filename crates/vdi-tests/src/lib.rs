//! Cross-process tests of vdi: a deterministic data pattern, a reference engine (server
//! role) and a reference backup application (client role) that verify every byte, and a
//! handle on peer processes. The `vdi-peer` binary runs these roles in a separate process;
//! the tests in `tests/` run the other role and check both sides' results.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command as Process, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub mod campaign;
pub mod campaign_peer;
pub mod hostile;

use vdi::{
    ClientSet, CommandCode, Completion, ErrorCode, ServerCommand, ServerSet, Timeout, VdError,
    completion, features,
};

/// The report lines the peer binaries print for the tests to read.
pub mod say {
    use crate::Report;

    /// Prints one line on standard output.
    pub fn line(s: &str) {
        println!("{s}");
    }

    /// `DONE bytes=.. commands=.. mismatches=.. errors=..`; the exit code (1 if anything
    /// mismatched or failed).
    pub fn done(r: &Report) -> i32 {
        line(&format!(
            "DONE bytes={} commands={} mismatches={} errors={}",
            r.bytes.iter().sum::<u64>(),
            r.commands.iter().sum::<u64>(),
            r.mismatches,
            r.errors
        ));
        i32::from(r.mismatches != 0 || r.errors != 0)
    }

    /// `ERROR CODE message`; the exit code 2.
    pub fn fail(e: &vdi::VdError) -> i32 {
        line(&format!("ERROR {} {}", e.code().name(), e));
        2
    }
}

/// A position-addressed pseudo-random byte stream: byte `p` of device `d` under `seed` is
/// always the same, so any chunk can be produced or checked on its own.
pub mod pattern {
    fn word(seed: u64, device: u32, index: u64) -> u64 {
        let mut z = seed ^ (u64::from(device) << 48) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the stream's bytes starting at `offset`.
    pub fn fill(seed: u64, device: u32, offset: u64, buf: &mut [u8]) {
        let mut p = offset;
        let mut i = 0;
        while i < buf.len() {
            let w = word(seed, device, p / 8).to_le_bytes();
            let k = (p % 8) as usize;
            let n = (8 - k).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&w[k..k + n]);
            i += n;
            p += n as u64;
        }
    }

    /// The index of the first byte of `buf` that differs from the stream, if any.
    pub fn mismatch(seed: u64, device: u32, offset: u64, buf: &[u8]) -> Option<usize> {
        let mut tmp = [0u8; 4096];
        let mut i = 0;
        while i < buf.len() {
            let n = tmp.len().min(buf.len() - i);
            fill(seed, device, offset + i as u64, &mut tmp[..n]);
            if tmp[..n] != buf[i..i + n] {
                let j = tmp[..n]
                    .iter()
                    .zip(&buf[i..i + n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Some(i + j);
            }
            i += n;
        }
        None
    }
}

/// The name of device `i` of set `set` (device 0 has the set's name).
pub fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}#{i}")
    }
}

/// What a run moves and how.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The set name.
    pub set: String,
    /// Devices.
    pub devices: u32,
    /// Bytes per transfer (maxTransferSize).
    pub transfer: u32,
    /// Commands in flight per device (server) / commands held before completing (client).
    pub depth: u32,
    /// Total bytes over all devices.
    pub total: u64,
    /// Pattern seed.
    pub seed: u64,
    /// Backup (Write) or restore (Read).
    pub restore: bool,
    /// Request / enable VDC_Complete.
    pub complete: bool,
    /// Where to stop and wait to be killed (peer processes only).
    pub pause: Option<String>,
    /// Client: complete held commands in reverse order.
    pub reverse: bool,
    /// Client prefix zone size; the client writes a marker into it and checks it.
    pub prefix: u32,
    /// Client minimum alignment.
    pub alignment: u32,
    /// The client's `serverTimeOut` in milliseconds (0 = none): the engine's set aborts
    /// when commands are outstanding and none completes for two such intervals.
    pub server_timeout: u32,
    /// The devices a client process serves (`which=0,2`); `None`: every device.
    pub which: Option<Vec<u32>>,
}

impl Plan {
    /// A plan with the usual defaults.
    pub fn new(set: &str, devices: u32, total: u64) -> Plan {
        Plan {
            set: set.to_owned(),
            devices,
            transfer: 1 << 20,
            depth: 4,
            total,
            seed: 0x5EED,
            restore: false,
            complete: true,
            pause: None,
            reverse: true,
            prefix: 0,
            alignment: 0,
            server_timeout: 0,
            which: None,
        }
    }

    /// Bytes on device `i` (the remainder goes to the last device).
    pub fn device_bytes(&self, i: u32) -> u64 {
        let base = self.total / u64::from(self.devices);
        if i + 1 == self.devices {
            self.total - base * u64::from(self.devices - 1)
        } else {
            base
        }
    }

    /// As `key=value` arguments for `vdi-peer`.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("set={}", self.set),
            format!("devices={}", self.devices),
            format!("transfer={}", self.transfer),
            format!("depth={}", self.depth),
            format!("total={}", self.total),
            format!("seed={}", self.seed),
            format!("restore={}", self.restore),
            format!("complete={}", self.complete),
            format!("reverse={}", self.reverse),
            format!("prefix={}", self.prefix),
            format!("alignment={}", self.alignment),
            format!("server_timeout={}", self.server_timeout),
        ];
        if let Some(p) = &self.pause {
            v.push(format!("pause={p}"));
        }
        if let Some(w) = &self.which {
            v.push(device_list_arg(w));
        }
        v
    }

    /// Parses `key=value` arguments.
    pub fn from_args(args: &[String]) -> Result<Plan, String> {
        let mut p = Plan::new("", 1, 0);
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
                "total" => p.total = num(v)?,
                "seed" => p.seed = num(v)?,
                "restore" => p.restore = v == "true",
                "complete" => p.complete = v == "true",
                "reverse" => p.reverse = v == "true",
                "prefix" => p.prefix = num(v)? as u32,
                "alignment" => p.alignment = num(v)? as u32,
                "server_timeout" => p.server_timeout = num(v)? as u32,
                "pause" => p.pause = Some(v.to_owned()),
                "which" => p.which = Some(parse_device_list(v)?),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// What one side saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Bytes moved per device.
    pub bytes: Vec<u64>,
    /// Data commands per device.
    pub commands: Vec<u64>,
    /// Byte mismatches found.
    pub mismatches: u64,
    /// Callbacks (server) or completions (client) with an error code.
    pub errors: u64,
}

/// Called at each named point; a peer process pauses there to be killed.
pub type PauseHook<'a> = &'a (dyn Fn(&str) + Sync);

fn hit(plan: &Plan, hook: PauseHook<'_>, point: &str) {
    if plan.pause.as_deref() == Some(point) {
        hook(point);
    }
}

struct Window {
    in_flight: Mutex<u32>,
    cv: Condvar,
}

impl Window {
    fn acquire(&self, depth: u32) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= depth {
            n = self.cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
    }

    fn release(&self) {
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.cv.notify_all();
    }

    fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .cv
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// The reference engine: configures the set, streams the plan's data through every
/// device with `depth` commands in flight, verifies every callback (and, in a restore,
/// every byte read), then Flush (and Complete), closes the devices and the set.
pub fn run_server(set: &ServerSet, plan: &Plan, hook: PauseHook<'_>) -> Result<Report, VdError> {
    let asked = set.get_configuration()?;
    let mut feats = if plan.restore {
        features::READ_MEDIA
    } else {
        features::WRITE_MEDIA
    };
    if plan.complete && asked.features & features::REQUEST_COMPLETE != 0 {
        feats |= features::COMPLETE_ENABLED;
    }
    set.begin_configuration(feats, 512, 0, plan.transfer, 10_000)?;
    set.request_buffers(plan.transfer, 0, plan.devices * plan.depth)?;
    set.end_configuration()?;
    let cfg = set.get_configuration()?;
    hit(plan, hook, "configured");
    let errors = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(AtomicU64::new(0));
    let bytes: Vec<Arc<AtomicU64>> = (0..plan.devices)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let commands: Vec<Arc<AtomicU64>> = (0..plan.devices)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut devices = Vec::new();
    for i in 0..plan.devices {
        devices.push(set.open_device(&device_name(&plan.set, i))?);
    }
    std::thread::scope(|s| -> Result<(), VdError> {
        let agent = s.spawn(|| set.execute_completion_agent());
        let mut workers = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            let i = i as u32;
            let (errors, mismatches) = (errors.clone(), mismatches.clone());
            let (bytes, commands) = (bytes[i as usize].clone(), commands[i as usize].clone());
            workers.push(s.spawn(move || -> Result<(), VdError> {
                let win = Arc::new(Window {
                    in_flight: Mutex::new(0),
                    cv: Condvar::new(),
                });
                let len = plan.device_bytes(i);
                let mut off = 0u64;
                let mut paused = false;
                while off < len {
                    win.acquire(plan.depth);
                    let mut buf = set.allocate_buffer(plan.transfer, 0)?;
                    let n = (len - off).min(u64::from(plan.transfer)) as u32;
                    if !plan.restore {
                        pattern::fill(plan.seed, i, off, &mut buf.as_mut_slice()[..n as usize]);
                    }
                    let (w, e, m, b, c) = (
                        win.clone(),
                        errors.clone(),
                        mismatches.clone(),
                        bytes.clone(),
                        commands.clone(),
                    );
                    let (restore, seed, at) = (plan.restore, plan.seed, off);
                    let cmd = if restore {
                        ServerCommand::read(buf, n)
                    } else {
                        ServerCommand::write(buf, n)
                    };
                    let sent = dev.send_command(cmd, move |done: Completion| {
                        if !done.is_success() || done.bytes_transferred != n {
                            e.fetch_add(1, Ordering::Relaxed);
                        } else if restore {
                            let data = done
                                .buffer
                                .as_ref()
                                .map(|b| &b.as_slice()[..n as usize])
                                .unwrap_or(&[]);
                            if pattern::mismatch(seed, i, at, data).is_some() {
                                m.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        b.fetch_add(u64::from(done.bytes_transferred), Ordering::Relaxed);
                        c.fetch_add(1, Ordering::Relaxed);
                        drop(done);
                        w.release();
                    });
                    sent?;
                    off += u64::from(n);
                    if i == 0 && !paused && off * 2 >= len {
                        paused = true;
                        hit(plan, hook, "midstream");
                    }
                }
                let finish = |code: CommandCode| -> Result<(), VdError> {
                    win.acquire(1);
                    let (w, e) = (win.clone(), errors.clone());
                    dev.send_command(ServerCommand::new(code), move |done| {
                        if !done.is_success() {
                            e.fetch_add(1, Ordering::Relaxed);
                        }
                        w.release();
                    })?;
                    win.drain(Duration::from_secs(60));
                    Ok(())
                };
                win.drain(Duration::from_secs(60));
                finish(CommandCode::FLUSH)?;
                if cfg.features & features::COMPLETE_ENABLED != 0 {
                    finish(CommandCode::COMPLETE)?;
                }
                if i == 0 {
                    hit(plan, hook, "close");
                }
                dev.close_device()
            }));
        }
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(VdError::new(
                        ErrorCode::Unexpected,
                        vdi::Reason::InvalidArgument("device thread panicked".into()),
                    ));
                }
            }
        }
        if first_err.is_some() {
            let _ = set.signal_abort();
        }
        let agent_result = agent.join().unwrap_or_else(|_| {
            Err(VdError::new(
                ErrorCode::Unexpected,
                vdi::Reason::InvalidArgument("agent panicked".into()),
            ))
        });
        match first_err {
            Some(e) => Err(e),
            None => agent_result,
        }
    })?;
    set.close()?;
    Ok(Report {
        bytes: bytes.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        commands: commands.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        mismatches: mismatches.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// The client's configuration for a plan.
pub fn client_config(plan: &Plan) -> vdi::VdConfig {
    let mut cfg = vdi::VdConfig::with_devices(plan.devices);
    if plan.complete {
        cfg.features |= features::REQUEST_COMPLETE;
    }
    cfg.prefix_zone_size = plan.prefix;
    cfg.alignment = plan.alignment;
    cfg.server_time_out = plan.server_timeout;
    cfg
}

/// The reference backup application for the devices `which` of an opened set: checks
/// every byte written (backup) or serves the pattern (restore), holding up to `depth`
/// commands and completing them in reverse order, until `VD_E_CLOSE`.
pub fn run_client(
    set: &ClientSet,
    plan: &Plan,
    which: &[u32],
    hook: PauseHook<'_>,
) -> Result<Report, VdError> {
    let cfg = set.get_configuration(Timeout::from_millis(30_000))?;
    let restore = cfg.features & features::READ_MEDIA != 0;
    hit(plan, hook, "configured");
    let results: Vec<Result<(u64, u64, u64, u64), VdError>> = std::thread::scope(|s| {
        let handles: Vec<_> = which
            .iter()
            .map(|&i| {
                s.spawn(move || -> Result<(u64, u64, u64, u64), VdError> {
                    let dev = set.open_device(&device_name(&plan.set, i))?;
                    let len = plan.device_bytes(i);
                    let (mut off, mut cmds, mut bad, mut errs) = (0u64, 0u64, 0u64, 0u64);
                    let mut held = Vec::new();
                    let mut paused = false;
                    let align = u64::from(cfg.alignment.max(1));
                    loop {
                        let t = if held.is_empty() {
                            Timeout::from_millis(30_000)
                        } else {
                            Timeout::POLL
                        };
                        match dev.get_command(t) {
                            Ok(mut cmd) => {
                                let code = cmd.code();
                                if code.carries_data() {
                                    if let Some(b) = cmd.buffer()
                                        && !(b.as_ptr() as u64).is_multiple_of(align)
                                    {
                                        bad += 1;
                                    }
                                    if plan.prefix > 0 {
                                        let p = cmd.prefix_mut().map(|p| {
                                            p.fill(0xA5);
                                            p.len()
                                        });
                                        if p != Some(plan.prefix as usize) {
                                            bad += 1;
                                        }
                                    }
                                }
                                if code == CommandCode::WRITE {
                                    let b = cmd.buffer().unwrap_or(&[]);
                                    if pattern::mismatch(plan.seed, i, off, b).is_some() {
                                        bad += 1;
                                    }
                                    let n = b.len() as u32;
                                    off += u64::from(n);
                                    cmds += 1;
                                    held.push((cmd, completion::ERROR_SUCCESS, n));
                                } else if code == CommandCode::READ {
                                    let want = cmd.size() as u64;
                                    let n = want.min(len.saturating_sub(off));
                                    if let Some(b) = cmd.buffer_mut() {
                                        pattern::fill(plan.seed, i, off, &mut b[..n as usize]);
                                    }
                                    off += n;
                                    cmds += 1;
                                    let c = if n < want {
                                        completion::ERROR_HANDLE_EOF
                                    } else {
                                        completion::ERROR_SUCCESS
                                    };
                                    held.push((cmd, c, n as u32));
                                } else if matches!(
                                    code,
                                    CommandCode::FLUSH
                                        | CommandCode::CLEAR_ERROR
                                        | CommandCode::COMPLETE
                                ) {
                                    held.push((cmd, completion::ERROR_SUCCESS, 0));
                                } else {
                                    held.push((cmd, completion::ERROR_NOT_SUPPORTED, 0));
                                }
                                if !paused && off * 2 >= len && len > 0 {
                                    paused = true;
                                    hit(plan, hook, "midstream");
                                }
                                if held.len() >= plan.depth.max(1) as usize {
                                    errs += complete_all(&mut held, plan.reverse)?;
                                }
                            }
                            Err(e) if e.code() == ErrorCode::Timeout && !held.is_empty() => {
                                errs += complete_all(&mut held, plan.reverse)?;
                            }
                            Err(e) if e.code() == ErrorCode::Close => {
                                errs += complete_all(&mut held, plan.reverse)?;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    let _ = restore;
                    Ok((off, cmds, bad, errs))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(VdError::new(
                        ErrorCode::Unexpected,
                        vdi::Reason::InvalidArgument("device thread panicked".into()),
                    ))
                })
            })
            .collect()
    });
    let mut r = Report::default();
    for x in results {
        let (b, c, m, e) = x?;
        r.bytes.push(b);
        r.commands.push(c);
        r.mismatches += m;
        r.errors += e;
    }
    Ok(r)
}

fn complete_all(
    held: &mut Vec<(vdi::Command<'_>, u32, u32)>,
    reverse: bool,
) -> Result<u64, VdError> {
    let mut errs = 0;
    if reverse {
        held.reverse();
    }
    for (cmd, code, n) in held.drain(..) {
        if code != completion::ERROR_SUCCESS {
            errs += 1;
        }
        cmd.complete(code, n, 0)?;
    }
    Ok(errs)
}

/// A peer process (`vdi-peer`), killed and reaped on drop.
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line the peer printed so far.
    pub seen: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Parses a device list such as `1,2` (the value of a `which=` argument).
pub fn parse_device_list(v: &str) -> Result<Vec<u32>, String> {
    v.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<u32>().map_err(|e| format!("which: {x}: {e}")))
        .collect()
}

/// The `which=1,2` argument for device list `w`.
pub fn device_list_arg(w: &[u32]) -> String {
    let w: Vec<String> = w.iter().map(|d| d.to_string()).collect();
    format!("which={}", w.join(","))
}

/// A copy of an executable that user `nobody` can run, removed on drop: the build's own
/// binaries may sit under a directory only root can enter (a checkout in root's home, a
/// CI work directory made with mode 0700).
pub struct NobodyExe {
    dir: std::path::PathBuf,
    /// The copy's path.
    pub exe: String,
}

impl Drop for NobodyExe {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies `exe` where `nobody` can run it; `None` (print SKIPPED) unless this process is
/// root. Another thread forking while the copy is written may briefly hold its write
/// descriptor, so [`Peer::spawn`] retries an exec that fails with ETXTBSY.
pub fn exe_for_nobody(exe: &str, tag: &str) -> Option<NobodyExe> {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let dir = std::path::PathBuf::from(format!(
        "/tmp/vdi-nobody-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("a directory under /tmp for nobody's copy");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let name = std::path::Path::new(exe)
        .file_name()
        .expect("an executable's name");
    let copy = dir.join(name);
    std::fs::copy(exe, &copy).expect("copying the executable for nobody");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Some(NobodyExe {
        exe: copy.to_string_lossy().into_owned(),
        dir,
    })
}

/// A set name unique to this test process and call.
pub fn unique_name(tag: &str) -> String {
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Peer {
    /// Starts `exe` with `args`; `uid` runs it as another user.
    pub fn spawn(exe: &str, args: &[String], uid: Option<u32>) -> Peer {
        let mut cmd = Process::new(exe);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(u) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(u).gid(u);
        }
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                // ETXTBSY: a fork elsewhere still holds a just-written copy (see exe_for_nobody).
                Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot start {exe}: {e}"),
            }
        };
        let out: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; panics after `timeout`.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "peer did not print {prefix:?} in time; it printed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The next line starting with `prefix` printed within `timeout`, if any (no panic).
    pub fn try_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.lines.recv_timeout(left).ok()?;
            self.seen.push(l.clone());
            if l.starts_with(prefix) {
                return Some(l);
            }
        }
    }

    /// Writes a line to the peer's stdin.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").expect("write to peer");
        stdin.flush().expect("flush to peer");
    }

    /// SIGKILLs the peer and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the peer to exit (panics after `timeout`) and returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                // Collect the rest of its output.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(l);
                }
                return st.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("peer did not exit in time; it printed {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Whether any abstract socket of set `name` is still listed by the kernel.
pub fn socket_exists(name: &str) -> bool {
    let needle = format!("@vdi/1/{name}");
    std::fs::read_to_string("/proc/net/unix")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some(needle.as_str()))
        })
        .unwrap_or(false)
}

/// Entries in `/dev/shm` (to show nothing is left behind).
pub fn dev_shm_entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Memfds this process still holds (`/proc/self/fd` links to `/memfd:vdi-...`).
pub fn open_vdi_memfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("memfd:vdi-"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{Plan, pattern};

    #[test]
    fn plan_arguments_round_trip_and_a_bad_device_list_is_refused() {
        let mut p = Plan::new("s", 3, 1 << 20);
        p.which = Some(vec![0, 2]);
        p.server_timeout = 2000;
        let q = Plan::from_args(&p.to_args()).unwrap();
        assert_eq!(q.which, Some(vec![0, 2]));
        assert_eq!((q.devices, q.total, q.server_timeout), (3, 1 << 20, 2000));
        let e = Plan::from_args(&["which=1,x".to_owned()]).unwrap_err();
        assert!(e.contains("which: x"), "{e}");
    }

    #[test]
    fn pattern_is_position_addressed_and_mismatch_finds_a_flip() {
        let mut whole = vec![0u8; 1000];
        pattern::fill(1, 2, 5, &mut whole);
        let mut part = vec![0u8; 100];
        pattern::fill(1, 2, 5 + 333, &mut part);
        assert_eq!(&whole[333..433], &part[..]);
        assert_eq!(pattern::mismatch(1, 2, 5, &whole), None);
        whole[777] ^= 1;
        assert_eq!(pattern::mismatch(1, 2, 5, &whole), Some(777));
        assert!(
            pattern::mismatch(1, 3, 5, &part).is_some(),
            "devices differ"
        );
    }
}
