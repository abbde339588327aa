//! What a fresh user hit (issue 15, item 4), each through the real binary: Ctrl-C during
//! a slow compression, a second Ctrl-C, a file backup restored into `sqlite:`, restored
//! modes, binary output into a terminal, replacing a database another process has open,
//! misleading messages, the soak's summary lines, `--version`, a directory as SOURCE,
//! one JSON object per command, per-device metrics and phase spans.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A backup of `src` with zstd at a high level, started; returns it once its stream
/// files hold data (so the client is compressing).
fn slow_backup(src: &Path, bk: &Path) -> std::process::Child {
    let child = vdi()
        .args([
            "backup",
            &s(src),
            &s(bk),
            "--compress",
            "zstd:19",
            "--devices",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the backup to be compressing",
        || {
            files_with(bk, ".stream.zst")
                .iter()
                .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
        },
    );
    child
}

#[test]
fn ctrl_c_during_a_slow_compression_stops_at_once_saying_so() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 5, 96 << 20);
    let bk = d.path().join("bk");
    let child = slow_backup(&src, &bk);
    let t = Instant::now();
    signal(child.id(), "INT");
    let r = wait_output(child, Duration::from_secs(60));
    let took = t.elapsed();
    eprintln!("Ctrl-C to exit: {} ms", took.as_millis());
    r.fails(
        130,
        &[
            "SIGINT (Ctrl-C): stopping",
            "nothing is marked complete",
            "interrupted",
        ],
    );
    assert!(
        !bk.exists(),
        "what the backup wrote is removed: {:?}",
        names_in(d.path())
    );
    // Nothing blocks the next backup.
    run(&["backup", &s(&src), &s(&bk), "--devices", "2"]).ok();
}

#[test]
fn a_second_ctrl_c_leaves_nothing_that_blocks_the_next_backup() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 6, 96 << 20);
    let bk = d.path().join("bk");
    let child = slow_backup(&src, &bk);
    signal(child.id(), "INT");
    signal(child.id(), "INT");
    let r = wait_output(child, Duration::from_secs(60));
    r.fails(130, &["SIGINT (Ctrl-C)"]);
    assert!(!bk.exists(), "{:?}", names_in(d.path()));
    run(&["backup", &s(&src), &s(&bk)]).ok();
}

#[test]
fn a_file_backup_into_sqlite_is_refused_before_streaming() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 7, 300_000);
    let bk = d.path().join("bk");
    run(&["backup", &s(&src), &s(&bk)]).ok();
    let t = d.path().join("t.db");
    let r = run(&["restore", &s(&bk), &format!("sqlite:{}", s(&t)), "--json"]);
    r.fails(2, &["not a SQLite database", &format!("file:{}", s(&t))]);
    // Refused before a set was made: the summary has no engine, and nothing was written.
    assert_eq!(r.json()["ok"], false);
    assert!(!r.stderr.contains("engine"), "{}", r.stderr);
    assert!(names_in(d.path()).iter().all(|n| !n.starts_with("t.db")));
}

#[test]
fn restored_files_keep_their_mode() {
    let d = tempfile::tempdir().unwrap();
    for mode in [0o640, 0o604, 0o600] {
        let src = d.path().join(format!("src-{mode:o}"));
        write_pattern(&src, 8, 100_000);
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode)).unwrap();
        let bk = d.path().join(format!("bk-{mode:o}"));
        run(&["backup", &s(&src), &s(&bk)]).ok();
        let out = d.path().join(format!("out-{mode:o}"));
        run(&["restore", &s(&bk), &s(&out)]).ok();
        assert_eq!(mode_of(&out), mode, "{}", out.display());
        assert_eq!(digest(&out), digest(&src));
        // Over an existing file of another mode, with --force, too.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
        run(&["restore", &s(&bk), &s(&out), "--force"]).ok();
        assert_eq!(mode_of(&out), mode);
    }
}

/// Runs `cmd` (a shell command line) with a terminal as standard output (`script`).
fn on_a_terminal(cmd: &str) -> Option<Run> {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no script(1) to give the command a terminal");
        return None;
    }
    let c = std::process::Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Some(wait_output(c, Duration::from_secs(60)))
}

#[test]
fn binary_output_into_a_terminal_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 9, 100_000);
    let v = env!("CARGO_BIN_EXE_vdi");
    let Some(r) = on_a_terminal(&format!("{v} backup {} -; echo exit=$?", s(&src))) else {
        return;
    };
    let out = r.stdout_str();
    assert!(out.contains("standard output is a terminal"), "{out}");
    assert!(out.contains("exit=2"), "{out}");
    assert!(
        out.len() < 2000,
        "no binary was written: {} bytes",
        out.len()
    );
    let bk = d.path().join("bk");
    run(&["backup", &s(&src), &s(&bk)]).ok();
    let r = on_a_terminal(&format!("{v} restore {} -; echo exit=$?", s(&bk))).unwrap();
    assert!(r.stdout_str().contains("exit=2"), "{}", r.stdout_str());
    // Into a pipe or a file it works as before.
    let out = d.path().join("stream");
    run_in(&["backup", &s(&src), "-"], None, Some(&out)).ok();
    assert!(std::fs::metadata(&out).unwrap().len() > 100_000);
}

