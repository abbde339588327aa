//! The reference's objects with their full state (what the C ABI wraps): the cells of the
//! state tables that the typed API makes unrepresentable — calls before Create/Open,
//! Create twice, calls after Close, reuse after Close — and commands and buffers passed by
//! handle and address.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vdi::object::{ClientVirtualDeviceSet, ServerVirtualDeviceSet};
use vdi::{CommandCode, ErrorCode, Timeout, VdConfig, completion, features};

fn name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "obj-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn code<T: std::fmt::Debug>(r: vdi::Result<T>) -> ErrorCode {
    r.unwrap_err().code()
}

#[test]
fn client_set_object_dne_create_twice_close_reuse() {
    let set = ClientVirtualDeviceSet::new();
    // DNE column.
    assert_eq!(
        code(set.get_configuration(Timeout::POLL)),
        ErrorCode::Protocol
    );
    assert_eq!(code(set.open_device("x")), ErrorCode::Protocol);
    assert_eq!(code(set.close()), ErrorCode::Protocol);
    assert_eq!(code(set.signal_abort()), ErrorCode::Protocol);
    assert_eq!(
        code(set.get_buffer_handle(std::ptr::null())),
        ErrorCode::Protocol
    );
    assert_eq!(code(set.map_buffer_handle(0)), ErrorCode::Protocol);
    assert_eq!(
        code(set.create_ex(Some("SQL2"), &name("i"), &VdConfig::with_devices(1))),
        ErrorCode::InstanceName
    );
    assert_eq!(
        code(set.create(&name("bad"), &VdConfig::with_devices(0))),
        ErrorCode::NotSupported
    );
    // Create -> Configurable; Create again -> VD_E_PROTOCOL.
    let n = name("c");
    set.create(&n, &VdConfig::with_devices(1)).unwrap();
    assert_eq!(
        code(set.create(&name("c2"), &VdConfig::with_devices(1))),
        ErrorCode::Protocol
    );
    assert_eq!(code(set.open_in_secondary(&n)), ErrorCode::Protocol);
    // OpenDevice in Configurable -> VD_E_PROTOCOL.
    assert_eq!(code(set.open_device(&n)), ErrorCode::Protocol);
    // Close -> DNE; the object can be reused.
    set.close().unwrap();
    assert_eq!(
        code(set.get_configuration(Timeout::POLL)),
        ErrorCode::Protocol
    );
    assert_eq!(code(set.close()), ErrorCode::Protocol);
    set.create(&n, &VdConfig::with_devices(1)).unwrap();
    // Abort column: SignalAbort, then GetConfiguration -> VD_E_ABORT, SignalAbort again ok,
    // Close -> NOERROR.
    set.signal_abort().unwrap();
    assert_eq!(code(set.get_configuration(Timeout::POLL)), ErrorCode::Abort);
    set.signal_abort().unwrap();
    set.close().unwrap();
}

#[test]
fn server_set_object_dne_open_twice_useless_after_close() {
    let set = ServerVirtualDeviceSet::new();
    assert_eq!(code(set.get_configuration()), ErrorCode::Protocol);
    assert_eq!(
        code(set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 0)),
        ErrorCode::Protocol
    );
    assert_eq!(code(set.request_buffers(65536, 0, 1)), ErrorCode::Protocol);
    assert_eq!(
        code(set.query_available_buffers(65536, 0)),
        ErrorCode::Protocol
    );
    assert_eq!(code(set.end_configuration()), ErrorCode::Protocol);
    assert_eq!(code(set.execute_completion_agent()), ErrorCode::Protocol);
    assert_eq!(code(set.open_device("x")), ErrorCode::Protocol);
    assert_eq!(code(set.allocate_buffer(512, 0)), ErrorCode::Protocol);
    assert_eq!(
        code(set.free_buffer(std::ptr::null_mut(), 1)),
        ErrorCode::Protocol
    );
    assert!(!set.is_shared_buffer(std::ptr::null()));
    assert_eq!(code(set.signal_abort()), ErrorCode::Protocol);
    assert_eq!(code(set.close()), ErrorCode::Protocol);
    assert_eq!(
        code(set.open(None, &name("none"))),
        ErrorCode::Invalid,
        "no such set"
    );
    let client = ClientVirtualDeviceSet::new();
    let n = name("s");
    client.create(&n, &VdConfig::with_devices(1)).unwrap();
    let set = ServerVirtualDeviceSet::new();
    set.open(None, &n).unwrap();
    assert_eq!(
        code(set.open(None, &n)),
        ErrorCode::Protocol,
        "Open in Connected"
    );
    set.close().unwrap();
    assert_eq!(
        code(set.open(None, &n)),
        ErrorCode::Protocol,
        "the object is useless after Close"
    );
    assert_eq!(code(set.get_configuration()), ErrorCode::Protocol);
    // The server went away before configuring: the client set is aborted.
    assert_eq!(
        code(client.get_configuration(Timeout::from_millis(10_000))),
        ErrorCode::Abort
    );
    client.close().unwrap();
}

