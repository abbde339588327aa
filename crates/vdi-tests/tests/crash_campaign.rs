//! The crash campaign's short mode (the long one is `vdi-crash --runs 600 ...`): SIGKILL
//! the engine, the client or a secondary client at seeded random points of library
//! backups and restores, and of `vdi backup` / `vdi restore`, and check that the
//! survivors abort within a second, callbacks run exactly once, nothing hangs, nothing is
//! left behind and nothing incomplete claims completion. Plus deterministic reproductions
//! of what the campaign found in the `vdi` tool.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vdi_tests::campaign::{self, Options};
use vdi_tests::socket_exists;

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

/// `target/<profile>/vdi`: cargo builds every binary of the workspace's packages that
/// have integration tests before it runs them, when the whole workspace is tested.
fn vdi_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("vdi");
    p.exists().then_some(p)
}

fn campaign(o: &Options) -> campaign::Summary {
    let sum = campaign::run(o, &mut |l| eprintln!("{l}"));
    eprintln!("{}", sum.table());
    sum
}

fn base(seed: u64, runs: u32) -> Options {
    Options {
        runs,
        seed,
        peer: PathBuf::from(PEER),
        keep_going: true,
        lib_bytes: 8 << 20,
        ..Options::default()
    }
}

#[test]
fn library_crash_campaign_short() {
    let fixed = campaign(&base(0x00C0_FFEE, 25));
    let seed = fastrand::u64(..);
    eprintln!("random seed: {seed} (repeat: vdi-crash --seed {seed} --runs 15)");
    let random = campaign(&base(seed, 15));
    for (name, s) in [("fixed", &fixed), ("random", &random)] {
        assert!(
            s.failed().is_empty(),
            "{name} seed {}: {} of {} runs failed:\n{}",
            s.seed,
            s.failed().len(),
            s.runs.len(),
            s.table()
        );
    }
    assert_eq!(fixed.runs.len() + random.runs.len(), 40);
}

#[test]
fn tool_crash_campaign_short() {
    let Some(vdi) = vdi_binary() else {
        eprintln!(
            "SKIPPED: the vdi tool's crash runs: no vdi binary beside the test (build it: cargo build -p vdi-cli, or run cargo test --workspace)"
        );
        return;
    };
    let mut o = base(0x7001, 10);
    o.vdi = Some(vdi);
    o.tool_percent = 100;
    o.tool_bytes = 32 << 20;
    let s = campaign(&o);
    assert!(s.tool_skipped.is_none(), "{:?}", s.tool_skipped);
    assert!(
        s.failed().is_empty(),
        "{} of {} tool runs failed:\n{}",
        s.failed().len(),
        s.runs.len(),
        s.table()
    );
}

// ---------------------------------------------------------------------------------------
// What the campaign found in the `vdi` tool, reproduced without randomness.

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

/// Waits for `pid` (reparented to this process, a subreaper) and returns its exit code
/// (`None`: still running at the deadline; then it is killed).
fn wait_orphan(pid: u32, within: Duration) -> Option<i32> {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let p = Pid::from_raw(pid as i32).unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some((_, st))) = waitpid(Some(p), WaitOptions::NOHANG) {
            return Some(
                st.exit_status()
                    .unwrap_or_else(|| 128 + st.terminating_signal().unwrap_or(0)),
            );
        }
        if Instant::now() >= deadline {
            let _ = kill_process(p, Signal::KILL);
            let _ = waitpid(Some(p), WaitOptions::empty());
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vdi-crash-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    d
}

