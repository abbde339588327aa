//! A command's round trip in one process: the client serves the device on one thread,
//! the server's completion agent runs on another, and each callback sends the next
//! command (one in flight, back to back). Measures send -> get -> complete -> callback
//! for a command without data (Flush) and for a 64 KiB Write whose buffer is not
//! touched (the per-command cost of lending and returning a buffer).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vdi::{
    ClientSet, CommandCode, Completion, ErrorCode, ServerBuffer, ServerCommand, ServerDevice,
    ServerSet, Timeout, VdConfig, features,
};

struct Chain {
    dev: ServerDevice,
    left: AtomicU64,
    /// The Write's buffer between batches (put back by the last callback).
    spare: Mutex<Option<ServerBuffer>>,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Chain {
    fn send(self: &Arc<Chain>, buf: Option<ServerBuffer>) {
        let me = self.clone();
        let cmd = match buf {
            Some(b) => ServerCommand::write(b, 64 * 1024),
            None => ServerCommand::new(CommandCode::FLUSH),
        };
        self.dev
            .send_command(cmd, move |mut c: Completion| {
                assert!(c.is_success());
                if me.left.fetch_sub(1, Ordering::AcqRel) > 1 {
                    me.send(c.buffer);
                } else {
                    if let Some(b) = c.buffer.take() {
                        *me.spare.lock().unwrap() = Some(b);
                    }
                    *me.done.lock().unwrap() = true;
                    me.cv.notify_all();
                }
            })
            .unwrap();
    }

    /// Runs `n` round trips back to back and returns how long they took.
    fn run(self: &Arc<Chain>, n: u64, with_buffer: bool) -> Duration {
        let buf = if with_buffer {
            Some(self.spare.lock().unwrap().take().unwrap())
        } else {
            None
        };
        *self.done.lock().unwrap() = false;
        self.left.store(n, Ordering::Release);
        let t = Instant::now();
        self.send(buf);
        let mut d = self.done.lock().unwrap();
        while !*d {
            d = self.cv.wait(d).unwrap();
        }
        t.elapsed()
    }
}

fn round_trip(c: &mut Criterion) {
    let name = format!("vdi-bench-rt-{}", std::process::id());
    let client = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let server = ServerSet::open(&name).unwrap();
    server.get_configuration().unwrap();
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, 64 * 1024, 0)
        .unwrap();
    server.request_buffers(64 * 1024, 0, 1).unwrap();
    server.end_configuration().unwrap();
    std::thread::scope(|s| {
        let serving = s.spawn(|| {
            client
                .get_configuration(Timeout::from_millis(10_000))
                .unwrap();
            let dev = client.open_device(&name).unwrap();
            loop {
                match dev.get_command(Timeout::Infinite) {
                    Ok(cmd) => cmd.complete_ok().unwrap(),
                    Err(e) if e.code() == ErrorCode::Close => break,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let agent = s.spawn(|| server.execute_completion_agent());
        let chain = Arc::new(Chain {
            dev: server.open_device(&name).unwrap(),
            left: AtomicU64::new(0),
            spare: Mutex::new(Some(server.allocate_buffer(64 * 1024, 0).unwrap())),
            done: Mutex::new(false),
            cv: Condvar::new(),
        });
        let mut g = c.benchmark_group("round_trip/one_process");
        g.throughput(Throughput::Elements(1));
        g.measurement_time(Duration::from_secs(3));
        g.bench_function("flush", |b| b.iter_custom(|n| chain.run(n, false)));
        g.bench_function("write_64KiB_untouched", |b| {
            b.iter_custom(|n| chain.run(n, true))
        });
        g.finish();
        chain.dev.close_device().unwrap();
        agent.join().unwrap().unwrap();
        serving.join().unwrap();
    });
    server.close().unwrap();
    client.close().unwrap();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