#[test]
fn force_over_a_database_another_process_has_open_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("shop.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let bk = d.path().join("bk");
    run(&["backup", &format!("sqlite:{}", s(&db)), &s(&bk)]).ok();
    let target = d.path().join("live.db");
    std::fs::copy(&db, &target).unwrap();
    // This test process holds the database open (WAL: with its -wal and -shm).
    let open = rusqlite::Connection::open(&target).unwrap();
    open.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let r = run(&[
        "restore",
        &s(&bk),
        &format!("sqlite:{}", s(&target)),
        "--force",
    ]);
    r.fails(4, &["is open in process", &std::process::id().to_string()]);
    let n: i64 = open
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "the open database is untouched");
    assert!(Path::new(&format!("{}-wal", s(&target))).exists());
    drop(open);
    run(&[
        "restore",
        &s(&bk),
        &format!("sqlite:{}", s(&target)),
        "--force",
    ])
    .ok();
}

#[test]
fn messages_that_used_to_mislead() {
    let d = tempfile::tempdir().unwrap();
    // A backup application started for a backup, an engine for a restore.
    let name = set_name("mismatch");
    let client = spawn(&[
        "client",
        "backup",
        "--set",
        &name,
        &s(&d.path().join("bk")),
        "--wait",
        "60",
    ]);
    wait_until(Duration::from_secs(30), "the client's set", || {
        run(&["sets", &name, "--json"]).stdout_str().contains(&name)
    });
    let e = run(&["engine", "restore", "--set", &name, &s(&d.path().join("t"))]);
    let c = wait_output(client, Duration::from_secs(30));
    c.fails(
        8,
        &["opened the set for a restore, but this backup application was started for a backup"],
    );
    assert!(!e.stderr.contains("went away"), "{}", e.stderr);
    assert!(e.stderr.contains("its own output says why"), "{}", e.stderr);
    // "1 device", not "1 devices".
    let src = d.path().join("src");
    write_pattern(&src, 10, 10_000);
    let one = d.path().join("one");
    let b = run(&["backup", &s(&src), &s(&one)]).ok().stderr.clone();
    assert!(b.contains("through 1 device in"), "{b}");
    let r = run(&[
        "restore",
        &s(&one),
        &s(&d.path().join("o")),
        "--devices",
        "2",
    ]);
    r.fails(2, &["made with 1 device;"]);
    assert!(!r.stderr.contains("1 devices"), "{}", r.stderr);
    // No "(backup id -)" for a stream without a manifest.
    let stream = d.path().join("s.vdis");
    run_in(&["backup", &s(&src), "-"], None, Some(&stream)).ok();
    let v = run_in(&["verify", "-"], Some(&stream), None)
        .ok()
        .stderr
        .clone();
    assert!(v.contains("complete and intact"), "{v}");
    assert!(!v.contains("backup id -"), "{v}");
    // A directory as SOURCE points to dir:PATH and to tar.
    let dir = d.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    run(&["backup", &s(&dir), &s(&d.path().join("b2"))]).fails(
        3,
        &["is a directory", &format!("dir:{}", s(&dir)), "tar -C"],
    );
}

#[test]
fn verify_json_of_a_damaged_backup_is_one_object() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 11, 200_000);
    let bk = d.path().join("bk");
    run(&["backup", &s(&src), &s(&bk)]).ok();
    std::fs::write(bk.join("device-0.stream"), b"short").unwrap();
    let r = run(&["verify", &s(&bk), "--json"]);
    r.fails(5, &[]);
    let out = r.stdout_str();
    assert_eq!(
        out.lines().filter(|l| l.starts_with('{')).count(),
        1,
        "{out}"
    );
    assert_eq!(r.json()["ok"], false);
}

