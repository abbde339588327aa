//! `cmd:` and `dir:` through the `vdi` binary: programs whose output is backed up and
//! whose input is restored into (the exit status is the verdict; a failing program
//! fails the backup and nothing claims completion; an interrupted or killed engine
//! leaves no program running), and directory trees (a round trip through several
//! devices with every kind of file and its mode; hostile tar input refused).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// A running `vdi`, killed and reaped if the test fails before it is waited for.
struct Running(Option<std::process::Child>);

impl Running {
    fn take(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn manifest(bk: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(bk.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_program_round_trip_through_four_devices() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_pattern(&data, 7, 9 << 20);
    let bk = dir.path().join("bk");
    run(&[
        "backup",
        &format!("cmd:cat '{}'", s(&data)),
        &s(&bk),
        "--devices",
        "4",
        "--compress",
        "zstd",
    ])
    .ok();
    let m = manifest(&bk);
    assert_eq!(m["source"]["kind"], "cmd");
    assert_eq!(m["source"]["checked"], true, "{m}");
    assert_eq!(m["device_count"], 4);
    run(&["verify", &s(&bk)]).ok();
    let out = dir.path().join("out");
    run(&[
        "restore",
        &s(&bk),
        &format!("cmd:sh -c 'cat > \"$0\"' '{}'", s(&out)),
    ])
    .ok();
    assert_eq!(digest(&out), digest(&data));
}

#[test]
fn a_program_that_fails_after_writing_data_fails_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let r = run(&[
        "backup",
        "cmd:sh -c 'head -c 6000000 /dev/urandom; echo \"pg_dump: error: table is locked\" >&2; exit 1'",
        &s(&bk),
        "--devices",
        "2",
    ]);
    r.fails(3, &["exited with status 1", "table is locked"]);
    assert!(!claims_completion(&bk), "nothing claims completion");
    // A program killed by a signal, likewise.
    let r = run(&[
        "backup",
        "cmd:sh -c 'head -c 3000000 /dev/zero; kill -9 $$'",
        &s(&bk),
    ]);
    r.fails(3, &["signal 9"]);
    assert!(!claims_completion(&bk));
    // A program that is not there: refused before any set is made.
    run(&["backup", "cmd:no-such-program-at-all", &s(&bk)]).fails(3, &["not found in PATH"]);
    // And restoring into a program that fails.
    let good = dir.path().join("good");
    run(&["backup", "cmd:head -c 100000 /dev/zero", &s(&good)]).ok();
    run(&[
        "restore",
        &s(&good),
        "cmd:sh -c 'cat > /dev/null; echo \"psql: could not connect\" >&2; exit 2'",
    ])
    .fails(1, &["exited with status 2", "could not connect"]);
}

fn pids_in(file: &Path, n: usize) -> Option<Vec<u32>> {
    let t = std::fs::read_to_string(file).ok()?;
    let v: Vec<u32> = t
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (v.len() >= n).then_some(v)
}

#[test]
fn an_interrupted_backup_kills_the_program_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let bk = dir.path().join("bk");
    let child = spawn(&[
        "backup",
        &format!(
            "cmd:sh -c 'echo $$ > \"$0\"; sleep 1000 & echo $! >> \"$0\"; wait' '{}'",
            s(&pids)
        ),
        &s(&bk),
    ]);
    let vdi_pid = child.id();
    let child = Running(Some(child));
    wait_until(Duration::from_secs(30), "the program to start", || {
        pids_in(&pids, 2).is_some()
    });
    let listed = pids_in(&pids, 2).unwrap();
    signal(vdi_pid, "INT");
    let r = wait_output(child.take(), Duration::from_secs(60));
    r.fails(130, &["interrupted"]);
    for p in listed {
        wait_until(Duration::from_secs(10), "the program to be gone", || {
            !alive(p)
        });
    }
    assert!(!claims_completion(&bk));
}

#[test]
fn a_killed_engine_leaves_no_program_writing() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let bk = dir.path().join("bk");
    let child = spawn(&[
        "backup",
        &format!("cmd:sh -c 'echo $$ > \"$0\"; exec yes' '{}'", s(&pids)),
        &s(&bk),
        "--devices",
        "2",
    ]);
    let vdi_pid = child.id();
    let child = Running(Some(child));
    wait_until(Duration::from_secs(30), "the program to start", || {
        pids_in(&pids, 1).is_some()
    });
    let program = pids_in(&pids, 1).unwrap()[0];
    let engine = children_of(vdi_pid)
        .into_iter()
        .find(|p| children_of(*p).contains(&program))
        .expect("the engine runs the program");
    signal(engine, "KILL");
    let r = wait_output(child.take(), Duration::from_secs(60));
    r.fails(8, &["SIGKILL"]);
    // The program's output pipe is closed: its next write kills it (SIGPIPE).
    wait_until(Duration::from_secs(10), "the program to be gone", || {
        !alive(program)
    });
    assert!(!claims_completion(&bk));
}

