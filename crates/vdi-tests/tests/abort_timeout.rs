//! Abort from each side, and the time-outs: GetConfiguration and GetCommand time-outs,
//! and `serverTimeOut` aborting a set whose client stops completing commands.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vdi::{
    AbortCause, ClientSet, ErrorCode, ServerCommand, ServerSet, Timeout, VdConfig, completion,
    features,
};
use vdi_tests::{Peer, Plan, client_config, device_name, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

fn args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

#[test]
fn client_signals_abort_mid_stream() {
    let name = unique_name("cab");
    let mut plan = Plan::new(&name, 1, 64 << 20);
    plan.transfer = 64 << 10;
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let dev = set.open_device(&name).unwrap();
    for _ in 0..10 {
        dev.get_command(Timeout::from_millis(30_000))
            .unwrap()
            .complete_ok()
            .unwrap();
    }
    let held = dev.get_command(Timeout::from_millis(30_000)).unwrap();
    set.signal_abort().unwrap();
    assert_eq!(
        held.complete_ok().unwrap_err().code(),
        ErrorCode::Abort,
        "completion after abort is refused"
    );
    assert_eq!(
        dev.get_command(Timeout::from_millis(5000))
            .unwrap_err()
            .code(),
        ErrorCode::Abort
    );
    assert_eq!(set.abort_cause(), Some(AbortCause::ClientSignalled));
    assert_eq!(peer.wait(Duration::from_secs(30)), 2, "engine must fail");
    assert!(
        peer.seen.iter().any(|l| l.starts_with("ERROR VD_E_ABORT")),
        "{:?}",
        peer.seen
    );
    set.close().unwrap();
}

#[test]
fn server_signals_abort_mid_stream() {
    let name = unique_name("sab");
    let mut plan = Plan::new(&name, 1, 64 << 20);
    plan.transfer = 64 << 10;
    let mut peer = Peer::spawn(PEER, &args("client", &plan), None);
    peer.expect_line("CREATED", Duration::from_secs(30));
    let set = ServerSet::open(&name).unwrap();
    set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
        .unwrap();
    set.request_buffers(65536, 0, 4).unwrap();
    set.end_configuration().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let aborted = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        let agent = s.spawn(|| set.execute_completion_agent());
        let dev = set.open_device(&name).unwrap();
        for _ in 0..4 {
            let (c, a) = (calls.clone(), aborted.clone());
            let b = set.allocate_buffer(65536, 0).unwrap();
            dev.send_command(ServerCommand::write(b, 65536), move |d| {
                c.fetch_add(1, Ordering::SeqCst);
                if d.completion_code == completion::ERROR_OPERATION_ABORTED {
                    a.fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap();
        }
        set.signal_abort().unwrap();
        // A send after the abort is refused and called back at once.
        let c = calls.clone();
        let e = dev
            .send_command(ServerCommand::new(vdi::CommandCode::FLUSH), move |d| {
                assert_eq!(d.completion_code, completion::ERROR_OPERATION_ABORTED);
                c.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Abort);
        assert_eq!(agent.join().unwrap().unwrap_err().code(), ErrorCode::Abort);
        assert_eq!(
            dev.close_device().unwrap_err().code(),
            ErrorCode::Abort,
            "CloseDevice after abort"
        );
    });
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "every callback exactly once"
    );
    assert_eq!(
        set.allocate_buffer(65536, 0).unwrap_err().code(),
        ErrorCode::Abort
    );
    set.close().unwrap();
    assert_eq!(peer.wait(Duration::from_secs(30)), 2);
    assert!(
        peer.seen.iter().any(|l| l.starts_with("ERROR VD_E_ABORT")),
        "{:?}",
        peer.seen
    );
}

#[test]
fn get_configuration_and_get_command_time_out() {
    let name = unique_name("to");
    let set = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    assert_eq!(
        set.get_configuration(Timeout::POLL).unwrap_err().code(),
        ErrorCode::Timeout
    );
    assert_eq!(
        set.get_configuration(Timeout::from_millis(30))
            .unwrap_err()
            .code(),
        ErrorCode::Timeout
    );
    let mut plan = Plan::new(&name, 1, 1 << 20);
    plan.pause = Some("configured".into());
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    peer.expect_line("PAUSED", Duration::from_secs(30));
    let dev = set.open_device(&name).unwrap();
    assert_eq!(
        dev.get_command(Timeout::POLL).unwrap_err().code(),
        ErrorCode::Timeout
    );
    assert_eq!(
        dev.get_command(Duration::from_millis(20))
            .unwrap_err()
            .code(),
        ErrorCode::Timeout
    );
    peer.kill();
    assert_eq!(
        dev.get_command(Timeout::Infinite).unwrap_err().code(),
        ErrorCode::Abort
    );
    set.close().unwrap();
}

#[test]
fn server_timeout_aborts_when_nothing_completes() {
    let name = unique_name("sto");
    let mut plan = Plan::new(&name, 1, 8 << 20);
    plan.transfer = 64 << 10;
    let mut cfg = client_config(&plan);
    cfg.server_time_out = 100;
    let set = ClientSet::create(&name, &cfg).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let dev = set.open_device(&device_name(&name, 0)).unwrap();
    // Fetch and hold every command, never completing one: after two intervals of no
    // progress the engine's completion agent aborts the set.
    let mut held = Vec::new();
    let e = loop {
        match dev.get_command(Timeout::from_millis(30_000)) {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
    };
    assert!(!held.is_empty());
    assert_eq!(e.code(), ErrorCode::Abort, "{e}");
    assert_eq!(set.abort_cause(), Some(AbortCause::ServerTimeout));
    drop(held);
    assert_eq!(peer.wait(Duration::from_secs(30)), 2);
    set.close().unwrap();
}
