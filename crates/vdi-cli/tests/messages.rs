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
    assert!(!producer.wait().unwrap().success(), "the producer was killed");
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
