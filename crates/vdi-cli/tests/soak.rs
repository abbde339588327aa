//! `vdi soak`: a short soak succeeds, reports the runs it made and the bytes it moved,
//! and leaves nothing in its TMPDIR.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;

fn soak(tmp: &std::path::Path, args: &[&str]) -> Run {
    let mut c = vdi();
    c.arg("soak")
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(120))
}

fn assert_empty(tmp: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

#[test]
fn a_short_soak_counts_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let r = soak(
        dir.path(),
        &["--runs", "6", "--seed", "7", "--max-size", "2M", "--json"],
    );
    r.ok();
    let j = r.json();
    assert_eq!(j["command"], "soak");
    assert_eq!(j["ok"], true);
    assert_eq!(j["runs"], 6);
    assert_eq!(j["seed"], 7);
    assert!(j["failed_run"].is_null());
    assert!(j["source_bytes"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(
        j["moved_bytes"].as_u64().unwrap(),
        2 * j["source_bytes"].as_u64().unwrap()
    );
    assert_empty(dir.path());

    // The same seed draws the same runs: the same bytes.
    let again = soak(
        dir.path(),
        &["--runs", "6", "--seed", "7", "--max-size", "2M", "--json"],
    );
    assert_eq!(again.ok().json()["source_bytes"], j["source_bytes"]);
    assert_empty(dir.path());
}

#[test]
fn a_timed_soak_reports_its_tally() {
    let dir = tempfile::tempdir().unwrap();
    let r = soak(dir.path(), &["--duration", "2s", "--max-size", "1M"]);
    r.ok();
    assert!(r.stderr.contains("soak: run 1 ok"), "{}", r.stderr);
    assert!(r.stderr.contains("runs, 0 failures in"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("backed up, verified and restored byte for byte")
    );
    assert!(r.stderr.contains("seed "));
    assert_empty(dir.path());
}

#[test]
fn soak_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    soak(dir.path(), &["--duration", "soon"]).fails(2, &["is not a duration"]);
    soak(dir.path(), &["--runs", "1", "--dir", "/nonexistent/soak"])
        .fails(1, &["creating a scratch directory in /nonexistent/soak"]);
}
