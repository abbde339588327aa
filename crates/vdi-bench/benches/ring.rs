//! The library's ring of slot indices (`vdi::protocol::ring`) over ordinary memory, and
//! the raw ring's hand-off for comparison: one thread (the cost of the operations) and
//! two threads (the cost of moving an entry between cores).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vdi::protocol::ring::{Consumer, Producer, Ring};
use vdi::sys::shm::SharedMemory;
use vdi_bench::raw_ring::{RawRing, segment_size};

struct Mem {
    tail: AtomicU32,
    head: AtomicU32,
    entries: Vec<AtomicU32>,
}

impl Mem {
    fn new(cap: usize) -> Mem {
        Mem {
            tail: AtomicU32::new(0),
            head: AtomicU32::new(0),
            entries: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn ring(&self) -> Ring<'_> {
        Ring {
            tail: &self.tail,
            head: &self.head,
            entries: &self.entries,
        }
    }
}

fn one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/one_thread");
    g.throughput(Throughput::Elements(1));
    let mem = Mem::new(16);
    let ring = mem.ring();
    let (mut p, mut q) = (Producer::attach(&ring), Consumer::attach(&ring));
    g.bench_function("push_pop", |b| {
        b.iter(|| {
            p.push(&ring, black_box(5)).unwrap();
            black_box(q.pop(&ring).unwrap())
        })
    });
    g.throughput(Throughput::Elements(8));
    g.bench_function("push8_pop8", |b| {
        b.iter(|| {
            for i in 0..8 {
                p.push(&ring, black_box(i)).unwrap();
            }
            for _ in 0..8 {
                black_box(q.pop(&ring).unwrap());
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    let seg = SharedMemory::create("bench-raw-ring", segment_size(16, 4096)).unwrap();
    let (mut rp, mut rc) = RawRing::new(&seg, 16, 4096).unwrap().split();
    g.bench_function("raw_ring_send_recv_8_bytes", |b| {
        b.iter(|| {
            rp.send(8, |s| s.fill(1)).unwrap();
            black_box(rc.recv(|s| s.len()).unwrap())
        })
    });
    g.finish();
}

/// Moves `iters` entries from a producer thread to the measuring thread, spinning on
/// both sides (the ring alone, no waiting strategy).
fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/two_threads");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    for cap in [16usize, 256] {
        g.bench_function(format!("spsc_capacity_{cap}"), |b| {
            b.iter_custom(|iters| {
                let mem = Mem::new(cap);
                let ring = mem.ring();
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let mut p = Producer::attach(&ring);
                        let mut i = 0;
                        while i < iters {
                            if p.push(&ring, i as u32).is_ok() {
                                i += 1;
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    });
                    let mut q = Consumer::attach(&ring);
                    let t = Instant::now();
                    let mut n = 0;
                    while n < iters {
                        match q.pop(&ring).unwrap() {
                            Some(v) => {
                                black_box(v);
                                n += 1;
                            }
                            None => std::hint::spin_loop(),
                        }
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
