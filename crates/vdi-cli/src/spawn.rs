//! `vdi backup` and `vdi restore`: the backup application in this process, the engine
//! in a child process (this same binary, `vdi engine ...`), and one verdict from both.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vdi_backup::format::manifest::{Compression, SourceInfo};
use vdi_backup::store::dir::Modes;
use vdi_backup::{Context, Result};

use crate::cli::EngineKnobs;
use vdi_backup::cancel;
use vdi_backup::client::{self, BackupDone, BackupPlan, ClientErr};
use vdi_backup::engine::{EngineReport, REPORT_PREFIX};
use vdi_backup::error::{Kind, fail};
use vdi_backup::fault::{Fault, Injector, Role};
use vdi_backup::source::Spec;
use vdi_backup::util::new_set_name;

/// The engine child process.
struct EngineProc {
    child: Mutex<Child>,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    report: Arc<Mutex<Option<EngineReport>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How the engine ended.
enum EngineEnd {
    Ok(Box<EngineReport>),
    Failed { kind: Kind, message: String },
}

/// Environment variables the engine (and the programs it runs) must not see: the one
/// `--passphrase-env` names.
static SCRUBBED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Keeps environment variable `var` from the engine this process starts.
pub fn scrub_env(var: &str) {
    if let Ok(mut v) = SCRUBBED.lock() {
        v.push(var.to_owned());
    }
}

impl EngineProc {
    fn spawn(args: &[String], stdin_inherit: bool, stdout_inherit: bool) -> Result<EngineProc> {
        let exe =
            std::env::current_exe().context("finding the vdi executable to start the engine")?;
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            // The engine takes everything it needs from its arguments.
            .env("VDI_CONFIG", "none");
        if let Ok(v) = SCRUBBED.lock() {
            for var in v.iter() {
                cmd.env_remove(var);
            }
        }
        cmd.stdin(if stdin_inherit {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(if stdout_inherit {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        // Its own process group: Ctrl-C on the terminal reaches this process only,
        // which aborts the set, and the engine then stops cleanly.
        .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the engine ({})", exe.display()))?;
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let report = Arc::new(Mutex::new(None));
        let reader = child.stderr.take().map(|err| {
            let (l2, r2) = (lines.clone(), report.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Some(j) = line.strip_prefix(REPORT_PREFIX) {
                        if let Ok(r) = serde_json::from_str::<EngineReport>(j) {
                            *r2.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                        }
                    } else {
                        l2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    }
                }
            })
        });
        tracing::debug!("engine started, pid {pid}");
        Ok(EngineProc {
            child: Mutex::new(child),
            pid,
            lines,
            report,
            reader,
        })
    }

    /// Fails if the engine process has exited (while the client waits for it).
    fn alive(&self) -> Result<()> {
        let st = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .context("watching the engine process")?;
        match st {
            None => Ok(()),
            Some(st) => {
                // Give the reader a moment to collect its last words.
                std::thread::sleep(Duration::from_millis(50));
                let end = self.verdict(st);
                match end {
                    EngineEnd::Failed { kind, message } => Err(fail(kind, message)),
                    EngineEnd::Ok(_) => Err(fail(
                        Kind::PeerFailed,
                        format!("the engine (pid {}) exited before using the set", self.pid),
                    )),
                }
            }
        }
    }

    fn verdict(&self, st: std::process::ExitStatus) -> EngineEnd {
        let report = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sig) = st.signal() {
            let name = match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                11 => " (SIGSEGV)",
                6 => " (SIGABRT)",
                2 => " (SIGINT)",
                _ => "",
            };
            return EngineEnd::Failed {
                kind: Kind::PeerFailed,
                message: format!(
                    "the engine process (pid {}) was killed by signal {sig}{name} in the middle of the operation",
                    self.pid
                ),
            };
        }
        match report {
            Some(r) if r.ok && st.success() => EngineEnd::Ok(Box::new(r)),
            Some(r) if !r.ok => EngineEnd::Failed {
                kind: Kind::from_name(r.kind.as_deref().unwrap_or("error")),
                message: r.message.unwrap_or_else(|| "the engine failed".into()),
            },
            _ => {
                let last = lines
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .cloned()
                    .unwrap_or_default();
                EngineEnd::Failed {
                    kind: match st.code() {
                        Some(c) if c != 0 => Kind::from_exit_code(c),
                        _ => Kind::PeerFailed,
                    },
                    message: format!(
                        "the engine process (pid {}) exited with {st} without a report{}",
                        self.pid,
                        if last.is_empty() {
                            String::new()
                        } else {
                            format!(": {last}")
                        }
                    ),
                }
            }
        }
    }

