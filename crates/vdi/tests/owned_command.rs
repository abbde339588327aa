//! Owned commands in the synchronous API (`ClientDevice::get_owned_command`): moved to
//! other threads and completed there, in any order, with `Command`'s rules (the lent
//! buffer, completion consumes it, a drop aborts it, too many bytes is refused). Both
//! roles in one process; the engine's callbacks are the evidence.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use vdi::*;

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "owned-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A configured one-device set (backup or restore, `buffers` of 64 KiB, a 64-byte prefix
/// zone), both devices open.
fn pair(name: &str, restore: bool, buffers: u32) -> (ClientSet, ServerSet) {
    let mut cfg = VdConfig::with_devices(1);
    cfg.prefix_zone_size = 64;
    let client = ClientSet::create(name, &cfg).unwrap();
    let server = ServerSet::open(name).unwrap();
    let f = if restore {
        features::READ_MEDIA
    } else {
        features::WRITE_MEDIA
    };
    server
        .begin_configuration(f, 512, 0, 65536, 10_000)
        .unwrap();
    server.request_buffers(65536, 0, buffers).unwrap();
    server.end_configuration().unwrap();
    client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    (client, server)
}

type Log = Arc<Mutex<Vec<(u32, u32, u32)>>>;

/// Sends Write `k` (its 64 KiB filled with `k`); its callback logs (k, code, bytes).
fn send_write(server: &ServerSet, dev: &ServerDevice, k: u32, log: &Log) {
    let mut b = server.allocate_buffer(65536, 0).unwrap();
    b.as_mut_slice().fill(k as u8);
    let log = log.clone();
    dev.send_command(ServerCommand::write(b, 65536), move |d| {
        log.lock()
            .unwrap()
            .push((k, d.completion_code, d.bytes_transferred));
    })
    .unwrap();
}

fn wait_outstanding_zero(server: &ServerSet) {
    while server.outstanding() > 0 {
        std::thread::yield_now();
    }
}

#[test]
fn owned_commands_are_completed_on_other_threads_in_reverse_order() {
    let name = unique("rev");
    let (client, server) = pair(&name, false, 8);
    let log: Log = Arc::default();
    std::thread::scope(|s| {
        let agent = s.spawn(|| server.execute_completion_agent());
        let sdev = server.open_device(&name).unwrap();
        for k in 0..8 {
            send_write(&server, &sdev, k, &log);
        }
        let dev = Arc::new(client.open_device(&name).unwrap());
        let cmds: Vec<OwnedCommand> = (0..8)
            .map(|_| dev.get_owned_command(Timeout::from_millis(10_000)).unwrap())
            .collect();
        assert_eq!(dev.outstanding(), 8);
        // Thread k completes its command after thread k+1 has completed its own.
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..8).map(|_| mpsc::channel::<()>()).unzip();
        let mut rxs: Vec<Option<mpsc::Receiver<()>>> = rxs.into_iter().map(Some).collect();
        let mut threads = Vec::new();
        for (k, cmd) in cmds.into_iter().enumerate() {
            let after = rxs[k].take().unwrap();
            let before = (k > 0).then(|| txs[k - 1].clone());
            // 'static: the command holds its device, so the thread needs no scope.
            threads.push(std::thread::spawn(move || {
                if k < 7 {
                    after.recv().unwrap();
                }
                let data = cmd.buffer().unwrap();
                assert_eq!(data.len(), 65536);
                assert!(data.iter().all(|&b| b == k as u8), "command {k}'s data");
                assert!(cmd.buffer_handle().is_some());
                assert!(Arc::ptr_eq(cmd.device(), cmd.device()));
                cmd.complete_ok().unwrap();
                if let Some(tx) = before {
                    tx.send(()).unwrap();
                }
            }));
        }
        drop(txs);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(dev.outstanding(), 0);
        wait_outstanding_zero(&server);
        sdev.close_device().unwrap();
        assert_eq!(
            dev.get_owned_command(Timeout::from_millis(10_000))
                .unwrap_err()
                .code(),
            ErrorCode::Close
        );
        agent.join().unwrap().unwrap();
    });
    let got = log.lock().unwrap().clone();
    let want: Vec<(u32, u32, u32)> = (0..8).rev().map(|k| (k, 0, 65536)).collect();
    assert_eq!(
        got, want,
        "every Write succeeded, called back in completion order"
    );
    client.close().unwrap();
    server.close().unwrap();
}

