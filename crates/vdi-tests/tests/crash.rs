//! SIGKILL of either side (and of a secondary client) at several points: the survivor's
//! blocked and later calls return `VD_E_ABORT` (never a time-out or a hang), every
//! outstanding callback runs exactly once with `ERROR_OPERATION_ABORTED`, and nothing is
//! left behind (no socket, nothing in `/dev/shm`, no memfd in this process).
//!
//! The tests of this file run one at a time (they count this process's memfds).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vdi::{
    AbortCause, ClientSet, ErrorCode, ServerCommand, ServerSet, Timeout, completion, features,
};
use vdi_tests::{
    Peer, Plan, client_config, dev_shm_entries, device_name, open_vdi_memfds, run_client,
    socket_exists, unique_name,
};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
static SERIAL: Mutex<()> = Mutex::new(());

fn args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

fn no_leftovers(name: &str, shm_before: &[String]) {
    assert!(!socket_exists(name), "socket of {name} left behind");
    assert_eq!(dev_shm_entries(), shm_before, "/dev/shm changed");
    assert_eq!(open_vdi_memfds(), 0, "this process still holds vdi memfds");
}

/// The engine dies at `point`; the client must see VD_E_ABORT.
fn kill_server_at(point: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shm = dev_shm_entries();
    let name = unique_name(&format!("ks-{point}"));
    let mut plan = Plan::new(&name, 2, 64 << 20);
    plan.pause = Some(point.to_owned());
    plan.transfer = 64 << 10;
    {
        let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
        let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
        let killed_at = Arc::new(Mutex::new(None::<Instant>));
        let k2 = killed_at.clone();
        let killer = std::thread::spawn(move || {
            peer.expect_line("PAUSED", Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(50));
            peer.kill();
            *k2.lock().unwrap() = Some(Instant::now());
        });
        // Serve the devices until the engine dies; long time-outs, so a missed death would
        // show as VD_E_TIMEOUT, never as a pass.
        let err = run_client(&set, &plan, &[0, 1], &|_| {}).unwrap_err();
        let noticed = Instant::now();
        killer.join().unwrap();
        assert_eq!(err.code(), ErrorCode::Abort, "{err}");
        assert_eq!(set.abort_cause(), Some(AbortCause::ServerDied));
        if let Some(k) = *killed_at.lock().unwrap() {
            eprintln!(
                "kill_server_at({point}): abort noticed {:?} after SIGKILL",
                noticed.saturating_duration_since(k)
            );
        }
        // Later calls return VD_E_ABORT too.
        assert_eq!(
            set.get_configuration(Timeout::POLL).unwrap_err().code(),
            ErrorCode::Abort
        );
        assert_eq!(set.open_device(&name).unwrap_err().code(), ErrorCode::Abort);
        set.close().unwrap();
    }
    no_leftovers(&name, &shm);
}

#[test]
fn engine_killed_after_configuration() {
    kill_server_at("configured");
}

#[test]
fn engine_killed_mid_stream() {
    kill_server_at("midstream");
}

#[test]
fn engine_killed_before_closing_devices() {
    kill_server_at("close");
}

