//! Sources and targets that are not regular files: a FIFO as a `file:` source is refused
//! without blocking (it used to hang both processes), and a restore never puts a file in
//! place of a device, a FIFO or a link, even with `--force` (`/dev/null` once became a
//! regular file). Device files are made in a temporary directory, never the real ones.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

fn a_backup(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    write_pattern(&src, 1, 100_000);
    let bk = dir.join("bk");
    run(&["backup", &s(&src), &s(&bk)]).ok();
    bk
}

#[test]
fn a_fifo_or_a_device_as_source_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let bk = dir.path().join("bk");
    run(&["backup", &format!("file:{}", s(&fifo)), &s(&bk)])
        .fails(3, &["is a FIFO", "vdi backup - DEST <"]);
    run(&["backup", &format!("sqlite:{}", s(&fifo)), &s(&bk)]).fails(3, &["is a FIFO"]);
    assert!(!bk.exists());
    // The engine started by hand checks it the same way (before it waits for a set).
    let set = set_name("fifo");
    run(&["engine", "backup", "--set", &set, "--wait", "1", &s(&fifo)]).fails(3, &["is a FIFO"]);
    run(&["backup", "file:/dev/zero", &s(&bk)]).fails(3, &["is a character device"]);
}

#[test]
fn a_restore_never_replaces_a_device_file() {
    let dir = tempfile::tempdir().unwrap();
    let bk = a_backup(dir.path());
    let null = dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        println!("SKIPPED: making a device file (mknod) needs root");
        return;
    }
    for force in [false, true] {
        let mut args = vec!["restore".to_owned(), s(&bk), format!("file:{}", s(&null))];
        if force {
            args.push("--force".into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&argv).fails(4, &["is a character device", "refused, even with --force"]);
        let ft = std::fs::symlink_metadata(&null).unwrap().file_type();
        assert!(ft.is_char_device(), "the device file was replaced");
    }
    assert!(files_with(dir.path(), "vdi-partial").is_empty());
}

#[test]
fn a_restore_never_replaces_a_fifo_or_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let bk = a_backup(dir.path());
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    run(&["restore", &s(&bk), &s(&fifo), "--force"]).fails(4, &["is a FIFO"]);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let precious = dir.path().join("precious");
    std::fs::write(&precious, b"keep").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    run(&["restore", &s(&bk), &s(&link), "--force"]).fails(4, &["is a symbolic link", "precious"]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
    // A database's journal that is not a file is never removed.
    let db = dir.path().join("db.sqlite");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let dbk = dir.path().join("dbk");
    run(&["backup", &format!("sqlite:{}", s(&db)), &s(&dbk)]).ok();
    let out = dir.path().join("out.db");
    let wal = dir.path().join("out.db-wal");
    mkfifo(&wal);
    run(&["restore", &s(&dbk), &format!("sqlite:{}", s(&out))])
        .fails(4, &["out.db-wal", "is a FIFO"]);
    assert!(
        std::fs::symlink_metadata(&wal)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(!out.exists());
}
