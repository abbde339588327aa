//! The async client (`vdi::async_client`, feature `tokio`) against a real engine process
//! (`vdi-peer`): multi-device backups and restores byte-checked against the pattern, with
//! each command completed by a task of its own in reverse order of fetch; a cancelled
//! `get_command` losing nothing; an abort, a SIGKILLed engine and `Close` ending the
//! waits of awaiting tasks.
//!
//! ```text
//! cargo test -p vdi-tests --features tokio --test async_client
//! ```

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use vdi::async_client::{AsyncClientDevice, AsyncClientSet};
use vdi::{AbortCause, CommandCode, ErrorCode, OwnedCommand, Timeout, VdError, completion};
use vdi_tests::{Peer, Plan, client_config, device_name, pattern, socket_exists, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");

fn args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn done_bytes(peer: &Peer) -> u64 {
    peer.seen
        .iter()
        .find(|l| l.starts_with("DONE"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("bytes="))
                .and_then(|b| b.parse().ok())
        })
        .unwrap_or_else(|| panic!("no DONE bytes= in {:?}", peer.seen))
}

/// What the async client saw on one device.
#[derive(Debug, Default)]
struct Served {
    bytes: u64,
    data_commands: u64,
    mismatches: u64,
    /// Batches of two or more commands, and those completed in exactly reverse order.
    batches: u64,
    reversed: u64,
}

/// One command's task: waits for the task of the command fetched after it (`after`),
/// checks a Write's bytes or fills a Read's from the pattern, completes, then lets the
/// task of the command fetched before it go (`before`). Returns (mismatch, completion
/// ticket).
async fn complete_in_turn(
    mut cmd: OwnedCommand,
    plan: Arc<Plan>,
    device: u32,
    at: u64,
    after: Option<oneshot::Receiver<()>>,
    before: Option<oneshot::Sender<()>>,
    tickets: Arc<AtomicU64>,
) -> Result<(bool, u64), VdError> {
    if let Some(rx) = after {
        let _ = rx.await;
    }
    let mut bad = false;
    let (code, n) = match cmd.code() {
        CommandCode::WRITE => {
            let b = cmd.buffer().unwrap_or(&[]);
            bad = pattern::mismatch(plan.seed, device, at, b).is_some();
            (completion::ERROR_SUCCESS, b.len() as u32)
        }
        CommandCode::READ => {
            let n = cmd.size();
            if let Some(b) = cmd.buffer_mut() {
                pattern::fill(plan.seed, device, at, b);
            }
            (completion::ERROR_SUCCESS, n)
        }
        CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
            (completion::ERROR_SUCCESS, 0)
        }
        _ => (completion::ERROR_NOT_SUPPORTED, 0),
    };
    // Let the other tasks of the batch run between the checks and the completions.
    tokio::task::yield_now().await;
    cmd.complete(code, n, 0)?;
    let ticket = tickets.fetch_add(1, Ordering::SeqCst);
    if let Some(tx) = before {
        let _ = tx.send(());
    }
    Ok((bad, ticket))
}

/// A command's task: (mismatch, completion ticket).
type Completing = tokio::task::JoinHandle<Result<(bool, u64), VdError>>;

/// Serves device `device` until `VD_E_CLOSE`: fetches `plan.depth` data commands (the
/// engine keeps that many in flight, and the plan's sizes are whole batches), then hands
/// each to a task of its own; the tasks complete in reverse order of fetch while the
/// fetching task already awaits the next command. Other commands come alone.
async fn serve_device(
    dev: AsyncClientDevice,
    plan: Arc<Plan>,
    device: u32,
) -> Result<Served, VdError> {
    let mut served = Served::default();
    let tickets = Arc::new(AtomicU64::new(0));
    let mut off = 0u64;
    let mut batch: Vec<(OwnedCommand, u64)> = Vec::new();
    let mut tasks: Vec<Vec<Completing>> = Vec::new();
    loop {
        let cmd = match dev.get_command(Timeout::from_millis(30_000)).await {
            Ok(cmd) => cmd,
            Err(e) if e.code() == ErrorCode::Close => break,
            Err(e) => return Err(e),
        };
        let at = off;
        let data = cmd.code().carries_data();
        if data {
            off += u64::from(cmd.size());
            served.bytes += u64::from(cmd.size());
            served.data_commands += 1;
        }
        batch.push((cmd, at));
        if data && batch.len() < plan.depth as usize {
            continue;
        }
        // Task k waits for task k+1: the last fetched completes first.
        let k = batch.len();
        let (mut txs, mut rxs): (Vec<_>, Vec<_>) = (0..k)
            .map(|_| {
                let (tx, rx) = oneshot::channel::<()>();
                (Some(tx), Some(rx))
            })
            .unzip();
        let mut handles = Vec::new();
        for (j, (cmd, at)) in batch.drain(..).enumerate() {
            // Channel j: task j+1 sends, task j receives.
            let after = if j + 1 < k { rxs[j].take() } else { None };
            let before = j.checked_sub(1).and_then(|p| txs[p].take());
            handles.push(tokio::spawn(complete_in_turn(
                cmd,
                plan.clone(),
                device,
                at,
                after,
                before,
                tickets.clone(),
            )));
        }
        tasks.push(handles);
    }
    assert!(
        batch.is_empty(),
        "device {device}: a partial batch was left"
    );
    for handles in tasks {
        let mut order = Vec::new();
        for h in handles {
            let (bad, ticket) = h.await.unwrap()?;
            served.mismatches += u64::from(bad);
            order.push(ticket);
        }
        if order.len() > 1 {
            served.batches += 1;
            served.reversed += u64::from(order.windows(2).all(|w| w[0] > w[1]));
        }
    }
    Ok(served)
}

