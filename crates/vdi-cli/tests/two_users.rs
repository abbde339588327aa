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

/// A copy of the `vdi` binary that `nobody` can execute, removed on drop: the build's
/// own binary may sit under a directory only root can enter (a checkout in root's home,
/// or a CI work directory made with mode 0700).
struct NobodyVdi {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl Drop for NobodyVdi {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl NobodyVdi {
    /// `None` when this process is not root (the caller prints SKIPPED).
    fn new(tag: &str) -> Option<NobodyVdi> {
        if !is_root() {
            return None;
        }
        let dir =
            std::path::PathBuf::from(format!("/tmp/vdi-two-users-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("vdi");
        std::fs::copy(env!("CARGO_BIN_EXE_vdi"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let me = NobodyVdi { dir, exe };
        // Through spawn, which retries the exec a concurrent fork makes fail (ETXTBSY).
        let ok = me
            .spawn(&["--version"])
            .wait_with_output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "as root, yet {} does not run as nobody",
            me.exe.display()
        );
        Some(me)
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.exe);
        c.args(args)
            .env_remove("VDI_DEMO_SIZE")
            .env("VDI_CONFIG", "none")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Starts `vdi ARGS` as nobody. Another test thread forking while the copy was being
    /// written may briefly hold its write descriptor (exec then fails with ETXTBSY): retried.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut tries = 0;
        loop {
            match self.command(args).spawn() {
                Ok(c) => return c,
                Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot start {} as nobody: {e}", self.exe.display()),
            }
        }
    }
}

#[test]
fn an_engine_of_another_user() {
    let Some(nobody) = NobodyVdi::new("engine") else {
        println!("SKIPPED: starting the engine as user nobody needs root");
        return;
    };
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
        nobody.spawn(&["engine", "backup", "--set", &set, &s(&src), "--wait", "5"]),
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
        nobody.spawn(&["engine", "backup", "--set", &set, &s(&src), "--wait", "30"]),
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
        nobody.spawn(&["engine", "restore", "--set", &set, &s(&out), "--wait", "30"]),
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
    let Some(nobody) = NobodyVdi::new("squat") else {
        println!("SKIPPED: starting a backup application as user nobody needs root");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let name = set_name("squat");
    let squatter = KillOnDrop(nobody.spawn(&[
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
