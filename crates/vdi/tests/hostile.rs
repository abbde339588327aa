//! Hostile peer, in one process: both roles run for real (client and server, the
//! completion agent on its own thread, real sealed memfds) while this harness, acting as a
//! hostile peer, writes proptest-generated garbage into every word of the shared control
//! state it can reach: the set header (control segment) and, once configured, the queue
//! segment (device blocks, ring positions, ring entries, command slots). It reaches the
//! memory the way a peer would: it reopens the set's memfds through `/proc/self/fd` and
//! maps them `MAP_SHARED` a second time (the same pages).
//!
//! Properties checked for every generated case:
//! - every library call returns `Ok` or a `VdError`: no panic on any thread (a process-wide
//!   panic hook counts panics, including those of the library's own threads);
//! - every call returns in bounded time: each operation within [`CALL_LIMIT`], and each
//!   case (on a worker thread) within [`CASE_LIMIT`], or the test fails with the case;
//! - no out-of-bounds access: a command's buffer slice has `size` bytes, at most
//!   `maxTransferSize`, and `[data - prefix, data + size)` lies inside one mapping of a
//!   buffer area (checked against `/proc/self/maps`); the harness reads or writes every
//!   byte it is lent (a bad pointer would fault and kill the test);
//! - every `SendCommand` is called back exactly once (at once on a refusal, else by the
//!   agent or by abort processing), with `bytes_transferred <= size` for Read/Write.
//!
//! Payload correctness is not a property here: garbage in a slot's `offset` may redirect
//! the client to another in-bounds buffer (zero copy, see the stress test in
//! `vdi-tests/tests/hostile_stress.rs` for the end-to-end check).
//!
//! Cases: `VDI_FUZZ_CASES` (default 300, about 9 s in the debug build); the seed is fixed
//! unless `VDI_FUZZ_SEED` is set (a number, or `random`); it is printed. Long mode:
//! `VDI_FUZZ_SEED=random VDI_FUZZ_CASES=10000 cargo test -p vdi --test hostile -- --nocapture`.
//! `VDI_FUZZ_TRACE=1` prints every operation; `VDI_FUZZ_GDB=1` dumps every thread's stack
//! (gdb) when a case hangs. The named tests at the end are the regressions the harness
//! found (docs/review-notes.md, N19 to N23).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use vdi::protocol::layout::{CommandSlot, DeviceBlock, QueueGeometry};
use vdi::*;

/// A case that has not finished after this long is a hang.
const CASE_LIMIT: Duration = Duration::from_secs(30);
/// The longest one operation may take. The longest wait the protocol allows a call with
/// a short time-out is the primary's 5 s for a published buffer area to arrive
/// (`ensure_area`, reached through a garbage area index in a slot).
const CALL_LIMIT: Duration = Duration::from_secs(6);
const MAX_TRANSFER: u32 = 65536;

// ---------------------------------------------------------------------------------------
// Process-wide bookkeeping: one case at a time (memfds are found by difference), panics
// counted on every thread.

static SERIAL: Mutex<()> = Mutex::new(());
static PANICS: AtomicUsize = AtomicUsize::new(0);
static CASES_RUN: AtomicU64 = AtomicU64::new(0);
static GARBAGE_WRITES: AtomicU64 = AtomicU64::new(0);

fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "hostile-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------
// The hostile peer's view of the memory: a second MAP_SHARED mapping of a memfd.

struct Map {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a plain shared mapping owned by this value; it is only written through atomics.
unsafe impl Send for Map {}
// SAFETY: as above.
unsafe impl Sync for Map {}

impl Map {
    fn open(fd_path: &str) -> Map {
        let fd =
            rustix::fs::open(fd_path, rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()).unwrap();
        let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
        // SAFETY: a fresh shared mapping of a whole memfd at an address the kernel picks;
        // it aliases only the segment's pages, which are only ever accessed atomically.
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
        .unwrap();
        Map {
            ptr: ptr.cast(),
            len,
        }
    }

    /// Stores a 32-bit word at byte `off` (4-aligned, in range) the way a peer would.
    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len);
        // SAFETY: in range, 4-aligned (the mapping is page-aligned), and every access to
        // these pages in this process is atomic, so an `&AtomicU32` over them is sound.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off).cast()) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// (inode, fd path, kind) of every vdi memfd this process holds.
fn vdi_memfds() -> Vec<(u64, String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let p = e.path();
        let Ok(link) = std::fs::read_link(&p) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        let Some(kind) = link.strip_prefix("/memfd:vdi-") else {
            continue;
        };
        let kind = kind.split(' ').next().unwrap_or("").to_owned();
        if let Ok(st) = rustix::fs::stat(&p) {
            v.push((st.st_ino, p.to_string_lossy().into_owned(), kind));
        }
    }
    v
}

