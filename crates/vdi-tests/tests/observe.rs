//! Observing live sets (`vdi::observe`, what `vdi sets` shows): the fields are there and
//! plausible during a real backup between two processes (bytes grow, the pids are the
//! peers'), the set is gone once it ends, observing does not disturb it (every byte is
//! still checked by both peers), another user's set shows only its name and owner, and
//! the states follow the set's life.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use vdi::observe::{SetState, list, look};
use vdi::{ClientSet, ServerSet, Timeout, features};
use vdi_tests::{Peer, Plan, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

fn args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

#[test]
fn a_live_four_device_backup_is_seen_and_not_disturbed() {
    let name = unique_name("obs");
    let mut plan = Plan::new(&name, 4, 1 << 30);
    plan.transfer = 256 << 10;
    let mut client = Peer::spawn(PEER, &args("client", &plan), None);
    client.expect_line("CREATED", Duration::from_secs(30));
    let server = Peer::spawn(PEER, &args("server", &plan), None);
    let mut seen_bytes = Vec::new();
    let mut looks = 0;
    let mut active = None;
    // Look as often as possible while the backup runs.
    while list().contains(&name) {
        let s = look(&name);
        looks += 1;
        if let Ok(v) = &s.view
            && v.state == SetState::Active
            && v.devices.len() == 4
        {
            seen_bytes.push(v.devices.iter().map(|d| d.bytes).sum::<u64>());
            active = Some((s.clone(), v.clone()));
        }
    }
    let mut client = client;
    let mut server = server;
    assert_eq!(
        client.wait(Duration::from_secs(120)),
        0,
        "{:?}",
        client.seen
    );
    assert_eq!(
        server.wait(Duration::from_secs(120)),
        0,
        "{:?}",
        server.seen
    );
    for p in [&client, &server] {
        assert!(
            p.seen.iter().any(|l| l.contains("mismatches=0 errors=0")),
            "every byte checked: {:?}",
            p.seen
        );
    }
    let (s, v) = active.expect("the set was seen active");
    assert_eq!(s.creator_pid, Some(client.pid()));
    assert_eq!(s.creator_uid, Some(rustix::process::getuid().as_raw()));
    assert_eq!(v.client_pid, client.pid());
    assert_eq!(v.server_pid, Some(server.pid()));
    assert_eq!(v.config.device_count, 4);
    assert_eq!(v.config.max_transfer_size, 256 << 10);
    for d in &v.devices {
        assert!(d.open, "device {} open", d.index);
        assert_eq!(d.owner, Some(1), "served by the primary");
        assert!(d.name.is_some());
        assert!(d.outstanding <= 64);
    }
    assert!(looks >= 2 && seen_bytes.len() >= 2, "looked {looks} times");
    assert!(
        seen_bytes.windows(2).all(|w| w[0] <= w[1]),
        "bytes never go back: {seen_bytes:?}"
    );
    assert!(
        seen_bytes.last() > seen_bytes.first(),
        "bytes grew: {seen_bytes:?}"
    );
    assert!(*seen_bytes.last().unwrap() <= 1 << 30);
    assert!(!list().contains(&name), "the set is gone once it ended");
}

#[test]
fn another_users_set_shows_only_its_name_and_owner() {
    let Some(np) = vdi_tests::exe_for_nobody(PEER, "observe") else {
        println!("SKIPPED: needs root to start a peer as user nobody");
        return;
    };
    let name = unique_name("obu");
    let mut plan = Plan::new(&name, 1, 1 << 20);
    plan.pause = Some("configured".into());
    let mut client = Peer::spawn(&np.exe, &args("client", &plan), Some(65534));
    client.expect_line("CREATED", Duration::from_secs(30));
    assert!(list().contains(&name));
    let s = look(&name);
    assert_eq!(s.creator_uid, Some(65534));
    assert_eq!(s.creator_pid, Some(client.pid()));
    let e = s.view.unwrap_err();
    assert!(e.contains("denied"), "{e}");
    client.kill();
}

#[test]
fn the_states_follow_the_sets_life() {
    let name = unique_name("obs-life");
    let mut cfg = vdi::VdConfig::with_devices(2);
    cfg.features = features::REQUEST_COMPLETE;
    let client = ClientSet::create(&name, &cfg).unwrap();
    let v = look(&name).view.unwrap();
    assert_eq!(v.state, SetState::Waiting);
    assert!(v.devices.is_empty() && v.server_pid.is_none());
    assert_eq!(v.client_pid, std::process::id());
    let server = ServerSet::open(&name).unwrap();
    assert_eq!(look(&name).view.unwrap().state, SetState::Configuring);
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
        .unwrap();
    server.request_buffers(65536, 0, 2).unwrap();
    server.end_configuration().unwrap();
    client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    let v = look(&name).view.unwrap();
    assert_eq!(v.state, SetState::Active);
    assert_eq!(v.devices.len(), 2);
    assert_eq!(v.server_pid, Some(std::process::id()));
    assert!(v.devices.iter().all(|d| !d.open && d.bytes == 0));
    server.signal_abort().unwrap();
    let v = look(&name).view.unwrap();
    assert_eq!(
        v.state,
        SetState::Aborting(vdi::AbortCause::ServerSignalled)
    );
    // Looking changed nothing: the set's own calls still answer as before.
    assert_eq!(client.abort_cause(), Some(vdi::AbortCause::ServerSignalled));
    let _ = server.close();
    let _ = client.close();
    assert!(!list().contains(&name));
}
