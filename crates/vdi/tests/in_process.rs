//! Both roles in one process (two threads): the quickest check of the whole path.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use vdi::*;

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "inproc-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A one-device backup set, configured: `buffers` of 64 KiB, the client past
/// GetConfiguration.
fn configured_pair(name: &str, buffers: u32) -> (ClientSet, ServerSet) {
    let client = ClientSet::create(name, &VdConfig::with_devices(1)).unwrap();
    let server = ServerSet::open(name).unwrap();
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
        .unwrap();
    server.request_buffers(65536, 0, buffers).unwrap();
    server.end_configuration().unwrap();
    client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    (client, server)
}

#[test]
fn backup_one_device_in_one_process() {
    let name = unique("b1");
    let client = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let n2 = name.clone();
    let server_thread = std::thread::spawn(move || {
        let server = ServerSet::open(&n2).unwrap();
        server
            .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 1000)
            .unwrap();
        server.request_buffers(65536, 0, 4).unwrap();
        server.end_configuration().unwrap();
        let sent = Arc::new(Mutex::new(Vec::<u32>::new()));
        std::thread::scope(|s| {
            let agent = s.spawn(|| server.execute_completion_agent());
            let dev = server.open_device(&n2).unwrap();
            for i in 0..100u32 {
                let mut buf = loop {
                    match server.allocate_buffer(65536, 0) {
                        Ok(b) => break b,
                        Err(e) if e.code() == ErrorCode::Memory => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                };
                buf.as_mut_slice().fill(i as u8);
                let sent = sent.clone();
                dev.send_command(ServerCommand::write(buf, 65536), move |c| {
                    assert!(c.is_success(), "{c:?}");
                    sent.lock().unwrap().push(c.bytes_transferred);
                })
                .unwrap();
            }
            let s2 = sent.clone();
            dev.send_command(ServerCommand::new(CommandCode::FLUSH), move |c| {
                assert!(c.is_success());
                s2.lock().unwrap().push(0);
            })
            .unwrap();
            while server.outstanding() > 0 {
                std::thread::yield_now();
            }
            dev.close_device().unwrap();
            agent.join().unwrap().unwrap();
        });
        server.close().unwrap();
        sent.lock().unwrap().clone()
    });
    let cfg = client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    assert_eq!(cfg.features & features::WRITE_MEDIA, features::WRITE_MEDIA);
    assert_eq!(cfg.max_transfer_size, 65536);
    let dev = client.open_device(&name).unwrap();
    let mut got = Vec::new();
    loop {
        match dev.get_command(Timeout::Infinite) {
            Ok(cmd) => {
                if cmd.code() == CommandCode::WRITE {
                    let b = cmd.buffer().unwrap();
                    assert!(b.iter().all(|&x| x == b[0]));
                    got.push(b[0]);
                }
                cmd.complete_ok().unwrap();
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Close, "{e}");
                break;
            }
        }
    }
    assert_eq!(
        dev.get_command(Timeout::POLL).unwrap_err().code(),
        ErrorCode::Close
    );
    client.close().unwrap();
    let sent = server_thread.join().unwrap();
    assert_eq!(got, (0..100u32).map(|i| i as u8).collect::<Vec<_>>());
    assert_eq!(sent.len(), 101);
}

#[test]
fn a_full_queue_is_refused_and_called_back() {
    let name = unique("qf");
    let (client, server) = configured_pair(&name, 1);
    let codes = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        let agent = s.spawn(|| server.execute_completion_agent());
        let dev = server.open_device(&name).unwrap();
        // One buffer requested: the queue has the minimum depth, 16 slots.
        for _ in 0..16 {
            let c = codes.clone();
            dev.send_command(ServerCommand::new(CommandCode::FLUSH), move |d| {
                c.lock().unwrap().push(d.completion_code)
            })
            .unwrap();
        }
        let c = codes.clone();
        let e = dev
            .send_command(ServerCommand::new(CommandCode::FLUSH), move |d| {
                c.lock().unwrap().push(d.completion_code)
            })
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::QueueFull);
        assert_eq!(e.hresult() as u32, 0x8077_0010);
        assert_eq!(
            *codes.lock().unwrap(),
            vec![completion::ERROR_NO_SYSTEM_RESOURCES],
            "called back at once"
        );
        let cdev = client.open_device(&name).unwrap();
        for _ in 0..16 {
            cdev.get_command(Timeout::from_millis(10_000))
                .unwrap()
                .complete_ok()
                .unwrap();
        }
        while server.outstanding() > 0 {
            std::thread::yield_now();
        }
        dev.close_device().unwrap();
        // A send to a closed device: VD_E_PROTOCOL, callback ERROR_INVALID_HANDLE.
        let c = codes.clone();
        let e = dev
            .send_command(ServerCommand::new(CommandCode::FLUSH), move |d| {
                c.lock().unwrap().push(d.completion_code)
            })
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Protocol);
        assert_eq!(
            cdev.get_command(Timeout::from_millis(10_000))
                .unwrap_err()
                .code(),
            ErrorCode::Close
        );
        agent.join().unwrap().unwrap();
    });
    let v = codes.lock().unwrap().clone();
    assert_eq!(v.len(), 18);
    assert_eq!(
        v.iter()
            .filter(|&&c| c == completion::ERROR_SUCCESS)
            .count(),
        16
    );
    assert_eq!(*v.last().unwrap(), completion::ERROR_INVALID_HANDLE);
    client.close().unwrap();
    server.close().unwrap();
}

