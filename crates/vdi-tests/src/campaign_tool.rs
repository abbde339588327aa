//! The crash campaign's `vdi` tool scenarios: `vdi backup` and `vdi restore` (the
//! backup application, which starts the engine as `vdi engine ...` in a child process),
//! one of the two SIGKILLed at a random time of a run; then the survivor's exit, the
//! backup or restore target and the run's `TMPDIR` are checked.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Failure, Options, Proc, RunResult, ms, shm_leak, socket_leak, vdi_shm};
use crate::campaign_peer::mono_ns;

/// The files the tool runs share: a source file and a completed backup of it.
pub struct ToolEnv {
    vdi: PathBuf,
    dir: PathBuf,
    owned: bool,
    src: PathBuf,
    backup: PathBuf,
    backup_devices: u32,
    backup_ms: f64,
    restore_ms: f64,
    subreaper: bool,
}

impl Drop for ToolEnv {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run_vdi(vdi: &Path, args: &[&str], tmp: &Path) -> Result<(f64, String), String> {
    let t = Instant::now();
    let out = Process::new(vdi)
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", vdi.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok((t.elapsed().as_secs_f64() * 1000.0, text))
    } else {
        Err(format!("vdi {args:?} failed ({}): {text}", out.status))
    }
}

fn files_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

