//! The two roles as two processes started by hand: `vdi client backup|restore` and
//! `vdi engine backup|restore` on the same set name, in either order.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

#[test]
fn client_first_then_engine() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 11, (6 << 20) + 321);
    let bk = dir.path().join("bk");
    let set = set_name("split-b");
    let client = spawn(&[
        "client",
        "backup",
        "--set",
        &set,
        &s(&bk),
        "--devices",
        "3",
        "--compress",
        "zstd",
        "--json",
    ]);
    let engine = run(&[
        "engine",
        "backup",
        "--set",
        &set,
        &format!("file:{}", s(&src)),
        "--json",
    ]);
    engine.ok();
    let e = engine.json();
    assert_eq!(e["ok"], true);
    assert_eq!(e["devices"], 3);
    assert_eq!(e["source_bytes"], (6 << 20) + 321);
    let c = wait_output(client, Duration::from_secs(60));
    c.ok();
    let j = c.json();
    assert_eq!(j["ok"], true);
    assert_eq!(
        j["stream_id"], e["stream_id"],
        "both roles name the same backup"
    );
    assert!(claims_completion(&bk));
    run(&["verify", &s(&bk)]).ok();

    // Restore: the engine first (it waits for the set), then the backup application.
    let out = dir.path().join("out");
    let set2 = set_name("split-r");
    let engine = spawn(&[
        "engine",
        "restore",
        "--set",
        &set2,
        &format!("file:{}", s(&out)),
        "--json",
        "--max-transfer-size",
        "256K",
    ]);
    let c = run(&["client", "restore", "--set", &set2, &s(&bk), "--json"]);
    c.ok();
    assert_eq!(c.json()["devices"], 3);
    let e = wait_output(engine, Duration::from_secs(60));
    e.ok();
    assert_eq!(e.json()["source_bytes"], (6 << 20) + 321);
    assert_eq!(digest(&src), digest(&out));
}

#[test]
fn a_sqlite_database_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO t SELECT i, printf('value %d', i) FROM n;",
    )
    .unwrap();
    drop(c);
    let bk = dir.path().join("bk");
    let set = set_name("split-sql");
    let client = spawn(&["client", "backup", "--set", &set, &s(&bk), "--devices", "2"]);
    run(&[
        "engine",
        "backup",
        "--set",
        &set,
        &format!("sqlite:{}", s(&db)),
    ])
    .ok();
    wait_output(client, Duration::from_secs(60)).ok();
    let out = dir.path().join("b.db");
    let set2 = set_name("split-sql-r");
    let client = spawn(&["client", "restore", "--set", &set2, &s(&bk)]);
    run(&[
        "engine",
        "restore",
        "--set",
        &set2,
        &format!("sqlite:{}", s(&out)),
    ])
    .ok();
    wait_output(client, Duration::from_secs(60)).ok();
    let c = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20000);
}

#[test]
fn an_engine_without_a_set_gives_up() {
    let r = run(&[
        "engine",
        "backup",
        "--set",
        &set_name("nobody"),
        "-",
        "--wait",
        "1",
    ]);
    r.fails(
        8,
        &[
            "no virtual device set named",
            "start the backup application first",
        ],
    );
}

#[test]
fn a_client_without_an_engine_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let r = run(&[
        "client",
        "backup",
        "--set",
        &set_name("lonely"),
        &s(&bk),
        "--wait",
        "1",
    ]);
    r.fails(8, &["no engine configured set"]);
    assert!(!claims_completion(&bk));
    assert!(!bk.exists(), "nothing left behind");
}

#[test]
fn roles_that_do_not_match() {
    // A backup application waiting for a backup, and an engine that restores.
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let set = set_name("mismatch");
    let client = spawn(&["client", "backup", "--set", &set, &s(&bk)]);
    let e = run(&[
        "engine",
        "restore",
        "--set",
        &set,
        &format!("file:{}", s(&dir.path().join("t"))),
    ]);
    let c = wait_output(client, Duration::from_secs(60));
    assert_ne!(e.code, 0);
    c.fails(8, &["started for a backup"]);
    assert!(!claims_completion(&bk));
}
