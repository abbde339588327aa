//! `vdi demo` (with a small database) and `--help` on every command.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn demo_with_a_small_database() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let r = run(&["demo", "--size", "6M", "--dir", &s(&work)]);
    r.ok();
    let out = r.stdout_str();
    for w in [
        "1. made",
        "2. vdi backup",
        "3. vdi restore",
        "integrity_check = ok",
        "equal to the original",
        "done in",
    ] {
        assert!(out.contains(w), "the demo does not say {w:?}: {out}");
    }
    assert!(claims_completion(&work.join("backup")));
    assert_eq!(files_with(&work.join("backup"), "device-").len(), 4);
    // The size can also come from the environment, and --json gives a summary.
    let r = vdi()
        .args(["demo", "--json"])
        .env("VDI_DEMO_SIZE", "3M")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim()).unwrap();
    assert_eq!(j["ok"], true);
    assert_eq!(j["identical"], true);
    assert_eq!(j["integrity_check"], "ok");
    assert_eq!(j["devices"], 4);
    assert!(j["database_bytes"].as_u64().unwrap() >= 3 << 20);
}

#[test]
fn help_on_every_command_has_an_example() {
    for cmd in [
        vec![],
        vec!["backup"],
        vec!["restore"],
        vec!["verify"],
        vec!["demo"],
        vec!["client"],
        vec!["engine"],
        vec!["client", "backup"],
        vec!["client", "restore"],
        vec!["engine", "backup"],
        vec!["engine", "restore"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let r = run(&args);
        r.ok();
        let out = r.stdout_str();
        assert!(
            out.contains("Example"),
            "vdi {cmd:?} --help shows no example: {out}"
        );
        assert!(out.contains("vdi "), "{out}");
    }
    let r = run(&["--help"]);
    assert!(r.stdout_str().contains("Exit codes"));
}
