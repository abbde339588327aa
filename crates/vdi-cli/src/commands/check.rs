//! `vdi check-client -- PROGRAM ARGS...`: a verdict on a VDI client. Runs a battery of
//! scenarios (1, 4 and 64 devices, a shrunk buffer count, an engine that pauses, fails a
//! command, aborts) against the client program, each a backup and, where it succeeded, a
//! restore of the same bytes, and says for each what the engine saw, pass or fail, and
//! for a failure the protocol rule the client broke, in words.
//!
//! How the client is driven: check-client puts `sqlcmd` and `osql` (links to this
//! binary) first on the client's `PATH`, names the set in `VDI_SET` (and `{set}` in
//! ARGS), and tells it what to do in `{op}` (`backup`/`restore`), `{OP}` (`B`/`R`),
//! `{file}` (its media file), `{devices}` and `{db}` (also `VDI_OP`, `VDI_FILE`,
//! `VDI_DEVICES`, `VDI_DB`). A client that runs `sqlcmd -Q "BACKUP DATABASE {db} TO
//! VIRTUAL_DEVICE='{set}' ..."` gets the engine through our sqlcmd (`--engine sqlcmd`,
//! the default unless ARGS hold `{set}`); a client that only creates the set gets it from
//! check-client itself (`--engine direct`; devices named `SET`, `SET#1`, ...).
//!
//! What is observed: the engine's outcome; the client's exit status and whether it
//! exited in time; the restored bytes; and, for C and C++ clients (through libvdi or
//! libsqlvdi), every GetCommand, CompleteCommand and Close they made (`VDI_TRACE_FILE`,
//! see `vdi_ffi_core::trace`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use vdi_backup::engine::{self, DeviceMode, EngineCfg, EngineReport};
use vdi_backup::error::kind_of;
use vdi_backup::fault::Fault;
use vdi_backup::source::Spec;
use vdi_backup::{Kind, Result, fail};

use crate::cli::CheckClientArgs;

/// One scenario of the battery.
struct Scenario {
    name: &'static str,
    devices: u32,
    faults: &'static [&'static str],
    buffer_count: Option<u32>,
    /// Whether the backup must succeed (else the engine makes it fail).
    succeeds: bool,
    what: &'static str,
    /// The device mode (`VDI_MODE` for the client and the engine; auto: as the client
    /// offers).
    mode: DeviceMode,
    /// A command the client was not offered, sent before the data.
    probe: Option<u32>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pipe-1",
        devices: 1,
        faults: &[],
        buffer_count: None,
        succeeds: true,
        what: "one device, sequential Writes then Reads (as the Linux sample)",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "pipe-4",
        devices: 4,
        faults: &[],
        buffer_count: None,
        succeeds: true,
        what: "four devices (as the multi-threaded sample)",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "pipe-64",
        devices: 64,
        faults: &[],
        buffer_count: None,
        succeeds: true,
        what: "64 devices, SQL Server's most",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "one-buffer",
        devices: 4,
        faults: &[],
        buffer_count: Some(4),
        succeeds: true,
        what: "one buffer per device (a shrunk BUFFERCOUNT): one command outstanding at a time",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "tape-2",
        devices: 2,
        faults: &[],
        buffer_count: None,
        succeeds: true,
        what: "tape-like (VDI_MODE=tape: the client offers VDF_LikeTape): Rewind, Writes, WriteMark; Rewind, Reads to the filemark",
        mode: DeviceMode::Tape,
        probe: None,
    },
    Scenario {
        name: "disk-2",
        devices: 2,
        faults: &[],
        buffer_count: None,
        succeeds: true,
        what: "disk-like (VDI_MODE=disk: the client offers VDF_LikeDisk): positioned Writes; SetPosition to the end, positioned Reads out of order",
        mode: DeviceMode::Disk,
        probe: None,
    },
    Scenario {
        name: "unknown-command",
        devices: 2,
        faults: &[],
        buffer_count: None,
        succeeds: true,
        what: "before the data the engine sends command 99, which the client was not offered: it must answer ERROR_NOT_SUPPORTED, then complete ClearError",
        mode: DeviceMode::Auto,
        probe: Some(99),
    },
    Scenario {
        name: "engine-pause",
        devices: 1,
        faults: &["engine:delay@3=1500ms"],
        buffer_count: None,
        succeeds: true,
        what: "the engine pauses 1.5 s before its third command",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "engine-fails-write",
        devices: 1,
        faults: &["engine:fail@3=ERROR_IO_DEVICE"],
        buffer_count: None,
        succeeds: false,
        what: "the engine's own I/O fails at the third command: it aborts the backup",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "engine-killed",
        devices: 2,
        faults: &["engine:kill@5"],
        buffer_count: None,
        succeeds: false,
        what: "the engine's process is killed (SIGKILL) at its fifth command: the client must notice and end",
        mode: DeviceMode::Auto,
        probe: None,
    },
    Scenario {
        name: "engine-aborts",
        devices: 2,
        faults: &["engine:abort@4"],
        buffer_count: None,
        succeeds: false,
        what: "the engine calls SignalAbort at its fourth command",
        mode: DeviceMode::Auto,
        probe: None,
    },
];

