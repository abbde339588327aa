//! A hostile peer's scribbler: from inside a process that legitimately holds a set's
//! memfds (a server or a client attached the normal way), a thread writes random garbage
//! into the shared control state at random times: the set header (control segment) and
//! the queue segment (device blocks, ring positions and entries, command slots). It never
//! touches the buffer areas, so that garbage cannot silently change payload bytes (zero
//! copy: a write into a data buffer is indistinguishable from data) and the honest peer's
//! byte checks stay meaningful.
//!
//! The memory is reached the way any process holding the descriptors could: the memfds
//! are found in `/proc/self/fd` (`/memfd:vdi-control`, `/memfd:vdi-queues`) and mapped
//! `MAP_SHARED` a second time, which aliases the same pages.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A second shared mapping of a memfd, written only through atomics.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only accessed through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn open(path: &str) -> Option<Mapping> {
        let fd =
            rustix::fs::open(path, rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()).ok()?;
        let len = usize::try_from(rustix::fs::fstat(&fd).ok()?.st_size).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a new shared mapping of the whole memfd at an address the kernel picks;
        // it aliases only the segment's pages, which every process accesses atomically.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        }
        .ok()?;
        Some(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The 32-bit word `i` (`None` past the end).
    fn word(&self, i: usize) -> Option<&AtomicU32> {
        if (i + 1) * 4 > self.len {
            return None;
        }
        // SAFETY: in range, 4-aligned (the mapping is page-aligned), and the pages are
        // only ever accessed atomically, so an `&AtomicU32` over them is sound; the borrow
        // is tied to `&self`, which keeps the mapping alive.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.add(i * 4).cast()) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// The fd path of the first vdi memfd of `kind` ("control", "queues") in this process.
fn find_memfd(kind: &str) -> Option<String> {
    let want = format!("/memfd:vdi-{kind} ");
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .find_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_string_lossy();
            (link.starts_with(&want) || link == want.trim_end())
                .then(|| e.path().to_string_lossy().into_owned())
        })
}

/// How the scribbler behaves.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Seed of the random stream (printed by the binary, so a run can be repeated).
    pub seed: u64,
    /// Wait this long before the first write.
    pub delay: Duration,
    /// Mean time between writes.
    pub period: Duration,
    /// Stop after this many writes.
    pub writes: u32,
    /// Print every write on standard output (`SCRIBBLE +µs segment word i: old -> new`,
    /// the time counted from the scribbler's start).
    pub log: bool,
}

impl Schedule {
    /// A schedule drawn from `seed`: no delay or up to 100 ms, a period of 20 µs to 5 ms,
    /// 1 to 64 writes (a quarter of the runs only 1 to 3, so that some runs survive long
    /// enough to finish).
    pub fn from_seed(seed: u64) -> Schedule {
        let mut r = fastrand::Rng::with_seed(seed);
        let writes = if r.u8(..4) == 0 {
            r.u32(1..=3)
        } else {
            r.u32(1..=64)
        };
        Schedule {
            seed,
            delay: Duration::from_micros(if r.bool() { 0 } else { r.u64(..100_000) }),
            period: Duration::from_micros(r.u64(20..5_000)),
            writes,
            log: false,
        }
    }
}

/// Word indices of the header fields that matter (docs/shm-layout.md §2).
const HEADER_HOT: &[usize] = &[
    0, 1, 2, 3, 16, 17, 18, 19, 22, 25, 26, 27, 32, 33, 34, 35, 39, 41, 42, 48, 49, 50, 51, 53, 64,
    80, 81, 82, 83,
];
/// Word indices, within a device block, of state, owner, sub_event, name_len, the ring
/// positions and the first name words (§3.1).
const BLOCK_HOT: &[usize] = &[0, 1, 2, 3, 16, 32, 48, 64, 80, 81];

fn value(r: &mut fastrand::Rng) -> u32 {
    match r.u8(..9) {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => 0x8000_0000,
        4 => r.u32(..80),
        5 => [15, 16, 17, 63, 64, 65, 4095, 4096, 65535, 65536][r.usize(..10)],
        6 => r.u32(1..80) << 16,
        _ => r.u32(..),
    }
}

