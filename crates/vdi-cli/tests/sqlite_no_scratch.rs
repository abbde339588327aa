//! A SQLite backup needs no scratch space: the engine streams the database's pages
//! straight into the VDI buffers. A database far larger than the free space of
//! `$TMPDIR` backs up and restores whole, and nothing is created in `$TMPDIR`: as root
//! on a 256 KiB tmpfs, and as anyone with a `$TMPDIR` that does not exist at all.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn make_db(p: &Path) {
    let mut c = rusqlite::Connection::open(p).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx.prepare("INSERT INTO t(v) VALUES (?1)").unwrap();
        for i in 0..6000u32 {
            st.execute([common::pattern(u64::from(i) + 1, 4000)])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    // Part of it stays in the WAL (read from there too).
    c.execute_batch("UPDATE t SET v = zeroblob(10) WHERE id % 10 = 0;")
        .unwrap();
    std::mem::forget(c); // as an application that still has it open
}

/// Backs `db` up and restores it with `TMPDIR` set to `tmp`; checks the copy.
fn round_trip_with_tmpdir(dir: &Path, db: &Path, tmp: &Path) {
    let bk = dir.join("bk");
    let out = dir.join("restored.db");
    for args in [
        vec![
            "backup".to_owned(),
            format!("sqlite:{}", s(db)),
            s(&bk),
            "--devices".into(),
            "2".into(),
        ],
        vec![
            "restore".to_owned(),
            s(&bk),
            format!("sqlite:{}", s(&out)),
            "--integrity-check".into(),
        ],
    ] {
        let c = vdi()
            .args(&args)
            .env("TMPDIR", tmp)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(c, Duration::from_secs(120)).ok();
    }
    let c = rusqlite::Connection::open(&out).unwrap();
    let (n, zeroed): (i64, i64) = c
        .query_row("SELECT count(*), sum(length(v) = 10) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (n, zeroed),
        (6000, 600),
        "the committed state, WAL included"
    );
}

#[test]
fn a_database_larger_than_the_free_scratch_space_backs_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    make_db(&db);
    assert!(std::fs::metadata(&db).unwrap().len() > 20 << 20);

    // No $TMPDIR at all: nothing can be made there.
    let none = dir.path().join("no-such-tmpdir");
    round_trip_with_tmpdir(dir.path(), &db, &none);
    assert!(!none.exists());

    if !is_root() {
        eprintln!(
            "SKIPPED: mounting a 256 KiB tmpfs as $TMPDIR needs root (the $TMPDIR that does not exist was tested)"
        );
        return;
    }
    let mnt = dir.path().join("small-tmp");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=1777", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let _ = std::fs::remove_dir_all(dir.path().join("bk"));
    let _ = std::fs::remove_file(dir.path().join("restored.db"));
    round_trip_with_tmpdir(dir.path(), &db, &mnt);
    assert!(
        names_in(&mnt).is_empty(),
        "left in TMPDIR: {:?}",
        names_in(&mnt)
    );
}