/// Maps the memfd of kind `kind` ("control", "queues") that was not in `before`.
fn map_new(before: &BTreeSet<u64>, kind: &str) -> Option<Map> {
    vdi_memfds()
        .into_iter()
        .find(|(ino, _, k)| k == kind && !before.contains(ino))
        .map(|(_, path, _)| Map::open(&path))
}

/// Address ranges of this process's mappings of buffer areas.
fn area_mappings() -> Vec<(usize, usize)> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:vdi-buffers"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// What the hostile peer writes.

/// Where a garbage word goes.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// 32-bit word `w` of the set header (0..208).
    Header(u32),
    /// Word `w` (0..112) of device `dev`'s `DeviceBlock`.
    Block { dev: u8, w: u32 },
    /// Submission ring entry `k` of device `dev`.
    SubEntry { dev: u8, k: u32 },
    /// Completion ring entry `k`.
    CompEntry { dev: u8, k: u32 },
    /// Word `w` (0..16) of command slot `slot`.
    Slot { dev: u8, slot: u32, w: u32 },
}

/// How the word changes.
#[derive(Clone, Copy, Debug)]
enum Change {
    Set(u32),
    Add(i32),
    Flip(u32),
}

#[derive(Clone, Copy, Debug)]
struct Garbage {
    target: Target,
    change: Change,
}

/// Word indices of the header fields that matter (see docs/shm-layout.md §2).
const HEADER_HOT: &[u32] = &[
    0, 1, 2, 3, // magic, version, header_size
    16, 17, 18, 19, 22, 25, 26, 27, // client_config: deviceCount .. maxTransferSize
    32, 33, 34, 35, 39, 41, 42, // final_config
    48, 49, 50, 51, 53, // phase, abort, set_event, area_count, queue_capacity
    64, // completion_event
    80, 81, 82, 83, // area_sizes[0], [1]
];
/// Word indices of the device block fields (state, owner, sub_event, name_len, the four
/// ring positions, the first name words).
const BLOCK_HOT: &[u32] = &[0, 1, 2, 3, 16, 32, 48, 64, 80, 81];

fn target() -> impl Strategy<Value = Target> {
    let dev = 0u8..2;
    prop_oneof![
        2 => (0u32..208).prop_map(Target::Header),
        3 => prop::sample::select(HEADER_HOT).prop_map(Target::Header),
        5 => (dev.clone(), prop::sample::select(BLOCK_HOT)).prop_map(|(dev, w)| Target::Block { dev, w }),
        1 => (dev.clone(), 0u32..112).prop_map(|(dev, w)| Target::Block { dev, w }),
        2 => (dev.clone(), 0u32..16).prop_map(|(dev, k)| Target::SubEntry { dev, k }),
        2 => (dev.clone(), 0u32..16).prop_map(|(dev, k)| Target::CompEntry { dev, k }),
        4 => (dev, 0u32..16, 0u32..16).prop_map(|(dev, slot, w)| Target::Slot { dev, slot, w }),
    ]
}

fn value() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(0x8000_0000),
        0u32..80,
        prop::sample::select(&[15u32, 16, 17, 63, 64, 65, 4095, 4096, 65535, 65536, 65537][..]),
        (1u32..80).prop_map(|k| k << 16),
        any::<u32>(),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => value().prop_map(Change::Set),
        2 => (-20i32..20).prop_map(Change::Add),
        1 => (0u32..32).prop_map(Change::Flip),
    ]
}

fn garbage() -> impl Strategy<Value = Garbage> {
    (target(), change()).prop_map(|(target, change)| Garbage { target, change })
}

/// The hostile peer's handle on one set's shared state.
struct Peer {
    control: Map,
    queues: Option<Map>,
    geo: Option<QueueGeometry>,
}

impl Peer {
    fn offset(&self, t: Target) -> Option<(&Map, usize)> {
        let block = std::mem::size_of::<DeviceBlock>();
        let slot = std::mem::size_of::<CommandSlot>();
        if let Target::Header(w) = t {
            return Some((&self.control, 4 * w as usize));
        }
        let (q, g) = (self.queues.as_ref()?, self.geo?);
        let c = g.capacity as usize;
        let dev_base = |d: u8| (d as usize % g.device_count as usize) * g.stride();
        let off = match t {
            Target::Header(_) => return None, // handled above
            Target::Block { dev, w } => dev_base(dev) + 4 * w as usize,
            Target::SubEntry { dev, k } => dev_base(dev) + block + 4 * (k as usize % c),
            Target::CompEntry { dev, k } => dev_base(dev) + block + 4 * c + 4 * (k as usize % c),
            Target::Slot { dev, slot: s, w } => {
                dev_base(dev) + block + 8 * c + slot * (s as usize % c) + 4 * w as usize
            }
        };
        Some((q, off))
    }

