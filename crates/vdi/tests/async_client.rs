//! The async client (feature `tokio`) with both roles in one process: cancelled waits lose
//! nothing, the thread of a cancelled wait ends (a runtime holding one could not be
//! dropped), several tasks may await one device, waiting outside a runtime is an error,
//! and the async example backs up from the minimal engine. The cross-process cases
//! (multi-device backups, abort, a killed engine, Close) are in
//! `crates/vdi-tests/tests/async_client.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use vdi::async_client::{AsyncClientDevice, AsyncClientSet};
use vdi::*;

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "async-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every future of the async API can be held across an `.await` in a spawned task.
#[allow(dead_code)]
fn futures_are_send(set: &AsyncClientSet, dev: &AsyncClientDevice) {
    fn send<T: Send>(_: T) {}
    send(set.get_configuration(Timeout::POLL));
    send(set.open_device("x"));
    send(dev.get_command(Timeout::POLL));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// The engine half, on a thread: configures a one-device backup, then sends one Write of
/// 4 KiB per `()` received on `go` (or `count` of them at once, paced by `pace`), its
/// first 4 bytes the sequence number; closes the device and the set once `go` hangs up.
/// Returns the callbacks as (sequence, completion code), in callback order.
struct Engine {
    go: Option<mpsc::Sender<u32>>,
    thread: Option<std::thread::JoinHandle<Vec<(u32, u32)>>>,
}

impl Engine {
    fn start(name: &str, configured: mpsc::Sender<()>, open: Arc<AtomicBool>) -> Engine {
        Engine::start_with(name, 1, configured, open)
    }

    /// `devices` 2: the engine also opens device 1 (`NAME#1`), sends it nothing, and
    /// closes it at the end.
    fn start_with(
        name: &str,
        devices: u32,
        configured: mpsc::Sender<()>,
        open: Arc<AtomicBool>,
    ) -> Engine {
        let (go, rx) = mpsc::channel::<u32>();
        let name = name.to_owned();
        let thread = std::thread::spawn(move || {
            let server = ServerSet::open(&name).unwrap();
            server
                .begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 10_000)
                .unwrap();
            server.request_buffers(65536, 0, 8).unwrap();
            server.end_configuration().unwrap();
            configured.send(()).ok();
            let log = Arc::new(Mutex::new(Vec::new()));
            std::thread::scope(|s| {
                let agent = s.spawn(|| server.execute_completion_agent());
                // Open the device only when asked (a first `0` on `go`), so that the
                // client can wait in OpenDevice.
                if !open.load(Ordering::Acquire) {
                    let _ = rx.recv();
                }
                let dev = server.open_device(&name).unwrap();
                let other =
                    (devices > 1).then(|| server.open_device(&format!("{name}#1")).unwrap());
                let mut seq = 0u32;
                while let Ok(n) = rx.recv() {
                    for _ in 0..n {
                        let mut buf = loop {
                            match server.allocate_buffer(65536, 0) {
                                Ok(b) => break b,
                                Err(e) if e.code() == ErrorCode::Memory => std::thread::yield_now(),
                                Err(e) => panic!("{e}"),
                            }
                        };
                        buf.as_mut_slice()[..4].copy_from_slice(&seq.to_le_bytes());
                        let (log, k) = (log.clone(), seq);
                        dev.send_command(ServerCommand::write(buf, 4096), move |c| {
                            log.lock().unwrap().push((k, c.completion_code));
                        })
                        .unwrap();
                        seq += 1;
                        // Arrivals spread out, so that they race with the client's waits.
                        if seq.is_multiple_of(3) {
                            std::thread::sleep(Duration::from_micros(u64::from(seq % 97)));
                        }
                    }
                }
                while server.outstanding() > 0 {
                    std::thread::yield_now();
                }
                dev.close_device().unwrap();
                if let Some(d) = other {
                    d.close_device().unwrap();
                }
                agent.join().unwrap().unwrap();
            });
            server.close().unwrap();
            log.lock().unwrap().clone()
        });
        Engine {
            go: Some(go),
            thread: Some(thread),
        }
    }

    fn send(&self, n: u32) {
        self.go.as_ref().unwrap().send(n).unwrap();
    }

    /// Closes the device and the set; the callbacks.
    fn finish(mut self) -> Vec<(u32, u32)> {
        drop(self.go.take());
        self.thread.take().unwrap().join().unwrap()
    }
}

fn seq_of(cmd: &OwnedCommand) -> u32 {
    u32::from_le_bytes(cmd.buffer().unwrap()[..4].try_into().unwrap())
}

