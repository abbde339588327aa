//! The one exit-code table: `vdi --help` and the README show the same table, and each
//! code happens for what the table says (130 is in `rough_edges.rs`, with Ctrl-C).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

/// The table's rows, `(code, meaning)`, from the lines after `start` in `text`: a row is
/// `CODE  meaning` with the code right-aligned in 4 columns, continued on lines indented
/// by 6.
fn table_of(text: &str, start: &str) -> Vec<(u32, String)> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {text}"));
    let mut rows: Vec<(u32, String)> = Vec::new();
    for l in text[from..].lines().skip(1) {
        let code = l.get(..4).and_then(|c| c.trim().parse::<u32>().ok());
        match code {
            Some(c) if l.get(4..6) == Some("  ") => rows.push((c, l[6..].to_owned())),
            None if l.starts_with("      ") && !rows.is_empty() => {
                if let Some(r) = rows.last_mut() {
                    r.1.push(' ');
                    r.1.push_str(l.trim());
                }
            }
            _ if rows.is_empty() => {}
            _ => break,
        }
    }
    rows
}

#[test]
fn the_help_and_the_readme_show_one_table() {
    let help = run(&["--help"]).ok().stdout_str();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let h = table_of(&help, "Exit codes:");
    let r = table_of(&readme, "### Exit codes");
    assert_eq!(h, r, "vdi --help and the README disagree");
    let codes: Vec<u32> = h.iter().map(|r| r.0).collect();
    assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7, 8, 130]);
    // -h shows it too.
    assert!(run(&["-h"]).ok().stdout_str().contains(" 130  interrupted"));
}

#[test]
fn each_code_happens_for_what_the_table_says() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data");
    write_pattern(&f, 9, 200_000);
    let bk = d.path().join("bk");
    // 0
    run(&["backup", &s(&f), &s(&bk), "--devices", "2"]).ok();
    // 1: anything else (here: a scratch directory that cannot be made)
    run(&["soak", "--runs", "1", "--dir", "/nonexistent/soak"])
        .fails(1, &["creating a scratch directory"]);
    // 2: a wrong command line; a device count other than the backup's
    run(&["backup", "--no-such-option"]).fails(2, &[]);
    run(&[
        "restore",
        &s(&bk),
        &s(&d.path().join("t")),
        "--devices",
        "3",
    ])
    .fails(
        2,
        &["mismatched device count", "made with 2 devices", "not 3"],
    );
    // 3: a missing source, a missing backup
    run(&[
        "backup",
        &s(&d.path().join("none")),
        &s(&d.path().join("b2")),
    ])
    .fails(3, &[]);
    run(&[
        "restore",
        &s(&d.path().join("none")),
        &s(&d.path().join("t")),
    ])
    .fails(3, &[]);
    // 4: the destination holds a backup
    run(&["backup", &s(&f), &s(&bk)]).fails(4, &["--force"]);
    // 5: damaged
    let stream = bk.join("device-1.stream");
    let mut bytes = std::fs::read(&stream).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stream, bytes).unwrap();
    run(&["verify", &s(&bk)]).fails(5, &["damaged"]);
    // 7: the set name in use
    let name = set_name("codes");
    let holder = spawn(&[
        "client",
        "backup",
        "--set",
        &name,
        &s(&d.path().join("held")),
        "--wait",
        "60",
    ]);
    wait_until(Duration::from_secs(30), "the holder's set", || {
        run(&["sets", &name, "--json"]).stdout_str().contains(&name)
    });
    run(&["backup", &s(&f), &s(&d.path().join("b3")), "--set", &name])
        .fails(7, &["already in use"]);
    let mut holder = holder;
    let _ = holder.kill();
    let _ = holder.wait();
    // 8: the other side never came within --wait
    run(&[
        "engine",
        "backup",
        "--set",
        &set_name("nobody"),
        "--wait",
        "1",
        &s(&f),
    ])
    .fails(8, &["appeared within 1 s"]);
}

/// 6: disk full where a restored SQLite database is written (a small tmpfs; needs root
/// to mount it). The backup itself needs no scratch space any more (see
/// `sqlite_no_scratch.rs`), so a full `TMPDIR` cannot fail it.
#[test]
fn a_full_file_system_under_a_restored_database_is_disk_full() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let small = d.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let db = d.path().join("big.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(v BLOB);").unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..64u8 {
            tx.execute("INSERT INTO t VALUES (?1)", [vec![i; 16 << 10]])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let bk = d.path().join("bk");
    run(&["backup", &format!("sqlite:{}", s(&db)), &s(&bk)]).ok();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", &s(&small)])
        .status()
        .unwrap();
    assert!(st.success());
    let restored = small.join("restored.db");
    let r = vdi()
        .args(["restore", &s(&bk), &format!("sqlite:{}", s(&restored))])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait_output(r, Duration::from_secs(60));
    let left: Vec<_> = std::fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let _ = std::process::Command::new("umount").arg(&small).status();
    r.fails(6, &["disk full"]);
    // Nothing half-restored is left under the target's name (nor beside it).
    assert!(left.is_empty(), "left on the full file system: {left:?}");
}