#[test]
fn commands_by_handle_and_buffers_by_address() {
    let n = name("rt");
    let client = ClientVirtualDeviceSet::new();
    client.create(&n, &VdConfig::with_devices(1)).unwrap();
    let server = Arc::new(ServerVirtualDeviceSet::new());
    server.open(None, &n).unwrap();
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
        .unwrap();
    server.request_buffers(65536, 0, 2).unwrap();
    assert_eq!(server.query_available_buffers(65536, 0).unwrap(), 2);
    server.end_configuration().unwrap();
    let s2 = server.clone();
    let agent = std::thread::spawn(move || s2.execute_completion_agent());
    let cfg = client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    assert_eq!(cfg.features & features::WRITE_MEDIA, features::WRITE_MEDIA);
    let sdev = server.open_device(&n).unwrap();
    let cdev = client.open_device(&n).unwrap();
    let p = server.allocate_buffer(65536, 0).unwrap();
    assert!(server.is_shared_buffer(p));
    assert_eq!(
        code(server.free_buffer(p, 512)),
        ErrorCode::Invalid,
        "wrong size"
    );
    // SAFETY: `p` is a 65536-byte buffer this test owns until it is sent.
    unsafe { std::ptr::write_bytes(p, 0x5A, 65536) };
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = done.clone();
    sdev.send_command(CommandCode::WRITE.value(), 65536, 0, p, move |c| {
        d2.lock().unwrap().push(c.completion_code)
    })
    .unwrap();
    assert_eq!(
        code(server.free_buffer(p, 65536)),
        ErrorCode::Invalid,
        "a buffer in flight cannot be freed"
    );
    // A foreign pointer is refused and the routine still runs, with the mapped code.
    let d3 = done.clone();
    let mut local = [0u8; 16];
    assert_eq!(
        code(sdev.send_command(
            CommandCode::WRITE.value(),
            16,
            0,
            local.as_mut_ptr(),
            move |c| d3.lock().unwrap().push(c.completion_code)
        )),
        ErrorCode::Invalid
    );
    let cmd = client_get(&cdev);
    assert_eq!(cmd.command_code, CommandCode::WRITE.value());
    assert_eq!(
        client.get_buffer_handle(cmd.buffer).unwrap(),
        client.get_buffer_handle(cmd.buffer).unwrap()
    );
    assert_eq!(
        client
            .map_buffer_handle(client.get_buffer_handle(cmd.buffer).unwrap())
            .unwrap(),
        cmd.buffer
    );
    // SAFETY: the command is outstanding; its 65536 bytes are lent to us.
    let data = unsafe { std::slice::from_raw_parts(cmd.buffer, 65536) };
    assert!(data.iter().all(|&b| b == 0x5A));
    assert_eq!(
        code(cdev.complete_command(cmd.handle + 1000, 0, 0, 0)),
        ErrorCode::Invalid,
        "not an active command"
    );
    cdev.complete_command(cmd.handle, completion::ERROR_SUCCESS, 65536, 0)
        .unwrap();
    assert_eq!(
        code(cdev.complete_command(cmd.handle, 0, 0, 0)),
        ErrorCode::Invalid,
        "completed twice"
    );
    while done.lock().unwrap().len() < 2 {
        std::thread::yield_now();
    }
    assert_eq!(
        *done.lock().unwrap(),
        vec![
            completion::ERROR_INVALID_PARAMETER,
            completion::ERROR_SUCCESS
        ]
    );
    // The buffer is back: it can be freed now.
    server.free_buffer(p, 65536).unwrap();
    sdev.close_device().unwrap();
    assert_eq!(code(sdev.close_device()), ErrorCode::Close);
    assert_eq!(
        code(cdev.get_command(Timeout::from_millis(10_000))),
        ErrorCode::Close
    );
    assert_eq!(
        code(cdev.get_command(Timeout::POLL)),
        ErrorCode::Close,
        "again VD_E_CLOSE"
    );
    agent.join().unwrap().unwrap();
    client.close().unwrap();
    server.close().unwrap();
    // After Close the device objects answer VD_E_PROTOCOL.
    assert_eq!(code(cdev.get_command(Timeout::POLL)), ErrorCode::Protocol);
}