/// How the client gets its engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Sqlcmd,
    Direct,
}

/// A scenario's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The scenario.
    pub scenario: String,
    /// What it does.
    pub what: String,
    /// What the engine saw.
    pub saw: String,
    /// Whether the client passed (a skipped scenario passes).
    pub passed: bool,
    /// Whether the scenario did not apply (the client offers no such devices).
    pub skipped: bool,
    /// The rules it broke, in words.
    pub broken: Vec<String>,
}

/// What `vdi sqlcmd` run by a client records for check-client (one JSON line per
/// statement in `DIR/engine.jsonl`).
pub fn record(dir: &Path, verb: &str, r: &Result<EngineReport>) {
    let line = match r {
        Ok(rep) => {
            serde_json::json!({"verb": verb, "ok": true, "bytes": rep.source_bytes, "devices": rep.devices, "mode": rep.mode})
        }
        Err(e) => {
            serde_json::json!({"verb": verb, "ok": false, "kind": kind_of(e).name(), "message": e.own_message()})
        }
    };
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("engine.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
}

/// The engine's outcome of one step.
#[derive(Debug)]
struct EngineOutcome {
    ok: bool,
    bytes: u64,
    message: String,
    mode: String,
}

/// One step's observations.
struct Step {
    engine: Option<EngineOutcome>,
    exit: Option<i32>,
    timed_out: bool,
    trace: Vec<String>,
    output: String,
}

const VD_E_TIMEOUT: u32 = 0x8077_0003;
const VD_E_INVALID: u32 = 0x8077_0006;
const VD_E_OPEN: u32 = 0x8077_000D;
const VDC_CLEAR_ERROR: u32 = 3;

fn command_name(code: u32) -> String {
    vdi::CommandCode::from(code).to_string()
}

/// The rules the trace shows broken.
/// `outstanding`: whether a command left uncompleted is the client's fault (the engine
/// succeeded, or gave up waiting for it), not the echo of an engine that failed first.
fn trace_rules(trace: &[String], outstanding: bool, paused: bool) -> Vec<String> {
    let mut rules = Vec::new();
    // Per device: the commands it was given, less those it completed.
    let mut open: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut after_close: BTreeMap<String, u32> = BTreeMap::new();
    let mut twice = 0;
    let mut seconds = None;
    let mut close_open = false;
    for l in trace {
        let f: Vec<&str> = l.split_whitespace().collect();
        let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
        let dec = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        match f.first().copied() {
            Some("get") => {
                let dev = f.get(1).copied().unwrap_or("?").to_owned();
                if dec(5) == Some(1) {
                    *after_close.entry(dev.clone()).or_default() += 1;
                }
                match (hex(2), dec(3)) {
                    (Some(0), Some(code)) if code > 0 => {
                        open.entry(dev).or_default().push(code as u32);
                    }
                    (Some(VD_E_TIMEOUT), _) => {
                        let t = dec(4).unwrap_or(0);
                        if paused && (0..1500).contains(&t) {
                            seconds = Some(t);
                        }
                    }
                    _ => {}
                }
            }
            Some("done") => {
                let dev = f.get(1).copied().unwrap_or("?").to_owned();
                match (hex(2), dec(3)) {
                    (Some(0), Some(code)) => {
                        if let Some(v) = open.get_mut(&dev)
                            && let Some(i) = v.iter().position(|&c| i64::from(c) == code)
                        {
                            v.remove(i);
                        }
                    }
                    (Some(VD_E_INVALID), Some(0)) => twice += 1,
                    _ => {}
                }
            }
            Some("close") => close_open |= hex(1) == Some(VD_E_OPEN),
            _ => {}
        }
    }
    if twice > 0 {
        rules.push(format!(
            "a command completed twice: CompleteCommand was called {twice} time(s) on a command that was no longer outstanding (complete each command exactly once)"
        ));
    }
    if let Some(t) = seconds {
        rules.push(format!(
            "a timeout treated as seconds: GetCommand({t}) waits {t} ms, not {t} s, so a 1.5 s pause of the engine ended the transfer with VD_E_TIMEOUT (time-outs are milliseconds; pass INFINITE, -1, or a minute)"
        ));
    }
    if let Some((_, n)) = after_close.iter().find(|(_, n)| **n >= 10) {
        rules.push(format!(
            "GetCommand called after VD_E_CLOSE without end ({n} more times on one device): VD_E_CLOSE is the normal end of a device; stop asking and close the set"
        ));
    }
    if close_open {
        rules.push(
            "Close with devices open: Close returned VD_E_OPEN, so the set was aborted; serve every device until GetCommand returns VD_E_CLOSE, then Close".into(),
        );
    }
    if outstanding && seconds.is_none() {
        for v in open.values() {
            if let Some(&c) = v.first() {
                if c == VDC_CLEAR_ERROR {
                    rules.push(
                        "ClearError not answered: after a command that failed (a short Read at the end of a restore is one) the engine sends ClearError, and the client must complete it with ERROR_SUCCESS".into(),
                    );
                } else {
                    rules.push(format!(
                        "a command never completed: the client took a {} and never called CompleteCommand for it",
                        command_name(c)
                    ));
                }
                break;
            }
        }
    }
    rules
}

fn substitute(args: &[String], vars: &[(&str, String)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let mut a = a.clone();
            for (k, v) in vars {
                a = a.replace(&format!("{{{k}}}"), v);
            }
            a
        })
        .collect()
}

