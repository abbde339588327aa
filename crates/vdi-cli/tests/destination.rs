//! The backup directory: one backup at a time (a lock naming its holder), a backup
//! replaced only by a complete one (`--force`), nothing deleted that vdi did not write,
//! no link followed, private modes, and leftovers of an interrupted backup called what
//! they are.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A `vdi backup - DEST` that holds DEST (its lock, and its first stream file) until its
/// standard input is closed.
fn backup_holding(dest: &Path, extra: &[&str]) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = vdi()
        .args(["backup", "-", &s(dest)])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pattern(3, 100_000)).unwrap();
    stdin.flush().unwrap();
    (child, stdin)
}

#[test]
fn a_second_backup_into_a_locked_destination_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 1, 300_000);
    let bk = dir.path().join("bk");
    let (first, stdin) = backup_holding(&bk, &[]);
    let pid = first.id();
    // Its stream file is made after the lock is taken.
    wait_until(Duration::from_secs(30), "the first backup's stream", || {
        bk.join("device-0.stream").exists()
    });
    let pid_text = format!("process {pid}");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["backup", src.to_str().unwrap(), bk.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args).fails(7, &["is in use by another backup", &pid_text, "vdi backup"]);
    }
    // The first one is unharmed.
    drop(stdin);
    wait_output(first, Duration::from_secs(60)).ok();
    run(&["verify", &s(&bk)]).ok();
    // And the lock went with it.
    run(&["backup", &s(&src), &s(&bk), "--force"]).ok();
    run(&["verify", &s(&bk)]).ok();
}

/// Many `--force` backups into one destination at once: each one either completes or is
/// refused (exit 7), and the destination holds one whole backup: the last one stored.
#[test]
fn concurrent_backups_into_one_destination() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let srcs: Vec<_> = (0..6u64)
        .map(|i| {
            let p = dir.path().join(format!("src-{i}"));
            write_pattern(&p, 50 + i, (3 << 20) + i * 4099);
            p
        })
        .collect();
    for round in 0..3 {
        let children: Vec<_> = srcs
            .iter()
            .map(|p| {
                vdi()
                    .args(["backup", &s(p), &s(&bk), "--force", "--devices", "3"])
                    .args(["--json", "--max-transfer-size", "64K"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let runs: Vec<Run> = children
            .into_iter()
            .map(|c| wait_output(c, Duration::from_secs(120)))
            .collect();
        let mut stored = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            match r.code {
                0 => stored.push((i, r.json()["backup_id"].as_str().unwrap().to_owned())),
                7 => assert!(
                    r.stderr.contains("in use by another backup"),
                    "{}",
                    r.stderr
                ),
                c => panic!("round {round}: backup {i} exited {c}: {}", r.stderr),
            }
        }
        assert!(!stored.is_empty(), "round {round}: no backup completed");
        run(&["verify", &s(&bk)]).ok();
        let id = backup_id(&bk);
        let (i, _) = stored
            .iter()
            .find(|(_, b)| *b == id)
            .unwrap_or_else(|| panic!("round {round}: {id} is none of the stored {stored:?}"));
        let out = dir.path().join("out");
        let _ = std::fs::remove_file(&out);
        run(&["restore", &s(&bk), &s(&out)]).ok();
        assert_eq!(digest(&out), digest(&srcs[*i]), "round {round}");
        let left: Vec<_> = names_in(dir.path())
            .into_iter()
            .filter(|n| n.contains(".vdi-"))
            .collect();
        assert!(left.is_empty(), "round {round}: left beside: {left:?}");
    }
}

/// `--force` writes the new backup beside the old one: when the new one fails, the old
/// one is still there, whole.
#[test]
fn force_with_a_failing_second_backup_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_pattern(&a, 7, (2 << 20) + 77);
    let b = dir.path().join("b");
    write_pattern(&b, 8, 5 << 20);
    let bk = dir.path().join("bk");
    run(&["backup", &s(&a), &s(&bk), "--devices", "2"]).ok();
    let id = backup_id(&bk);
    let before = names_in(&bk);
    for (fault, code) in [("client:fail@4=112", 6), ("engine:abort@3", 8)] {
        run(&[
            "backup",
            &s(&b),
            &s(&bk),
            "--force",
            "--devices",
            "3",
            "--max-transfer-size",
            "64K",
            "--inject",
            fault,
        ])
        .fails(code, &["injected"]);
        assert_eq!(backup_id(&bk), id, "{fault}: the old backup is gone");
        assert_eq!(names_in(&bk), before, "{fault}");
        run(&["verify", &s(&bk)]).ok();
        let left: Vec<_> = names_in(dir.path())
            .into_iter()
            .filter(|n| n.contains(".vdi-"))
            .collect();
        assert!(left.is_empty(), "{fault}: left beside: {left:?}");
    }
    let out = dir.path().join("out");
    run(&["restore", &s(&bk), &s(&out)]).ok();
    assert_eq!(digest(&out), digest(&a));
}

/// The same with a real full disk (a small tmpfs, as root): the replacement runs out of
/// space beside the old backup, which stays whole.
#[test]
fn force_on_a_full_disk_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    if !st.is_ok_and(|s| s.success()) {
        println!(
            "SKIPPED: mounting an 8 MiB tmpfs needs root (the failing replacement is also covered by injected faults)"
        );
        return;
    }
    let a = dir.path().join("a");
    write_pattern(&a, 9, 3 << 20);
    let b = dir.path().join("b");
    write_pattern(&b, 10, 6 << 20);
    let bk = mnt.join("bk");
    let first = run(&["backup", &s(&a), &s(&bk)]);
    let second = run(&["backup", &s(&b), &s(&bk), "--force", "--devices", "2"]);
    let id = std::fs::read_to_string(bk.join("manifest.json")).ok();
    let verify = run(&["verify", &s(&bk)]);
    let out = dir.path().join("out");
    let restore = run(&["restore", &s(&bk), &s(&out)]);
    let left = names_in(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    first.ok();
    second.fails(6, &["No space left"]);
    assert!(id.is_some());
    verify.ok();
    restore.ok();
    assert_eq!(digest(&out), digest(&a));
    assert_eq!(
        left,
        vec!["bk".to_owned()],
        "nothing left beside the backup"
    );
}

/// `--force` removes only what vdi wrote: the old manifest and the stream files it
/// lists. Anything else that was in the destination is still there afterwards.
#[test]
fn force_never_deletes_files_vdi_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_pattern(&a, 11, 2 << 20);
    let bk = dir.path().join("bk");
    run(&["backup", &s(&a), &s(&bk), "--devices", "4"]).ok();
    std::fs::write(bk.join("notes.txt"), b"mine").unwrap();
    std::fs::write(bk.join("device-0.stream.bak"), b"my copy").unwrap();
    // A user's file named like a stream, not one: kept (verify says it is not part of
    // the backup).
    std::fs::write(bk.join("device-9.stream"), b"not a vdi stream").unwrap();
    run(&["backup", &s(&a), &s(&bk), "--force", "--devices", "2"]).ok();
    assert_eq!(std::fs::read(bk.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(bk.join("device-0.stream.bak")).unwrap(),
        b"my copy"
    );
    assert_eq!(
        std::fs::read(bk.join("device-9.stream")).unwrap(),
        b"not a vdi stream"
    );
    assert!(
        !bk.join("device-2.stream").exists(),
        "the old backup's streams go"
    );
    assert!(!bk.join("device-3.stream").exists());
    run(&["verify", &s(&bk)]).fails(5, &["device-9.stream is not part of this backup"]);
    std::fs::remove_file(bk.join("device-9.stream")).unwrap();
    run(&["verify", &s(&bk)]).ok();
    // Without --force, a stream-named file vdi did not write is never written beside.
    let c = dir.path().join("c");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("device-0.stream"), b"mine too").unwrap();
    run(&["backup", &s(&a), &s(&c)]).fails(4, &["device-0.stream", "vdi did not write"]);
    assert_eq!(
        std::fs::read(c.join("device-0.stream")).unwrap(),
        b"mine too"
    );
    // A manifest.json that is not vdi's: refused even with --force.
    let d = dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("manifest.json"), br#"{"name": "my web app"}"#).unwrap();
    run(&["backup", &s(&a), &s(&d), "--force"]).fails(4, &["not a vdi manifest"]);
    assert_eq!(names_in(&d), vec!["manifest.json".to_owned()]);
}