/// What one scribbler did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Words written.
    pub writes: u64,
    /// Of which in the queue segment.
    pub queue_writes: u64,
}

/// A running scribbler; stop it with [`Scribbler::stop`].
pub struct Scribbler {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    queue_writes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Scribbler {
    /// Starts scribbling into this process's vdi memfds on `schedule`. `devices` and
    /// `capacity` (the queue geometry, if known) aim some writes at device-block fields;
    /// without them the queue segment is hit at random words only.
    pub fn start(schedule: Schedule, devices: u32, capacity: Option<u32>) -> Scribbler {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let queue_writes = Arc::new(AtomicU64::new(0));
        let (s2, w2, q2) = (stop.clone(), writes.clone(), queue_writes.clone());
        let thread = std::thread::Builder::new()
            .name("scribbler".into())
            .spawn(move || scribble(schedule, devices, capacity, &s2, &w2, &q2))
            .ok();
        Scribbler {
            stop,
            writes,
            queue_writes,
            thread,
        }
    }

    /// Stops and joins the thread.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Tally {
            writes: self.writes.load(Ordering::Relaxed),
            queue_writes: self.queue_writes.load(Ordering::Relaxed),
        }
    }
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(5)));
    }
    !stop.load(Ordering::Relaxed)
}

fn scribble(
    s: Schedule,
    devices: u32,
    capacity: Option<u32>,
    stop: &AtomicBool,
    writes: &AtomicU64,
    queue_writes: &AtomicU64,
) {
    let mut r = fastrand::Rng::with_seed(s.seed ^ 0x5C41_BB1E);
    let started = Instant::now();
    if !sleep_unless_stopped(s.delay, stop) {
        return;
    }
    let mut control = None;
    let mut queues = None;
    let mut done = 0;
    while done < s.writes {
        if control.is_none() {
            control = find_memfd("control").and_then(|p| Mapping::open(&p));
        }
        if queues.is_none() {
            queues = find_memfd("queues").and_then(|p| Mapping::open(&p));
        }
        // Half the writes go to the queue segment once it exists.
        let target = match (&control, &queues) {
            (_, Some(q)) if r.bool() => {
                let stride = capacity.map(|c| 448 + 72 * c as usize);
                let i = match stride {
                    Some(st) if r.u8(..3) > 0 => {
                        let base = r.u32(..devices.max(1)) as usize * st / 4;
                        match r.u8(..4) {
                            // A device-block field.
                            0 | 1 => base + BLOCK_HOT[r.usize(..BLOCK_HOT.len())],
                            // A ring entry or a slot word.
                            _ => base + 112 + r.usize(..(st / 4 - 112).max(1)),
                        }
                    }
                    _ => r.usize(..q.len / 4),
                };
                Some((q, i, true))
            }
            (Some(c), _) => {
                let i = if r.bool() {
                    HEADER_HOT[r.usize(..HEADER_HOT.len())]
                } else {
                    r.usize(..208)
                };
                Some((c, i, false))
            }
            _ => None,
        };
        if let Some((m, i, in_queue)) = target
            && let Some(w) = m.word(i)
        {
            let v = value(&mut r);
            let old = match r.u8(..4) {
                0 => w.fetch_add(r.u32(1..20), Ordering::SeqCst),
                1 => w.fetch_xor(1 << r.u32(..32), Ordering::SeqCst),
                _ => w.swap(v, Ordering::SeqCst),
            };
            if s.log {
                let seg = if in_queue { "queues" } else { "control" };
                println!(
                    "SCRIBBLE +{}us {seg} word {i} (byte {}): {old:#x} -> {:#x}",
                    started.elapsed().as_micros(),
                    4 * i,
                    w.load(Ordering::Relaxed)
                );
            }
            done += 1;
            writes.fetch_add(1, Ordering::Relaxed);
            if in_queue {
                queue_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        let p = s.period.as_micros() as u64;
        let jitter = Duration::from_micros(r.u64(..=2 * p.max(1)));
        if !sleep_unless_stopped(jitter, stop) {
            return;
        }
    }
}