/// A configured set with its device open on both sides.
async fn open_pair(tag: &str) -> (AsyncClientSet, AsyncClientDevice, Engine, String) {
    let name = unique(tag);
    let set = AsyncClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let (tx, _rx) = mpsc::channel();
    let engine = Engine::start(&name, tx, Arc::new(AtomicBool::new(true)));
    set.get_configuration(Timeout::from_millis(30_000))
        .await
        .unwrap();
    let dev = set.open_device(&name).await.unwrap();
    (set, dev, engine, name)
}

/// Polls `f` once; `Some(output)` if it is ready.
async fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut f = Some(f);
    std::future::poll_fn(|cx| {
        let f = f.as_mut().map(|f| f.as_mut().poll(cx));
        std::task::Poll::Ready(match f {
            Some(std::task::Poll::Ready(v)) => Some(v),
            _ => None,
        })
    })
    .await
}

#[test]
fn cancelled_get_commands_lose_nothing() {
    runtime().block_on(async {
        let (set, dev, engine, _) = open_pair("cancel").await;
        // Nothing is queued: a wait cancelled by a time-out has taken nothing.
        let r = tokio::time::timeout(
            Duration::from_millis(20),
            dev.get_command(Timeout::Infinite),
        )
        .await;
        assert!(r.is_err(), "nothing was sent, yet a command came");
        assert_eq!(dev.outstanding(), 0);
        // Each round: a get_command starts waiting (nothing is queued), the engine sends
        // one command, and the future is dropped after 0 to 3 more polls: before the
        // command arrives, while the waiting thread wakes, or after it returned but before
        // the task fetched. Whatever the point, the command is the next one delivered.
        const ROUNDS: u32 = 300;
        let (mut by_first, mut by_next) = (0u32, 0u32);
        for round in 0..ROUNDS {
            let mut fut = Box::pin(dev.get_command(Timeout::Infinite));
            assert!(
                poll_once(fut.as_mut()).await.is_none(),
                "round {round}: nothing was sent yet"
            );
            engine.send(1);
            let mut got = None;
            for _ in 0..(round % 4) {
                std::thread::sleep(Duration::from_micros(u64::from(round * 37 % 150)));
                tokio::task::yield_now().await;
                if let Some(r) = poll_once(fut.as_mut()).await {
                    got = Some(r.unwrap());
                    break;
                }
            }
            // The cancellation: the future is dropped here unless it returned.
            drop(fut);
            let cmd = match got {
                Some(cmd) => {
                    by_first += 1;
                    cmd
                }
                None => {
                    by_next += 1;
                    dev.get_command(Timeout::from_millis(30_000)).await.unwrap()
                }
            };
            assert_eq!(seq_of(&cmd), round, "the command of this round, none lost");
            cmd.complete_ok().unwrap();
            assert_eq!(dev.outstanding(), 0);
        }
        let log = engine.finish();
        assert_eq!(
            dev.get_command(Timeout::from_millis(30_000))
                .await
                .unwrap_err()
                .code(),
            ErrorCode::Close
        );
        set.close().unwrap();
        let want: Vec<(u32, u32)> = (0..ROUNDS).map(|k| (k, completion::ERROR_SUCCESS)).collect();
        assert_eq!(log, want, "every command completed once, none aborted");
        eprintln!(
            "{ROUNDS} rounds: {by_first} commands returned by the first future, {by_next} by the next call after a cancel"
        );
    });
}

#[test]
fn several_tasks_awaiting_one_device_each_get_distinct_commands_in_order() {
    runtime().block_on(async {
        let (set, dev, engine, _) = open_pair("many").await;
        const N: u32 = 600;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let dev = dev.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    match dev.get_command(Timeout::from_millis(30_000)).await {
                        Ok(cmd) => {
                            got.push(seq_of(&cmd));
                            // Completed from yet another task.
                            tokio::spawn(async move { cmd.complete_ok() })
                                .await
                                .unwrap()
                                .unwrap();
                        }
                        Err(e) => {
                            assert_eq!(e.code(), ErrorCode::Close, "{e}");
                            return got;
                        }
                    }
                }
            }));
        }
        engine.send(N);
        let log = tokio::task::spawn_blocking(move || engine.finish())
            .await
            .unwrap();
        let mut all = Vec::new();
        for t in tasks {
            let got = t.await.unwrap();
            assert!(got.windows(2).all(|w| w[0] < w[1]), "each task's in order");
            all.extend(got);
        }
        all.sort_unstable();
        assert_eq!(all, (0..N).collect::<Vec<_>>(), "each command exactly once");
        assert!(log.iter().all(|&(_, c)| c == completion::ERROR_SUCCESS));
        set.close().unwrap();
    });
}

/// Drops `rt` on another thread; whether that returned. A runtime waits for its blocking
/// threads when dropped, so a cancelled wait whose thread went on waiting (here: forever,
/// nothing else would end it) would keep it from returning.
fn drop_returns(rt: tokio::runtime::Runtime) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(rt);
        tx.send(()).ok();
    });
    rx.recv_timeout(Duration::from_secs(30)).is_ok()
}