/// A backup that was killed leaves stream files but no manifest: a rerun calls them the
/// leftovers of a backup that did not complete (not "a backup"), and `--force` replaces
/// them.
#[test]
fn leftovers_of_an_interrupted_backup_are_not_called_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let (child, stdin) = backup_holding(&bk, &["--devices", "1"]);
    wait_until(Duration::from_secs(30), "the stream file", || {
        std::fs::metadata(bk.join("device-0.stream")).is_ok_and(|m| m.len() > 0)
    });
    let engines = children_of(child.id());
    signal(child.id(), "KILL");
    let _ = wait_output(child, Duration::from_secs(30));
    drop(stdin);
    for e in engines {
        wait_until(Duration::from_secs(30), "the engine to exit", || !alive(e));
    }
    assert!(!claims_completion(&bk));
    let src = dir.path().join("src");
    write_pattern(&src, 12, 1 << 20);
    let r = run(&["backup", &s(&src), &s(&bk)]);
    r.fails(
        4,
        &[
            "holds no backup",
            "did not complete",
            "device-0.stream",
            "--force",
        ],
    );
    assert!(!r.stderr.contains("already holds a backup"), "{}", r.stderr);
    let r = run(&["backup", &s(&src), &s(&bk), "--force"]);
    r.ok();
    assert!(r.stderr.contains("interrupted backup"), "{}", r.stderr);
    run(&["verify", &s(&bk)]).ok();
}