#[test]
fn soak_prints_a_summary_every_few_seconds_not_a_line_per_run() {
    let d = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let r = vdi()
        .args([
            "soak",
            "--runs",
            "12",
            "--seed",
            "3",
            "--max-size",
            "256K",
            "--dir",
            &s(d.path()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait_output(r, Duration::from_secs(300));
    r.ok();
    let secs = t.elapsed().as_secs();
    let lines = r
        .stderr
        .lines()
        .filter(|l| l.contains("soak: run "))
        .count() as u64;
    assert!(lines >= 1, "{}", r.stderr);
    assert!(
        lines <= 1 + secs / 5 + 1,
        "{lines} progress lines in {secs} s: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("soak: 12 runs, 0 failures"),
        "{}",
        r.stderr
    );
}

#[test]
fn version_has_a_build_id() {
    let v = run(&["--version"]).ok().stdout_str();
    // vdi 0.1.0 (0123456789ab[-dirty] 2026-12-07), or a packager's VDI_BUILD_ID.
    let inner = v
        .trim()
        .strip_prefix(concat!("vdi ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{v}"));
    assert!(!inner.trim().is_empty(), "{v}");
    let commit = inner.split([' ', '-']).next().unwrap();
    assert!(
        inner == "unknown build"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{v}"
    );
    let sub = run(&["backup", "--version"]).ok().stdout_str();
    assert!(
        sub.contains(inner),
        "the same build id for every command: {sub}"
    );
}

#[test]
fn json_summaries_carry_per_device_metrics_and_v_shows_the_phases() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 12, 3 << 20);
    let bk = d.path().join("bk");
    let r = run(&[
        "backup",
        &s(&src),
        &s(&bk),
        "--devices",
        "3",
        "--compress",
        "zstd",
        "--json",
    ]);
    r.ok();
    let j = r.json();
    let m = j["device_metrics"].as_array().unwrap();
    assert_eq!(m.len(), 3, "{j}");
    let mut sum = 0;
    let mut stored = 0;
    for (i, x) in m.iter().enumerate() {
        assert_eq!(x["device"], i);
        for f in [
            "bytes",
            "stored_bytes",
            "bytes_per_second",
            "commands",
            "client_waited_seconds",
            "engine_waited_seconds",
            "bottleneck",
            "retries",
        ] {
            assert!(!x[f].is_null(), "{f} missing: {x}");
        }
        assert!(x["commands"].as_u64().unwrap() > 0, "{x}");
        sum += x["bytes"].as_u64().unwrap();
        stored += x["stored_bytes"].as_u64().unwrap();
    }
    assert_eq!(sum, j["stream_bytes"].as_u64().unwrap());
    assert_eq!(stored, j["stored_bytes"].as_u64().unwrap());
    let out = d.path().join("out");
    let r = run(&["restore", &s(&bk), &s(&out), "--json"]);
    r.ok();
    let m = r.json()["device_metrics"].as_array().unwrap().clone();
    assert_eq!(
        m.iter().map(|x| x["bytes"].as_u64().unwrap()).sum::<u64>(),
        sum
    );
    assert!(m.iter().all(|x| x["stored_bytes"].is_null()));
    // -v: each phase as it ends, with its time.
    let r = run(&["-v", "backup", &s(&src), &s(&d.path().join("bk2"))]);
    r.ok();
    for phase in ["configure", "stream", "commit"] {
        assert!(
            r.stderr
                .lines()
                .any(|l| l.contains(phase) && l.contains("close") && l.contains("time.busy")),
            "no {phase} span in: {}",
            r.stderr
        );
    }
    // Without -v: none.
    let r = run(&["backup", &s(&src), &s(&d.path().join("bk3"))]);
    r.ok();
    assert!(!r.stderr.contains("time.busy"), "{}", r.stderr);
}

/// A tmux server of its own, on an 80-column terminal; killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(cmd: &str) -> Option<Tmux> {
        if std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: no tmux to show the bars on a terminal");
            return None;
        }
        let t = Tmux(format!("vdi-test-{}", std::process::id()));
        let st = std::process::Command::new("tmux")
            .args([
                "-L",
                &t.0,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "30",
                cmd,
            ])
            .env_remove("TMUX")
            .status()
            .unwrap();
        assert!(st.success());
        Some(t)
    }
    /// The screen, row by row.
    fn screen(&self) -> String {
        let o = std::process::Command::new("tmux")
            .args(["-L", &self.0, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn keys(&self, k: &str) {
        std::process::Command::new("tmux")
            .args(["-L", &self.0, "send-keys", k])
            .status()
            .unwrap();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .status();
    }
}

#[test]
fn bars_fit_80_columns_show_what_is_stored_and_go_at_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write_pattern(&src, 13, 96 << 20);
    let bk = d.path().join("bk");
    let cmd = format!(
        "{} backup {} {} --compress zstd:19 --devices 2; echo EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_vdi"),
        s(&src),
        s(&bk)
    );
    let Some(t) = Tmux::start(&cmd) else { return };
    wait_until(Duration::from_secs(60), "the bars", || {
        let sc = t.screen();
        sc.contains("dev 0 [") && sc.contains("dev 1 [") && sc.contains("stored")
    });
    let shown = t.screen();
    // A bar that wrapped would leave the end of its text on a row of its own.
    for l in shown
        .lines()
        .filter(|l| l.contains("ETA") || l.contains("stored"))
    {
        assert!(
            l.trim_start().starts_with("dev "),
            "a bar wrapped: {l:?} in\n{shown}"
        );
        assert!(
            l.contains("ETA") && l.contains("stored"),
            "a bar wrapped: {l:?} in\n{shown}"
        );
    }
    assert!(shown.contains("ETA"), "{shown}");
    t.keys("C-c");
    wait_until(Duration::from_secs(30), "the exit", || {
        t.screen().contains("EXIT=130")
    });
    let after = t.screen();
    assert!(after.contains("stopping"), "{after}");
    assert!(!after.contains("dev 0 ["), "a stale bar stayed: {after}");
    assert!(!bk.exists());
}
