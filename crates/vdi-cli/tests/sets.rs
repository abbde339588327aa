//! `vdi sets` while a real 4-device backup runs (the fields are there and plausible:
//! bytes grow, the pids are the backup's and its engine's) and after it (the set is
//! gone), and the backup it watched is whole.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn sets_shows_a_live_backup_and_not_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    write_pattern(&src, 7, 1 << 30);
    let set = set_name("sets");
    let bk = dir.path().join("bk");
    let child = vdi()
        .args([
            "backup",
            &s(&src),
            &s(&bk),
            "--devices",
            "4",
            "--set",
            &set,
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let backup_pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut bytes = Vec::new();
    let mut seen = None;
    while Instant::now() < deadline {
        let r = run(&["sets", "--json"]);
        r.ok();
        let v = r.json();
        let sets = v["sets"].as_array().unwrap().clone();
        let Some(me) = sets.into_iter().find(|x| x["name"] == set.as_str()) else {
            if seen.is_some() {
                break; // gone: the backup ended
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if me["state"] == "active" {
            bytes.push(me["bytes"].as_u64().unwrap());
            seen = Some(me);
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me = seen.expect("the backup's set was seen active");
    assert_eq!(me["client_pid"].as_u64(), Some(u64::from(backup_pid)));
    assert_eq!(
        me["owner_uid"].as_u64(),
        Some(u64::from(rustix::process::getuid().as_raw()))
    );
    let engine = me["engine_pid"].as_u64().unwrap();
    assert_ne!(
        engine,
        u64::from(backup_pid),
        "the engine is another process"
    );
    assert_eq!(me["devices"], 4);
    let devs = me["device_stats"].as_array().unwrap();
    assert_eq!(devs.len(), 4);
    for d in devs {
        assert!(d["open"].as_bool().unwrap());
        for k in ["client_wait_share", "engine_wait_share"] {
            let x = d[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{k} = {x}");
        }
        assert!(["engine", "client", "-"].contains(&d["bottleneck"].as_str().unwrap()));
    }
    assert!(bytes.windows(2).all(|w| w[0] <= w[1]), "{bytes:?}");
    // Gone once the backup ended, and named as such.
    let r = run(&["sets", "--json"]);
    assert!(!r.stdout_str().contains(&set));
    run(&["sets", &set]).fails(3, &["is live on this machine"]);
    // The backup it watched is whole.
    run(&["verify", &s(&bk)]).ok();
    let r = run(&["sets"]);
    r.ok();
}