    /// Applies one garbage write (a no-op for a segment that does not exist yet).
    fn apply(&self, g: &Garbage) {
        let Some((m, off)) = self.offset(g.target) else {
            return;
        };
        let w = m.word(off);
        match g.change {
            Change::Set(v) => w.store(v, Ordering::SeqCst),
            Change::Add(d) => {
                w.fetch_add(d as u32, Ordering::SeqCst);
            }
            Change::Flip(b) => {
                w.fetch_xor(1 << b, Ordering::SeqCst);
            }
        }
        GARBAGE_WRITES.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// What the honest sides do.

#[derive(Clone, Copy, Debug)]
enum Kind {
    Write,
    Read,
    Flush,
    ClearError,
    Unknown,
}

#[derive(Clone, Debug)]
enum Op {
    /// Server: SendCommand on device `dev`.
    Send { dev: u8, what: Kind, size: u32 },
    /// Client: GetCommand on device `dev` (poll, or wait up to `wait_ms`).
    Get { dev: u8, wait_ms: u8 },
    /// Client: completes held command `which` (modulo the count).
    Complete { which: u8, code: u32, bytes: u32 },
    /// The hostile peer writes.
    Garbage(Garbage),
    /// Server: CloseDevice.
    CloseDevice { dev: u8 },
    /// Server: RequestBuffers after configuration (a new area).
    MoreBuffers,
    /// Client: map the handle of a held command's buffer.
    MapHandle { which: u8 },
    /// Either side: SignalAbort.
    Abort { server: bool },
    /// Let the other threads run.
    Pause { ms: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0u8..2;
    let what = prop_oneof![
        4 => Just(Kind::Write),
        3 => Just(Kind::Read),
        1 => Just(Kind::Flush),
        1 => Just(Kind::ClearError),
        1 => Just(Kind::Unknown),
    ];
    let size = prop_oneof![Just(MAX_TRANSFER), 0u32..=MAX_TRANSFER, Just(512)];
    let code =
        prop_oneof![4 => Just(0u32), 1 => Just(completion::ERROR_HANDLE_EOF), 1 => any::<u32>()];
    prop_oneof![
        6 => (dev.clone(), what, size).prop_map(|(dev, what, size)| Op::Send { dev, what, size }),
        8 => (dev.clone(), prop_oneof![Just(0u8), 1u8..30]).prop_map(|(dev, wait_ms)| Op::Get { dev, wait_ms }),
        7 => (any::<u8>(), code, prop_oneof![Just(u32::MAX), 0u32..=MAX_TRANSFER])
            .prop_map(|(which, code, bytes)| Op::Complete { which, code, bytes }),
        4 => garbage().prop_map(Op::Garbage),
        1 => dev.prop_map(|dev| Op::CloseDevice { dev }),
        1 => Just(Op::MoreBuffers),
        1 => any::<u8>().prop_map(|which| Op::MapHandle { which }),
        1 => any::<bool>().prop_map(|server| Op::Abort { server }),
        1 => (0u8..5).prop_map(|ms| Op::Pause { ms }),
    ]
}

/// One generated case.
#[derive(Clone, Debug)]
struct Case {
    devices: u32,
    prefix: u32,
    buffers: u32,
    /// Garbage written after the set is created, before the server configures it.
    before_config: Vec<Garbage>,
    /// Garbage written after EndConfiguration, before the client's GetConfiguration.
    before_get_config: Vec<Garbage>,
    ops: Vec<Op>,
    /// With two devices: device 1 is served by a secondary client (in this process).
    secondary: bool,
    /// A concurrent scribbler: (seed, mean microseconds between writes), if any.
    concurrent: Option<(u64, u32)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u32..=2,
        prop_oneof![Just(0u32), Just(512)],
        1u32..=6,
        prop::collection::vec(garbage(), 0..3),
        prop::collection::vec(garbage(), 0..3),
        prop::collection::vec(op(), 1..80),
        any::<bool>(),
        prop_oneof![3 => Just(None), 1 => (any::<u64>(), 50u32..3000).prop_map(Some)],
    )
        .prop_map(
            |(devices, prefix, buffers, before, before_get, ops, sec, concurrent)| Case {
                devices,
                prefix,
                buffers,
                before_config: before,
                before_get_config: before_get,
                ops,
                secondary: sec && devices == 2,
                concurrent,
            },
        )
}

/// What a case saw (for the summary).
#[derive(Default, Debug)]
struct Outcome {
    configured: bool,
    sent: u64,
    fetched: u64,
    completed: u64,
    aborted: bool,
}

/// Keeps the problems found on other threads (callbacks) for the case to report.
#[derive(Default)]
struct Problems(Mutex<Vec<String>>);

impl Problems {
    fn add(&self, p: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn check_buffer(cmd: &Command<'_>, prefix: u32, problems: &Problems) {
    let Some(b) = cmd.buffer() else {
        return;
    };
    if b.len() != cmd.size() as usize || b.len() > MAX_TRANSFER as usize {
        problems.add(format!(
            "{} lent {} bytes (size {}, maxTransferSize {MAX_TRANSFER})",
            cmd.code(),
            b.len(),
            cmd.size()
        ));
        return;
    }
    let start = b.as_ptr() as usize - prefix as usize;
    let end = b.as_ptr() as usize + b.len();
    if !area_mappings()
        .iter()
        .any(|&(lo, hi)| lo <= start && end <= hi)
    {
        problems.add(format!(
            "{} lent [{start:#x}, {end:#x}), outside every buffer area mapping",
            cmd.code()
        ));
    }
}

/// Runs one case to the end; returns what it saw or the first problem.
fn run_case(case: &Case) -> Result<Outcome, String> {
    let name = unique("p");
    let mut out = Outcome::default();
    let problems = Arc::new(Problems::default());
    let before: BTreeSet<u64> = vdi_memfds().into_iter().map(|(i, _, _)| i).collect();
    let mut cfg = VdConfig::with_devices(case.devices);
    cfg.prefix_zone_size = case.prefix;
    let client = ClientSet::create(&name, &cfg).map_err(|e| format!("create: {e}"))?;
    let mut peer = Peer {
        control: map_new(&before, "control").ok_or("no control memfd found")?,
        queues: None,
        geo: None,
    };
    let server = match ServerSet::open(&name) {
        Ok(s) => s,
        Err(e) => return Err(format!("open: {e}")),
    };
    for g in &case.before_config {
        peer.apply(g);
    }
    let configured = (|| -> vdi::Result<()> {
        server.begin_configuration(features::WRITE_MEDIA, 512, 0, MAX_TRANSFER, 1000)?;
        server.request_buffers(MAX_TRANSFER, 0, case.buffers)?;
        server.end_configuration()
    })();
    let geo = QueueGeometry::for_buffers(case.devices, u64::from(case.buffers));
    peer.queues = map_new(&before, "queues");
    peer.geo = Some(geo);
    for g in &case.before_get_config {
        peer.apply(g);
    }
    let mut server_devs = Vec::new();
    let mut client_devs = Vec::new();
    let mut secondary = None;
    let setup = configured.and_then(|()| {
        client.get_configuration(Timeout::from_millis(300))?;
        for i in 0..case.devices {
            let n = if i == 0 {
                name.clone()
            } else {
                format!("{name}#{i}")
            };
            server_devs.push(server.open_device(&n)?);
        }
        // The names are published: the client's OpenDevice (no time limit, note O3)
        // finds them at once.
        for i in 0..case.devices {
            let n = if i == 0 {
                name.clone()
            } else {
                format!("{name}#{i}")
            };
            if i == 1 && case.secondary {
                let sec = secondary.insert(ClientSet::open_in_secondary(&name)?);
                client_devs.push(sec.open_device(&n)?);
            } else {
                client_devs.push(client.open_device(&n)?);
            }
        }
        Ok(())
    });
    out.configured = setup.is_ok();

    let callbacks = Arc::new(AtomicU64::new(0));
    let sends = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let agent =
            (!server_devs.is_empty()).then(|| s.spawn(|| server.execute_completion_agent()));
        let scribbler = case.concurrent.map(|(seed, mean_us)| {
            let peer = &peer;
            let stop = &stop;
            s.spawn(move || {
                let mut rng = TestRunner::new_with_rng(
                    Config::default(),
                    proptest::test_runner::TestRng::from_seed(
                        proptest::test_runner::RngAlgorithm::ChaCha,
                        &{
                            let mut k = [0u8; 32];
                            k[..8].copy_from_slice(&seed.to_le_bytes());
                            k
                        },
                    ),
                );
                let strat = garbage();
                while !stop.load(Ordering::Relaxed) {
                    let g = strat.new_tree(&mut rng).unwrap().current();
                    peer.apply(&g);
                    std::thread::sleep(Duration::from_micros(u64::from(mean_us)));
                }
            })
        });
        let mut held: Vec<Command<'_>> = Vec::new();
        let prefix = case.prefix;
        let trace = std::env::var_os("VDI_FUZZ_TRACE").is_some();
        for op in &case.ops {
            if trace {
                eprintln!("op: {op:?}");
            }
            let began = Instant::now();
            match op {
                Op::Send { dev, what, size } => {
                    let Some(d) = server_devs.get(*dev as usize % server_devs.len().max(1)) else {
                        continue;
                    };
                    let cmd = match what {
                        Kind::Write | Kind::Read => {
                            let Ok(mut b) = server.allocate_buffer(MAX_TRANSFER, 0) else {
                                continue;
                            };
                            b.as_mut_slice()[..64].fill(0x5A);
                            if matches!(what, Kind::Write) {
                                ServerCommand::write(b, *size)
                            } else {
                                ServerCommand::read(b, *size)
                            }
                        }
                        Kind::Flush => ServerCommand::new(CommandCode::FLUSH),
                        Kind::ClearError => ServerCommand::new(CommandCode::CLEAR_ERROR),
                        Kind::Unknown => ServerCommand::new(CommandCode::from(77)).with_size(*size),
                    };
                    sends.fetch_add(1, Ordering::Relaxed);
                    let (cb, pr) = (callbacks.clone(), problems.clone());
                    let r = d.send_command(cmd, move |c: Completion| {
                        cb.fetch_add(1, Ordering::SeqCst);
                        if c.code.carries_data() && c.bytes_transferred > c.size {
                            pr.add(format!(
                                "callback: {} of {} bytes reports {} transferred",
                                c.code, c.size, c.bytes_transferred
                            ));
                        }
                    });
                    if r.is_ok() {
                        out.sent += 1;
                    }
                }
                Op::Get { dev, wait_ms } => {
                    let Some(d) = client_devs.get(*dev as usize % client_devs.len().max(1)) else {
                        continue;
                    };
                    let t = if *wait_ms == 0 {
                        Timeout::POLL
                    } else {
                        Timeout::from_millis(u32::from(*wait_ms))
                    };
                    if let Ok(mut cmd) = d.get_command(t) {
                        out.fetched += 1;
                        check_buffer(&cmd, prefix, &problems);
                        let code = cmd.code();
                        if code == CommandCode::WRITE {
                            let sum: u64 = cmd
                                .buffer()
                                .unwrap_or(&[])
                                .iter()
                                .map(|&x| u64::from(x))
                                .sum();
                            std::hint::black_box(sum);
                        } else if code == CommandCode::READ
                            && let Some(b) = cmd.buffer_mut()
                        {
                            b.fill(0xC3);
                        }
                        if let Some(p) = cmd.prefix_mut() {
                            p.fill(0xA5);
                        }
                        held.push(cmd);
                    }
                }
                Op::Complete { which, code, bytes } => {
                    if held.is_empty() {
                        continue;
                    }
                    let cmd = held.remove(*which as usize % held.len());
                    // u32::MAX: more than the command asked for (the library refuses it).
                    let bytes = if *bytes == u32::MAX {
                        u32::MAX
                    } else {
                        (*bytes).min(cmd.size())
                    };
                    if cmd.complete(*code, bytes, 0).is_ok() {
                        out.completed += 1;
                    }
                }
                Op::Garbage(g) => peer.apply(g),
                Op::CloseDevice { dev } => {
                    if let Some(d) = server_devs.get(*dev as usize % server_devs.len().max(1)) {
                        let _ = d.close_device();
                    }
                }
                Op::MoreBuffers => {
                    let _ = server.request_buffers(MAX_TRANSFER, 0, 1);
                }
                Op::MapHandle { which } => {
                    if held.is_empty() {
                        continue;
                    }
                    let cmd = &held[*which as usize % held.len()];
                    // The handle is mapped by the process (here: the set) that holds it.
                    let set = match &secondary {
                        Some(sec) if cmd.device().index() == 1 => sec,
                        _ => &client,
                    };
                    if let Some(h) = cmd.buffer_handle() {
                        match set.map_buffer_handle(h) {
                            Ok(m) => {
                                if Some(m.as_ptr() as *const u8) != cmd.buffer().map(|b| b.as_ptr())
                                {
                                    problems.add(format!("handle {h:#x} maps elsewhere"));
                                }
                            }
                            Err(e) => problems.add(format!("handle {h:#x} of a held buffer: {e}")),
                        }
                    }
                }
                Op::Abort { server: true } => {
                    let _ = server.signal_abort();
                }
                Op::Abort { server: false } => {
                    let _ = client.signal_abort();
                }
                Op::Pause { ms } => std::thread::sleep(Duration::from_millis(u64::from(*ms))),
            }
            if began.elapsed() > CALL_LIMIT {
                problems.add(format!("{op:?} took {:?}", began.elapsed()));
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = scribbler {
            t.join().unwrap();
        }
        if trace {
            eprintln!("end of ops");
        }
        // The end: complete what is held, the server closes its devices, the client
        // takes what is left until VD_E_CLOSE or an error, then both close.
        for cmd in held.drain(..) {
            let _ = cmd.complete_ok();
        }
        for d in &server_devs {
            let _ = d.close_device();
        }
        for d in &client_devs {
            for _ in 0..200 {
                match d.get_command(Timeout::from_millis(20)) {
                    Ok(cmd) => {
                        check_buffer(&cmd, prefix, &problems);
                        let _ = cmd.complete_ok();
                    }
                    Err(e) if e.code() == ErrorCode::Timeout => {}
                    Err(_) => break,
                }
            }
        }
        out.aborted = client.abort_cause().is_some() || server.abort_cause().is_some();
        if let Some(sec) = &secondary {
            let _ = sec.close();
        }
        let _ = client.close();
        let _ = server.close();
        if let Some(a) = agent {
            match a.join() {
                Ok(_) => {}
                Err(_) => problems.add("the completion agent panicked".into()),
            }
        }
    });
    drop(client_devs);
    drop(server_devs);
    let called = callbacks.load(Ordering::SeqCst);
    let sent = sends.load(Ordering::Relaxed);
    if called != sent {
        problems.add(format!(
            "{sent} SendCommand calls but {called} callbacks after Close"
        ));
    }
    let p = problems.take();
    if let Some(first) = p.first() {
        return Err(first.clone());
    }
    Ok(out)
}

/// Runs `case` on a worker thread under the hang and panic checks.
fn check_case(case: &Case) -> Result<Outcome, String> {
    install_panic_counter();
    let panics = PANICS.load(Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    let c = case.clone();
    let worker = std::thread::Builder::new()
        .name("hostile-case".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(&c)));
            let _ = tx.send(r);
        })
        .unwrap();
    let started = Instant::now();
    // A panic on any thread fails the case at once: the worker may then never finish (a
    // scope waiting for an agent nobody stops).
    let polled = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(r) => break Some(r),
            Err(_) if PANICS.load(Ordering::SeqCst) > panics => {
                std::mem::forget(worker);
                return Err("PANIC on some thread (see the panic message above)".into());
            }
            Err(_) if started.elapsed() >= CASE_LIMIT => break None,
            Err(_) => {}
        }
    };
    let r = match polled {
        Some(Ok(r)) => r,
        Some(Err(_)) => Err("a library call panicked (see the panic message above)".into()),
        None => {
            // The worker is stuck; leave it (its set is not counted by later cases).
            if std::env::var_os("VDI_FUZZ_GDB").is_some() {
                let _ = std::process::Command::new("gdb")
                    .args(["-p", &std::process::id().to_string(), "-batch"])
                    .args(["-ex", "thread apply all bt 30"])
                    .status();
            }
            std::mem::forget(worker);
            return Err(format!(
                "HANG: the case did not finish within {CASE_LIMIT:?} (started {:?} ago)",
                started.elapsed()
            ));
        }
    };
    let _ = worker.join();
    // Library threads (the set's service thread, watchdogs) are joined by Close.
    let new_panics = PANICS.load(Ordering::SeqCst) - panics;
    if new_panics > 0 {
        return Err(format!(
            "{new_panics} panic(s) on some thread during the case"
        ));
    }
    CASES_RUN.fetch_add(1, Ordering::Relaxed);
    r
}