/// The client dies at `point` while the test (the engine) has commands outstanding.
fn kill_client_at(point: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shm = dev_shm_entries();
    let name = unique_name(&format!("kc-{point}"));
    let mut plan = Plan::new(&name, 1, 64 << 20);
    plan.pause = Some(point.to_owned());
    plan.transfer = 64 << 10;
    plan.depth = 4;
    let mut peer = Peer::spawn(PEER, &args("client", &plan), None);
    peer.expect_line("CREATED", Duration::from_secs(30));
    {
        let set = ServerSet::open(&name).unwrap();
        set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
            .unwrap();
        set.request_buffers(65536, 0, 8).unwrap();
        set.end_configuration().unwrap();
        let calls: Arc<Vec<AtomicU32>> = Arc::new((0..4096).map(|_| AtomicU32::new(0)).collect());
        let aborted = Arc::new(AtomicU32::new(0));
        let mut sent = 0usize;
        std::thread::scope(|s| {
            let agent = s.spawn(|| set.execute_completion_agent());
            let dev = set.open_device(&device_name(&name, 0)).unwrap();
            let mut killed = false;
            let mut killed_at = None;
            loop {
                if !killed && peer.seen.iter().any(|l| l.starts_with("PAUSED")) {
                    std::thread::sleep(Duration::from_millis(50));
                    peer.kill();
                    killed = true;
                    killed_at = Some(Instant::now());
                }
                if !killed {
                    // A non-blocking look at the peer's output.
                    let _ = peer.try_line("PAUSED", Duration::ZERO);
                }
                let buf = match set.allocate_buffer(65536, 0) {
                    Ok(b) => b,
                    Err(e) if e.code() == ErrorCode::Memory => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Err(e) => {
                        assert_eq!(e.code(), ErrorCode::Abort, "{e}");
                        break;
                    }
                };
                let id = sent;
                let (c, a) = (calls.clone(), aborted.clone());
                let r = dev.send_command(ServerCommand::write(buf, 65536), move |done| {
                    c[id].fetch_add(1, Ordering::SeqCst);
                    if done.completion_code == completion::ERROR_OPERATION_ABORTED {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                });
                sent += 1;
                if let Err(e) = r {
                    assert_eq!(e.code(), ErrorCode::Abort, "{e}");
                    break;
                }
                assert!(sent < 4000, "the client never stopped consuming");
            }
            let r = agent.join().unwrap();
            assert_eq!(r.unwrap_err().code(), ErrorCode::Abort);
            if let Some(k) = killed_at {
                eprintln!(
                    "kill_client_at({point}): agent returned {:?} after SIGKILL",
                    k.elapsed()
                );
            }
        });
        assert_eq!(set.abort_cause(), Some(AbortCause::ClientDied));
        for (i, c) in calls.iter().take(sent).enumerate() {
            assert_eq!(
                c.load(Ordering::SeqCst),
                1,
                "callback of command {i} ran {} times",
                c.load(Ordering::SeqCst)
            );
        }
        assert!(
            aborted.load(Ordering::SeqCst) >= 1,
            "some command must have been aborted"
        );
        assert_eq!(set.outstanding(), 0);
        set.close().unwrap();
    }
    no_leftovers(&name, &shm);
}

#[test]
fn client_killed_after_configuration() {
    kill_client_at("configured");
}

#[test]
fn client_killed_mid_stream_with_commands_held() {
    kill_client_at("midstream");
}

#[test]
fn secondary_killed_while_serving_a_device() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shm = dev_shm_entries();
    let name = unique_name("ksec");
    let mut plan = Plan::new(&name, 2, 64 << 20);
    plan.transfer = 64 << 10;
    {
        let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
        let mut server = Peer::spawn(PEER, &args("server", &plan), None);
        set.get_configuration(Timeout::from_millis(30_000)).unwrap();
        let mut sec_plan = plan.clone();
        sec_plan.pause = Some("midstream".into());
        let mut sargs = args("secondary", &sec_plan);
        sargs.push("which=1".into());
        let mut secondary = Peer::spawn(PEER, &sargs, None);
        let killer = std::thread::spawn(move || {
            secondary.expect_line("PAUSED", Duration::from_secs(60));
            secondary.kill();
        });
        let err = run_client(&set, &plan, &[0], &|_| {}).unwrap_err();
        killer.join().unwrap();
        assert_eq!(err.code(), ErrorCode::Abort, "{err}");
        assert_eq!(set.abort_cause(), Some(AbortCause::SecondaryDied));
        // The engine learns of it too.
        assert_eq!(server.wait(Duration::from_secs(30)), 2);
        assert!(
            server.seen.iter().any(|l| l.contains("VD_E_ABORT")),
            "{:?}",
            server.seen
        );
        set.close().unwrap();
    }
    no_leftovers(&name, &shm);
}

/// An engine that closes its devices and then vanishes without closing the set (its
/// callbacks never ran) did not end normally: the client's set is aborted.
#[test]
fn engine_vanishing_after_closing_its_devices_is_not_a_normal_end() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique_name("vanish");
    let set = ClientSet::create(&name, &vdi::VdConfig::with_devices(1)).unwrap();
    let mut peer = Peer::spawn(PEER, &["vanish-server".into(), format!("set={name}")], None);
    peer.expect_line("VANISHING", Duration::from_secs(30));
    assert_eq!(peer.wait(Duration::from_secs(30)), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.abort_cause().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(set.abort_cause(), Some(AbortCause::ServerDied));
    let dev = set.open_device(&name);
    assert_eq!(dev.unwrap_err().code(), ErrorCode::Abort);
    set.close().unwrap();
}
