//! The client's per-command cost through the C ABI against the Rust API, without any
//! wait: the server (in this process) queues 16 Flush commands, then the client fetches
//! and completes all 16, polling; only that part is timed. `c`: libvdi.so's exported
//! entry points (`vdi_client_device_get_command`, `..._complete_command`: handle look-up,
//! command block, panic fence) called from C (`vdi_bench_serve_queued` in
//! `c/c_client.c`); `rust`: `vdi::ClientDevice::get_command` and `complete_ok`.
//!
//! ```sh
//! cargo build --release -p vdi-ffi && cargo bench -p vdi-bench --bench c_abi
//! # instructions per command, exactly (the serving functions only):
//! valgrind --tool=callgrind --toggle-collect=vdi_bench_serve_queued \
//!     target/release/deps/c_abi-* c 2000
//! valgrind --tool=callgrind --toggle-collect='*rust_serve_queued*' \
//!     target/release/deps/c_abi-* rust 2000
//! ```
//! (the Ir total of each run over 16 x the batches is the cost of one command; the
//! trailing number is the batches, 20000 by default).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vdi::{
    ClientDevice, ClientSet, CommandCode, ServerCommand, ServerDevice, ServerSet, Timeout,
    VdConfig, features,
};
use vdi_bench::libvdi::LibVdi;

const BATCH: u32 = 16;

#[derive(Default)]
struct Callbacks {
    n: Mutex<u64>,
    cv: Condvar,
}

impl Callbacks {
    fn wait_for(&self, want: u64) {
        let mut n = self.n.lock().unwrap();
        while *n < want {
            n = self.cv.wait(n).unwrap();
        }
    }
}

fn send_batch(dev: &ServerDevice, cbs: &Arc<Callbacks>) {
    for _ in 0..BATCH {
        let c = cbs.clone();
        dev.send_command(ServerCommand::new(CommandCode::FLUSH), move |done| {
            assert!(done.is_success());
            *c.n.lock().unwrap() += 1;
            c.cv.notify_all();
        })
        .unwrap();
    }
}

fn server(name: &str) -> ServerSet {
    let s = ServerSet::open(name).unwrap();
    s.get_configuration().unwrap();
    s.begin_configuration(features::WRITE_MEDIA, 512, 0, 64 * 1024, 0)
        .unwrap();
    s.request_buffers(64 * 1024, 0, 1).unwrap();
    s.end_configuration().unwrap();
    s
}

#[inline(never)]
fn rust_serve_queued(dev: &ClientDevice, n: u32) {
    for _ in 0..n {
        dev.get_command(Timeout::POLL)
            .unwrap()
            .complete_ok()
            .unwrap();
    }
}

/// Configures the server of set `name`, opens the client's device with `open_client`,
/// runs `batches` batches through `serve` and returns the time per command and the
/// client's device (closed by the server: its next GetCommand is VD_E_CLOSE).
fn measure<D>(
    name: &str,
    batches: u64,
    open_client: impl FnOnce() -> D,
    serve: impl Fn(&D),
) -> (Duration, D) {
    let server = server(name);
    let client_dev = open_client(); // configured: the client's GetConfiguration returns
    let cbs = Arc::new(Callbacks::default());
    let t = std::thread::scope(|s| {
        let agent = s.spawn(|| server.execute_completion_agent());
        let dev = server.open_device(name).unwrap();
        let mut spent = Duration::ZERO;
        for b in 0..batches {
            send_batch(&dev, &cbs);
            let t = Instant::now();
            serve(&client_dev);
            spent += t.elapsed();
            cbs.wait_for((b + 1) * u64::from(BATCH));
        }
        dev.close_device().unwrap();
        agent.join().unwrap().unwrap();
        spent / (batches * u64::from(BATCH)) as u32
    });
    server.close().unwrap();
    (t, client_dev)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batches: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let only = args.iter().find(|a| *a == "c" || *a == "rust");
    let want = |w: &str| only.is_none_or(|o| o == w);
    let pid = std::process::id();
    if want("rust") {
        let name = format!("vdi-bench-cabi-r-{pid}");
        let set = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
        let (t, dev) = measure(
            &name,
            batches,
            || {
                set.get_configuration(Timeout::from_millis(10_000)).unwrap();
                set.open_device(&name).unwrap()
            },
            |dev| rust_serve_queued(dev, BATCH),
        );
        assert!(dev.get_command(Timeout::POLL).is_err()); // VD_E_CLOSE: the normal end
        drop(dev);
        println!(
            "rust client: {:>6.1} ns per command (get + complete)",
            t.as_nanos() as f64
        );
        set.close().unwrap();
    }
    if want("c") {
        // libvdi.so beside the bench's profile directory (target/<profile>/deps/c_abi-*).
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .parent()
            .and_then(|d| d.parent())
            .unwrap()
            .join("libvdi.so");
        let lib = match LibVdi::load(&path) {
            Ok(l) => l,
            Err(e) => {
                // `cargo bench` of the whole crate still runs on a fresh checkout.
                println!("C client: skipped ({e})");
                return;
            }
        };
        let name = format!("vdi-bench-cabi-c-{pid}");
        let set = lib.client_set().unwrap();
        set.create(&name, 1).unwrap();
        let (t, dev) = measure(
            &name,
            batches,
            || {
                set.get_configuration(10_000).unwrap();
                set.open_device(&name).unwrap()
            },
            |dev| dev.serve_queued(BATCH).unwrap(),
        );
        assert!(dev.serve_queued(1).is_err()); // VD_E_CLOSE: the normal end
        println!(
            "C client:    {:>6.1} ns per command (get + complete)",
            t.as_nanos() as f64
        );
        set.close().unwrap();
    }
}
