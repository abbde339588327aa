//! A live SQLite database, written to through its own connection during the backup
//! (while the engine, another process, snapshots and streams it): the restored copy passes
//! `PRAGMA integrity_check` and holds exactly one committed state of the writer, every
//! row intact.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

const BATCH: i64 = 100;

fn payload(id: i64) -> String {
    let h = blake3::hash(&id.to_le_bytes()).to_hex().to_string();
    format!("row {id} {h} {h} {h}")
}

fn digest_of(p: &str) -> String {
    blake3::hash(p.as_bytes()).to_hex()[..16].to_owned()
}

fn insert_batch(conn: &mut Connection, next: i64) {
    let tx = conn.transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO rows(id, batch, payload, digest) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for id in next..next + BATCH {
            let p = payload(id);
            st.execute(params![id, (id - 1) / BATCH, p, digest_of(&p)])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn open(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

/// Checks that `path` is sound and holds exactly the first `n` rows for some whole
/// number of batches `n`, every row intact; returns `n`.
fn check_consistent(path: &Path) -> i64 {
    let c = open(path);
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (n, max): (i64, i64) = c
        .query_row("SELECT count(*), coalesce(max(id), 0) FROM rows", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(n, max, "ids are 1..=n without a gap");
    assert_eq!(
        n % BATCH,
        0,
        "a whole number of committed batches ({n} rows)"
    );
    let mut st = c
        .prepare("SELECT id, batch, payload, digest FROM rows ORDER BY id")
        .unwrap();
    let mut rows = st.query([]).unwrap();
    let mut k = 0;
    while let Some(r) = rows.next().unwrap() {
        k += 1;
        let (id, batch, p, d): (i64, i64, String, String) = (
            r.get(0).unwrap(),
            r.get(1).unwrap(),
            r.get(2).unwrap(),
            r.get(3).unwrap(),
        );
        assert_eq!(id, k);
        assert_eq!(batch, (id - 1) / BATCH);
        assert_eq!(p, payload(id), "row {id} intact");
        assert_eq!(d, digest_of(&p));
    }
    n
}

fn live_backup(journal: &str, devices: &str, compress: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let mut c = open(&db);
    c.execute_batch(&format!(
        "PRAGMA journal_mode = {journal};
         CREATE TABLE rows(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
                           payload TEXT NOT NULL, digest TEXT NOT NULL);"
    ))
    .unwrap();
    let mut next = 1;
    for _ in 0..200 {
        insert_batch(&mut c, next);
        next += BATCH;
    }
    drop(c);

    let committed = Arc::new(AtomicI64::new(next - 1));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, committed, stop) = (db.clone(), committed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = open(&db);
            let mut next = committed.load(Ordering::SeqCst) + 1;
            let mut batches = 0;
            while !stop.load(Ordering::SeqCst) || batches < 20 {
                insert_batch(&mut c, next);
                next += BATCH;
                batches += 1;
                committed.store(next - 1, Ordering::SeqCst);
            }
            batches
        })
    };
    // The writer is busy before the backup starts and stays busy until it ends.
    wait_until(Duration::from_secs(30), "the writer to commit", || {
        committed.load(Ordering::SeqCst) >= 20_000 + 5 * BATCH
    });
    let before = committed.load(Ordering::SeqCst);
    let bk = dir.path().join("bk");
    // The backup makes no scratch copy: nothing appears in its $TMPDIR.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = vdi()
        .args([
            "backup",
            &format!("sqlite:{}", s(&db)),
            &s(&bk),
            "--devices",
            devices,
            "--compress",
            compress,
        ])
        .env("TMPDIR", &tmp)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        names_in(&tmp),
        Vec::<String>::new(),
        "files left in $TMPDIR"
    );
    let after_backup = committed.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let batches = writer.join().unwrap();
    let at_end = committed.load(Ordering::SeqCst);
    assert!(
        after_backup > before,
        "the writer committed while the backup ran"
    );
    assert!(batches >= 20 && at_end > after_backup);

    run(&["verify", &s(&bk)]).ok();
    let restored = dir.path().join("restored.db");
    let r = run(&[
        "restore",
        &s(&bk),
        &format!("sqlite:{}", s(&restored)),
        "--integrity-check",
        "--json",
    ]);
    r.ok();
    assert_eq!(r.json()["integrity_check"], "ok");
    let n = check_consistent(&restored);
    assert!(
        (before..=after_backup).contains(&n),
        "the snapshot holds {n} rows: a state committed during the backup ({before}..={after_backup})"
    );
    // The live database is unharmed.
    assert!(check_consistent(&db) >= at_end);
}

#[test]
fn live_wal_database_through_three_devices() {
    live_backup("WAL", "3", "zstd");
}

#[test]
fn live_rollback_journal_database_through_one_device() {
    live_backup("DELETE", "1", "none");
}

#[test]
fn restoring_over_a_database_drops_its_old_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut c = open(&db);
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE rows(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
                           payload TEXT NOT NULL, digest TEXT NOT NULL);",
    )
    .unwrap();
    insert_batch(&mut c, 1);
    drop(c);
    let bk = dir.path().join("bk");
    run(&["backup", &format!("sqlite:{}", s(&db)), &s(&bk)]).ok();
    // The target: another database, open, with uncheckpointed rows in its WAL.
    let target = dir.path().join("t.db");
    let mut t = open(&target);
    t.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE rows(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
                           payload TEXT NOT NULL, digest TEXT NOT NULL);",
    )
    .unwrap();
    for k in 0..5 {
        insert_batch(&mut t, 1 + k * BATCH);
    }
    let wal = dir.path().join("t.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    // As if its process had crashed: the WAL stays, and no process has the database
    // open any more (one that has it open is refused, issue 15). A copy taken while it is
    // open, put back once it is closed (closing checkpoints and removes the WAL).
    let keep_db = dir.path().join("t.db.kept");
    let keep_wal = dir.path().join("t.db-wal.kept");
    std::fs::copy(&target, &keep_db).unwrap();
    std::fs::copy(&wal, &keep_wal).unwrap();
    drop(t);
    let _ = std::fs::remove_file(dir.path().join("t.db-shm"));
    std::fs::rename(&keep_db, &target).unwrap();
    std::fs::rename(&keep_wal, &wal).unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    run(&["restore", &s(&bk), &format!("sqlite:{}", s(&target))]).fails(4, &["already exists"]);
    run(&[
        "restore",
        &s(&bk),
        &format!("sqlite:{}", s(&target)),
        "--force",
    ])
    .ok();
    assert_eq!(
        check_consistent(&target),
        BATCH,
        "the backup's rows, not the old WAL's"
    );
}