struct Runner<'a> {
    a: &'a CheckClientArgs,
    via: Via,
    bin: PathBuf,
    n: u32,
}

impl Runner<'_> {
    /// Runs one step (`backup` from `data`, or `restore` into it).
    fn step(&mut self, dir: &Path, sc: &Scenario, op: &str, data: &Path, media: &Path) -> Step {
        self.n += 1;
        let set = format!("vdi-check-{}-{}", std::process::id(), self.n);
        let trace = dir.join(format!("trace-{op}.txt"));
        let check_dir = dir.join(format!("engine-{op}"));
        let _ = std::fs::create_dir_all(&check_dir);
        let db = "vdicheck";
        let faults = sc.faults.join(",");
        let vars = [
            ("set", set.clone()),
            ("op", op.to_owned()),
            ("OP", if op == "backup" { "B" } else { "R" }.to_owned()),
            ("file", media.display().to_string()),
            ("devices", sc.devices.to_string()),
            ("db", db.to_owned()),
            ("mode", sc.mode.name().to_owned()),
        ];
        let argv = substitute(&self.a.program, &vars);
        let bin_dir = dir.join("bin");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let stall = self.a.command_timeout.as_millis().to_string();
        // The direct engine, on a thread of this process.
        let engine = (self.via == Via::Direct).then(|| {
            let faults: Vec<Fault> = sc
                .faults
                .iter()
                .filter_map(|f| Fault::parse(f).ok())
                .collect();
            let cfg = EngineCfg {
                set: set.clone(),
                buffer_count: sc.buffer_count,
                max_transfer: 1 << 20,
                block_size: 4096,
                wait: self.a.client_timeout,
                trust_owner: None,
                faults,
                parent: None,
                stall: Some(self.a.command_timeout),
                device_names: Vec::new(),
                mode: sc.mode,
                probe: sc.probe,
            };
            let spec = Spec::parse(&format!("file:{}", data.display()));
            let op = op.to_owned();
            std::thread::spawn(move || -> Result<EngineReport> {
                let spec = spec?;
                if op == "backup" {
                    engine::backup(&cfg, &spec)
                } else {
                    engine::restore(&cfg, &spec, true, false)
                }
            })
        });
        let out = dir.join(format!("client-{op}.out"));
        let spawned = std::fs::File::create(&out).and_then(|f| {
            let f2 = f.try_clone()?;
            let mut c = Command::new(argv.first().map_or("", String::as_str));
            c.args(argv.iter().skip(1))
                .stdin(Stdio::null())
                .stdout(f)
                .stderr(f2)
                .env("PATH", &path)
                .env("VDI_SET", &set)
                .env("VDI_OP", op)
                .env("VDI_FILE", media)
                .env("VDI_DEVICES", sc.devices.to_string())
                .env("VDI_DB", db)
                .env("VDI_DATABASES", format!("{db}=file:{}", data.display()))
                .env("VDI_CONFIG", "none")
                .env("VDI_TRACE_FILE", &trace)
                .env("VDI_CHECK_DIR", &check_dir)
                .env("VDI_INJECT", &faults)
                .env("VDI_STALL_MS", &stall);
            match sc.probe {
                Some(p) => c.env("VDI_PROBE_COMMAND", p.to_string()),
                None => c.env_remove("VDI_PROBE_COMMAND"),
            };
            match sc.mode {
                DeviceMode::Auto => c.env_remove("VDI_MODE"),
                m => c.env("VDI_MODE", m.name()),
            };
            match sc.buffer_count {
                Some(n) => c.env("VDI_BUFFER_COUNT", n.to_string()),
                None => c.env_remove("VDI_BUFFER_COUNT"),
            };
            c.spawn()
        });
        let (exit, timed_out) = match spawned {
            Ok(mut child) => {
                let deadline = Instant::now() + self.a.client_timeout;
                loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break (st.code().or(Some(128)), false),
                        Ok(None) if Instant::now() > deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break (None, true);
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                        Err(_) => break (None, false),
                    }
                }
            }
            Err(e) => {
                let _ = std::fs::write(&out, format!("cannot start {:?}: {e}", argv.first()));
                (None, false)
            }
        };
        let engine = match engine {
            Some(h) => Some(match h.join() {
                Ok(Ok(r)) => EngineOutcome {
                    ok: true,
                    bytes: r.source_bytes,
                    message: String::new(),
                    mode: r.mode.unwrap_or_default(),
                },
                Ok(Err(e)) => EngineOutcome {
                    ok: false,
                    bytes: 0,
                    message: e.own_message(),
                    mode: String::new(),
                },
                Err(_) => EngineOutcome {
                    ok: false,
                    bytes: 0,
                    message: "the engine thread panicked".into(),
                    mode: String::new(),
                },
            }),
            None => std::fs::read_to_string(check_dir.join("engine.jsonl"))
                .ok()
                .and_then(|s| s.lines().last().map(str::to_owned))
                .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .map(|v| EngineOutcome {
                    ok: v["ok"].as_bool().unwrap_or(false),
                    bytes: v["bytes"].as_u64().unwrap_or(0),
                    message: v["message"].as_str().unwrap_or("").to_owned(),
                    mode: v["mode"].as_str().unwrap_or("").to_owned(),
                }),
        };
        Step {
            engine,
            exit,
            timed_out,
            trace: std::fs::read_to_string(&trace)
                .map(|s| s.lines().map(str::to_owned).collect())
                .unwrap_or_default(),
            output: std::fs::read_to_string(&out).unwrap_or_default(),
        }
    }

    fn scenario(&mut self, sc: &Scenario) -> Result<Verdict> {
        let tmp = tempfile::Builder::new()
            .prefix("vdi-check-")
            .tempdir()
            .map_err(|e| fail(Kind::Other, format!("making a scratch directory: {e}")))?;
        let dir = tmp.path();
        let bin = dir.join("bin");
        std::fs::create_dir(&bin)
            .and_then(|()| std::os::unix::fs::symlink(&self.bin, bin.join("sqlcmd")))
            .and_then(|()| std::os::unix::fs::symlink(&self.bin, bin.join("osql")))
            .map_err(|e| {
                fail(
                    Kind::Other,
                    format!("linking sqlcmd into {}: {e}", bin.display()),
                )
            })?;
        let data = dir.join("data.bin");
        write_data(&data, self.a.size, u64::from(self.n))?;
        let media = dir.join("media.bak");
        let mut broken = Vec::new();
        let mut saw = Vec::new();
        let killed = sc.faults.iter().any(|f| f.contains("kill"));
        if killed && self.via == Via::Direct {
            return Ok(Verdict {
                scenario: sc.name.into(),
                what: sc.what.into(),
                saw: "not run: with --engine direct the engine runs inside check-client".into(),
                passed: true,
                skipped: true,
                broken: Vec::new(),
            });
        }
        let b = self.step(dir, sc, "backup", &data, &media);
        if let Some(e) = &b.engine
            && e.message
                .contains("devices, but the backup application offered features")
        {
            return Ok(Verdict {
                scenario: sc.name.into(),
                what: sc.what.into(),
                saw: format!("not run: {}", e.message),
                passed: true,
                skipped: true,
                broken: Vec::new(),
            });
        }
        self.judge("backup", sc, &b, sc.succeeds, &mut saw, &mut broken);
        let backed_up = b.engine.as_ref().is_some_and(|e| e.ok);
        if sc.succeeds && backed_up && broken.is_empty() {
            let restored = dir.join("restored.bin");
            let plain = Scenario { faults: &[], ..*sc };
            let r = self.step(dir, &plain, "restore", &restored, &media);
            self.judge("restore", &plain, &r, true, &mut saw, &mut broken);
            if r.engine.as_ref().is_some_and(|e| e.ok) {
                match (std::fs::read(&data), std::fs::read(&restored)) {
                    (Ok(a), Ok(b)) if a == b => saw.push("bytes equal".into()),
                    (Ok(a), Ok(b)) => {
                        let at = a
                            .iter()
                            .zip(&b)
                            .position(|(x, y)| x != y)
                            .unwrap_or(a.len().min(b.len()));
                        broken.push(format!(
                            "data differs on restore: the restore served {} bytes where {} were backed up, first different at byte {at} (store and serve each device's bytes unchanged, in order)",
                            b.len(),
                            a.len()
                        ));
                    }
                    _ => {
                        broken.push("data differs on restore: the restored data is missing".into())
                    }
                }
            }
        }
        if self.a.keep {
            let kept = tmp.keep();
            saw.push(format!("kept in {}", kept.display()));
        }
        Ok(Verdict {
            scenario: sc.name.into(),
            what: sc.what.into(),
            saw: saw.join("; "),
            passed: broken.is_empty(),
            skipped: false,
            broken,
        })
    }

    fn judge(
        &self,
        op: &str,
        sc: &Scenario,
        s: &Step,
        must_succeed: bool,
        saw: &mut Vec<String>,
        broken: &mut Vec<String>,
    ) {
        let paused = sc.faults.iter().any(|f| f.contains("delay"));
        let killed = sc.faults.iter().any(|f| f.contains("kill"));
        let engine_ok = s.engine.as_ref().is_some_and(|e| e.ok);
        match &s.engine {
            Some(e) if e.ok => saw.push(format!(
                "{op} ok ({} through {} {}-like device(s))",
                vdi_backup::units::human_bytes(e.bytes),
                sc.devices,
                e.mode
            )),
            // The engine's advice names its own option; here it is check-client's.
            Some(e) => saw.push(format!(
                "{op} failed: {}",
                e.message.replace("--stall-timeout", "--command-timeout")
            )),
            None if killed => saw.push(format!("{op}: the engine was killed")),
            None => saw.push(format!("{op}: no engine ran")),
        }
        match (s.timed_out, s.exit) {
            (true, _) => saw.push(format!(
                "the client did not exit within {} s and was killed",
                self.a.client_timeout.as_secs()
            )),
            (false, Some(c)) => saw.push(format!("client exit {c}")),
            (false, None) => saw.push("the client could not be started".into()),
        }
        let stalled = s
            .engine
            .as_ref()
            .is_some_and(|e| e.message.contains("made no progress"));
        let mut rules = trace_rules(&s.trace, engine_ok || stalled || s.timed_out, paused);
        if let Some(e) = &s.engine
            && e.message.contains(" bytes of a Write")
        {
            rules.insert(
                0,
                format!(
                    "wrong byte count: {} (a Write completed with ERROR_SUCCESS must report all its bytes; report an error code when fewer were stored)",
                    e.message
                ),
            );
        }
        if let Some(e) = &s.engine
            && e.message.contains("a command it was not offered")
        {
            rules.push(format!(
                "an unsupported command accepted: {} (a client answers every command it does not support with ERROR_NOT_SUPPORTED, as the samples do)",
                e.message
            ));
        }
        if let Some(e) = &s.engine
            && e.message.contains("failed the ClearError after")
        {
            rules.push(format!(
                "ClearError not answered: {} (after a command failed, the engine sends ClearError; complete it with ERROR_SUCCESS)",
                e.message
            ));
        }
        if op == "restore"
            && let Some(e) = &s.engine
            && !e.ok
            && (e.message.contains("damaged") || e.message.contains("crc"))
        {
            rules.push(format!(
                "data differs on restore: the client served bytes other than those it was given to store ({}); serve each device's bytes unchanged and in order",
                e.message
            ));
        }
        if s.engine.is_none() && s.exit.is_some() && !killed {
            rules.push(if self.via == Via::Sqlcmd {
                format!(
                    "the client never ran the {} statement through sqlcmd (the sqlcmd on its PATH is check-client's; name the set it created, $VDI_SET, as the first VIRTUAL_DEVICE). Its output: {}",
                    op.to_uppercase(),
                    s.output.lines().last().unwrap_or("")
                )
            } else {
                "the client never created the set named in $VDI_SET / {set}".into()
            });
        }
        if s.timed_out {
            rules.push(format!(
                "the client hung: it did not exit within {} s after the engine {} (a client must end once every device returned VD_E_CLOSE, or the set was aborted, and Close)",
                self.a.client_timeout.as_secs(),
                if engine_ok { "finished" } else { "gave up" }
            ));
        }
        if rules.is_empty() {
            if must_succeed && !engine_ok && s.engine.is_some() {
                rules.push(format!(
                    "the engine failed with a well-behaved command stream: {}",
                    s.engine.as_ref().map_or("", |e| e.message.as_str())
                ));
            } else if must_succeed && engine_ok && s.exit != Some(0) && !s.timed_out {
                rules.push(format!(
                    "the client failed (exit {}) though the engine's {op} succeeded; its last words: {}",
                    s.exit.map_or("-".into(), |c| c.to_string()),
                    s.output.lines().last().unwrap_or("")
                ));
            } else if !must_succeed && s.exit == Some(0) {
                rules.push(format!(
                    "the client reported success (exit 0) for a {op} the engine failed: a client must report a failure when GetCommand returns VD_E_ABORT or the T-SQL fails"
                ));
            }
        }
        broken.extend(rules);
    }
}