/// The test is the async client of every device; the peer is the engine.
fn async_client_here(devices: u32, restore: bool, batches: u64) {
    let name = unique_name(if restore { "ars" } else { "abk" });
    let mut plan = Plan::new(&name, devices, 0);
    plan.transfer = 256 << 10;
    plan.depth = 4;
    plan.restore = restore;
    plan.total = u64::from(devices) * batches * u64::from(plan.depth) * u64::from(plan.transfer);
    let plan = Arc::new(plan);
    let set = AsyncClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    let served: Vec<Served> = runtime().block_on(async {
        set.get_configuration(Timeout::from_millis(30_000))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..devices {
            let dev = set.open_device(&device_name(&name, i)).await.unwrap();
            tasks.push(tokio::spawn(serve_device(dev, plan.clone(), i)));
        }
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap().unwrap());
        }
        v
    });
    set.close().unwrap();
    assert_eq!(
        peer.wait(Duration::from_secs(300)),
        0,
        "engine: {:?}",
        peer.seen
    );
    assert_eq!(done_bytes(&peer), plan.total, "the engine's count");
    for (i, s) in served.iter().enumerate() {
        assert_eq!(s.bytes, plan.device_bytes(i as u32), "device {i}");
        assert_eq!(s.mismatches, 0, "device {i}: bytes differ from the pattern");
        assert_eq!(
            s.data_commands,
            batches * u64::from(plan.depth),
            "device {i}"
        );
        assert!(s.batches >= batches, "device {i}: {s:?}");
        assert_eq!(s.reversed, s.batches, "device {i}: completed out of order");
    }
    assert!(!socket_exists(&name), "the set's socket outlived Close");
}

#[test]
fn async_backup_of_4_devices_is_byte_checked_with_completions_out_of_order() {
    async_client_here(4, false, 16);
}

#[test]
fn async_restore_of_3_devices_is_byte_checked_with_completions_out_of_order() {
    async_client_here(3, true, 12);
}

/// Polls `f` once; `Some(output)` if it is ready.
async fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut f = Some(f);
    std::future::poll_fn(|cx| {
        let r = f.as_mut().map(|f| f.as_mut().poll(cx));
        std::task::Poll::Ready(match r {
            Some(std::task::Poll::Ready(v)) => Some(v),
            _ => None,
        })
    })
    .await
}

#[test]
fn a_cancelled_get_command_loses_nothing_across_processes() {
    let name = unique_name("acan");
    let plan = Plan::new(&name, 1, 0);
    let set = AsyncClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("gap-server", &plan), None);
    let rt = runtime();
    let dev = rt.block_on(async {
        set.get_configuration(Timeout::from_millis(30_000))
            .await
            .unwrap();
        set.open_device(&name).await.unwrap()
    });
    peer.expect_line("READY", Duration::from_secs(30));
    const ROUNDS: u64 = 24;
    let mut after_cancel = 0;
    for k in 0..ROUNDS {
        // The wait starts with nothing queued (the engine sends one Write per line).
        let mut fut = Box::pin(dev.get_command(Timeout::Infinite));
        assert!(rt.block_on(poll_once(fut.as_mut())).is_none(), "round {k}");
        peer.send_line("write");
        // Then the future is dropped after 0 to 3 more polls, 300 µs apart: before the
        // Write arrives, while the waiting thread wakes, or after it woke.
        let mut got = None;
        for _ in 0..(k % 4) {
            std::thread::sleep(Duration::from_micros(300));
            if let Some(r) = rt.block_on(poll_once(fut.as_mut())) {
                got = Some(r.unwrap());
                break;
            }
        }
        drop(fut);
        let cmd = got.unwrap_or_else(|| {
            after_cancel += 1;
            rt.block_on(dev.get_command(Timeout::from_millis(30_000)))
                .unwrap_or_else(|e| {
                    let _ = peer.try_line("~", Duration::from_secs(2));
                    panic!("round {k}: {e}; peer: {:?}", peer.seen)
                })
        });
        assert_eq!(cmd.code(), CommandCode::WRITE);
        let b = cmd.buffer().unwrap();
        assert_eq!(
            pattern::mismatch(plan.seed, 0, k * 65536, b),
            None,
            "round {k}: the Write of this round"
        );
        cmd.complete_ok().unwrap();
        assert_eq!(
            peer.expect_line("CALLBACK", Duration::from_secs(30)),
            "CALLBACK 0",
            "round {k}: completed once, with success, not aborted"
        );
    }
    assert!(
        after_cancel >= ROUNDS / 4,
        "rounds 0, 4, 8, ... always cancel"
    );
    peer.send_line("close");
    assert_eq!(
        rt.block_on(dev.get_command(Timeout::from_millis(30_000)))
            .unwrap_err()
            .code(),
        ErrorCode::Close
    );
    set.close().unwrap();
    assert_eq!(peer.wait(Duration::from_secs(30)), 0, "{:?}", peer.seen);
    assert!(peer.seen.iter().any(|l| l == "DONE"), "{:?}", peer.seen);
}