fn cases_from_env() -> u32 {
    std::env::var("VDI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn hostile_peer_scribbling_shared_state() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = cases_from_env();
    let t = Instant::now();
    // A fixed seed by default, so CI runs the same cases every time; VDI_FUZZ_SEED=random
    // (or a number) explores others.
    let seed: u64 = match std::env::var("VDI_FUZZ_SEED").ok().as_deref() {
        None => 0x1057_11E5,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        Some(v) => v.parse().unwrap(),
    };
    println!("hostile proptest: {cases} cases, VDI_FUZZ_SEED={seed}");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            max_shrink_time: 60_000,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &key,
        ),
    );
    let stats = Mutex::new((0u64, 0u64, 0u64, 0u64, 0u64, 0u64));
    let writes0 = GARBAGE_WRITES.load(Ordering::Relaxed);
    let result = runner.run(&case(), |c| {
        let o = check_case(&c).map_err(TestCaseError::fail)?;
        let mut s = stats.lock().unwrap();
        s.0 += 1;
        s.1 += u64::from(o.configured);
        s.2 += u64::from(o.aborted);
        s.3 += o.sent;
        s.4 += o.fetched;
        s.5 += o.completed;
        Ok(())
    });
    let s = *stats.lock().unwrap();
    println!(
        "hostile proptest: {} cases in {:.1?} ({} configured, {} ended aborted); {} garbage writes; {} commands sent, {} fetched, {} completed",
        s.0,
        t.elapsed(),
        s.1,
        s.2,
        GARBAGE_WRITES.load(Ordering::Relaxed) - writes0,
        s.3,
        s.4,
        s.5
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Regression tests: each reproduces a bug the harness found, with the exact garbage.

fn regression(case: Case) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = check_case(&case) {
        panic!("{e}");
    }
}