fn client_get(dev: &vdi::object::ClientVirtualDevice) -> vdi::object::VdcCommand {
    dev.get_command(Timeout::from_millis(10_000)).unwrap()
}

/// FreeBuffer follows the AllocateBuffer/FreeBuffer row of the server state table in every
/// state, before it looks at the buffer: Connected and Configurable `VD_E_PROTOCOL`,
/// Initializing and Active `NOERROR`, Normally Terminated `VD_E_PROTOCOL`, Abnormally
/// Terminated `VD_E_ABORT`, after Close `VD_E_PROTOCOL`.
#[test]
fn free_buffer_follows_its_state_row() {
    let n = name("fb");
    let client = ClientVirtualDeviceSet::new();
    client.create(&n, &VdConfig::with_devices(1)).unwrap();
    let server = Arc::new(ServerVirtualDeviceSet::new());
    server.open(None, &n).unwrap();
    let mut junk = [0u8; 512];
    assert_eq!(
        code(server.free_buffer(junk.as_mut_ptr(), 512)),
        ErrorCode::Protocol,
        "Connected"
    );
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
        .unwrap();
    assert_eq!(
        code(server.free_buffer(junk.as_mut_ptr(), 512)),
        ErrorCode::Protocol,
        "Configurable"
    );
    server.request_buffers(65536, 0, 4).unwrap();
    server.end_configuration().unwrap();
    let a = server.allocate_buffer(65536, 0).unwrap();
    server.free_buffer(a, 65536).unwrap();
    assert_eq!(
        code(server.free_buffer(junk.as_mut_ptr(), 512)),
        ErrorCode::Invalid,
        "Initializing: the state allows it, the address does not"
    );
    let s2 = server.clone();
    let agent = std::thread::spawn(move || s2.execute_completion_agent());
    client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    let sdev = server.open_device(&n).unwrap();
    let cdev = client.open_device(&n).unwrap();
    let b = server.allocate_buffer(65536, 0).unwrap();
    let c = server.allocate_buffer(65536, 0).unwrap();
    server.free_buffer(b, 65536).unwrap();
    sdev.close_device().unwrap();
    assert_eq!(
        code(cdev.get_command(Timeout::from_millis(10_000))),
        ErrorCode::Close
    );
    // The agent returns NOERROR, or VD_E_PROTOCOL if it started only after the normal
    // end (nothing to do then): either way the set is Normally Terminated now.
    let ran = agent.join().unwrap();
    assert!(
        ran.as_ref()
            .err()
            .is_none_or(|e| e.code() == ErrorCode::Protocol),
        "{ran:?}"
    );
    assert_eq!(
        code(server.free_buffer(c, 65536)),
        ErrorCode::Protocol,
        "Normally Terminated"
    );
    server.close().unwrap();
    assert_eq!(code(server.free_buffer(c, 65536)), ErrorCode::Protocol);
    client.close().unwrap();

    // Abnormally Terminated.
    let n = name("fba");
    client.create(&n, &VdConfig::with_devices(1)).unwrap();
    let server = ServerVirtualDeviceSet::new();
    server.open(None, &n).unwrap();
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
        .unwrap();
    server.request_buffers(65536, 0, 1).unwrap();
    server.end_configuration().unwrap();
    let d = server.allocate_buffer(65536, 0).unwrap();
    server.signal_abort().unwrap();
    assert_eq!(code(server.free_buffer(d, 65536)), ErrorCode::Abort);
    server.close().unwrap();
    client.close().unwrap();
}