fn write_data(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(size as usize);
    while (v.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size as usize);
    std::fs::write(path, v)
        .map_err(|e| fail(Kind::Other, format!("writing {}: {e}", path.display())))
}

/// `vdi check-client`.
pub(super) fn run(a: &CheckClientArgs) -> Result<()> {
    if a.program.is_empty() {
        return Err(fail(
            Kind::Usage,
            "no client: write vdi check-client -- PROGRAM ARGS... (e.g. -- ./myclient {OP} D {db} {file} {devices})",
        ));
    }
    let via = match a.engine.as_deref() {
        Some("sqlcmd") => Via::Sqlcmd,
        Some("direct") => Via::Direct,
        Some(o) => {
            return Err(fail(
                Kind::Usage,
                format!(
                    "--engine {o}: write sqlcmd (the client runs sqlcmd) or direct (it only creates the set)"
                ),
            ));
        }
        None if a.program.iter().any(|p| p.contains("{set}")) => Via::Direct,
        None => Via::Sqlcmd,
    };
    let bin = std::env::current_exe()
        .map_err(|e| fail(Kind::Other, format!("finding this program's path: {e}")))?;
    let chosen: Vec<&Scenario> = match &a.only {
        Some(list) => {
            let mut v = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                v.push(SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
                    fail(
                        Kind::Usage,
                        format!(
                            "--only {name}: no such scenario; the scenarios are {}",
                            SCENARIOS
                                .iter()
                                .map(|s| s.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?);
            }
            v
        }
        None => SCENARIOS.iter().collect(),
    };
    let mut r = Runner { a, via, bin, n: 0 };
    let mut verdicts = Vec::new();
    for sc in chosen {
        if !a.output.json && !a.output.quiet {
            tracing::info!("scenario {}: {}", sc.name, sc.what);
        }
        verdicts.push(r.scenario(sc)?);
    }
    let failed = verdicts.iter().filter(|v| !v.passed).count();
    if a.output.json {
        crate::output::print_json(
            &serde_json::json!({
                "client": a.program,
                "engine": if via == Via::Sqlcmd { "sqlcmd" } else { "direct" },
                "passed": verdicts.len() - failed,
                "failed": failed,
                "scenarios": verdicts,
            }),
            false,
        );
    } else {
        print_table(&verdicts);
    }
    if failed > 0 {
        return Err(fail(
            Kind::PeerFailed,
            format!(
                "the client failed {failed} of {} scenario(s): the RULE column says what it did wrong",
                verdicts.len()
            ),
        ));
    }
    Ok(())
}

fn print_table(v: &[Verdict]) {
    let w = v.iter().map(|x| x.scenario.len()).max().unwrap_or(8).max(8);
    crate::print_line(format_args!(
        "{:<w$}  {:<6}  WHAT THE ENGINE SAW",
        "SCENARIO", "RESULT"
    ));
    for x in v {
        crate::print_line(format_args!(
            "{:<w$}  {:<6}  {}",
            x.scenario,
            match (x.passed, x.skipped) {
                (_, true) => "skip",
                (true, _) => "pass",
                _ => "FAIL",
            },
            x.saw
        ));
        for b in &x.broken {
            crate::print_line(format_args!("{:<w$}  {:<6}  RULE: {b}", "", ""));
        }
    }
    let failed = v.iter().filter(|x| !x.passed).count();
    crate::print_line(format_args!(
        "{} scenario(s): {} passed, {failed} failed",
        v.len(),
        v.len() - failed
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_trace_names_each_rule() {
        assert!(
            trace_rules(
                &t(&[
                    "get 1 0 2 60000 0",
                    "done 1 0 2 0 4096",
                    "get 1 8077000e 0 60000 0",
                    "close 0"
                ]),
                true,
                false
            )
            .is_empty()
        );
        let r = trace_rules(
            &t(&[
                "get 1 0 2 60000 0",
                "done 1 0 2 0 4096",
                "done 1 80770006 0 0 4096",
            ]),
            true,
            false,
        );
        assert!(r[0].contains("completed twice"), "{r:?}");
        let r = trace_rules(&t(&["get 1 0 3 60000 0"]), true, false);
        assert!(r[0].contains("ClearError not answered"), "{r:?}");
        let r = trace_rules(&t(&["get 1 0 12 60000 0"]), true, false);
        assert!(r[0].contains("never completed"), "{r:?}");
        let r = trace_rules(&t(&["get 1 80770003 0 90 0"]), true, true);
        assert!(r[0].contains("treated as seconds"), "{r:?}");
        let many: Vec<String> = (0..12)
            .map(|_| "get 1 8077000e 0 10 1".to_owned())
            .collect();
        assert!(trace_rules(&many, true, false)[0].contains("without end"));
        assert!(
            trace_rules(&t(&["close 8077000d"]), true, false)[0]
                .contains("Close with devices open")
        );
        // Garbage lines are ignored.
        assert!(trace_rules(&t(&["", "get", "done x y z", "close zz"]), true, false).is_empty());
    }
}
