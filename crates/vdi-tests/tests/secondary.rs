//! Secondary client processes: one serves some devices of a set while the primary serves
//! the others, and buffers pass between processes by handle (GetBufferHandle in the
//! primary, MapBufferHandle in the secondary).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use vdi::{ClientSet, CommandCode, ErrorCode, Timeout, VdConfig, completion};
use vdi_tests::{Peer, Plan, client_config, run_client, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

fn args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

#[test]
fn secondary_serves_two_of_three_devices() {
    let name = unique_name("sec");
    let mut plan = Plan::new(&name, 3, 96 << 20);
    plan.transfer = 256 << 10;
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    // Before the primary's GetConfiguration, secondaries are refused.
    let mut early = Peer::spawn(
        PEER,
        &["open-secondary".into(), format!("set={name}")],
        None,
    );
    assert_eq!(early.wait(Duration::from_secs(30)), 3);
    assert!(
        early
            .seen
            .iter()
            .any(|l| l.starts_with("REFUSED VD_E_PROTOCOL")),
        "{:?}",
        early.seen
    );
    let mut server = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let mut sargs = args("secondary", &plan);
    sargs.push("which=1,2".into());
    let mut secondary = Peer::spawn(PEER, &sargs, None);
    let r = run_client(&set, &plan, &[0], &|_| {}).unwrap();
    assert_eq!((r.mismatches, r.errors), (0, 0));
    assert_eq!(r.bytes, vec![plan.device_bytes(0)]);
    assert_eq!(
        secondary.wait(Duration::from_secs(120)),
        0,
        "{:?}",
        secondary.seen
    );
    let want = plan.device_bytes(1) + plan.device_bytes(2);
    assert!(
        secondary
            .seen
            .iter()
            .any(|l| l.starts_with(&format!("DONE bytes={want} "))),
        "{:?}",
        secondary.seen
    );
    assert_eq!(
        server.wait(Duration::from_secs(120)),
        0,
        "{:?}",
        server.seen
    );
    set.close().unwrap();
}

fn handles(restore: bool) {
    let name = unique_name("hdl");
    let mut plan = Plan::new(&name, 1, 8 << 20);
    plan.transfer = 64 << 10;
    plan.restore = restore;
    plan.seed = 77;
    plan.prefix = 32;
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut server = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let mut worker = Peer::spawn(PEER, &["handles".into(), format!("set={name}")], None);
    worker.expect_line("READY", Duration::from_secs(30));
    let dev = set.open_device(&name).unwrap();
    assert_eq!(
        set.map_buffer_handle(0xFFFF_FFFF).unwrap_err().code(),
        ErrorCode::Invalid
    );
    assert_eq!(
        set.get_buffer_handle(&0u8).unwrap_err().code(),
        ErrorCode::Invalid
    );
    let mut offset = 0u64;
    let mut moved = 0;
    loop {
        let cmd = match dev.get_command(Timeout::from_millis(30_000)) {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Close, "{e}");
                break;
            }
        };
        if !cmd.code().carries_data() {
            cmd.complete_ok().unwrap();
            continue;
        }
        let handle = cmd.buffer_handle().unwrap();
        let p = cmd.buffer().unwrap().as_ptr();
        assert_eq!(set.get_buffer_handle(p).unwrap(), handle);
        assert_eq!(
            set.map_buffer_handle(handle).unwrap().as_ptr() as *const u8,
            p
        );
        let verb = if cmd.code() == CommandCode::READ {
            "fill"
        } else {
            "check"
        };
        worker.send_line(&format!("{verb} {handle} {} 77 0 {offset}", cmd.size()));
        assert_eq!(worker.expect_line("", Duration::from_secs(30)), "OK");
        if cmd.code() == CommandCode::READ {
            assert_eq!(
                vdi_tests::pattern::mismatch(77, 0, offset, cmd.buffer().unwrap()),
                None
            );
        }
        offset += u64::from(cmd.size());
        moved += 1;
        let n = cmd.size();
        cmd.complete(completion::ERROR_SUCCESS, n, 0).unwrap();
    }
    assert_eq!(offset, 8 << 20);
    assert_eq!(moved, 128);
    worker.send_line("quit");
    assert_eq!(worker.wait(Duration::from_secs(30)), 0);
    assert_eq!(server.wait(Duration::from_secs(30)), 0, "{:?}", server.seen);
    set.close().unwrap();
}

#[test]
fn buffer_handles_carry_write_data_to_another_process() {
    handles(false);
}

#[test]
fn buffer_handles_let_another_process_fill_reads() {
    handles(true);
}

#[test]
fn secondary_without_a_set_is_refused() {
    let e = ClientSet::open_in_secondary(&unique_name("none")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Protocol);
    let _ = VdConfig::default();
}

/// The primary closes its set while a secondary still serves a device: a device open in
/// a secondary is open in the set (whose service lives in the primary), so `Close`
/// returns `VD_E_OPEN` and aborts as the client's own abort, and the engine is not told
/// that the client died. Found by the crash campaign (`Close` used to return NOERROR and
/// the engine saw "the client process went away").
#[test]
fn primary_close_with_a_secondary_device_open_reports_vd_e_open() {
    let name = unique_name("pclose");
    let mut plan = Plan::new(&name, 2, 8 << 20);
    plan.transfer = 64 << 10;
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut args = vec!["server".to_owned()];
    args.extend(plan.to_args());
    let mut server = Peer::spawn(PEER, &args, None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let mut sec_plan = plan.clone();
    sec_plan.pause = Some("midstream".into());
    let mut sargs = vec!["secondary".to_owned()];
    sargs.extend(sec_plan.to_args());
    sargs.push("which=1".into());
    let mut secondary = Peer::spawn(PEER, &sargs, None);
    secondary.expect_line("PAUSED", Duration::from_secs(30));
    // Device 0 runs to its end; device 1 stays open in the (paused) secondary.
    run_client(&set, &plan, &[0], &|_| {}).unwrap();
    let closed = set.close();
    assert_eq!(server.wait(Duration::from_secs(30)), 2, "{:?}", server.seen);
    secondary.kill();
    assert_eq!(
        closed.as_ref().map_err(|e| e.code()),
        Err(ErrorCode::Open),
        "the primary's Close with a device open in a secondary"
    );
    assert!(
        !server.seen.iter().any(|l| l.contains("went away")),
        "the engine was told the client died: {:?}",
        server.seen
    );
}