/// The engine closes its device with commands still outstanding; the client completes
/// them, sees VD_E_CLOSE and closes its set at once, before the agent has taken the
/// completions. That is a normal end: no abort, every callback a success. (This used to
/// abort about 4 times in 10 when the client's hang-up beat the agent.)
#[test]
fn client_leaving_right_after_its_last_completion_is_a_normal_end() {
    for round in 0..40 {
        let name = unique(&format!("end{round}"));
        let (client, server) = configured_pair(&name, 4);
        let ok = Arc::new(Mutex::new(0u32));
        std::thread::scope(|s| {
            let dev = server.open_device(&name).unwrap();
            for _ in 0..4 {
                let ok = ok.clone();
                let b = server.allocate_buffer(65536, 0).unwrap();
                dev.send_command(ServerCommand::write(b, 65536), move |d| {
                    // A slow callback widens the window the old code lost.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    if d.is_success() {
                        *ok.lock().unwrap() += 1;
                    }
                })
                .unwrap();
            }
            dev.close_device().unwrap();
            let client_side = s.spawn(|| {
                let cdev = client.open_device(&name).unwrap();
                loop {
                    match cdev.get_command(Timeout::from_millis(10_000)) {
                        Ok(c) => c.complete_ok().unwrap(),
                        Err(e) => {
                            assert_eq!(e.code(), ErrorCode::Close, "{e}");
                            break;
                        }
                    }
                }
                client.close().unwrap();
            });
            client_side.join().unwrap();
            let r = server.execute_completion_agent();
            assert!(
                r.is_ok(),
                "round {round}: {r:?}, abort cause {:?}",
                server.abort_cause()
            );
        });
        assert_eq!(*ok.lock().unwrap(), 4, "round {round}");
        server.close().unwrap();
    }
}

/// A completion callback that panics kills the agent's thread; Close must still return
/// (it used to wait forever for an agent marked as running).
#[test]
fn close_returns_after_a_callback_panicked() {
    let name = unique("panic");
    let (client, server) = configured_pair(&name, 1);
    let dev = server.open_device(&name).unwrap();
    dev.send_command(ServerCommand::new(CommandCode::FLUSH), |_| {
        panic!("callback fails on purpose")
    })
    .unwrap();
    let s2 = server.clone();
    let agent = std::thread::spawn(move || s2.execute_completion_agent());
    let cdev = client.open_device(&name).unwrap();
    cdev.get_command(Timeout::from_millis(10_000))
        .unwrap()
        .complete_ok()
        .unwrap();
    assert!(agent.join().is_err(), "the agent's thread panicked");
    let (tx, rx) = std::sync::mpsc::channel();
    let s3 = server.clone();
    std::thread::spawn(move || tx.send(s3.close()).ok());
    let closed = rx.recv_timeout(std::time::Duration::from_secs(10));
    assert!(closed.is_ok(), "Close hung after the agent died");
    drop(cdev);
    let _ = client.close();
}

/// The typed configuration is the reference's BeginConfiguration: the same checks, the
/// same result; the client reads the typed features back.
#[test]
fn typed_server_configuration() {
    let name = unique("cfg");
    let mut asked = VdConfig::with_devices(1);
    asked.features = features::REQUEST_COMPLETE;
    let client = ClientSet::create(&name, &asked).unwrap();
    let server = ServerSet::open(&name).unwrap();
    let bad = ServerConfig::backup(65536).block_size(1000);
    assert_eq!(
        server.configure(&bad).unwrap_err().code(),
        ErrorCode::Invalid
    );
    let cfg = ServerConfig::restore(128 << 10)
        .block_size(4096)
        .complete_enabled(true);
    assert!(
        cfg.features
            .contains(Features::READ_MEDIA | Features::COMPLETE_ENABLED)
    );
    server.configure(&cfg).unwrap();
    server.request_buffers(128 << 10, 0, 2).unwrap();
    server.end_configuration().unwrap();
    let got = client
        .get_configuration(Timeout::from_millis(10_000))
        .unwrap();
    assert!(
        got.has(Features::READ_MEDIA | Features::COMPLETE_ENABLED | Features::REQUEST_COMPLETE)
    );
    assert!(!got.has(Features::WRITE_MEDIA));
    assert_eq!(
        (got.block_size, got.alignment, got.max_transfer_size),
        (4096, 4096, 128 << 10)
    );
    assert_eq!(
        got.flags().to_string(),
        "VDF_CompleteEnabled | VDF_ReadMedia | VDF_RequestComplete"
    );
    server.signal_abort().unwrap();
    let _ = client.close();
    let _ = server.close();
}