fn base_case(ops: Vec<Op>) -> Case {
    Case {
        devices: 1,
        prefix: 0,
        buffers: 2,
        before_config: vec![],
        before_get_config: vec![],
        ops,
        secondary: false,
        concurrent: None,
    }
}

fn set(target: Target, v: u32) -> Op {
    Op::Garbage(Garbage {
        target,
        change: Change::Set(v),
    })
}

/// A sanity case with no garbage: everything sent is fetched and completed.
#[test]
fn harness_without_garbage_moves_commands() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut ops = Vec::new();
    for _ in 0..4 {
        ops.push(Op::Send {
            dev: 0,
            what: Kind::Write,
            size: MAX_TRANSFER,
        });
        ops.push(Op::Get {
            dev: 0,
            wait_ms: 20,
        });
        ops.push(Op::Complete {
            which: 0,
            code: 0,
            bytes: MAX_TRANSFER,
        });
    }
    // Enough buffers that no send waits for the agent to free one.
    let mut case = base_case(ops);
    case.buffers = 8;
    let o = check_case(&case).unwrap();
    assert!(o.configured);
    assert_eq!((o.sent, o.fetched, o.completed), (4, 4, 4), "{o:?}");
    assert!(!o.aborted, "{o:?}");
}

/// Bug 1 (no garbage needed): a ClearError held back behind an outstanding command, with
/// another command queued behind it, made `GetCommand` spin forever, whatever its
/// time-out: its wait predicate saw "the ring is not empty", but nothing could be
/// delivered, and the loop never looked at the deadline.
#[test]
fn get_command_times_out_with_a_held_back_clear_error_and_more_queued() {
    let write = Op::Send {
        dev: 0,
        what: Kind::Write,
        size: MAX_TRANSFER,
    };
    regression(base_case(vec![
        write.clone(),
        Op::Get { dev: 0, wait_ms: 0 },
        Op::Send {
            dev: 0,
            what: Kind::ClearError,
            size: 0,
        },
        Op::Get { dev: 0, wait_ms: 0 },
        Op::Send {
            dev: 0,
            what: Kind::Flush,
            size: 0,
        },
        Op::Get { dev: 0, wait_ms: 0 },
        Op::Get {
            dev: 0,
            wait_ms: 10,
        },
        Op::Complete {
            which: 0,
            code: 0,
            bytes: MAX_TRANSFER,
        },
        Op::Get {
            dev: 0,
            wait_ms: 10,
        },
        Op::Get {
            dev: 0,
            wait_ms: 10,
        },
    ]));
}