    /// Waits for the engine to exit (killing it after `grace` if it does not).
    fn finish(mut self, grace: Duration) -> EngineEnd {
        let deadline = Instant::now() + grace;
        let st = loop {
            let r = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait();
            match r {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = c.kill();
                    break c.wait().ok();
                }
            }
        };
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        match st {
            Some(st) => self.verdict(st),
            None => EngineEnd::Failed {
                kind: Kind::PeerFailed,
                message: format!(
                    "the engine process (pid {}) could not be waited for",
                    self.pid
                ),
            },
        }
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How long to let the engine finish once the backup application is done: long after a
/// success (it is closing and syncing), short after a failure (it was aborted; only an
/// engine stuck reading a silent standard input takes longer, and is then stopped).
fn grace(served_ok: bool, ok_secs: u64) -> Duration {
    if cancel::interrupted() {
        Duration::from_secs(1)
    } else if served_ok {
        Duration::from_secs(ok_secs)
    } else {
        Duration::from_secs(5)
    }
}

/// The `--inject` arguments that pass the engine's faults on to the engine process.
fn inject_args(faults: &[Fault]) -> Vec<String> {
    faults
        .iter()
        .filter(|f| f.role == Role::Engine)
        .flat_map(|f| ["--inject".to_owned(), f.to_string()])
        .collect()
}

/// Warns about injected faults that never acted (in either role).
fn warn_unfired(client: &Injector, engine: &EngineReport) {
    client.warn_unfired();
    for f in &engine.unfired {
        tracing::warn!("injected fault {f}");
    }
    for n in &engine.notes {
        tracing::warn!("the engine: {n}");
    }
}

/// The engine's `--stall-timeout`: the same as this side's.
fn stall_args(stall: Option<Duration>) -> Vec<String> {
    vec![
        "--stall-timeout".into(),
        stall.map_or(0, |d| d.as_secs().max(1)).to_string(),
    ]
}

fn knob_args(k: &EngineKnobs) -> Vec<String> {
    let mut v = vec![
        "--max-transfer-size".into(),
        k.max_transfer_size.to_string(),
        "--block-size".into(),
        k.block_size.to_string(),
    ];
    if let Some(n) = k.buffer_count {
        v.push("--buffer-count".into());
        v.push(n.to_string());
    }
    if k.device_mode != vdi_backup::engine::DeviceMode::Auto {
        v.push("--device-mode".into());
        v.push(k.device_mode.name().into());
    }
    v
}

/// One verdict from the client's result and the engine's end.
fn judge<T>(client: Result<T, ClientErr>, engine: EngineEnd) -> Result<(T, EngineReport)> {
    if cancel::interrupted() {
        return Err(fail(
            Kind::Interrupted,
            format!(
                "{}: the operation was aborted; nothing was marked complete",
                cancel::what()
            ),
        ));
    }
    match (client, engine) {
        (Ok(v), EngineEnd::Ok(r)) => Ok((v, *r)),
        (Ok(_), EngineEnd::Failed { kind, message }) => Err(fail(kind, message)),
        (Err(ClientErr::Root(e)), EngineEnd::Failed { kind, message })
            if kind == Kind::Damaged && vdi_backup::error::kind_of(&e) == Kind::Damaged =>
        {
            // Both roles found the damage: say everything they found.
            Err(fail(
                Kind::Damaged,
                format!("{e:#}; the engine found: {message}"),
            ))
        }
        (Err(ClientErr::Root(e)), _) => Err(e),
        (Err(ClientErr::Aborted(_)), EngineEnd::Failed { kind, message }) => {
            Err(fail(kind, message))
        }
        (Err(e @ ClientErr::Aborted(_)), EngineEnd::Ok(_)) => Err(e.into_error()),
    }
}

/// Options shared by `backup` and the demo.
pub struct BackupRequest<'a> {
    /// SOURCE as typed.
    pub source: &'a str,
    /// DEST as typed.
    pub dest: &'a str,
    /// Devices.
    pub devices: u32,
    /// Compression.
    pub compression: Compression,
    /// The key or passphrase to encrypt with (None: not encrypted).
    pub secret: Option<Arc<vdi_backup::seal::Secret>>,
    /// Set name.
    pub set: Option<String>,
    /// Replace an existing backup.
    pub force: bool,
    /// The modes of the files and directories the backup makes.
    pub modes: Modes,
    /// The progress watchdog's limit (None: none).
    pub stall: Option<Duration>,
    /// Engine knobs.
    pub knobs: &'a EngineKnobs,
    /// Progress.
    pub display: Arc<dyn vdi_backup::meter::Show>,
    /// Faults to inject (for testing).
    pub faults: &'a [Fault],
}

/// The outcome of `vdi backup`.
pub struct BackupOutcome {
    /// What the client stored.
    pub done: BackupDone,
    /// The whole command, from start to the manifest.
    pub total: Duration,
    /// DEST as typed.
    pub dest: String,
    /// What the engine reported.
    pub engine: EngineReport,
    /// The backup's id, when DEST is a repository.
    pub repo_id: Option<String>,
}

/// `vdi backup`.
pub fn backup(req: &BackupRequest<'_>) -> Result<BackupOutcome> {
    let t0 = Instant::now();
    let spec = Spec::parse(req.source)?;
    if spec.kind() == vdi_backup::format::stream::SourceKind::File
        && let Some(p) = spec.path().filter(|p| p.is_dir())
    {
        let p = p.display();
        return Err(fail(
            Kind::Input,
            format!(
                "SOURCE {p} is a directory, which vdi cannot read as one stream: vdi backs up a file (file:PATH), a SQLite database (sqlite:PATH) or standard input (-); back up a directory with dir:{p}, or as a tar stream: tar -C {p} -c . | vdi backup - DEST"
            ),
        ));
    }
    let size = spec.probe()?;
    // The source file's mode, which a restore gives back.
    let mode = spec
        .path()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o7777
        });
    let set = req.set.clone().unwrap_or_else(|| new_set_name("backup"));
    let inject = Arc::new(Injector::new(Role::Client, req.faults));
    // A repository gets a new backup under a new id (leased until it is recorded);
    // anything else is one plain backup, as before repositories.
    let dest = vdi_backup::repo::Dest::locate(req.dest, req.modes)?;
    let plan = BackupPlan {
        set: set.clone(),
        devices: req.devices,
        compression: req.compression,
        store: dest.store(),
        force: req.force,
        source: SourceInfo {
            kind: spec.kind().name().into(),
            name: spec.label(),
            bytes: size,
            checked: !spec.is_stdio(),
            mode,
        },
        display: req.display.clone(),
        wait: None,
        hint: None,
        allow_group: None,
        inject: inject.clone(),
        stall: req.stall,
        secret: req.secret.clone(),
    };
    let prep = client::prepare_backup(plan)?;
    let mut args = vec![
        "engine".into(),
        "backup".into(),
        "--set".into(),
        set,
        "--quiet".into(),
        "--report".into(),
        // The set exists already (created above): the engine does not wait for it, and
        // gives up at once if this process is gone before it could open it.
        "--parent-pid".into(),
        std::process::id().to_string(),
    ];
    args.extend(knob_args(req.knobs));
    args.extend(stall_args(req.stall));
    args.extend(inject_args(req.faults));
    args.push("--".into());
    args.push(req.source.into());
    let engine = EngineProc::spawn(&args, spec.is_stdio(), false)?;
    let served = client::serve_backup(prep, &|| engine.alive(), Some(engine.pid));
    let grace = grace(served.is_ok(), 60);
    let end = engine.finish(grace);
    let (served, report) = judge(served, end)?;
    let done = client::commit_backup(served)?;
    let repo_id = match dest {
        vdi_backup::repo::Dest::Repo(rb) => {
            let id = rb.id.clone();
            rb.record(&done.manifest)?;
            Some(id)
        }
        vdi_backup::repo::Dest::Plain(_) => None,
    };
    warn_unfired(&inject, &report);
    Ok(BackupOutcome {
        done,
        engine: report,
        total: t0.elapsed(),
        dest: req.dest.to_owned(),
        repo_id,
    })
}

