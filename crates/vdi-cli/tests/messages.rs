//! The small things a hostile-conditions probe found said wrong or accepted silently:
//! each message as it is now, and the exit code it comes with.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

/// SIGTERM is named SIGTERM (it used to be reported as "Ctrl-C").
#[test]
fn sigterm_is_called_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let mut child = vdi()
        .args(["backup", "-", &s(&bk), "--max-transfer-size", "64K"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pattern(1, 1 << 20)).unwrap();
    wait_until(Duration::from_secs(30), "data in the stream file", || {
        std::fs::metadata(bk.join("device-0.stream")).is_ok_and(|m| m.len() >= 512 << 10)
    });
    signal(child.id(), "TERM");
    let r = wait_output(child, Duration::from_secs(60));
    drop(stdin);
    r.fails(130, &["interrupted (SIGTERM)"]);
    assert!(!r.stderr.contains("Ctrl-C"), "{}", r.stderr);
    assert!(!claims_completion(&bk));
}

/// A verify waiting for its input stops at the first SIGTERM (it used to need two).
#[test]
fn verify_stops_at_the_first_signal() {
    let mut child = vdi()
        .args(["verify", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[0u8; 10]).unwrap();
    // Once it runs, the signal is handled (not the default action, which would kill it
    // without a word).
    wait_until(Duration::from_secs(30), "verify to start", || {
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .is_ok_and(|s| s.contains("SigCgt:") && !s.contains("SigCgt:\t0000000000000000"))
    });
    signal(child.id(), "TERM");
    let r = wait_output(child, Duration::from_secs(60));
    drop(stdin);
    r.fails(130, &["interrupted (SIGTERM)", "verify stopped"]);
}

/// A stream on standard input cannot say whether its producer finished: a producer
/// killed in the middle looks like one that ended. The backup is stored, but recorded
/// and reported as unchecked (it used to be "complete and intact", silently).
#[test]
fn a_stream_on_standard_input_is_recorded_as_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 2, 3 << 20);
    let bk = dir.path().join("bk");
    // The producer is killed after 1 MiB.
    let mut producer = std::process::Command::new("sh")
        .arg("-c")
        .arg("head -c 1048576 \"$0\"; kill -KILL $$")
        .arg(&src)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let r = vdi()
        .args(["backup", "-", &s(&bk)])
        .stdin(producer.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait_output(r, Duration::from_secs(60));
    assert!(
        !producer.wait().unwrap().success(),
        "the producer was killed"
    );
    r.ok();
    assert!(r.stderr.contains("unchecked stream"), "{}", r.stderr);
    assert!(r.stderr.contains("pipefail"), "{}", r.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bk.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["source"]["kind"], "stdin");
    assert_eq!(m["source"]["checked"], false);
    let v = run(&["verify", &s(&bk)]);
    v.ok();
    assert!(v.stderr.contains("unchecked stream"), "{}", v.stderr);
    assert_eq!(
        run(&["verify", &s(&bk), "--json"]).json()["source_checked"],
        false
    );
    // A file is checked.
    let bk2 = dir.path().join("bk2");
    run(&["backup", &s(&src), &s(&bk2)]).ok();
    assert_eq!(
        run(&["verify", &s(&bk2), "--json"]).json()["source_checked"],
        true
    );
    // An engine started by hand on standard input: the backup application learns it
    // from the stream header.
    let bk3 = dir.path().join("bk3");
    let set = set_name("unchecked");
    let client = spawn(&["client", "backup", "--set", &set, &s(&bk3)]);
    run_in(&["engine", "backup", "--set", &set, "-"], Some(&src), None).ok();
    let c = wait_output(client, Duration::from_secs(60));
    c.ok();
    assert!(c.stderr.contains("unchecked stream"), "{}", c.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bk3.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["source"]["kind"], "stdin");
    assert_eq!(m["source"]["checked"], false);
}

/// `vdi ARGS` started with standard input or output closed (through `sh`, which can).
fn run_closed(redirect: &str, args: &[&str]) -> Run {
    let c = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec \"$@\" {redirect}&-"))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_vdi"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(c, Duration::from_secs(60))
}

