//! Every command code 1..19 (and an unknown one) crosses between the processes with its
//! fields — buffer, size, position (and the whence of SetPosition in `size`) — and the
//! client's outputs — completion code, bytes transferred, position — come back to the
//! engine's callbacks. VDC_Complete is negotiated (VDF_RequestComplete ->
//! VDF_CompleteEnabled).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use vdi::{ClientSet, CommandCode, ErrorCode, Timeout, VdConfig, completion, features};
use vdi_tests::{Peer, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

#[test]
fn every_command_code_with_its_fields() {
    let name = unique_name("cmds");
    let mut cfg = VdConfig::with_devices(1);
    cfg.features = features::REQUEST_COMPLETE;
    let set = ClientSet::create(&name, &cfg).unwrap();
    let mut peer = Peer::spawn(
        PEER,
        &["commands-server".into(), format!("set={name}")],
        None,
    );
    let got = set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    assert_eq!(
        got.features & features::COMPLETE_ENABLED,
        features::COMPLETE_ENABLED,
        "negotiated"
    );
    assert_eq!(got.block_size, 4096);
    assert_eq!(got.max_io_depth, 4);
    let dev = set.open_device(&name).unwrap();
    let mut seen = Vec::new();
    loop {
        let mut cmd = match dev.get_command(Timeout::from_millis(30_000)) {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Close, "{e}");
                break;
            }
        };
        let c = cmd.code().value();
        seen.push(c);
        assert_eq!(cmd.size(), c * 3, "size of {}", cmd.code());
        assert_eq!(
            cmd.position(),
            u64::from(c) * 1000 + 7,
            "position of {}",
            cmd.code()
        );
        match cmd.code() {
            CommandCode::WRITE => {
                let b = cmd.buffer().unwrap();
                assert_eq!(b.len(), 6);
                assert!(b.iter().all(|&x| x == 2));
                cmd.complete(completion::ERROR_SUCCESS, 6, 0).unwrap();
            }
            CommandCode::READ => {
                let b = cmd.buffer_mut().unwrap();
                assert_eq!(b.len(), 3);
                b.fill(0xEE);
                cmd.complete(completion::ERROR_SUCCESS, 3, 0).unwrap();
            }
            CommandCode::GET_POSITION | CommandCode::SET_POSITION => {
                let p = cmd.position() + 1;
                cmd.complete(completion::ERROR_SUCCESS, 0, p).unwrap();
            }
            code if code.name().is_none() => {
                assert!(cmd.buffer().is_none());
                cmd.complete(completion::ERROR_NOT_SUPPORTED, 0, 0).unwrap();
            }
            _ => {
                assert!(cmd.buffer().is_none(), "{} carries no buffer", cmd.code());
                cmd.complete_ok().unwrap();
            }
        }
    }
    let mut want: Vec<u32> = (1..=19).filter(|&c| c != 3).collect();
    want.extend([77, 3]);
    assert_eq!(seen, want, "every code, in order");
    set.close().unwrap();
    assert_eq!(peer.wait(Duration::from_secs(30)), 0, "{:?}", peer.seen);
    let line = peer
        .seen
        .iter()
        .find(|l| l.starts_with("RESULT"))
        .unwrap()
        .clone();
    let results: Vec<&str> = line.split_whitespace().skip(1).collect();
    // code:completion:bytes:outPosition:firstByte
    assert_eq!(results[0], "1:0:3:0:238", "Read filled by the client");
    assert_eq!(results[1], "2:0:6:0:2", "Write");
    let get_pos = results.iter().find(|r| r.starts_with("9:")).unwrap();
    assert_eq!(*get_pos, "9:0:0:9008:0", "GetPosition returns the position");
    let set_pos = results.iter().find(|r| r.starts_with("10:")).unwrap();
    assert_eq!(
        *set_pos, "10:0:0:10008:0",
        "SetPosition returns the position"
    );
    let unknown = results.iter().find(|r| r.starts_with("77:")).unwrap();
    assert_eq!(
        *unknown,
        format!("77:{}:0:0:0", completion::ERROR_NOT_SUPPORTED)
    );
    assert_eq!(
        *results.last().unwrap(),
        "3:0:0:0:0",
        "ClearError after the error"
    );
    assert_eq!(results.len(), 20);
}
