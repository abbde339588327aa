//! The `sqlite:` source reads a live database's pages straight from its files, under a
//! read transaction (`source::sqlite_pages`). That it yields one committed state is
//! checked here, not assumed: other processes (this test binary run again as helpers)
//! write transactions that keep invariants, and checkpoint the WAL (passive, restart and
//! truncate checkpoints) as fast as they can, while the source reads the database over
//! and over. Every copy must pass `PRAGMA integrity_check` and hold the invariants of one
//! committed state: the balances still sum to their total, the log has no gap and
//! agrees with the balances' version, and the states never go back in time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use vdi_backup::source::Spec;

const ACCOUNTS: i64 = 200;
const TOTAL: i64 = ACCOUNTS * 1000;

fn open(p: &Path) -> Connection {
    let c = Connection::open(p).unwrap();
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    c
}

/// Runs this test binary's helper `name` on `db` until `stop` exists.
fn helper(name: &str, db: &Path, stop: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VDI_TEST_DB", db)
        .env("VDI_TEST_STOP", stop)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

struct Helpers(Vec<Child>, PathBuf);

impl Drop for Helpers {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.1, b"stop");
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn helper_env() -> Option<(PathBuf, PathBuf)> {
    Some((
        PathBuf::from(std::env::var_os("VDI_TEST_DB")?),
        PathBuf::from(std::env::var_os("VDI_TEST_STOP")?),
    ))
}

/// A helper: transactions that move money between accounts, log each move and, now and
/// then, add or drop a large row (the database grows and shrinks).
#[test]
#[ignore = "a helper process of the tests below"]
fn helper_writer() {
    let Some((db, stop)) = helper_env() else {
        return;
    };
    let mut c = open(&db);
    // No fsync per commit: what is tested is what readers see, not durability.
    c.execute_batch("PRAGMA synchronous = OFF").unwrap();
    let mut n: i64 = c
        .query_row("SELECT coalesce(max(seq), 0) FROM log", [], |r| r.get(0))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !stop.exists() && Instant::now() < deadline {
        n += 1;
        let (a, b) = (n % ACCOUNTS + 1, (n * 7 + 3) % ACCOUNTS + 1);
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "UPDATE acct SET bal = bal - ?1, ver = ?2 WHERE id = ?3",
            (n % 17, n, a),
        )
        .unwrap();
        tx.execute(
            "UPDATE acct SET bal = bal + ?1, ver = ?2 WHERE id = ?3",
            (n % 17, n, b),
        )
        .unwrap();
        tx.execute("UPDATE meta SET ver = ?1", [n]).unwrap();
        tx.execute(
            "INSERT INTO log(seq, pad) VALUES (?1, randomblob(200))",
            [n],
        )
        .unwrap();
        if n % 7 == 0 {
            tx.execute("INSERT INTO big(v) VALUES (randomblob(30000))", [])
                .unwrap();
        }
        if n % 11 == 0 {
            tx.execute(
                "DELETE FROM big WHERE k IN (SELECT k FROM big ORDER BY k LIMIT 2)",
                [],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// A helper: checkpoints, mostly passive, some restarting or truncating the WAL.
#[test]
#[ignore = "a helper process of the tests below"]
fn helper_checkpointer() {
    let Some((db, stop)) = helper_env() else {
        return;
    };
    let c = Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_millis(20)).unwrap();
    let mut k = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !stop.exists() && Instant::now() < deadline {
        k += 1;
        let mode = match k % 10 {
            3 => "RESTART",
            7 => "TRUNCATE",
            _ => "PASSIVE",
        };
        // Busy is fine: a checkpoint that cannot finish now is tried again.
        let _ = c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn make_db(p: &Path, journal: &str) {
    let c = open(p);
    c.execute_batch(&format!(
        "PRAGMA journal_mode = {journal};
         PRAGMA wal_autocheckpoint = 16;
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, ver INTEGER NOT NULL);
         CREATE TABLE log(seq INTEGER PRIMARY KEY, pad BLOB);
         CREATE TABLE big(k INTEGER PRIMARY KEY, v BLOB);
         CREATE TABLE meta(ver INTEGER NOT NULL);
         INSERT INTO meta VALUES (0);"
    ))
    .unwrap();
    for i in 1..=ACCOUNTS {
        c.execute("INSERT INTO acct VALUES (?1, 1000, 0)", [i])
            .unwrap();
    }
    for _ in 0..40 {
        c.execute("INSERT INTO big(v) VALUES (randomblob(30000))", [])
            .unwrap();
    }
}

/// Checks one copy; returns its version (the number of committed moves).
fn check_copy(bytes: &[u8], dir: &Path, k: usize) -> i64 {
    let p = dir.join(format!("copy-{k}.db"));
    std::fs::write(&p, bytes).unwrap();
    vdi_backup::source::sqlite::header_check(&p).unwrap();
    let rows = vdi_backup::source::sqlite::integrity_check(&p).unwrap();
    assert_eq!(rows, ["ok"], "copy {k}");
    let c = Connection::open(&p).unwrap();
    let (sum, max_ver): (i64, i64) = c
        .query_row("SELECT sum(bal), max(ver) FROM acct", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(sum, TOTAL, "copy {k}: the money is all there");
    let ver: i64 = c
        .query_row("SELECT ver FROM meta", [], |r| r.get(0))
        .unwrap();
    let (n, top): (i64, i64) = c
        .query_row("SELECT count(*), coalesce(max(seq), 0) FROM log", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(n, top, "copy {k}: the log has no gap");
    assert_eq!(top, ver, "copy {k}: the log and the version agree");
    assert_eq!(max_ver, ver, "copy {k}: the balances are of that version");
    drop(c);
    std::fs::remove_file(&p).unwrap();
    ver
}

fn copies_hold_one_committed_state(journal: &str, checkpointer: bool, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    make_db(&db, journal);
    let stop = dir.path().join("stop");
    let mut helpers = Helpers(vec![helper("helper_writer", &db, &stop)], stop.clone());
    if checkpointer {
        helpers.0.push(helper("helper_checkpointer", &db, &stop));
    }
    let spec = Spec::parse(&format!("sqlite:{}", db.display())).unwrap();
    let ver_now = || -> i64 {
        let c = open(&db);
        c.query_row("SELECT ver FROM meta", [], |r| r.get(0))
            .unwrap()
    };
    // The writer is at work before the first copy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ver_now() < 50 {
        assert!(Instant::now() < deadline, "the writer does not write");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut last = 0;
    for k in 0..rounds {
        // The writer committed since the last copy: each copy is of a new state.
        let deadline = Instant::now() + Duration::from_secs(60);
        while ver_now() <= last {
            assert!(Instant::now() < deadline, "the writer stopped writing");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut src = spec.open_source().unwrap();
        let size = src.size().unwrap();
        let mut bytes = Vec::new();
        src.read_to_end(&mut bytes).unwrap();
        src.finish().unwrap();
        drop(src);
        assert_eq!(bytes.len() as u64, size, "copy {k}: as long as it said");
        let ver = check_copy(&bytes, dir.path(), k);
        assert!(
            ver > last,
            "copy {k} is not newer ({ver}) than the one before ({last})"
        );
        last = ver;
    }
    drop(helpers);
    // The live database is sound and went on.
    assert!(ver_now() >= last);
}

#[test]
fn wal_copies_hold_one_committed_state_while_others_write_and_checkpoint() {
    copies_hold_one_committed_state("WAL", true, 40);
}

#[test]
fn rollback_journal_copies_hold_one_committed_state_while_another_writes() {
    copies_hold_one_committed_state("DELETE", false, 16);
}