/// Bug 2: the server summed the client-writable `area_sizes` with `Iterator::sum`, which
/// panics on overflow in a debug build (and wraps in release): `RequestBuffers` after
/// configuration (`add_area` and `total_area_bytes`) panicked on huge sizes.
#[test]
fn huge_area_sizes_do_not_panic_request_buffers() {
    regression(base_case(vec![
        set(Target::Header(80), u32::MAX), // area_sizes[0], low half
        set(Target::Header(81), u32::MAX), // area_sizes[0], high half
        set(Target::Header(51), 64),       // area_count
        Op::MoreBuffers,
        set(Target::Header(82), u32::MAX), // area_sizes[1]
        set(Target::Header(83), u32::MAX),
        Op::MoreBuffers,
        Op::Send {
            dev: 0,
            what: Kind::Write,
            size: MAX_TRANSFER,
        },
        Op::Get {
            dev: 0,
            wait_ms: 10,
        },
    ]));
}

/// Bug 3: a server that cleared `SERVER_CLOSED` (garbage in the device's state word) and
/// then closed the set normally (its `Bye` came after every device was closed) left the
/// client's `GetCommand(INFINITE)` waiting forever: the primary took the goodbye for a
/// normal end, though the device was not closed as far as the client could see, and no
/// command could ever come. Now a server that leaves (with or without `Bye`) while a
/// device is not `SERVER_CLOSED` aborts the set (`ServerDied`), as the secondary's
/// watchdog already did for a vanished primary.
#[test]
fn server_leaving_after_garbage_cleared_server_closed_aborts_the_client() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("bye");
    let before: BTreeSet<u64> = vdi_memfds().into_iter().map(|(i, _, _)| i).collect();
    let client = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let server = ServerSet::open(&name).unwrap();
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, MAX_TRANSFER, 1000)
        .unwrap();
    server.request_buffers(MAX_TRANSFER, 0, 1).unwrap();
    server.end_configuration().unwrap();
    client
        .get_configuration(Timeout::from_millis(5000))
        .unwrap();
    let queues = map_new(&before, "queues").unwrap();
    let sdev = server.open_device(&name).unwrap();
    let cdev = client.open_device(&name).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        sdev.close_device().unwrap();
        // The hostile write: the device's state word (byte 0 of its block) loses
        // SERVER_CLOSED.
        queues.word(0).fetch_and(!2, Ordering::SeqCst);
        // Every device opened and closed, nothing outstanding: a normal end, Bye.
        server.close().unwrap();
        s.spawn(|| {
            let r = cdev.get_command(Timeout::Infinite).map(|_| ());
            let _ = tx.send(r.map_err(|e| e.code()));
        });
        let r = rx.recv_timeout(Duration::from_secs(5));
        if r.is_err() {
            // Unblock the waiter so the scope can end, then fail.
            client.signal_abort().unwrap();
            panic!("HANG: GetCommand(INFINITE) still waits 5 s after the server left");
        }
        assert_eq!(r.unwrap(), Err(ErrorCode::Abort));
    });
    assert_eq!(client.abort_cause(), Some(AbortCause::ServerDied));
    client.close().unwrap();
}

