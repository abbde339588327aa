//! The progress watchdog: a SIGSTOPped engine or backup application used to be waited
//! for without limit, silently. Now the other side warns, then gives up after
//! `--stall-timeout`, naming the side that stalled, and nothing claims completion.
//! (The time-outs here are short so the tests end soon; no test judges a duration.)

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

/// Sends SIGCONT to a process when dropped.
struct ContOnDrop(u32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Feeds `stdin` from a thread until it is closed (the reader went away).
fn feed(mut stdin: std::process::ChildStdin, upto: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let piece = pattern(77, 64 << 10);
        let mut sent = 0;
        while sent < upto && stdin.write_all(&piece).is_ok() {
            sent += piece.len();
        }
    })
}

#[test]
fn a_stopped_engine_is_named_and_the_backup_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let mut child = vdi()
        .args(["backup", "-", &s(&bk), "--stall-timeout", "2s"])
        .args(["--max-transfer-size", "64K"])
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
    let engine = children_of(child.id())[0];
    signal(engine, "STOP");
    let _cont = ContOnDrop(engine);
    let writer = feed(stdin, 64 << 20);
    let r = wait_output(child, Duration::from_secs(120));
    let engine_pid = format!("the engine (pid {engine})");
    r.fails(
        8,
        &[
            &engine_pid,
            "made no progress",
            "it is stopped",
            "--stall-timeout",
        ],
    );
    assert!(
        r.stderr.contains("warning:"),
        "a warning comes first: {}",
        r.stderr
    );
    assert!(!claims_completion(&bk));
    assert!(!bk.exists(), "the partial backup is removed");
    // vdi killed the stopped engine (a stopped process can still be killed).
    assert!(!alive(engine));
    writer.join().unwrap();
}

#[test]
fn a_stopped_backup_application_is_named_by_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let bk = dir.path().join("bk");
    let mut child = vdi()
        .args(["backup", "-", &s(&bk), "--stall-timeout", "2s"])
        .args(["--max-transfer-size", "64K"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pattern(2, 1 << 20)).unwrap();
    wait_until(Duration::from_secs(30), "data in the stream file", || {
        std::fs::metadata(bk.join("device-0.stream")).is_ok_and(|m| m.len() >= 512 << 10)
    });
    let pid = child.id();
    let engine = children_of(pid)[0];
    signal(pid, "STOP");
    // If this test fails before it continues the process, it is continued all the same
    // (and then ends by itself: its engine gave up).
    let _cont = ContOnDrop(pid);
    // The engine keeps sending what it reads, and nothing completes.
    let writer = feed(stdin, 64 << 20);
    wait_until(Duration::from_secs(60), "the engine to give up", || {
        !alive(engine)
    });
    signal(pid, "CONT");
    let r = wait_output(child, Duration::from_secs(120));
    r.fails(
        8,
        &[
            &format!("the backup application (pid {pid})"),
            "made no progress",
            "it is stopped",
        ],
    );
    assert!(!claims_completion(&bk));
    writer.join().unwrap();
}

#[test]
fn a_stopped_engine_of_a_restore_to_a_pipe_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 3, 32 << 20);
    let bk = dir.path().join("bk");
    run(&["backup", &s(&src), &s(&bk), "--devices", "2"]).ok();
    let mut child = vdi()
        .args(["restore", &s(&bk), "-", "--stall-timeout", "2s"])
        .args(["--max-transfer-size", "64K"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    // The engine writes into the pipe only as fast as it is read: it cannot be done yet.
    let mut buf = vec![0u8; 1 << 20];
    out.read_exact(&mut buf).unwrap();
    let engine = children_of(child.id())[0];
    signal(engine, "STOP");
    let _cont = ContOnDrop(engine);
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
    });
    let r = wait_output(child, Duration::from_secs(120));
    r.fails(
        8,
        &[
            &format!("the engine (pid {engine})"),
            "it is stopped",
            "restore was aborted",
        ],
    );
    reader.join().unwrap();
    assert!(!alive(engine));
}

#[test]
fn zero_waits_for_ever_and_nonsense_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 4, 100_000);
    run(&[
        "backup",
        &s(&src),
        &s(&dir.path().join("bk")),
        "--stall-timeout",
        "0",
    ])
    .ok();
    run(&[
        "backup",
        &s(&src),
        &s(&dir.path().join("b2")),
        "--stall-timeout",
        "soon",
    ])
    .fails(2, &["--stall-timeout"]);
}

/// A producer on standard input that sends nothing more never holds a process whose peer
/// is gone: the engine of a killed `vdi backup -`, and a `vdi restore -` whose engine was
/// killed, both end (they used to wait in read(2) for as long as the producer lived).
#[test]
fn a_silent_producer_never_holds_a_process_whose_peer_is_gone() {
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
    stdin.write_all(&pattern(5, 1 << 20)).unwrap();
    wait_until(Duration::from_secs(30), "data in the stream file", || {
        std::fs::metadata(bk.join("device-0.stream")).is_ok_and(|m| m.len() >= 512 << 10)
    });
    let engine = children_of(child.id())[0];
    signal(child.id(), "KILL");
    let _ = wait_output(child, Duration::from_secs(30));
    // The producer lives on (stdin stays open) and sends nothing.
    wait_until(
        Duration::from_secs(60),
        "the orphaned engine to end",
        || !alive(engine),
    );
    drop(stdin);

    // A restore reading its backup from a producer that stops sending.
    let src = dir.path().join("src");
    write_pattern(&src, 6, 4 << 20);
    let stream = dir.path().join("stream");
    run_in(&["backup", &s(&src), "-"], None, Some(&stream)).ok();
    let t = dir.path().join("t");
    let mut child = vdi()
        .args(["restore", "-", &s(&t), "--max-transfer-size", "64K"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&std::fs::read(&stream).unwrap()[..1 << 20])
        .unwrap();
    wait_until(Duration::from_secs(30), "the restore's engine", || {
        children_of(child.id()).len() == 1
    });
    wait_until(Duration::from_secs(30), "restored data", || {
        files_with(dir.path(), ".vdi-partial")
            .first()
            .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    });
    signal(children_of(child.id())[0], "KILL");
    let r = wait_output(child, Duration::from_secs(60));
    drop(stdin);
    r.fails(8, &["killed by signal 9"]);
    assert!(!t.exists());
    assert!(files_with(dir.path(), ".vdi-partial").is_empty());
}