/// With standard output closed (`>&-`), a backup to `-` used to go into the /dev/null
/// Rust's runtime puts there, reported as a success; now it is refused (exit 2). A
/// `> /dev/null` the user asked for still works.
#[test]
fn closed_standard_streams_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 3, 100_000);
    run_closed(">", &["backup", &s(&src), "-"]).fails(2, &["standard output is closed", ">&-"]);
    let bk = dir.path().join("bk");
    run(&["backup", &s(&src), &s(&bk)]).ok();
    run_closed(">", &["restore", &s(&bk), "-"]).fails(2, &["standard output is closed"]);
    run_closed("<", &["backup", "-", &s(&dir.path().join("b2"))])
        .fails(2, &["standard input is closed", "<&-"]);
    assert!(!dir.path().join("b2").exists());
    run_closed("<", &["verify", "-"]).fails(2, &["standard input is closed"]);
    run_closed("<", &["restore", "-", &s(&dir.path().join("t"))])
        .fails(2, &["standard input is closed"]);
    run_in(
        &["backup", &s(&src), "-"],
        None,
        Some(std::path::Path::new("/dev/null")),
    )
    .ok();
}

/// `--buffer-count` 0 and 100000 are wrong command lines (exit 2; 0 was taken silently,
/// 100000 failed with exit 1), and a count larger than the source can use is lowered,
/// saying why (2048 buffers took 2.1 GB for a 20 MiB file).
#[test]
fn buffer_counts_are_checked_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 4, 20 << 20);
    let bk = dir.path().join("bk");
    for bad in ["0", "100000"] {
        run(&["backup", &s(&src), &s(&bk), "--buffer-count", bad]).fails(2, &["--buffer-count"]);
    }
    let r = run(&["backup", &s(&src), &s(&bk), "--buffer-count", "2048"]);
    r.ok();
    assert!(
        r.stderr.contains("--buffer-count 2048")
            && r.stderr.contains("fills 21 chunk(s)")
            && r.stderr.contains("allocated up front"),
        "{}",
        r.stderr
    );
    run(&["verify", &s(&bk)]).ok();
}

/// Set names follow the library's rule (letters, digits, `-_.{}`): spaces, newlines and
/// control characters are refused with the rule (they used to be accepted).
#[test]
fn set_names_follow_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 5, 1000);
    for bad in [
        "two words",
        "new\nline",
        "tab\there",
        "bell\u{7}",
        "a/b",
        "",
    ] {
        let r = run(&["backup", &s(&src), &s(&dir.path().join("bk")), "--set", bad]);
        r.fails(2, &["a set name is 1 to 100 of the letters", "- _ . { }"]);
        run(&["client", "backup", "--set", bad, &s(&dir.path().join("bk"))])
            .fails(2, &["a set name"]);
        run(&["engine", "backup", "--set", bad, &s(&src)]).fails(2, &["a set name"]);
    }
    assert!(!dir.path().join("bk").exists());
    run(&[
        "backup",
        &s(&src),
        &s(&dir.path().join("bk")),
        "--set",
        "{nightly-1.0_a}",
    ])
    .ok();
}

/// A set name in use says who holds it and how to choose another (any local process
/// can hold a fixed name).
#[test]
fn a_set_name_in_use_names_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let name = set_name("held");
    let holder = KillOnDrop(spawn(&[
        "client",
        "backup",
        "--set",
        &name,
        &s(&dir.path().join("a")),
    ]));
    wait_until(Duration::from_secs(30), "the first set", || {
        std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| t.contains(&name))
    });
    let src = dir.path().join("src");
    write_pattern(&src, 6, 1000);
    let pid = format!("process {}", holder.id());
    run(&[
        "backup",
        &s(&src),
        &s(&dir.path().join("b")),
        "--set",
        &name,
    ])
    .fails(
        7,
        &[
            "already in use",
            &pid,
            "this user",
            "--set NAME",
            "without --set",
        ],
    );
    drop(holder);
}