/// Per entry: name, kind, mode, size, contents digest, link target, and which names are
/// one file.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
    let mut inodes = Vec::new();
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mut line = format!("{} {:o}", rel.display(), m.permissions().mode());
        if ft.is_file() {
            line += &format!(" {} {}", m.len(), digest(&p));
            if m.nlink() > 1 {
                match inodes.iter().position(|i| *i == m.ino()) {
                    Some(k) => line += &format!(" link#{k}"),
                    None => inodes.push(m.ino()),
                }
            }
        } else if ft.is_symlink() {
            line += &format!(" -> {}", std::fs::read_link(&p).unwrap().display());
        } else if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        }
        out.push(line);
    }
    out
}

#[test]
fn a_directory_round_trip_through_three_devices_keeps_kinds_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    write_pattern(&src.join("a/b/c/big"), 3, 5 << 20);
    std::fs::write(src.join("small"), b"small\n").unwrap();
    std::fs::set_permissions(src.join("small"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::hard_link(src.join("small"), src.join("a/hard")).unwrap();
    std::os::unix::fs::symlink("b/c/big", src.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("dangling")).unwrap();
    mkfifo(&src.join("fifo"));
    std::fs::File::create(src.join("sparse"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::set_permissions(src.join("a/b"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
    let bk = dir.path().join("bk");
    run(&[
        "backup",
        &format!("dir:{}", s(&src)),
        &s(&bk),
        "--devices",
        "3",
        "--compress",
        "zstd",
    ])
    .ok();
    assert_eq!(manifest(&bk)["source"]["kind"], "dir");
    run(&["verify", &s(&bk)]).ok();
    let out = dir.path().join("out");
    run(&["restore", &s(&bk), &format!("dir:{}", s(&out))]).ok();
    assert_eq!(describe(&src), describe(&out));
    assert!(std::fs::metadata(out.join("sparse")).unwrap().blocks() < 64);
    // Again into the same, now full, directory: only with --force.
    run(&["restore", &s(&bk), &format!("dir:{}", s(&out))]).fails(4, &["--force"]);
    std::fs::write(out.join("extra"), b"not in the backup").unwrap();
    run(&["restore", &s(&bk), &format!("dir:{}", s(&out)), "--force"]).ok();
    assert_eq!(describe(&src), describe(&out));
    // Nothing left beside it.
    assert_eq!(names_in(dir.path()), vec!["bk", "out", "src"]);
}

#[test]
fn a_hostile_tar_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("inner")).unwrap();
    std::fs::create_dir_all(work.join("other/a")).unwrap();
    std::fs::write(work.join("payload"), b"escaped").unwrap();
    std::fs::write(work.join("other/a/evil"), b"escaped").unwrap();
    std::os::unix::fs::symlink(&outside, work.join("a")).unwrap();
    let tar = |args: &[&str]| {
        let st = std::process::Command::new("tar")
            .current_dir(&work)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tar {args:?}");
    };
    // A name with '..' (kept with -P), an absolute name, a file through a symbolic link.
    tar(&["-cPf", "dotdot.tar", "inner/../payload", "../outside"]);
    tar(&["-cPf", "absolute.tar", &s(&work.join("payload"))]);
    tar(&["-cf", "through-link.tar", "a"]);
    tar(&["-rf", "through-link.tar", "-C", "other", "a/evil"]);
    let target_dir = dir.path().join("targets");
    std::fs::create_dir(&target_dir).unwrap();
    for (name, says) in [
        ("dotdot.tar", "'..'"),
        ("absolute.tar", "absolute"),
        ("through-link.tar", "beyond the symbolic link a"),
    ] {
        let bk = dir.path().join(format!("bk-{name}"));
        run(&["backup", &s(&work.join(name)), &s(&bk)]).ok();
        let t = target_dir.join("t");
        run(&["restore", &s(&bk), &format!("dir:{}", s(&t))]).fails(5, &["refused", says]);
        assert!(
            names_in(&target_dir).is_empty(),
            "{name}: {:?}",
            names_in(&target_dir)
        );
        assert!(
            names_in(&outside).is_empty(),
            "{name}: {:?}",
            names_in(&outside)
        );
    }
}