/// Starts `f` as a task and gives it time to reach its wait.
fn park_in_wait<F: std::future::Future + Send + 'static>(rt: &tokio::runtime::Runtime, f: F)
where
    F::Output: Send,
{
    rt.spawn(f);
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn each_wait_of_a_dropped_future_ends_and_a_later_call_succeeds() {
    let name = unique("rtdrop");
    let set = AsyncClientSet::create(&name, &VdConfig::with_devices(2)).unwrap();

    // GetConfiguration, before the engine exists.
    let rt = runtime();
    let s = set.clone();
    park_in_wait(
        &rt,
        async move { s.get_configuration(Timeout::Infinite).await },
    );
    assert!(
        drop_returns(rt),
        "a cancelled GetConfiguration kept waiting"
    );

    let (configured_tx, configured) = mpsc::channel();
    let open = Arc::new(AtomicBool::new(false));
    let engine = Engine::start_with(&name, 2, configured_tx, open);
    configured.recv_timeout(Duration::from_secs(30)).unwrap();

    // OpenDevice of device 1, before the engine opened (and so named) it. (Device 0 has
    // the set's name and opens without waiting.)
    let rt = runtime();
    rt.block_on(set.get_configuration(Timeout::from_millis(30_000)))
        .unwrap();
    let (s, n) = (set.clone(), format!("{name}#1"));
    park_in_wait(&rt, async move { s.open_device(&n).await });
    assert!(drop_returns(rt), "a cancelled OpenDevice kept waiting");
    engine.send(0); // the engine opens its devices

    // GetCommand, before anything was sent.
    let rt = runtime();
    let dev1 = rt.block_on(set.open_device(&format!("{name}#1"))).unwrap();
    let dev = rt.block_on(set.open_device(&name)).unwrap();
    let d = dev.clone();
    park_in_wait(&rt, async move { d.get_command(Timeout::Infinite).await });
    assert!(drop_returns(rt), "a cancelled GetCommand kept waiting");
    assert_eq!(dev.outstanding(), 0);

    // Nothing was taken by the cancelled calls.
    let rt = runtime();
    engine.send(1);
    rt.block_on(async {
        let cmd = dev.get_command(Timeout::from_millis(30_000)).await.unwrap();
        assert_eq!(seq_of(&cmd), 0);
        cmd.complete_ok().unwrap();
    });
    let log = engine.finish();
    assert_eq!(
        rt.block_on(dev.get_command(Timeout::from_millis(30_000)))
            .unwrap_err()
            .code(),
        ErrorCode::Close
    );
    assert_eq!(
        rt.block_on(dev1.get_command(Timeout::from_millis(30_000)))
            .unwrap_err()
            .code(),
        ErrorCode::Close
    );
    assert_eq!(log, vec![(0, completion::ERROR_SUCCESS)]);
    set.close().unwrap();
}

#[test]
fn waiting_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let name = unique("nort");
    let set = AsyncClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let poll_once =
        |f: &mut std::pin::Pin<&mut dyn std::future::Future<Output = Result<VdConfig>>>| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            f.as_mut().poll(&mut cx)
        };
    // A poll needs no runtime.
    let mut f = std::pin::pin!(set.get_configuration(Timeout::POLL));
    let r = poll_once(&mut (f.as_mut() as std::pin::Pin<&mut dyn std::future::Future<Output = _>>));
    match r {
        std::task::Poll::Ready(Err(e)) => assert_eq!(e.code(), ErrorCode::Timeout),
        other => panic!("{other:?}"),
    }
    // A wait does, and says so.
    let mut f = std::pin::pin!(set.get_configuration(Timeout::Infinite));
    let r = poll_once(&mut (f.as_mut() as std::pin::Pin<&mut dyn std::future::Future<Output = _>>));
    match r {
        std::task::Poll::Ready(Err(e)) => {
            assert_eq!(e.code(), ErrorCode::Unexpected);
            assert!(matches!(e.reason(), Reason::AsyncRuntime(_)), "{e}");
            assert!(e.to_string().contains("tokio runtime"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    set.close().unwrap();
}

#[test]
fn the_async_example_backs_up_from_the_minimal_engine() {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let client = examples.join("async_client");
    assert!(client.exists(), "{} not built", client.display());
    assert!(examples.join("minimal_server").exists());
    let out = std::process::Command::new(&client).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("received 16777216 bytes"), "{stdout}");
    assert!(stdout.contains("data intact; engine succeeded"), "{stdout}");
    assert!(stdout.contains("async_client: ok"), "{stdout}");
}
