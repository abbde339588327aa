//! The device IO-ERROR protocol across two processes (reference §2.4): an error
//! completion flushes the commands queued behind it with `ERROR_IO_DEVICE`, new sends are
//! refused with `VD_E_IO_ERROR`, ClearError is held back until the outstanding commands
//! are completed, and after it the device works again.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use vdi::{ClientSet, CommandCode, ErrorCode, Timeout, VdConfig, completion};
use vdi_tests::{Peer, pattern, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

#[test]
fn error_flush_refuse_clear_error_recover() {
    let name = unique_name("ioe");
    let set = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let mut peer = Peer::spawn(
        PEER,
        &[
            "ioerror-server".into(),
            format!("set={name}"),
            "seed=9".into(),
        ],
        None,
    );
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let dev = set.open_device(&name).unwrap();
    peer.expect_line("SENT5", Duration::from_secs(30));
    let t = || Timeout::from_millis(30_000);
    let w0 = dev.get_command(t()).unwrap();
    let w1 = dev.get_command(t()).unwrap();
    assert_eq!(
        (w0.code(), w1.code()),
        (CommandCode::WRITE, CommandCode::WRITE)
    );
    assert_eq!(pattern::mismatch(9, 0, 0, w0.buffer().unwrap()), None);
    // W0 fails: W2..W4, queued but not fetched, are flushed with ERROR_IO_DEVICE.
    w0.complete(completion::ERROR_DISK_FULL, 0, 0).unwrap();
    peer.expect_line("CLEAR_SENT", Duration::from_secs(30));
    // ClearError is held back while W1 is outstanding.
    assert_eq!(
        dev.get_command(Duration::from_millis(200))
            .unwrap_err()
            .code(),
        ErrorCode::Timeout
    );
    w1.complete_ok().unwrap();
    let clear = dev.get_command(t()).unwrap();
    assert_eq!(clear.code(), CommandCode::CLEAR_ERROR);
    clear.complete_ok().unwrap();
    // The device works again: W6, then Flush, then the end.
    let w6 = dev.get_command(t()).unwrap();
    assert_eq!(w6.code(), CommandCode::WRITE);
    assert_eq!(
        pattern::mismatch(9, 0, 6 * 65536, w6.buffer().unwrap()),
        None
    );
    w6.complete_ok().unwrap();
    let flush = dev.get_command(t()).unwrap();
    assert_eq!(flush.code(), CommandCode::FLUSH);
    flush.complete_ok().unwrap();
    assert_eq!(dev.get_command(t()).unwrap_err().code(), ErrorCode::Close);
    set.close().unwrap();
    assert_eq!(
        peer.wait(Duration::from_secs(30)),
        0,
        "engine's view: {:?}",
        peer.seen
    );
}