#[test]
fn a_link_as_destination_is_refused_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 13, 10_000);
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let r = run(&["backup", &s(&src), &s(&dangling)]);
    r.fails(4, &["is a symbolic link", "nowhere"]);
    assert!(!r.stderr.contains("os error 17"), "{}", r.stderr);
    assert!(!dir.path().join("nowhere").exists());
    // A link to a directory is not followed either (a user who owns the parent could
    // point root's backup anywhere).
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    run(&["backup", &s(&src), &s(&link)]).fails(4, &["is a symbolic link", "real"]);
    let slash = format!("{}/", s(&link));
    run(&["backup", &s(&src), &slash]).fails(4, &["is a symbolic link", "real"]);
    assert!(names_in(&real).is_empty());
    // A file or a FIFO is not a directory.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    run(&["backup", &s(&src), &s(&fifo)]).fails(4, &["is a FIFO", "not a directory"]);
    run(&["backup", &s(&src), &s(&src)]).fails(4, &["is a regular file", "not a directory"]);
}

/// Links planted in the destination by whoever owns it are never followed: the files
/// they point to are never written.
#[test]
fn links_planted_in_the_destination_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 14, 1 << 20);
    for planted in [".manifest.json.tmp", "device-0.stream", "manifest.json"] {
        let bk = dir.path().join(format!("bk{planted}"));
        std::fs::create_dir(&bk).unwrap();
        std::os::unix::fs::symlink(&victim, bk.join(planted)).unwrap();
        // Without --force: refused (the link is not vdi's), or the tool's own temporary
        // name (refused as a leftover).
        let r = run(&["backup", &s(&src), &s(&bk)]);
        assert_eq!(r.code, 4, "{planted}: {}", r.stderr);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{planted}");
        let r = run(&["backup", &s(&src), &s(&bk), "--force"]);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{planted}");
        match planted {
            // Not vdi's: refused even with --force.
            "manifest.json" => {
                r.fails(4, &["manifest.json", "symbolic link"]);
            }
            "device-0.stream" => {
                r.fails(4, &["device-0.stream", "vdi did not write"]);
            }
            // vdi's own temporary name: a leftover, replaced (the link itself removed).
            _ => {
                r.ok();
                run(&["verify", &s(&bk)]).ok();
                assert!(!bk.join(planted).exists());
            }
        }
    }
}

#[test]
fn backups_are_private_by_default_and_mode_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 15, 1 << 20);
    let check = |bk: &Path, file: u32, d: u32| {
        assert_eq!(mode_of(bk), d, "{}", bk.display());
        for n in names_in(bk) {
            assert_eq!(mode_of(&bk.join(&n)), file, "{n} in {}", bk.display());
        }
    };
    // The usual umask made 0644 files in a 0755 directory; now 0600 and 0700.
    let bk = dir.path().join("default");
    run_with_umask("022", &["backup", &s(&src), &s(&bk), "--devices", "2"]).ok();
    check(&bk, 0o600, 0o700);
    let bk = dir.path().join("m640");
    run_with_umask("077", &["backup", &s(&src), &s(&bk), "--mode", "640"]).ok();
    check(&bk, 0o640, 0o750);
    let bk = dir.path().join("umask");
    run_with_umask("027", &["backup", &s(&src), &s(&bk), "--mode", "umask"]).ok();
    check(&bk, 0o640, 0o750);
    // A replaced backup's directory keeps what was set on it.
    std::fs::set_permissions(&bk, std::os::unix::fs::PermissionsExt::from_mode(0o710)).unwrap();
    run_with_umask("022", &["backup", &s(&src), &s(&bk), "--force"]).ok();
    check(&bk, 0o600, 0o710);
    // A directory that existed keeps its mode too.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    run(&["backup", &s(&src), &s(&mine)]).ok();
    check(&mine, 0o600, 0o755);
    // Modes that cannot work are refused.
    for bad in ["400", "1600", "abc", "7777"] {
        run(&["backup", &s(&src), &s(&dir.path().join("x")), "--mode", bad]).fails(2, &["--mode"]);
    }
}

/// A disk that fills up while the manifest is written leaves no temporary manifest
/// behind (it used to leave an empty `.manifest.json.tmp`).
#[test]
fn a_full_disk_while_writing_the_manifest_leaves_no_temporary() {
    use vdi_backup::store::dir::{BackupDir, MANIFEST_TMP};
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    if !st.is_ok_and(|s| s.success()) {
        println!(
            "SKIPPED: mounting a small tmpfs needs root (the unit test a_failed_atomic_write_leaves_no_temporary covers the clean-up)"
        );
        return;
    }
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let block = vec![7u8; 4096];
    while filler.write_all(&block).is_ok() {}
    drop(filler);
    let d = BackupDir::open(&mnt).unwrap();
    let r = d.write_atomically("manifest.json", MANIFEST_TMP, &[b'x'; 8192], Some(0o600));
    let result = (r, names_in(&mnt));
    drop(d);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let (r, names) = result;
    let e = r.unwrap_err();
    assert!(vdi_backup::util::is_disk_full(&e), "{e}");
    assert_eq!(names, vec!["filler".to_owned()]);
}