/// A set configured by an engine that then stops (`pause=configured`, before it opens a
/// device), with device 0 open on the client; the engine process.
fn configured_set(tag: &str, devices: u32) -> (AsyncClientSet, AsyncClientDevice, Peer, String) {
    let name = unique_name(tag);
    let mut plan = Plan::new(&name, devices, 1 << 20);
    plan.pause = Some("configured".into());
    let set = AsyncClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    let dev = runtime().block_on(async {
        set.get_configuration(Timeout::from_millis(30_000))
            .await
            .unwrap();
        // Device 0 has the set's name: it opens without the engine.
        set.open_device(&name).await.unwrap()
    });
    peer.expect_line("PAUSED configured", Duration::from_secs(30));
    (set, dev, peer, name)
}

/// Awaits `task` (hang detection only: what ends it is the event under test).
async fn ended<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the awaiting task did not end")
        .unwrap()
}

#[test]
fn signal_abort_ends_the_wait_of_an_awaiting_task() {
    let (set, dev, mut peer, _) = configured_set("aab", 1);
    runtime().block_on(async {
        let waiter = tokio::spawn(async move { dev.get_command(Timeout::Infinite).await });
        // Let it reach its wait (if it has not, it finds the abort on its first look).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = set.clone();
        tokio::spawn(async move { s.signal_abort() })
            .await
            .unwrap()
            .unwrap();
        let e = ended(waiter).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Abort, "{e}");
    });
    assert_eq!(set.set().abort_cause(), Some(AbortCause::ClientSignalled));
    peer.kill();
    set.close().unwrap();
}

#[test]
fn a_killed_engine_ends_the_waits_of_every_awaiting_task() {
    let (set, dev, mut peer, name) = configured_set("akill", 2);
    let waited = runtime().block_on(async {
        let fetch = tokio::spawn(async move { dev.get_command(Timeout::Infinite).await });
        // Device 1 is not open on the engine yet: OpenDevice waits.
        let (s, n) = (set.clone(), device_name(&name, 1));
        let open = tokio::spawn(async move { s.open_device(&n).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let killed = Instant::now();
        peer.kill();
        let e = ended(fetch).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Abort, "{e}");
        let e = ended(open).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Abort, "{e}");
        killed.elapsed()
    });
    assert_eq!(set.set().abort_cause(), Some(AbortCause::ServerDied));
    eprintln!("both awaiting tasks saw VD_E_ABORT {waited:?} after the SIGKILL");
    set.close().unwrap();
}

#[test]
fn a_killed_engine_mid_stream_fails_the_async_backup() {
    let name = unique_name("amid");
    let mut plan = Plan::new(&name, 2, 0);
    plan.transfer = 256 << 10;
    plan.depth = 4;
    plan.total = 2 * 32 * 4 * (256 << 10);
    plan.pause = Some("midstream".into());
    let plan = Arc::new(plan);
    let set = AsyncClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    let rt = runtime();
    let dev = rt.block_on(async {
        set.get_configuration(Timeout::from_millis(30_000))
            .await
            .unwrap();
        set.open_device(&name).await.unwrap()
    });
    let device0 = rt.spawn(serve_device(dev, plan.clone(), 0));
    peer.expect_line("PAUSED midstream", Duration::from_secs(60));
    peer.kill();
    let r = rt.block_on(ended(device0));
    assert_eq!(r.unwrap_err().code(), ErrorCode::Abort);
    assert_eq!(set.set().abort_cause(), Some(AbortCause::ServerDied));
    set.close().unwrap();
    assert!(!socket_exists(&name));
}

#[test]
fn close_ends_the_wait_of_an_awaiting_task() {
    let (set, dev, mut peer, name) = configured_set("aclose", 1);
    runtime().block_on(async {
        let waiter = tokio::spawn(async move { dev.get_command(Timeout::Infinite).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The device is still open: Close aborts the set, releases it, says VD_E_OPEN.
        let e = set.close().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Open, "{e}");
        let e = ended(waiter).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Protocol, "{e}");
    });
    assert!(!socket_exists(&name), "the set's socket outlived Close");
    peer.kill();
}