#[test]
fn a_dropped_owned_command_is_aborted_and_puts_the_device_in_io_error() {
    let name = unique("drop");
    let (client, server) = pair(&name, false, 4);
    let log: Log = Arc::default();
    std::thread::scope(|s| {
        let agent = s.spawn(|| server.execute_completion_agent());
        let sdev = server.open_device(&name).unwrap();
        send_write(&server, &sdev, 1, &log);
        send_write(&server, &sdev, 2, &log);
        let dev = Arc::new(client.open_device(&name).unwrap());
        let cmd = dev.get_owned_command(Timeout::from_millis(10_000)).unwrap();
        std::thread::spawn(move || drop(cmd)).join().unwrap();
        wait_outstanding_zero(&server);
        assert!(sdev.in_io_error());
        assert_eq!(
            dev.get_owned_command(Timeout::POLL).unwrap_err().code(),
            ErrorCode::Timeout,
            "the Write queued behind the error was flushed, not delivered"
        );
        sdev.close_device().unwrap();
        assert_eq!(
            dev.get_owned_command(Timeout::from_millis(10_000))
                .unwrap_err()
                .code(),
            ErrorCode::Close
        );
        agent.join().unwrap().unwrap();
    });
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            (1, completion::ERROR_OPERATION_ABORTED, 0),
            (2, completion::ERROR_IO_DEVICE, 0)
        ]
    );
    client.close().unwrap();
    server.close().unwrap();
}

#[test]
fn an_owned_command_refuses_more_bytes_than_asked_and_fills_a_read() {
    let name = unique("read");
    let (client, server) = pair(&name, true, 4);
    let back: Arc<Mutex<Vec<(u32, u32, bool)>>> = Arc::default();
    std::thread::scope(|s| {
        let agent = s.spawn(|| server.execute_completion_agent());
        let sdev = server.open_device(&name).unwrap();
        for _ in 0..2 {
            let b = server.allocate_buffer(65536, 0).unwrap();
            let back = back.clone();
            sdev.send_command(ServerCommand::read(b, 4096), move |d| {
                let filled = d
                    .buffer
                    .as_ref()
                    .is_some_and(|b| b.as_slice()[..4096].iter().all(|&x| x == 0x5A));
                back.lock()
                    .unwrap()
                    .push((d.completion_code, d.bytes_transferred, filled));
            })
            .unwrap();
        }
        let dev = Arc::new(client.open_device(&name).unwrap());
        let mut first = dev.get_owned_command(Timeout::from_millis(10_000)).unwrap();
        assert_eq!(first.code(), CommandCode::READ);
        assert_eq!(first.prefix_mut().map(|p| p.len()), Some(64));
        let done = std::thread::spawn(move || {
            first.buffer_mut().unwrap().fill(0x5A);
            first.complete(completion::ERROR_SUCCESS, 4096, 0)
        });
        done.join().unwrap().unwrap();
        let second = dev.get_owned_command(Timeout::from_millis(10_000)).unwrap();
        let e = std::thread::spawn(move || second.complete(completion::ERROR_SUCCESS, 4097, 0))
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Invalid, "{e}");
        wait_outstanding_zero(&server);
        sdev.close_device().unwrap();
        assert_eq!(
            dev.get_owned_command(Timeout::from_millis(10_000))
                .unwrap_err()
                .code(),
            ErrorCode::Close
        );
        agent.join().unwrap().unwrap();
    });
    assert_eq!(
        *back.lock().unwrap(),
        vec![
            (completion::ERROR_SUCCESS, 4096, true),
            (completion::ERROR_INVALID_DATA, 0, false)
        ]
    );
    client.close().unwrap();
    server.close().unwrap();
}

#[test]
fn an_owned_command_kept_past_close_is_refused_and_its_buffer_stays_readable() {
    let name = unique("close");
    let (client, server) = pair(&name, false, 4);
    let log: Log = Arc::default();
    let sdev = server.open_device(&name).unwrap();
    send_write(&server, &sdev, 7, &log);
    let dev = Arc::new(client.open_device(&name).unwrap());
    let cmd = dev.get_owned_command(Timeout::from_millis(10_000)).unwrap();
    drop(dev);
    // The command alone keeps the device; Close releases the set regardless.
    assert_eq!(client.close().unwrap_err().code(), ErrorCode::Open);
    let t = std::thread::spawn(move || {
        assert_eq!(cmd.buffer().map(|b| b.len()), Some(65536));
        cmd.complete_ok()
    });
    let e = t.join().unwrap().unwrap_err();
    assert!(
        matches!(e.code(), ErrorCode::Protocol | ErrorCode::Abort),
        "{e}"
    );
    let _ = server.close();
}
