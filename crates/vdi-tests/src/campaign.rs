//! The crash campaign: runs backups and restores through the library (three `vdi-peer`
//! processes: engine, primary client, secondary client) and through the `vdi` tool (the
//! backup application and the engine it starts), SIGKILLs one process at a seeded random
//! point, and checks what the survivors did:
//!
//! - every survivor exits (else **hang**; it is then killed);
//! - a survivor that was blocked in the operation reports `VD_E_ABORT` (else
//!   **wrong-result**), within one second of the kill (else **slow-abort**; the survivors
//!   print CLOCK_MONOTONIC times, the campaign reads the same clock when it kills);
//! - every callback of the surviving engine ran exactly once, the outstanding ones with
//!   `ERROR_OPERATION_ABORTED` (else **wrong-callbacks**);
//! - nothing is left: the set's abstract socket, `/dev/shm` entries, the survivor's
//!   descriptors and memfds, the tool's scratch directory in the run's `TMPDIR`, a
//!   restore's partial file (else **leak**);
//! - no backup that did not complete claims completion, and no restore target that is
//!   not the whole source is in place (else **claimed-complete**);
//! - no survivor panics or dies of a signal (else **unexpected-exit**).
//!
//! `vdi-crash --help` (the binary) lists the options; `tests/crash_campaign.rs` runs a
//! short campaign in the test suite.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::campaign_peer::{CrashPlan, mono_ns};

#[path = "campaign_tool.rs"]
mod tool;
use crate::{dev_shm_entries, socket_exists};
pub use tool::ToolEnv;

/// Campaign options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs.
    pub runs: u32,
    /// Seed of the scenario generator.
    pub seed: u64,
    /// The `vdi-peer` binary.
    pub peer: PathBuf,
    /// The `vdi` binary (tool scenarios); None skips them.
    pub vdi: Option<PathBuf>,
    /// Share of runs that use the tool (0..=100), when `vdi` is given.
    pub tool_percent: u32,
    /// Bytes per device of a library run.
    pub lib_bytes: u64,
    /// Size of the tool scenarios' source file.
    pub tool_bytes: u64,
    /// Print the summary as JSON too.
    pub json: bool,
    /// Go on after a failure (otherwise stop at the first).
    pub keep_going: bool,
    /// Print one line per run.
    pub verbose: bool,
    /// Where the tool scenarios work (default: a new directory in the temp directory).
    pub workdir: Option<PathBuf>,
    /// A survivor that has not exited this long after the kill is a hang.
    pub hang_after: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            runs: 100,
            seed: 1,
            peer: PathBuf::from("vdi-peer"),
            vdi: None,
            tool_percent: 25,
            lib_bytes: 16 << 20,
            tool_bytes: 128 << 20,
            json: false,
            keep_going: false,
            verbose: false,
            workdir: None,
            hang_after: Duration::from_secs(10),
        }
    }
}

/// The usage text of `vdi-crash`.
pub const USAGE: &str = "\
vdi-crash: SIGKILL the engine, the client or a secondary client of VDI backups and restores
at random points and check that the survivors abort within one second, every outstanding
callback runs once with ERROR_OPERATION_ABORTED, nothing hangs, nothing is left behind and
no incomplete backup claims completion.

usage: vdi-crash [--runs N] [--seed S] [--vdi PATH] [--peer PATH] [--tool-percent P]
                 [--lib-bytes B] [--tool-bytes B] [--workdir DIR] [--json] [--keep-going]
                 [--verbose]

  --runs N          runs (default 100)
  --seed S          scenario seed (default: random, printed)
  --vdi PATH        the vdi tool binary: adds tool scenarios (vdi backup / restore)
  --peer PATH       the vdi-peer binary (default: beside this program)
  --tool-percent P  share of tool runs when --vdi is given (default 25)
  --lib-bytes B     bytes per device in a library run (default 16777216)
  --tool-bytes B    size of the tool runs' source file (default 134217728)
  --workdir DIR     where tool runs keep their files (default: a new temp directory)
  --json            also print the summary as one JSON object (last line)
  --keep-going      do not stop at the first failure
  --verbose         one line per run