/// Note N23 (bounded, open): a slot naming an area below a garbage `area_count` that was
/// never sent makes the primary's `GetCommand(POLL)` wait for it (5 s), then fail with a
/// protocol violation. This pins the bound: one call, at most [`CALL_LIMIT`].
#[test]
fn a_published_but_unsent_area_costs_one_bounded_wait() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("area");
    let before: BTreeSet<u64> = vdi_memfds().into_iter().map(|(i, _, _)| i).collect();
    let client = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let control = map_new(&before, "control").unwrap();
    let server = ServerSet::open(&name).unwrap();
    server
        .begin_configuration(features::WRITE_MEDIA, 512, 0, MAX_TRANSFER, 1000)
        .unwrap();
    server.request_buffers(MAX_TRANSFER, 0, 1).unwrap();
    server.end_configuration().unwrap();
    client
        .get_configuration(Timeout::from_millis(5000))
        .unwrap();
    let queues = map_new(&before, "queues").unwrap();
    let sdev = server.open_device(&name).unwrap();
    let cdev = client.open_device(&name).unwrap();
    let b = server.allocate_buffer(MAX_TRANSFER, 0).unwrap();
    sdev.send_command(ServerCommand::write(b, MAX_TRANSFER), |_| {})
        .unwrap();
    control.word(4 * 51).store(5, Ordering::SeqCst); // area_count
    let geo = QueueGeometry::for_buffers(1, 1);
    let slot0 = std::mem::size_of::<DeviceBlock>() + 8 * geo.capacity as usize;
    queues.word(slot0 + 16).store(3, Ordering::SeqCst); // slot 0: area
    let t = Instant::now();
    let e = cdev.get_command(Timeout::POLL).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), ErrorCode::Protocol, "{e}");
    assert!(took < CALL_LIMIT, "GetCommand(POLL) took {took:?}");
    eprintln!("GetCommand(POLL) with a published, unsent area: {e} after {took:?}");
    drop(cdev);
    let _ = client.close();
    let _ = server.close();
}
