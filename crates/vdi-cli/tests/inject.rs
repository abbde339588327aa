//! `--inject`: every fault, in either role, at the first, a middle and the last command,
//! surfaces as a clear error (exit code; a message naming the command number, the code
//! and its meaning, and what to do), never as a backup that claims completion or a
//! restore that leaves a target behind; a delay still gives a backup that verifies and
//! restores byte for byte. Every run has its own TMPDIR, which must be empty afterwards,
//! and its own set name, which must leave no socket and nothing in /dev/shm.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Source size: with 64K transfers, about fifty Writes.
const SIZE: u64 = (3 << 20) + 1234;

/// A test's directory, its TMPDIR and its source file.
struct Bed {
    dir: tempfile::TempDir,
    tmp: PathBuf,
    src: PathBuf,
}

impl Bed {
    fn new(seed: u64) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let src = dir.path().join("src.img");
        write_pattern(&src, seed, SIZE);
        Bed { dir, tmp, src }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `vdi args` with this bed's TMPDIR; checks that the run left nothing behind.
    fn run(&self, args: &[&str]) -> Run {
        let set = set_name("inj");
        let mut c = vdi();
        c.args(args);
        if ["backup", "restore", "engine", "client"].contains(&args[0]) {
            c.args(["--set", &set]);
        }
        c.env("TMPDIR", &self.tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let r = wait_output(c.spawn().unwrap(), Duration::from_secs(60));
        self.assert_clean(&set);
        r
    }

    fn assert_clean(&self, set: &str) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp).unwrap().flatten().collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
        let shm: Vec<_> = std::fs::read_dir("/dev/shm")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(set))
                    .collect()
            })
            .unwrap_or_default();
        assert!(shm.is_empty(), "left in /dev/shm: {shm:?}");
        assert!(
            !std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| t.contains(set)),
            "the set's socket is still there"
        );
    }

    /// Backs the source up (64K transfers); returns the backup directory.
    fn backup(&self, name: &str, devices: u32, extra: &[&str]) -> (PathBuf, Run) {
        let bk = self.path(name);
        let d = devices.to_string();
        let mut args = vec![
            "backup",
            self.src.to_str().unwrap(),
            bk.to_str().unwrap(),
            "--devices",
            &d,
            "--max-transfer-size",
            "64K",
        ];
        args.extend_from_slice(extra);
        let r = self.run(&args);
        (bk, r)
    }

    fn restore(&self, bk: &Path, target: &Path, extra: &[&str]) -> Run {
        let mut args = vec![
            "restore",
            bk.to_str().unwrap(),
            target.to_str().unwrap(),
            "--max-transfer-size",
            "64K",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// The commands each role handles in a fault-free run, read from the warnings about
    /// faults that never acted: (engine, client).
    fn counts(&self, op: &str, bk: Option<&Path>) -> (u64, u64) {
        let never = [
            "--inject",
            "engine:abort@1000000",
            "--inject",
            "client:abort@1000000",
        ];
        let r = match bk {
            None => {
                let (bk, r) = self.backup("count", 1, &never);
                std::fs::remove_dir_all(bk).unwrap();
                r
            }
            Some(bk) => {
                let t = self.path("count.img");
                let r = self.restore(bk, &t, &never);
                std::fs::remove_file(t).unwrap();
                r
            }
        };
        r.ok();
        let count = |what: &str| -> u64 {
            let i = r
                .stderr
                .find(what)
                .unwrap_or_else(|| panic!("{op}: no {what:?} in {}", r.stderr));
            r.stderr[i + what.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (
            count("the engine sent only "),
            count("the backup application handled only "),
        )
    }
}

/// What a failed run must say about fault `f`: its spelling, the command number, what to
/// do, and for a fail the code's name, number and meaning.
fn words(f: &str) -> Vec<String> {
    let n = f.split('@').nth(1).unwrap().split('=').next().unwrap();
    let mut w = vec![
        format!("--inject {f}"),
        format!("command {n} ("),
        "run the command again without --inject".into(),
    ];
    if let Some(code) = f.split('=').nth(1) {
        let (name, meaning) = match code {
            "1117" => ("ERROR_IO_DEVICE", "an I/O error on the device"),
            "112" => ("ERROR_DISK_FULL", "the media is full"),
            "23" => ("ERROR_CRC", "a data error"),
            "30" => ("ERROR_READ_FAULT", "the device cannot be read"),
            _ => panic!("add code {code} here"),
        };
        w.push(format!("{name} ({code}: {meaning}"));
    } else if f.contains("abort") {
        w.push("SignalAbort".into());
    }
    w
}

fn exit_of(f: &str) -> i32 {
    if f.ends_with("=112") { 6 } else { 8 }
}

/// Runs each fault on a backup; none may leave a backup that verifies or claims
/// completion.
fn backup_faults(bed: &Bed, devices: u32, faults: &[String]) {
    for f in faults {
        let (bk, r) = bed.backup("bk", devices, &["--inject", f]);
        let w = words(f);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        r.fails(exit_of(f), &w);
        r.fails(
            exit_of(f),
            &["backup was aborted and is not marked complete"],
        );
        assert!(!claims_completion(&bk), "{f}: the backup claims completion");
        let v = bed.run(&["verify", bk.to_str().unwrap()]);
        assert_ne!(v.code, 0, "{f}: the failed backup verifies: {}", v.stderr);
        let _ = std::fs::remove_dir_all(&bk);
    }
}

/// Runs each fault on a restore over an existing target (with --force); the old target
/// must stay as it was, with no partial file beside it, and the backup intact.
fn restore_faults(bed: &Bed, bk: &Path, faults: &[String]) {
    let target = bed.path("target.img");
    for f in faults {
        std::fs::write(&target, b"the previous contents").unwrap();
        let r = bed.restore(bk, &target, &["--force", "--inject", f]);
        let w = words(f);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        r.fails(exit_of(f), &w);
        r.fails(
            exit_of(f),
            &["restore was aborted and the target was not written"],
        );
        assert!(
            std::fs::read(&target).unwrap() == b"the previous contents",
            "{f}: the target was replaced"
        );
        assert!(
            files_with(bed.dir.path(), "vdi-partial").is_empty(),
            "{f}: a partial restore was left"
        );
        let fresh = bed.path("fresh.img");
        let r = bed.restore(bk, &fresh, &["--inject", f]);
        assert_eq!(r.code, exit_of(f), "{f}: {}", r.stderr);
        assert!(!fresh.exists(), "{f}: a new target appeared");
    }
    bed.run(&["verify", bk.to_str().unwrap()]).ok();
}

fn grid(role: &str, first: u64, mid: u64, last: u64) -> Vec<String> {
    let mut v = vec![
        format!("{role}:fail@{first}=1117"),
        format!("{role}:fail@{mid}=23"),
        format!("{role}:fail@{last}=112"),
        format!("{role}:fail@{}=1117", last - 1),
        format!("{role}:abort@{first}"),
        format!("{role}:abort@{mid}"),
        format!("{role}:abort@{last}"),
    ];
    if role == "engine" {
        v.push(format!("{role}:fail@{mid}=30"));
    }
    v
}

#[test]
fn engine_faults_fail_backups_loudly() {
    let bed = Bed::new(11);
    let (e, _) = bed.counts("backup", None);
    assert!(e > 40, "too few commands for the test: {e}");
    backup_faults(&bed, 1, &grid("engine", 1, e / 2, e));
    backup_faults(&bed, 3, &[format!("engine:fail@{}=1117", e / 3)]);
}

#[test]
fn client_faults_fail_backups_loudly() {
    let bed = Bed::new(12);
    let (_, c) = bed.counts("backup", None);
    assert!(c > 40, "too few commands for the test: {c}");
    backup_faults(&bed, 1, &grid("client", 1, c / 2, c));
    backup_faults(&bed, 3, &[format!("client:abort@{}", c / 3)]);
}

#[test]
fn engine_faults_fail_restores_loudly() {
    let bed = Bed::new(13);
    let (bk, r) = bed.backup("good", 1, &[]);
    r.ok();
    let (e, _) = bed.counts("restore", Some(&bk));
    assert!(e > 40, "too few commands for the test: {e}");
    restore_faults(&bed, &bk, &grid("engine", 1, e / 2, e));
    let (bk3, r) = bed.backup("good3", 3, &[]);
    r.ok();
    restore_faults(&bed, &bk3, &[format!("engine:abort@{}", e / 3)]);
}

#[test]
fn client_faults_fail_restores_loudly() {
    let bed = Bed::new(14);
    let (bk, r) = bed.backup("good", 1, &[]);
    r.ok();
    let (_, c) = bed.counts("restore", Some(&bk));
    assert!(c > 40, "too few commands for the test: {c}");
    // The backup application receives the Reads the engine sent before it saw the end
    // of the stream only if it fetches them before the device enters IO-ERROR: its last
    // few command numbers vary from run to run. The grid stays below them ...
    restore_faults(&bed, &bk, &grid("client", 1, c / 2, c - 4));
    let (bk3, r) = bed.backup("good3", 3, &[]);
    r.ok();
    restore_faults(&bed, &bk3, &[format!("client:fail@{}=1117", c / 3)]);
    // ... and these land on the last Reads, the ClearError or the Complete, or past the
    // end: either the restore fails naming the fault, or it never acted and the restore
    // is good.
    let target = bed.path("t.img");
    for n in c - 3..=c + 1 {
        for f in [format!("client:fail@{n}=1117"), format!("client:abort@{n}")] {
            let _ = std::fs::remove_file(&target);
            let r = bed.restore(&bk, &target, &["--inject", &f]);
            if r.code == 0 {
                assert!(r.stderr.contains("never acted"), "{f}: {}", r.stderr);
                assert_eq!(digest(&target), digest(&bed.src), "{f}");
            } else {
                let w = words(&f);
                let w: Vec<&str> = w.iter().map(String::as_str).collect();
                r.fails(8, &w);
                assert!(!target.exists(), "{f}");
            }
        }
    }
}

#[test]
fn delays_still_give_a_backup_that_restores_byte_for_byte() {
    let bed = Bed::new(15);
    let (bk, r) = bed.backup(
        "bk",
        2,
        &[
            "--inject",
            "engine:delay@1=150ms",
            "--inject",
            "client:delay@20=150ms",
            "--inject",
            "engine:delay@40=0.1s",
        ],
    );
    // "0.1s" is not a duration: the whole command line is refused.
    r.fails(2, &["bad fault 'engine:delay@40=0.1s'", "ROLE:fail@N=CODE"]);
    assert!(!bk.exists());
    let (bk, r) = bed.backup(
        "bk",
        2,
        &[
            "--inject",
            "engine:delay@1=150ms",
            "--inject",
            "client:delay@20=150ms",
            "--inject",
            "engine:delay@40=100",
        ],
    );
    r.ok();
    assert!(claims_completion(&bk));
    bed.run(&["verify", bk.to_str().unwrap()]).ok();
    let target = bed.path("restored.img");
    bed.restore(
        &bk,
        &target,
        &[
            "--inject",
            "client:delay@3=150ms",
            "--inject",
            "engine:delay@30=150ms",
        ],
    )
    .ok();
    assert_eq!(digest(&target), digest(&bed.src));
}

#[test]
fn faults_that_never_act_are_reported_and_change_nothing() {
    let bed = Bed::new(16);
    let (bk, r) = bed.backup("bk", 1, &["--inject", "client:fail@9999=1117"]);
    r.ok();
    assert!(
        r.stderr
            .contains("--inject client:fail@9999=1117 never acted"),
        "{}",
        r.stderr
    );
    let target = bed.path("t.img");
    let r = bed.restore(&bk, &target, &["--inject", "engine:abort@9999"]);
    r.ok();
    assert!(r.stderr.contains("--inject engine:abort@9999 never acted"));
    assert_eq!(digest(&target), digest(&bed.src));
}

#[test]
fn bad_fault_syntax_is_a_usage_error() {
    let bed = Bed::new(17);
    for bad in [
        "engine",
        "disk:fail@1=5",
        "engine:fail@0=5",
        "engine:fail@3",
        "engine:fail@3=0",
        "client:fail@3=NO_SUCH_CODE",
        "engine:delay@3",
        "engine:abort@3=1",
        "engine:explode@3",
    ] {
        let (bk, r) = bed.backup("bk", 1, &["--inject", bad]);
        r.fails(2, &[&format!("bad fault '{bad}'"), "ROLE:fail@N=CODE"]);
        assert!(!bk.exists(), "{bad}");
    }
    let help = bed.run(&["backup", "--help"]);
    help.ok();
    assert!(help.stdout_str().contains("--inject <FAULT>"));
    assert!(help.stdout_str().contains("For testing"));
}

#[test]
fn faults_in_roles_started_by_hand() {
    let bed = Bed::new(18);
    let bk = bed.path("bk");
    // A fault of the other role is refused.
    let r = bed.run(&[
        "engine",
        "backup",
        bed.src.to_str().unwrap(),
        "--inject",
        "client:fail@1=112",
    ]);
    r.fails(2, &["acts in the backup application", "vdi engine backup"]);
    let r = bed.run(&["client", "backup", "bk", "--inject", "engine:abort@1"]);
    r.fails(2, &["acts in the engine"]);

    // The backup application fails the 5th Write as if its disk were full.
    let (cr, er) = by_hand(
        &bed,
        &bk,
        "client:fail@5=ERROR_DISK_FULL",
        "engine:delay@2=50ms",
    );
    cr.fails(
        6,
        &[
            "--inject client:fail@5=112",
            "command 5 (",
            "ERROR_DISK_FULL (112: the media is full)",
        ],
    );
    er.fails(6, &["ERROR_DISK_FULL (112)"]);
    assert!(!claims_completion(&bk));
}

/// Runs `vdi client backup` with `client_fault` and `vdi engine backup` with
/// `engine_fault` by hand on one set; returns both runs.
fn by_hand(bed: &Bed, bk: &Path, client_fault: &str, engine_fault: &str) -> (Run, Run) {
    let set = set_name("inj-hand");
    let env = |c: &mut std::process::Command| {
        c.env("TMPDIR", &bed.tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    };
    let mut c = vdi();
    c.args([
        "client",
        "backup",
        "--set",
        &set,
        "--force",
        bk.to_str().unwrap(),
        "--inject",
        client_fault,
    ]);
    env(&mut c);
    let client = c.spawn().unwrap();
    let mut e = vdi();
    e.args([
        "engine",
        "backup",
        "--set",
        &set,
        "--max-transfer-size",
        "64K",
        bed.src.to_str().unwrap(),
        "--inject",
        engine_fault,
    ]);
    env(&mut e);
    let engine = e.spawn().unwrap();
    let cr = wait_output(client, Duration::from_secs(60));
    let er = wait_output(engine, Duration::from_secs(60));
    bed.assert_clean(&set);
    (cr, er)
}

/// An engine that keeps sending Writes after the backup application failed one finds the
/// device in IO-ERROR (VD_E_IO_ERROR); it must report the failure that caused it (here:
/// the media is full, exit 6), not the IO-ERROR state it ran into.
#[test]
fn the_engine_reports_the_failed_write_not_the_io_error_state() {
    let bed = Bed::new(20);
    let bk = bed.path("bk");
    // The engine stalls before its next Write, so the backup application has failed the
    // previous one by the time it is sent.
    for n in 2..6 {
        let (cr, er) = by_hand(
            &bed,
            &bk,
            &format!("client:fail@{n}=112"),
            &format!("engine:delay@{}=200ms", n + 1),
        );
        cr.fails(6, &[&format!("command {n} (")]);
        er.fails(
            6,
            &["the backup application's media is full: it answered ERROR_DISK_FULL (112)"],
        );
        assert!(!claims_completion(&bk));
    }
}

/// Near the end of a three-device restore the other devices are finishing (ClearError,
/// Complete) when one fails: the error must be the fault, not its echo on another device
/// ("the operation was aborted"), whatever the order the threads end in. A fault past
/// the end must leave a good restore and say it never acted.
#[test]
fn a_fault_on_one_device_is_reported_not_its_echo_on_another() {
    let bed = Bed::new(19);
    let (bk, r) = bed.backup("good3", 3, &[]);
    r.ok();
    let (e, _) = bed.counts("restore", Some(&bk));
    let target = bed.path("t.img");
    for n in e.saturating_sub(8)..=e + 1 {
        for code in ["1117", "995"] {
            let f = format!("engine:fail@{n}={code}");
            let _ = std::fs::remove_file(&target);
            let r = bed.restore(&bk, &target, &["--inject", &f]);
            if r.code == 0 {
                assert!(r.stderr.contains("never acted"), "{f}: {}", r.stderr);
                assert_eq!(digest(&target), digest(&bed.src), "{f}");
            } else {
                assert_eq!(r.code, 8, "{f}: {}", r.stderr);
                assert!(
                    r.stderr
                        .contains(&format!("--inject {f}: the engine treated command {n} (")),
                    "{f}: {}",
                    r.stderr
                );
                assert!(!target.exists(), "{f}");
            }
        }
    }
}