impl ToolEnv {
    /// Makes the source file and a completed backup of it.
    pub fn setup(o: &Options, vdi: &Path) -> Result<ToolEnv, String> {
        let (dir, owned) = match &o.workdir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("vdi-crash-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let subreaper =
            rustix::process::set_child_subreaper(Some(rustix::process::getpid())).is_ok();
        let mut env = ToolEnv {
            vdi: vdi.to_path_buf(),
            dir: dir.clone(),
            owned,
            src: dir.join("source.img"),
            backup: dir.join("backup"),
            backup_devices: 2,
            backup_ms: 0.0,
            restore_ms: 0.0,
            subreaper,
        };
        // The source: half pattern, half zeros (a sparse-ish disk image).
        {
            let mut f = std::fs::File::create(&env.src)
                .map_err(|e| format!("{}: {e}", env.src.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < o.tool_bytes {
                let n = (o.tool_bytes - off).min(buf.len() as u64) as usize;
                if (off >> 20).is_multiple_of(2) {
                    crate::pattern::fill(o.seed, 0, off, &mut buf[..n]);
                } else {
                    buf[..n].fill(0);
                }
                f.write_all(&buf[..n])
                    .map_err(|e| format!("{}: {e}", env.src.display()))?;
                off += n as u64;
            }
        }
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let _ = std::fs::remove_dir_all(&env.backup);
        let src = format!("file:{}", env.src.display());
        let bk = env.backup.display().to_string();
        let devs = env.backup_devices.to_string();
        let (t, _) = run_vdi(
            vdi,
            &["backup", &src, &bk, "--devices", &devs, "--quiet"],
            &tmp,
        )?;
        env.backup_ms = t;
        let out = dir.join("restored.img");
        let _ = std::fs::remove_file(&out);
        let target = format!("file:{}", out.display());
        let (t, _) = run_vdi(vdi, &["restore", &bk, &target, "--quiet"], &tmp)?;
        env.restore_ms = t;
        if !files_equal(&env.src, &out).unwrap_or(false) {
            return Err("the baseline restore does not match the source".into());
        }
        let _ = std::fs::remove_file(&out);
        Ok(env)
    }

    /// A one-line description of the setup.
    pub fn describe(&self) -> String {
        format!(
            "tool: {} ; source {} ; baseline backup {:.0} ms, restore {:.0} ms; subreaper {}",
            self.vdi.display(),
            self.src.display(),
            self.backup_ms,
            self.restore_ms,
            self.subreaper
        )
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    v
}

/// Waits for a process that is not our child (an orphaned engine, reparented to this
/// process when it is a subreaper); returns its status text and when it ended.
fn wait_foreign(pid: u32, subreaper: bool, deadline: Instant) -> Option<(String, u64)> {
    use rustix::process::{Pid, WaitOptions, waitpid};
    let p = Pid::from_raw(pid as i32)?;
    loop {
        if subreaper {
            match waitpid(Some(p), WaitOptions::NOHANG) {
                Ok(Some((_, st))) => {
                    let t = mono_ns();
                    let s = if let Some(c) = st.exit_status() {
                        format!("exit {c}")
                    } else if let Some(sig) = st.terminating_signal() {
                        format!("signal {sig}")
                    } else {
                        "ended".into()
                    };
                    return Some((s, t));
                }
                Ok(None) => {}
                // Not our child (yet): fall back to watching /proc.
                Err(_) => {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        return Some(("ended".into(), mono_ns()));
                    }
                }
            }
        } else {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("X");
            if state == "Z" || state == "X" || stat.is_empty() {
                return Some(("ended".into(), mono_ns()));
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The engine of set `set`, found by its command line (`vdi engine ... --set SET`):
/// for when `vdi` died before this process saw its child.
fn engine_by_set(set: &str) -> Option<u32> {
    let needle = format!("--set\0{set}\0");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.windows(needle.len()).any(|w| w == needle.as_bytes())
                    && c.windows(7).any(|w| w == b"engine\0")
            })
        })
}

fn dir_entries(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn tool_run(
    o: &Options,
    env: &ToolEnv,
    rng: &mut fastrand::Rng,
    index: u32,
) -> RunResult {
    let mut r = RunResult::new(index, "tool");
    let kill_engine = rng.bool();
    let restore = rng.u32(0..3) == 0;
    let devices = if restore {
        env.backup_devices
    } else {
        rng.u32(1..=4)
    };
    let base = if restore {
        env.restore_ms
    } else {
        env.backup_ms
    };
    let kill_ms = rng.f64() * base * 1.1;
    r.victim = if kill_engine { "engine" } else { "client" };
    r.op = if restore { "restore" } else { "backup" };
    r.devices = devices;
    let bucket = ((kill_ms / base.max(1.0)) * 4.0).floor().min(4.0) as u32;
    r.point = ["0-25%", "25-50%", "50-75%", "75-100%", ">100%"][bucket as usize].to_owned();
    let set = format!("crash-tool-{}-{index}", std::process::id());
    let run_dir = env.dir.join(format!("run-{index}"));
    let tmp = run_dir.join("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        r.fail(Failure::Setup, format!("{}: {e}", tmp.display()));
        return r;
    }
    let dest = run_dir.join("dest");
    let target = run_dir.join("out.img");
    r.scenario = format!(
        "tool {} kill {} at {kill_ms:.0} ms (of ~{base:.0}) devices={devices}",
        r.op, r.victim
    );
    let mut cmd = Process::new(&env.vdi);
    let src = format!("file:{}", env.src.display());
    let devs = devices.to_string();
    if restore {
        cmd.args(["restore", &env.backup.display().to_string()])
            .arg(format!("file:{}", target.display()));
    } else {
        cmd.args([
            "backup",
            &src,
            &dest.display().to_string(),
            "--devices",
            &devs,
        ]);
    }
    cmd.args(["--set", &set, "--quiet"]).env("TMPDIR", &tmp);
    let shm_before = vdi_shm();
    let (tx, _rx) = mpsc::channel();
    let mut vdi = match Proc::spawn("vdi", 0, cmd, &tx) {
        Ok(p) => p,
        Err(e) => {
            r.fail(Failure::Setup, e);
            return r;
        }
    };
    let vdi_pid = vdi.child.id();
    let started = Instant::now();
    let kill_time = started + Duration::from_secs_f64(kill_ms / 1000.0);
    let mut engine: Option<u32> = None;
    while Instant::now() < kill_time && !vdi.poll() {
        if engine.is_none() {
            engine = children_of(vdi_pid).first().copied();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if engine.is_none() {
        engine = children_of(vdi_pid).first().copied();
    }
    let hang = o.hang_after;
    let mut engine_status: Option<(String, u64)> = None;
    let t_kill;
    if kill_engine {
        // The engine may not have started yet: wait for it (a short while).
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.is_none() && !vdi.poll() && Instant::now() < deadline {
            engine = children_of(vdi_pid).first().copied();
            std::thread::sleep(Duration::from_millis(1));
        }
        t_kill = mono_ns();
        match engine {
            Some(pid) if !vdi.poll() => {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            _ => r.missed = true,
        }
        let deadline = Instant::now() + hang;
        while !vdi.poll() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !vdi.poll() {
            r.fail(
                Failure::Hang,
                format!("vdi still running {hang:?} after its engine was killed"),
            );
            vdi.kill();
        }
    } else {
        t_kill = mono_ns();
        if vdi.poll() {
            r.missed = true;
        }
        vdi.kill();
        if engine.is_none() {
            engine = engine_by_set(&set);
        }
        if let Some(pid) = engine {
            // An engine's own give-up time (its --wait 10) shows as a slow abort, not
            // as a hang.
            let bound = hang + Duration::from_secs(5);
            match wait_foreign(pid, env.subreaper, Instant::now() + bound) {
                Some(s) => engine_status = Some(s),
                None => {
                    r.fail(
                        Failure::Hang,
                        format!("the engine (pid {pid}) still runs {bound:?} after vdi was killed"),
                    );
                    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                    let _ =
                        wait_foreign(pid, env.subreaper, Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
    let stderr = vdi.stderr_text();
    let vdi_ok = vdi.exit.is_some_and(|s| s.success());
    if kill_engine && !r.missed {
        use std::os::unix::process::ExitStatusExt;
        match vdi.exit {
            Some(st) if st.signal().is_some() || st.code() == Some(101) => r.fail(
                Failure::UnexpectedExit,
                format!("vdi ended with {}: {stderr}", vdi.status_text()),
            ),
            Some(st) if st.success() => {
                // Only if the engine had finished before the kill; checked below.
            }
            Some(_) => {
                let d = ms(t_kill, vdi.exited_at);
                r.done_ms.push(d);
                if d > 1000.0 {
                    r.fail(
                        Failure::SlowAbort,
                        format!("vdi exited {d:.0} ms after its engine was killed"),
                    );
                }
                if !stderr.contains("engine") {
                    r.fail(
                        Failure::WrongResult,
                        format!(
                            "vdi ({}) does not name the engine's death: {stderr:?}",
                            vdi.status_text()
                        ),
                    );
                }
            }
            None => {}
        }
    }
    if let Some((st, t)) = &engine_status
        && !r.missed
    {
        let d = ms(t_kill, *t);
        r.done_ms.push(d);
        if d > 1000.0 {
            r.fail(
                Failure::SlowAbort,
                format!("the engine exited {d:.0} ms after vdi was killed"),
            );
        }
        if st.starts_with("signal") || st == "exit 101" {
            r.fail(
                Failure::UnexpectedExit,
                format!("the engine ended with {st}"),
            );
        }
    }
    // Completion claims.
    if restore {
        if target.exists() {
            if !files_equal(&env.src, &target).unwrap_or(false) {
                r.fail(
                    Failure::ClaimedComplete,
                    format!("{} is in place but is not the source", target.display()),
                );
            }
        } else if vdi_ok {
            r.fail(
                Failure::ClaimedComplete,
                "vdi restore succeeded but the target does not exist".to_string(),
            );
        }
        let partial: Vec<String> = dir_entries(&run_dir)
            .into_iter()
            .filter(|n| n.contains("vdi-partial"))
            .collect();
        if !partial.is_empty() {
            r.fail(
                Failure::Leak,
                format!("partial restore files left: {partial:?}"),
            );
        }
    } else {
        let manifest = dest.join("manifest.json");
        if manifest.exists() {
            let ok = run_vdi(
                &env.vdi,
                &["verify", &dest.display().to_string(), "--quiet"],
                &tmp,
            );
            if let Err(e) = ok {
                r.fail(
                    Failure::ClaimedComplete,
                    format!("{} has a manifest but does not verify: {e}", dest.display()),
                );
            } else if kill_engine && !vdi_ok && !r.missed {
                r.fail(
                    Failure::ClaimedComplete,
                    format!(
                        "vdi failed ({}) but {} holds a complete backup: {stderr}",
                        vdi.status_text(),
                        dest.display()
                    ),
                );
            }
        } else if vdi_ok {
            r.fail(
                Failure::ClaimedComplete,
                "vdi backup succeeded without writing the manifest".to_string(),
            );
        }
    }
    if kill_engine && vdi_ok && !r.missed {
        // The engine's kill came after it had finished: a missed kill.
        r.missed = true;
    }
    let left = dir_entries(&tmp);
    if !left.is_empty() {
        r.fail(
            Failure::Leak,
            format!("left in the run's TMPDIR: {left:?} (victim {})", r.victim),
        );
    }
    socket_leak(&mut r, &set);
    shm_leak(&mut r, &shm_before);
    if r.failures.is_empty() {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    r
}
