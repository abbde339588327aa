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