example: cargo build --release -p vdi-cli -p vdi-tests &&
         target/release/vdi-crash --runs 600 --vdi target/release/vdi --keep-going
";

/// Parses the command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        seed: fastrand::u64(..),
        ..Options::default()
    };
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        o.peer = dir.join("vdi-peer");
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| v.parse::<u64>().map_err(|e| format!("{name} {v}: {e}"));
        match a.as_str() {
            "--runs" => o.runs = num(a, val(a)?)? as u32,
            "--seed" => o.seed = num(a, val(a)?)?,
            "--vdi" => o.vdi = Some(PathBuf::from(val(a)?)),
            "--peer" => o.peer = PathBuf::from(val(a)?),
            "--tool-percent" => o.tool_percent = num(a, val(a)?)?.min(100) as u32,
            "--lib-bytes" => o.lib_bytes = num(a, val(a)?)?.max(1 << 20),
            "--tool-bytes" => o.tool_bytes = num(a, val(a)?)?.max(1 << 20),
            "--workdir" => o.workdir = Some(PathBuf::from(val(a)?)),
            "--json" => o.json = true,
            "--keep-going" => o.keep_going = true,
            "--verbose" | "-v" => o.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// What went wrong in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// A process did not exit in time.
    Hang,
    /// Something was left behind (socket, shm, descriptor, memfd, scratch, partial file).
    Leak,
    /// The abort took more than one second to reach a survivor.
    SlowAbort,
    /// A callback ran twice, never, or with an unexpected code.
    WrongCallbacks,
    /// A survivor's calls returned something else than the abort (or success).
    WrongResult,
    /// An incomplete backup or restore claims completion.
    ClaimedComplete,
    /// A survivor panicked, died of a signal, or did not report.
    UnexpectedExit,
    /// The run could not be set up (a process did not start or print its markers).
    Setup,
}

impl Failure {
    /// The category's name.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Hang => "hang",
            Failure::Leak => "leak",
            Failure::SlowAbort => "slow-abort",
            Failure::WrongCallbacks => "wrong-callbacks",
            Failure::WrongResult => "wrong-result",
            Failure::ClaimedComplete => "claimed-complete",
            Failure::UnexpectedExit => "unexpected-exit",
            Failure::Setup => "setup",
        }
    }
}

/// One run's result.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Run number.
    pub index: u32,
    /// `lib` or `tool`.
    pub kind: &'static str,
    /// Who was killed: `server`, `client`, `secondary` (lib); `engine`, `client` (tool).
    pub victim: &'static str,
    /// Where: `config`, `stream`, `clearerror`, `close` (lib); `t<ms>` buckets (tool).
    pub point: String,
    /// `backup` or `restore`.
    pub op: &'static str,
    /// Devices.
    pub devices: u32,
    /// The kill came after everything had ended (nothing to check but leftovers).
    pub missed: bool,
    /// Survivors' "abort noticed" latencies (ms after the kill).
    pub noticed_ms: Vec<f64>,
    /// Survivors' "operation returned" latencies (ms after the kill).
    pub done_ms: Vec<f64>,
    /// Failures, with what was seen.
    pub failures: Vec<(Failure, String)>,
    /// A one-line description of the scenario.
    pub scenario: String,
}

impl RunResult {
    fn new(index: u32, kind: &'static str) -> RunResult {
        RunResult {
            index,
            kind,
            victim: "",
            point: String::new(),
            op: "backup",
            devices: 1,
            missed: false,
            noticed_ms: Vec::new(),
            done_ms: Vec::new(),
            failures: Vec::new(),
            scenario: String::new(),
        }
    }

    fn fail(&mut self, f: Failure, what: impl Into<String>) {
        self.failures.push((f, what.into()));
    }
}

/// A child process whose stdout lines (with the CLOCK_MONOTONIC time they were read)
/// go to a shared channel, and whose stderr is collected.
struct Proc {
    name: &'static str,
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    stdout_reader: Option<std::thread::JoinHandle<()>>,
    exit: Option<std::process::ExitStatus>,
    exited_at: u64,
    lines: Vec<String>,
}