/// The outcome of `vdi restore`.
pub struct RestoreOutcome {
    /// What the client served.
    pub served: client::ServedRestore,
    /// The whole command, from start to TARGET in place.
    pub total: Duration,
    /// What the engine reported.
    pub engine: EngineReport,
    /// TARGET as typed.
    pub target: String,
}

/// Options of `restore`.
pub struct RestoreRequest<'a> {
    /// BACKUP as typed.
    pub backup: &'a str,
    /// TARGET as typed.
    pub target: &'a str,
    /// Devices, if given.
    pub devices: Option<u32>,
    /// Set name.
    pub set: Option<String>,
    /// Replace TARGET.
    pub force: bool,
    /// Run PRAGMA integrity_check on a restored database.
    pub integrity_check: bool,
    /// The key or passphrase of an encrypted backup.
    pub secret: Option<Arc<vdi_backup::seal::Secret>>,
    /// The progress watchdog's limit (None: none).
    pub stall: Option<Duration>,
    /// Engine knobs.
    pub knobs: &'a EngineKnobs,
    /// Progress.
    pub display: Arc<dyn vdi_backup::meter::Show>,
    /// Faults to inject (for testing).
    pub faults: &'a [Fault],
}

/// Refuses, before a set is made and a byte is moved, a `sqlite:` TARGET for a backup
/// whose source was not a SQLite database (what its stream header said, as the manifest
/// records it).
fn refuse_mismatched_target(
    target: &Spec,
    m: Option<&vdi_backup::format::manifest::Manifest>,
    backup: &str,
) -> Result<()> {
    let Some(m) = m else { return Ok(()) };
    if target.kind() == vdi_backup::format::stream::SourceKind::Sqlite
        && m.source.kind != "sqlite"
        && m.source.kind != "unknown"
    {
        let path = target
            .path()
            .map_or_else(|| "PATH".into(), |p| p.display().to_string());
        return Err(fail(
            Kind::Usage,
            format!(
                "backup {backup} holds {} ({}), not a SQLite database: a sqlite: target would be refused only after the whole restore; restore it into file:{path} instead",
                match m.source.kind.as_str() {
                    "file" => "a file".to_owned(),
                    "stdin" => "what standard input carried".to_owned(),
                    k => format!("a {k} source"),
                },
                m.source.name,
            ),
        ));
    }
    Ok(())
}

