//! The two roles as two users: the backup application (root here) admits the engine's
//! group with `--allow-group`; without it the engine is refused with a message that says
//! what to change. Needs root (to start the engine as `nobody`); prints SKIPPED otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

const NOBODY: u32 = 65534;

fn as_nobody(args: &[&str]) -> std::process::Child {
    let mut c = vdi();
    c.args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

fn can_run_as_nobody() -> bool {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    is_root
        && vdi()
            .arg("--version")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn an_engine_of_another_user() {
    if !can_run_as_nobody() {
        println!("SKIPPED: starting the engine as user nobody needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 21, (2 << 20) + 7);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Refused without --allow-group: the engine says what to change.
    let bk = dir.path().join("bk");
    let set = set_name("users-no");
    let client = spawn(&["client", "backup", "--set", &set, &s(&bk), "--wait", "3"]);
    wait_until(Duration::from_secs(30), "the set", || {
        std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| t.contains(&set))
    });
    let e = wait_output(
        as_nobody(&["engine", "backup", "--set", &set, &s(&src), "--wait", "5"]),
        Duration::from_secs(60),
    );
    e.fails(3, &["VD_E_SECURITY", "--allow-group"]);
    let c = wait_output(client, Duration::from_secs(60));
    c.fails(8, &["no engine configured set"]);
    assert!(!claims_completion(&bk));

    // Admitted with --allow-group: a backup and a restore across the two users.
    let set = set_name("users-ok");
    let client = spawn(&[
        "client",
        "backup",
        "--set",
        &set,
        &s(&bk),
        "--devices",
        "2",
        "--allow-group",
        "65534",
    ]);
    let e = wait_output(
        as_nobody(&["engine", "backup", "--set", &set, &s(&src), "--wait", "30"]),
        Duration::from_secs(60),
    );
    e.ok();
    wait_output(client, Duration::from_secs(60)).ok();
    assert!(claims_completion(&bk));
    let out = dir.path().join("out");
    let set = set_name("users-r");
    let client = spawn(&[
        "client",
        "restore",
        "--set",
        &set,
        &s(&bk),
        "--allow-group",
        "65534",
    ]);
    let e = wait_output(
        as_nobody(&["engine", "restore", "--set", &set, &s(&out), "--wait", "30"]),
        Duration::from_secs(60),
    );
    e.ok();
    wait_output(client, Duration::from_secs(60)).ok();
    assert_eq!(digest(&src), digest(&out));
}

/// A set name held by another user says who (the user and the process), and how to
/// choose another name: any local user can hold a fixed name.
#[test]
fn a_set_name_held_by_another_user() {
    if !can_run_as_nobody() {
        println!("SKIPPED: starting a backup application as user nobody needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let name = set_name("squat");
    let squatter = KillOnDrop(as_nobody(&[
        "client",
        "backup",
        "--set",
        &name,
        &s(&dir.path().join("a")),
    ]));
    wait_until(Duration::from_secs(30), "the other user's set", || {
        std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| t.contains(&name))
    });
    let src = dir.path().join("src");
    write_pattern(&src, 22, 1000);
    let r = run(&[
        "backup",
        &s(&src),
        &s(&dir.path().join("b")),
        "--set",
        &name,
    ]);
    r.fails(
        7,
        &[
            "already in use",
            "user 65534, not this user",
            &format!("process {}", squatter.id()),
            "choose another one with --set NAME",
        ],
    );
    drop(squatter);
}