type Lines = mpsc::Sender<(usize, String)>;

impl Proc {
    fn spawn(name: &'static str, idx: usize, mut cmd: Process, tx: &Lines) -> Result<Proc, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let mut stdout_reader = None;
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            stdout_reader = Some(std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send((idx, l)).is_err() {
                        break;
                    }
                }
            }));
        }
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr_reader = None;
        if let Some(mut err) = child.stderr.take() {
            let s = stderr.clone();
            stderr_reader = Some(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = s.lock()
                        && s.len() < 64 << 10
                    {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }));
        }
        Ok(Proc {
            name,
            child,
            stderr,
            stderr_reader,
            stdout_reader,
            exit: None,
            exited_at: 0,
            lines: Vec::new(),
        })
    }

    /// Once it has exited: waits (a bounded while) until every line it printed has
    /// been read, so that a report printed just before the exit is not lost.
    fn drain_stdout(&mut self) {
        if self.exit.is_some()
            && let Some(h) = self.stdout_reader.take()
        {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }

    /// Writes a line to its standard input (ignoring a child that is gone).
    fn say(&mut self, line: &str) {
        if let Some(i) = self.child.stdin.as_mut() {
            let _ = writeln!(i, "{line}");
            let _ = i.flush();
        }
    }

    fn poll(&mut self) -> bool {
        if self.exit.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.exit = Some(st);
            self.exited_at = mono_ns();
        }
        self.exit.is_some()
    }

    fn kill(&mut self) {
        if !self.poll() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.exit = Some(st);
                self.exited_at = mono_ns();
            }
        }
    }

    /// Its standard error, all of it once it has exited (the reader gets a moment to
    /// reach the end of the pipe).
    fn stderr_text(&mut self) -> String {
        if self.exit.is_some()
            && let Some(h) = self.stderr_reader.take()
        {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn status_text(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.exit {
            None => "running".into(),
            Some(st) => match (st.code(), st.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => "?".into(),
            },
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ms(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

fn vdi_shm() -> Vec<String> {
    dev_shm_entries()
        .into_iter()
        .filter(|e| e.to_ascii_lowercase().contains("vdi"))
        .collect()
}

fn shm_leak(r: &mut RunResult, before: &[String]) {
    let now = vdi_shm();
    let new: Vec<&String> = now.iter().filter(|e| !before.contains(e)).collect();
    if !new.is_empty() {
        r.fail(Failure::Leak, format!("/dev/shm gained {new:?}"));
    }
}

fn socket_leak(r: &mut RunResult, set: &str) {
    // The kernel drops an abstract socket when its last descriptor closes, which happens
    // before the process can be reaped; allow a short moment for slow /proc updates.
    let deadline = Instant::now() + Duration::from_millis(200);
    while socket_exists(set) {
        if Instant::now() >= deadline {
            r.fail(
                Failure::Leak,
                format!("the set's socket @vdi/1/{set} is still listed"),
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Who is killed in a library run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Server,
    Client,
    Secondary,
}

const POINTS: [&str; 4] = ["config", "stream", "clearerror", "close"];

/// The process indices of a library run.
const CLIENT: usize = 0;
const SERVER: usize = 1;
const SECONDARY: usize = 2;

/// A parsed `REPORT` line.
#[derive(Debug, Default)]
struct Report {
    f: BTreeMap<String, String>,
}

impl Report {
    fn parse(line: &str) -> Option<Report> {
        let rest = line.strip_prefix("REPORT ")?;
        let f = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Report { f })
    }

    fn s(&self, k: &str) -> &str {
        self.f.get(k).map_or("", String::as_str)
    }

    fn n(&self, k: &str) -> u64 {
        self.s(k).parse().unwrap_or(0)
    }
}

fn lib_run(o: &Options, rng: &mut fastrand::Rng, index: u32) -> RunResult {
    let mut r = RunResult::new(index, "lib");
    let victim = match rng.u32(0..3) {
        0 => Victim::Server,
        1 => Victim::Client,
        _ => Victim::Secondary,
    };
    let restore = rng.bool();
    let devices = if victim == Victim::Secondary {
        rng.u32(2..=4)
    } else {
        rng.u32(1..=4)
    };
    let point = POINTS[rng.usize(0..POINTS.len())];
    let variant = rng.u32(0..2);
    let transfer = [64u32 << 10, 128 << 10, 256 << 10][rng.usize(0..3)];
    let per_device = o.lib_bytes;
    let depth = rng.u32(1..=4);
    let hold = rng.u32(0..4) != 0;
    let delay_ms = if rng.bool() { 0 } else { rng.u64(1..=25) };
    let with_secondary = devices >= 2 && (victim == Victim::Secondary || rng.u32(0..3) == 0);
    let which: Vec<u32> = if with_secondary {
        (rng.u32(1..devices)..devices).collect()
    } else {
        Vec::new()
    };
    let cmds = per_device.div_ceil(u64::from(transfer));
    let fail_at = (point == "clearerror").then(|| rng.u64(0..cmds.clamp(1, 6)));
    let at = rng.u64(0..per_device);
    let set = format!("crash-{}-{index}", std::process::id());
    // The process that prints the marker: the victim, except for ClearError, which
    // happens between the engine and the primary (device 0).
    let marker_proc = match (victim, point) {
        (Victim::Secondary, "clearerror") => SERVER,
        (Victim::Server, _) => SERVER,
        (Victim::Client, _) => CLIENT,
        (Victim::Secondary, _) => SECONDARY,
    };
    let victim_proc = match victim {
        Victim::Server => SERVER,
        Victim::Client => CLIENT,
        Victim::Secondary => SECONDARY,
    };
    let hold = hold && marker_proc == victim_proc;
    // Without a hold, a slower medium makes the stream last long enough to be killed in.
    let pace_us = if hold { 0 } else { rng.u64(20..=300) };
    r.victim = match victim {
        Victim::Server => "server",
        Victim::Client => "client",
        Victim::Secondary => "secondary",
    };
    r.point = point.to_owned();
    r.op = if restore { "restore" } else { "backup" };
    r.devices = devices;
    r.scenario = format!(
        "lib {} kill {} at {point}/{variant} devices={devices} secondary={which:?} transfer={transfer} depth={depth} at={at} hold={hold} pace={pace_us}us delay={delay_ms}ms fail_at={fail_at:?}",
        r.op, r.victim
    );
    let plan = |p: usize| CrashPlan {
        set: set.clone(),
        devices,
        transfer,
        depth,
        per_device,
        restore,
        which: which.clone(),
        marks: p == marker_proc,
        point: point.to_owned(),
        variant,
        at,
        hold: hold && p == marker_proc,
        fail_at,
        pace_us,
    };
    let cmd = |mode: &str, p: usize| {
        let mut c = Process::new(&o.peer);
        c.arg(mode).args(plan(p).to_args());
        c
    };
    let shm_before = vdi_shm();
    let (tx, rx) = mpsc::channel();
    let mut procs: [Option<Proc>; 3] = [None, None, None];
    let names = ["client", "server", "secondary"];
    let spawn = |procs: &mut [Option<Proc>; 3], p: usize, mode: &str| -> Result<(), String> {
        procs[p] = Some(Proc::spawn(names[p], p, cmd(mode, p), &tx)?);
        Ok(())
    };
    if let Err(e) = spawn(&mut procs, CLIENT, "crash-client") {
        r.fail(Failure::Setup, e);
        return r;
    }
    let marker = format!("PHASE {point} ");
    let mut server_started = false;
    let mut kill_at: Option<Instant> = None;
    let mut killed_t: Option<u64> = None;
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    let mut hang_deadline: Option<Instant> = None;
    let mut go_sent = false;
    loop {
        // Lines.
        while let Ok((p, l)) = rx.recv_timeout(Duration::from_millis(1)) {
            if l.starts_with("PHASE created") && p == CLIENT && !server_started {
                server_started = true;
                if let Err(e) = spawn(&mut procs, SERVER, "crash-server") {
                    r.fail(Failure::Setup, e);
                    return r;
                }
            }
            if l.starts_with("PHASE configured")
                && p == CLIENT
                && with_secondary
                && procs[SECONDARY].is_none()
                && killed_t.is_none()
                && let Err(e) = spawn(&mut procs, SECONDARY, "crash-secondary")
            {
                r.fail(Failure::Setup, e);
                return r;
            }
            if p == marker_proc && l.starts_with(&marker) && kill_at.is_none() {
                kill_at = Some(Instant::now() + Duration::from_millis(delay_ms));
            }
            if let Some(pr) = procs[p].as_mut() {
                pr.lines.push(l);
            }
        }
        for pr in procs.iter_mut().flatten() {
            pr.poll();
        }
        if with_secondary && !go_sent {
            let gone = match &procs[SECONDARY] {
                Some(p) => p.exit.is_some(),
                None => killed_t.is_some(),
            };
            if gone && let Some(c) = procs[CLIENT].as_mut() {
                c.say("go");
                go_sent = true;
            }
        }
        let now = Instant::now();
        if killed_t.is_none() {
            let victim_ready = procs[victim_proc].is_some();
            if kill_at.is_some_and(|k| now >= k) && victim_ready {
                let t = mono_ns();
                if let Some(v) = procs[victim_proc].as_mut() {
                    if v.poll() {
                        r.missed = true;
                    }
                    v.kill();
                }
                killed_t = Some(t);
                hang_deadline = Some(Instant::now() + o.hang_after);
            } else if procs.iter().flatten().all(|p| p.exit.is_some())
                && (server_started || procs[CLIENT].as_ref().is_some_and(|p| p.exit.is_some()))
            {
                // Everything ended before the kill (the victim's exit included).
                r.missed = true;
                break;
            } else if now >= setup_deadline {
                let seen: Vec<String> = procs
                    .iter()
                    .flatten()
                    .map(|p| format!("{} {:?} {}", p.name, p.lines, p.status_text()))
                    .collect();
                r.fail(
                    Failure::Hang,
                    format!("no kill after 60 s (marker {marker:?} never came): {seen:?}"),
                );
                break;
            }
        } else if procs.iter().flatten().all(|p| p.exit.is_some()) {
            break;
        } else if hang_deadline.is_some_and(|d| now >= d) {
            for pr in procs.iter_mut().flatten() {
                if !pr.poll() {
                    r.fail(
                        Failure::Hang,
                        format!(
                            "{} still running {:?} after the kill; it printed {:?}",
                            pr.name, o.hang_after, pr.lines
                        ),
                    );
                    pr.kill();
                }
            }
            break;
        }
    }
    for pr in procs.iter_mut().flatten() {
        pr.kill();
    }
    // Late lines: every reader reaches the end of its pipe, then the channel is drained.
    for pr in procs.iter_mut().flatten() {
        pr.drain_stdout();
    }
    while let Ok((p, l)) = rx.try_recv() {
        if let Some(pr) = procs[p].as_mut() {
            pr.lines.push(l);
        }
    }
    if r.failures.iter().any(|f| f.0 == Failure::Hang) && killed_t.is_none() {
        return r;
    }
    let t_kill = killed_t.unwrap_or(0);
    for (p, pr) in procs.iter_mut().enumerate() {
        let Some(pr) = pr else { continue };
        if p == victim_proc && killed_t.is_some() {
            continue;
        }
        check_survivor(
            &mut r,
            pr,
            p,
            victim_proc,
            point,
            variant,
            hold,
            t_kill,
            killed_t.is_some(),
        );
    }
    socket_leak(&mut r, &set);
    shm_leak(&mut r, &shm_before);
    r
}

#[allow(clippy::too_many_arguments)]
fn check_survivor(
    r: &mut RunResult,
    pr: &mut Proc,
    p: usize,
    victim_proc: usize,
    point: &str,
    variant: u32,
    hold: bool,
    t_kill: u64,
    killed: bool,
) {
    use std::os::unix::process::ExitStatusExt;
    let name = pr.name;
    let stderr = pr.stderr_text();
    let Some(st) = pr.exit else { return };
    if r.failures
        .iter()
        .any(|f| f.0 == Failure::Hang && f.1.starts_with(name))
    {
        return;
    }
    if let Some(sig) = st.signal() {
        r.fail(
            Failure::UnexpectedExit,
            format!("{name} died of signal {sig}; stderr: {}", stderr),
        );
        return;
    }
    let code = st.code().unwrap_or(-1);
    let report = pr.lines.iter().rev().find_map(|l| Report::parse(l));
    let Some(rep) = report else {
        if code == 3 && p == SECONDARY {
            // The secondary could not attach: the set was already gone or aborted.
            return;
        }
        r.fail(
            Failure::UnexpectedExit,
            format!(
                "{name} ended with {} without a report; it printed {:?}; stderr: {}",
                pr.status_text(),
                pr.lines,
                stderr
            ),
        );
        return;
    };
    if !matches!(code, 0 | 2) {
        r.fail(
            Failure::UnexpectedExit,
            format!("{name} exited {code}: {:?}; stderr: {}", pr.lines, stderr),
        );
    }
    let result = rep.s("result");
    // Who cannot have finished: the engine, when a client froze at its marker with a
    // device unfinished; the primary (which serves device 0, where the engine's markers
    // are), when the engine froze. A secondary may have finished its devices already.
    let must_abort = killed
        && !r.missed
        && hold
        && point != "close"
        && ((victim_proc == SERVER && p == CLIENT) || (victim_proc != SERVER && p == SERVER));
    match result {
        "VD_E_ABORT" => {
            if !killed {
                r.fail(
                    Failure::WrongResult,
                    format!("{name} aborted without a kill: {:?}", pr.lines),
                );
            }
        }
        "OK" if !must_abort => {}
        other => r.fail(
            Failure::WrongResult,
            format!("{name} returned {other}, not VD_E_ABORT: {:?}", pr.lines),
        ),
    }
    if result == "VD_E_ABORT" && killed {
        let first = rep.n("t_first");
        let done = rep.n("t_done");
        if first != 0 && first + 2_000_000 < t_kill {
            r.fail(
                Failure::WrongResult,
                format!(
                    "{name} saw the abort {:.1} ms before the kill",
                    ms(first, t_kill)
                ),
            );
        }
        if first != 0 {
            r.noticed_ms.push(ms(t_kill, first));
        }
        let d = ms(t_kill, done);
        r.done_ms.push(d);
        if d > 1000.0 {
            r.fail(
                Failure::SlowAbort,
                format!("{name} returned from the operation {d:.0} ms after the kill"),
            );
        }
    }
    if p == SERVER {
        let sent = rep.n("sent");
        let total = rep.n("cb_total");
        let bad = ["cb_twice", "cb_missing", "cb_bad", "outstanding"]
            .iter()
            .any(|k| rep.n(k) != 0);
        if bad || total != sent {
            r.fail(Failure::WrongCallbacks, format!("server: {:?}", rep.f));
        }
        // A client frozen at its stream marker holds the Write/Read it just fetched; at
        // ClearError/0 it holds the ClearError: the engine had a command outstanding,
        // whose callback must report the abort.
        let held = killed
            && !r.missed
            && hold
            && victim_proc != SERVER
            && (point == "stream" || (point == "clearerror" && variant == 0));
        if held && result == "VD_E_ABORT" && rep.n("cb_aborted") == 0 {
            r.fail(
                Failure::WrongCallbacks,
                format!(
                    "the client died holding a command, yet no callback reported ERROR_OPERATION_ABORTED: {:?}",
                    rep.f
                ),
            );
        }
        if result == "OK" && rep.n("cb_aborted") != 0 {
            r.fail(
                Failure::WrongCallbacks,
                format!("server succeeded with aborted callbacks: {:?}", rep.f),
            );
        }
    }
    if rep.n("mismatches") != 0 {
        r.fail(
            Failure::WrongResult,
            format!("{name}: stamp mismatches {:?}", rep.f),
        );
    }
    if rep.n("fds_after") != rep.n("fds_before") || rep.n("memfds") != 0 {
        r.fail(
            Failure::Leak,
            format!(
                "{name} holds {} descriptors after Close (had {} before), {} vdi memfds",
                rep.n("fds_after"),
                rep.n("fds_before"),
                rep.n("memfds")
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The campaign.

/// The whole campaign's results.
#[derive(Debug, Default)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Why the tool scenarios were skipped, if they were.
    pub tool_skipped: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

impl Summary {
    /// Runs with at least one failure.
    pub fn failed(&self) -> Vec<&RunResult> {
        self.runs
            .iter()
            .filter(|r| !r.failures.is_empty())
            .collect()
    }

    fn by_category(&self) -> BTreeMap<&'static str, u32> {
        let mut m = BTreeMap::new();
        for r in &self.runs {
            let mut cats: Vec<Failure> = r.failures.iter().map(|f| f.0).collect();
            cats.sort();
            cats.dedup();
            for c in cats {
                *m.entry(c.name()).or_insert(0) += 1;
            }
        }
        m
    }

    fn by_scenario(&self) -> BTreeMap<String, (u32, u32, u32)> {
        let mut m: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
        for r in &self.runs {
            let k = format!("{:<4} {:<9} {:<8} {:<10}", r.kind, r.victim, r.op, r.point);
            let e = m.entry(k).or_default();
            e.0 += 1;
            if !r.failures.is_empty() {
                e.1 += 1;
            }
            if r.missed {
                e.2 += 1;
            }
        }
        m
    }

    fn latencies(&self, done: bool, kind: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.kind == kind)
            .flat_map(|r| {
                if done {
                    r.done_ms.clone()
                } else {
                    r.noticed_ms.clone()
                }
            })
            .collect()
    }

    /// The summary as a table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "crash campaign: seed {}, {} runs in {:.1} s, {} failed, {} missed (kill after the end)\n",
            self.seed,
            self.runs.len(),
            self.seconds,
            self.failed().len(),
            self.runs.iter().filter(|r| r.missed).count()
        ));
        if let Some(why) = &self.tool_skipped {
            s.push_str(&format!("tool scenarios SKIPPED: {why}\n"));
        }
        s.push_str("kind victim    op       point        runs  failed  missed\n");
        for (k, (n, f, m)) in self.by_scenario() {
            s.push_str(&format!("{k}  {n:>5}  {f:>6}  {m:>6}\n"));
        }
        let cats = self.by_category();
        s.push_str("failures by category:");
        if cats.is_empty() {
            s.push_str(" none");
        }
        for (c, n) in &cats {
            s.push_str(&format!(" {c}={n}"));
        }
        s.push('\n');
        for (what, v) in [
            ("library: abort noticed", self.latencies(false, "lib")),
            ("library: operation returned", self.latencies(true, "lib")),
            ("tool: survivor exited", self.latencies(true, "tool")),
        ] {
            s.push_str(&format!(
                "{what} after SIGKILL (ms, {} samples): median {:.1}, p99 {:.1}, max {:.1}\n",
                v.len(),
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.iter().copied().fold(0.0, f64::max)
            ));
        }
        for r in self.failed() {
            s.push_str(&format!("FAILED run {}: {}\n", r.index, r.scenario));
            for (c, what) in &r.failures {
                s.push_str(&format!("  {}: {what}\n", c.name()));
            }
        }
        s
    }

    /// The summary as one JSON object.
    pub fn json(&self) -> String {
        let esc = |s: &str| {
            let mut o = String::new();
            for c in s.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                    c => o.push(c),
                }
            }
            o
        };
        let lat = |v: Vec<f64>| {
            format!(
                "{{\"samples\":{},\"median_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
                v.len(),
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.iter().copied().fold(0.0, f64::max)
            )
        };
        let scen: Vec<String> = self
            .by_scenario()
            .iter()
            .map(|(k, (n, f, m))| {
                format!(
                    "{{\"scenario\":\"{}\",\"runs\":{n},\"failed\":{f},\"missed\":{m}}}",
                    esc(&k.split_whitespace().collect::<Vec<_>>().join(" "))
                )
            })
            .collect();
        let cats: Vec<String> = self
            .by_category()
            .iter()
            .map(|(c, n)| format!("\"{c}\":{n}"))
            .collect();
        let fails: Vec<String> = self
            .failed()
            .iter()
            .map(|r| {
                let f: Vec<String> = r
                    .failures
                    .iter()
                    .map(|(c, w)| {
                        format!("{{\"category\":\"{}\",\"what\":\"{}\"}}", c.name(), esc(w))
                    })
                    .collect();
                format!(
                    "{{\"run\":{},\"scenario\":\"{}\",\"failures\":[{}]}}",
                    r.index,
                    esc(&r.scenario),
                    f.join(",")
                )
            })
            .collect();
        format!(
            "{{\"seed\":{},\"runs\":{},\"failed\":{},\"missed\":{},\"seconds\":{:.1},\"tool_skipped\":{},\"by_scenario\":[{}],\"failures_by_category\":{{{}}},\"lib_abort_noticed\":{},\"lib_operation_returned\":{},\"tool_survivor_exited\":{},\"failed_runs\":[{}]}}",
            self.seed,
            self.runs.len(),
            self.failed().len(),
            self.runs.iter().filter(|r| r.missed).count(),
            self.seconds,
            self.tool_skipped
                .as_ref()
                .map_or("null".into(), |w| format!("\"{}\"", esc(w))),
            scen.join(","),
            cats.join(","),
            lat(self.latencies(false, "lib")),
            lat(self.latencies(true, "lib")),
            lat(self.latencies(true, "tool")),
            fails.join(",")
        )
    }
}

/// Runs the campaign; `progress` gets one line per run (and setup notes).
pub fn run(o: &Options, progress: &mut dyn FnMut(&str)) -> Summary {
    let started = Instant::now();
    let mut sum = Summary {
        seed: o.seed,
        ..Summary::default()
    };
    let mut rng = fastrand::Rng::with_seed(o.seed);
    let env = match &o.vdi {
        None => {
            sum.tool_skipped = Some("no --vdi PATH given".into());
            None
        }
        Some(v) if !v.exists() => {
            sum.tool_skipped = Some(format!("{} does not exist", v.display()));
            None
        }
        Some(v) => match ToolEnv::setup(o, v) {
            Ok(e) => {
                progress(&e.describe());
                Some(e)
            }
            Err(e) => {
                sum.tool_skipped = Some(format!("setting up the tool runs failed: {e}"));
                None
            }
        },
    };
    if let Some(w) = &sum.tool_skipped {
        progress(&format!("tool scenarios SKIPPED: {w}"));
    }
    for i in 0..o.runs {
        let tool = env.is_some() && rng.u32(0..100) < o.tool_percent;
        let r = match (&env, tool) {
            (Some(e), true) => tool::tool_run(o, e, &mut rng, i),
            _ => lib_run(o, &mut rng, i),
        };
        let verdict = if !r.failures.is_empty() {
            "FAILED"
        } else if r.missed {
            "missed"
        } else {
            "ok"
        };
        if o.verbose || !r.failures.is_empty() {
            let mut line = format!("run {i:>4} {verdict:<6} {}", r.scenario);
            if !r.done_ms.is_empty() {
                line.push_str(&format!(
                    " returned {:?} ms",
                    r.done_ms.iter().map(|d| d.round()).collect::<Vec<_>>()
                ));
            }
            for (c, w) in &r.failures {
                line.push_str(&format!("\n    {}: {w}", c.name()));
            }
            progress(&line);
        }
        let stop = !r.failures.is_empty() && !o.keep_going;
        sum.runs.push(r);
        if stop {
            break;
        }
    }
    sum.seconds = started.elapsed().as_secs_f64();
    sum
}