/// Refuses to replace a SQLite database that another process has open (its `-wal` and
/// `-shm` would be removed under it).
pub fn refuse_open_database(target: &Spec) -> Result<()> {
    if target.kind() != vdi_backup::format::stream::SourceKind::Sqlite {
        return Ok(());
    }
    let Some(p) = target.path() else {
        return Ok(());
    };
    let files: Vec<std::path::PathBuf> = ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|x| std::path::PathBuf::from(format!("{}{x}", p.display())))
        .collect();
    let users = vdi_backup::util::opened_by_others(&files);
    if let Some((pid, cmd)) = users.first() {
        return Err(fail(
            Kind::TargetExists,
            format!(
                "the database {} is open in process {pid}{}{}: replacing it would pull it (and its -wal and -shm) from under that process; stop it first, or restore elsewhere",
                p.display(),
                if cmd.is_empty() {
                    String::new()
                } else {
                    format!(" ({cmd})")
                },
                if users.len() > 1 {
                    format!(" and {} other(s)", users.len() - 1)
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

/// `vdi restore`.
pub fn restore(req: &RestoreRequest<'_>) -> Result<RestoreOutcome> {
    let t0 = Instant::now();
    let target = Spec::parse(req.target)?;
    // BACKUP may name a repository (its latest backup), REPO:ID, or one backup.
    let located = vdi_backup::repo::locate_backup(req.backup)?;
    let opened =
        client::open_backup_with(located.store.as_ref(), req.devices, req.secret.as_deref())?;
    refuse_mismatched_target(&target, opened.manifest.as_ref(), req.backup)?;
    if req.force {
        refuse_open_database(&target)?;
    }
    target.check_target(req.force)?;
    let mode = opened.manifest.as_ref().and_then(|m| m.source.mode);
    let set = req.set.clone().unwrap_or_else(|| new_set_name("restore"));
    let label = format!(
        "restore {} to {} through {}",
        req.backup,
        target.label(),
        vdi_backup::util::devices(opened.devices())
    );
    let inject = Arc::new(Injector::new(Role::Client, req.faults));
    let prep = client::prepare_restore(
        client::RestorePlan {
            set: set.clone(),
            display: req.display.clone(),
            wait: None,
            hint: None,
            label,
            allow_group: None,
            inject: inject.clone(),
            stall: req.stall,
        },
        opened,
    )?;
    let mut args = vec![
        "engine".into(),
        "restore".into(),
        "--set".into(),
        set,
        "--quiet".into(),
        "--report".into(),
        // The set exists already (created above): the engine does not wait for it, and
        // gives up at once if this process is gone before it could open it.
        "--parent-pid".into(),
        std::process::id().to_string(),
    ];
    if req.force {
        args.push("--force".into());
    }
    if req.integrity_check {
        args.push("--integrity-check".into());
    }
    args.extend(knob_args(req.knobs));
    args.extend(stall_args(req.stall));
    args.extend(inject_args(req.faults));
    args.push("--".into());
    args.push(req.target.into());
    let engine = EngineProc::spawn(&args, false, target.is_stdio())?;
    let served = client::serve_restore(prep, &|| engine.alive(), Some(engine.pid));
    let grace = grace(served.is_ok(), 600);
    let pid = engine.pid;
    let end = engine.finish(grace);
    if let (EngineEnd::Failed { .. }, Some(p)) = (&end, target.path()) {
        // An engine that died cannot remove its temporary file; nothing of it may stay.
        vdi_backup::source::file::remove_partial(p, pid);
    }
    let (served, report) = judge(served, end)?;
    if let (Some(m), Some(p)) = (mode, target.path()) {
        // The restored file gets the source's mode back.
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)) {
            tracing::warn!(
                "{} was restored, but its mode could not be set to {m:o} as the source had it: {e}",
                p.display()
            );
        }
    }
    warn_unfired(&inject, &report);
    Ok(RestoreOutcome {
        served,
        total: t0.elapsed(),
        engine: report,
        target: req.target.into(),
    })
}