fn entries(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The engine reports on standard error, which `vdi backup` reads; once `vdi backup` is
/// killed nobody reads it, and the engine's last words must not turn into a panic (exit
/// 101). Reproduced with a standard error whose reader is gone.
#[test]
fn engine_with_a_closed_stderr_fails_cleanly_instead_of_panicking() {
    let Some(vdi) = vdi_binary() else {
        eprintln!("SKIPPED: no vdi binary beside the test");
        return;
    };
    let (r, w) = rustix::pipe::pipe().unwrap();
    drop(r);
    let st = Command::new(&vdi)
        .args([
            "engine",
            "backup",
            "--set",
            &format!("no-such-set-{}", std::process::id()),
            "--wait",
            "0",
            "file:/dev/null",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(w))
        .status()
        .unwrap();
    assert_ne!(
        st.code(),
        Some(101),
        "the engine panicked (exit 101) because its standard error is a broken pipe"
    );
}

/// `vdi backup` SIGKILLed while its engine streams (the engine blocked on a standard
/// input source that the test controls): the engine must notice and exit by itself,
/// without panicking, and nothing may stay in `$TMPDIR` (the engine's scratch directory
/// `vdi-engine-*` is created and removed by `vdi backup`, so it survives its SIGKILL).
#[test]
fn backup_client_killed_leaves_no_scratch_dir_and_engine_exits_cleanly() {
    let Some(vdi) = vdi_binary() else {
        eprintln!("SKIPPED: no vdi binary beside the test");
        return;
    };
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let dir = scratch("scratch");
    let set = format!("crash-scratch-{}", std::process::id());
    let mut child = Command::new(&vdi)
        .args(["backup", "-", dir.join("dest").to_str().unwrap()])
        .args(["--set", &set, "--quiet"])
        .env("TMPDIR", dir.join("tmp"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(&vec![7u8; 3 << 20]).unwrap();
    // Wait until the engine runs and the set exists: the operation is under way, and the
    // engine now waits for more input.
    let deadline = Instant::now() + Duration::from_secs(30);
    let engine = loop {
        let c = children_of(child.id());
        if let Some(&e) = c.first()
            && socket_exists(&set)
        {
            break e;
        }
        assert!(Instant::now() < deadline, "the engine never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    // More input (the engine sends it and finds the set aborted), then the end of it.
    let _ = input.write_all(&vec![7u8; 1 << 20]);
    drop(input);
    let code = wait_orphan(engine, Duration::from_secs(10));
    let took = killed.elapsed();
    let left = entries(&dir.join("tmp"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut problems = Vec::new();
    match code {
        None => problems.push("the engine still ran 10 s after vdi was killed".to_owned()),
        Some(101) => problems.push("the engine panicked (exit 101) after vdi was killed".into()),
        Some(0) => problems.push("the engine claimed success after vdi was killed".into()),
        Some(_) => {}
    }
    if took >= Duration::from_secs(2) {
        problems.push(format!("the engine took {took:?} to exit"));
    }
    if !left.is_empty() {
        problems.push(format!(
            "left in TMPDIR after vdi backup was SIGKILLed: {left:?}"
        ));
    }
    if socket_exists(&set) {
        problems.push(format!("the set's socket {set} is still there"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `vdi restore` SIGKILLed just after it started its engine, before the engine opened
/// the set: the engine (started with `--wait 10`) waits for a set that will never come
/// back, 10 s, instead of seeing that the backup application that started it is gone.
/// Made deterministic by stopping the engine (SIGSTOP) as soon as it exists, killing
/// `vdi`, and letting the engine go on.
#[test]
fn restore_engine_orphaned_before_attaching_exits_at_once() {
    let Some(vdi) = vdi_binary() else {
        eprintln!("SKIPPED: no vdi binary beside the test");
        return;
    };
    use rustix::process::{Pid, Signal, kill_process};
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let dir = scratch("orphan");
    // A small backup to restore.
    std::fs::write(dir.join("src.img"), vec![5u8; 1 << 20]).unwrap();
    let ok = Command::new(&vdi)
        .args(["backup", &format!("file:{}", dir.join("src.img").display())])
        .arg(dir.join("bk"))
        .arg("--quiet")
        .env("TMPDIR", dir.join("tmp"))
        .status()
        .unwrap();
    assert!(ok.success());
    let mut child = Command::new(&vdi)
        .arg("restore")
        .arg(dir.join("bk"))
        .arg(format!("file:{}", dir.join("out.img").display()))
        .arg("--quiet")
        .env("TMPDIR", dir.join("tmp"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The engine as soon as it runs `vdi engine` (after exec, before it can have
    // opened the set: it has yet to parse its arguments and open the target).
    let engine = loop {
        if let Some(&e) = children_of(child.id()).first()
            && std::fs::read(format!("/proc/{e}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"engine"))
        {
            break e;
        }
        assert!(Instant::now() < deadline, "the engine never started");
        std::hint::spin_loop();
    };
    let pe = Pid::from_raw(engine as i32).unwrap();
    kill_process(pe, Signal::STOP).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    kill_process(pe, Signal::CONT).unwrap();
    let code = wait_orphan(engine, Duration::from_secs(12));
    let took = killed.elapsed();
    let partial: Vec<String> = entries(&dir)
        .into_iter()
        .filter(|n| n.contains("vdi-partial"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let mut problems = Vec::new();
    match code {
        None => problems.push("the engine still ran 12 s after vdi was killed".to_owned()),
        Some(101) => problems.push("the orphaned engine panicked (exit 101)".into()),
        Some(_) => {}
    }
    if took >= Duration::from_secs(2) {
        problems.push(format!(
            "the orphaned engine took {took:?} to exit (exit code {code:?})"
        ));
    }
    if !partial.is_empty() {
        problems.push(format!("partial restore files left: {partial:?}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
