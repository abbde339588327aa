//! `Close` releases everything at once, as the reference says ("in all cases, including
//! errors, Close releases all resources"; all buffers and interfaces become invalid):
//! memfds, shared mappings, eventfds, sockets and threads are gone when `Close` returns,
//! on both roles, in the typed API and the C-shaped object layer, whatever device
//! handles, commands and buffers the caller still holds. Those stay memory-safe: calls
//! return codes, kept buffers read dead memory that is no longer shared, and the address
//! range itself goes with the last handle. Also: `serverTimeOut` counts only time with
//! commands pending, whatever the idle gaps before a command.
//!
//! Each test counts this process's resources before the set exists and after `Close`, so
//! the tests of this file run one at a time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use vdi::object::{ClientVirtualDeviceSet, ServerVirtualDeviceSet};
use vdi::{
    ClientSet, CommandCode, ErrorCode, ServerCommand, ServerSet, Timeout, completion, features,
};
use vdi_tests::{Peer, Plan, client_config, device_name, pattern, run_client, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
const WAIT: Duration = Duration::from_secs(30);

fn args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

fn serial() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a set can hold in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    /// Descriptors of vdi memfds (`/proc/self/fd`).
    memfds: usize,
    /// Mappings of vdi memfds (`/proc/self/maps`).
    shared_mappings: usize,
    /// eventfds.
    eventfds: usize,
    /// Sockets.
    sockets: usize,
    /// Threads the library started (`vdi-set`, `vdi-watchdog`).
    vdi_threads: usize,
}

fn held() -> Held {
    let mut h = Held {
        memfds: 0,
        shared_mappings: 0,
        eventfds: 0,
        sockets: 0,
        vdi_threads: 0,
    };
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(l) = std::fs::read_link(e.path()) else {
            continue;
        };
        let l = l.to_string_lossy();
        if l.contains("memfd:vdi-") {
            h.memfds += 1;
        } else if l.contains("[eventfd]") {
            h.eventfds += 1;
        } else if l.starts_with("socket:") {
            h.sockets += 1;
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    h.shared_mappings = maps.lines().filter(|l| l.contains("memfd:vdi-")).count();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("vdi-") {
            h.vdi_threads += 1;
        }
    }
    h
}

/// The mapping (start, end) that contains `p`, and whether it is a vdi memfd.
fn mapping_of(p: *const u8) -> Option<(usize, usize, bool)> {
    let a = p as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().find_map(|l| {
        let range = l.split_whitespace().next()?;
        let (s, e) = range.split_once('-')?;
        let (s, e) = (
            usize::from_str_radix(s, 16).ok()?,
            usize::from_str_radix(e, 16).ok()?,
        );
        (s <= a && a < e).then(|| (s, e, l.contains("memfd:vdi-")))
    })
}

/// Whether a mapping with exactly this range exists.
fn range_mapped(range: (usize, usize)) -> bool {
    let want = format!("{:x}-{:x} ", range.0, range.1);
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| l.starts_with(&want))
}

fn configure_backup(set: &ServerSet, buffers: u32) {
    set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 10_000)
        .unwrap();
    set.request_buffers(65536, 0, buffers).unwrap();
    set.end_configuration().unwrap();
}

#[test]
fn server_close_after_the_normal_end_releases_all_with_a_device_and_a_buffer_held() {
    let _one = serial();
    let name = unique_name("crn");
    let mut plan = Plan::new(&name, 1, 4 << 20);
    plan.transfer = 64 << 10;
    let mut peer = Peer::spawn(PEER, &args("client", &plan), None);
    peer.expect_line("CREATED", WAIT);
    let before = held();
    let set = ServerSet::open(&name).unwrap();
    configure_backup(&set, 5);
    let (dev, mut kept) = std::thread::scope(|s| {
        let agent = s.spawn(|| set.execute_completion_agent());
        let dev = set.open_device(&name).unwrap();
        let mut kept = set.allocate_buffer(65536, 0).unwrap();
        kept.as_mut_slice().fill(0xAB);
        // Four buffers circulate: each callback hands its buffer back for the next Write.
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            tx.send(Some(set.allocate_buffer(65536, 0).unwrap()))
                .unwrap();
        }
        let mut off = 0;
        while off < plan.total {
            let mut b = rx.recv_timeout(WAIT).unwrap().expect("a successful Write");
            pattern::fill(plan.seed, 0, off, b.as_mut_slice());
            let tx = tx.clone();
            dev.send_command(ServerCommand::write(b, 65536), move |c| {
                let ok = c.is_success();
                let _ = tx.send(c.buffer.filter(|_| ok));
            })
            .unwrap();
            off += 65536;
        }
        drop(rx);
        dev.close_device().unwrap();
        agent.join().unwrap().unwrap();
        (dev, kept)
    });
    let area = mapping_of(kept.as_ptr()).unwrap();
    assert!(area.2, "before Close the buffer is in a shared mapping");
    set.close().unwrap();
    assert_eq!(
        held(),
        before,
        "Close released every memfd, mapping, eventfd, socket and thread"
    );
    // Kept past Close: the handles answer codes; the buffer is dead, unshared memory.
    let codes = Arc::new(Mutex::new(Vec::new()));
    let c2 = codes.clone();
    let e = dev
        .send_command(ServerCommand::new(CommandCode::FLUSH), move |c| {
            c2.lock().unwrap().push(c.completion_code)
        })
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Protocol, "{e}");
    assert_eq!(*codes.lock().unwrap(), [completion::ERROR_INVALID_HANDLE]);
    assert_eq!(dev.close_device().unwrap_err().code(), ErrorCode::Protocol);
    assert!(
        kept.as_slice().iter().all(|&b| b == 0),
        "the kept buffer reads the dead private page, not the shared one"
    );
    kept.as_mut_slice()[0] = 1;
    let now = mapping_of(kept.as_ptr()).unwrap();
    assert_eq!((now.0, now.1), (area.0, area.1), "same addresses");
    assert!(!now.2, "no longer a memfd mapping");
    assert_eq!(
        set.free_buffer(kept).unwrap_err().code(),
        ErrorCode::Protocol
    );
    assert_eq!(set.close().unwrap_err().code(), ErrorCode::Protocol);
    drop(dev);
    drop(set);
    assert!(
        !range_mapped((area.0, area.1)),
        "the address range goes with the last handle"
    );
    assert_eq!(peer.wait(WAIT), 0, "{:?}", peer.seen);
    assert!(
        peer.seen
            .iter()
            .any(|l| l.contains("mismatches=0 errors=0")),
        "{:?}",
        peer.seen
    );
}

/// Sends `n` Writes of 64 KiB (pattern data) that the paused client never completes;
/// returns once the client said it paused.
fn send_until_the_client_pauses(
    set: &ServerSet,
    dev: &vdi::ServerDevice,
    plan: &Plan,
    peer: &mut Peer,
    calls: &Arc<Mutex<Vec<u32>>>,
) {
    // Every buffer filled first, then the eight sent back to back: the client completes
    // what it holds when it finds nothing more to fetch, so a send that came late (a
    // fill between two sends, on a loaded machine) would let it complete some before it
    // pauses.
    let bufs: Vec<_> = (0..8u64)
        .map(|k| {
            let mut b = set.allocate_buffer(65536, 0).unwrap();
            pattern::fill(plan.seed, 0, k * 65536, b.as_mut_slice());
            b
        })
        .collect();
    for b in bufs {
        let c = calls.clone();
        dev.send_command(ServerCommand::write(b, 65536), move |done| {
            c.lock().unwrap().push(done.completion_code)
        })
        .unwrap();
    }
    peer.expect_line("PAUSED midstream", WAIT);
}

/// A completion agent running when `Close` came returns `VD_E_ABORT` after calling every
/// outstanding command back; one whose thread only got to start after `Close` (a loaded
/// machine) is refused with `VD_E_PROTOCOL`, and `Close` did the calling back itself.
fn agent_ended_by_the_close(r: vdi::Result<()>) {
    let code = r.unwrap_err().code();
    assert!(
        matches!(code, ErrorCode::Abort | ErrorCode::Protocol),
        "the agent returned {code:?}"
    );
}

fn paused_client(name: &str) -> (Plan, Peer) {
    let mut plan = Plan::new(name, 1, 8 * 65536);
    plan.transfer = 64 << 10;
    plan.depth = 4;
    plan.pause = Some("midstream".into());
    let mut peer = Peer::spawn(PEER, &args("client", &plan), None);
    peer.expect_line("CREATED", WAIT);
    (plan, peer)
}

#[test]
fn server_close_with_devices_open_aborts_calls_back_and_releases_all_at_once() {
    let _one = serial();
    let name = unique_name("cro");
    let (plan, mut peer) = paused_client(&name);
    let before = held();
    let set = ServerSet::open(&name).unwrap();
    configure_backup(&set, 9);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (dev, kept, close) = std::thread::scope(|s| {
        let agent = s.spawn(|| set.execute_completion_agent());
        let dev = set.open_device(&name).unwrap();
        let kept = set.allocate_buffer(65536, 0).unwrap();
        send_until_the_client_pauses(&set, &dev, &plan, &mut peer, &calls);
        // Asserted after the close: a failed assertion inside the scope would wait for
        // the agent forever.
        let outstanding = set.outstanding();
        let close = set.close();
        let agent = agent.join().unwrap();
        (dev, kept, (outstanding, close, agent))
    });
    let (outstanding, close, agent) = close;
    assert_eq!(outstanding, 8);
    agent_ended_by_the_close(agent);
    assert_eq!(close.unwrap_err().code(), ErrorCode::Protocol);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![completion::ERROR_OPERATION_ABORTED; 8],
        "every outstanding command called back once, with ERROR_OPERATION_ABORTED"
    );
    assert_eq!(
        held(),
        before,
        "released at once although devices were open"
    );
    assert!(kept.as_slice().iter().all(|&b| b == 0));
    assert_eq!(dev.close_device().unwrap_err().code(), ErrorCode::Protocol);
    peer.kill();
}

#[test]
fn object_server_close_with_commands_outstanding_releases_all_while_the_object_lives() {
    let _one = serial();
    let name = unique_name("cob");
    let (plan, mut peer) = paused_client(&name);
    let before = held();
    let set = Arc::new(ServerVirtualDeviceSet::new());
    set.open(None, &name).unwrap();
    set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 10_000)
        .unwrap();
    set.request_buffers(65536, 0, 8).unwrap();
    set.end_configuration().unwrap();
    let s2 = set.clone();
    let agent = std::thread::spawn(move || s2.execute_completion_agent());
    let dev = set.open_device(&name).unwrap();
    let aborted = Arc::new(AtomicU32::new(0));
    let mut first = std::ptr::null_mut();
    // Filled first, sent back to back (see `send_until_the_client_pauses`).
    let bufs: Vec<*mut u8> = (0..8u64)
        .map(|k| {
            let p = set.allocate_buffer(65536, 0).unwrap();
            // SAFETY: `p` is a 65536-byte buffer this test owns until it is sent.
            let b = unsafe { std::slice::from_raw_parts_mut(p, 65536) };
            pattern::fill(plan.seed, 0, k * 65536, b);
            p
        })
        .collect();
    for (k, p) in bufs.into_iter().enumerate() {
        if k == 0 {
            first = p;
        }
        let a = aborted.clone();
        dev.send_command(CommandCode::WRITE.value(), 65536, 0, p, move |c| {
            if c.completion_code == completion::ERROR_OPERATION_ABORTED {
                a.fetch_add(1, Ordering::Relaxed);
            }
        })
        .unwrap();
    }
    peer.expect_line("PAUSED midstream", WAIT);
    let area = mapping_of(first).unwrap();
    assert!(area.2);
    assert_eq!(set.close().unwrap_err().code(), ErrorCode::Protocol);
    agent_ended_by_the_close(agent.join().unwrap());
    assert_eq!(aborted.load(Ordering::Relaxed), 8);
    assert_eq!(
        held(),
        before,
        "released at once, with the set and device objects alive"
    );
    assert_eq!(
        dev.close_device().unwrap_err().code(),
        ErrorCode::Protocol,
        "a device object kept past Close"
    );
    assert_eq!(
        set.free_buffer(first, 65536).unwrap_err().code(),
        ErrorCode::Protocol
    );
    assert!(!set.is_shared_buffer(first));
    drop(dev);
    assert!(
        !range_mapped((area.0, area.1)),
        "the buffers the callbacks gave back are not kept after Close: the range is gone \
         while the set object still exists"
    );
    drop(set);
    peer.kill();
}

#[test]
fn client_close_with_a_device_open_releases_all_with_the_device_and_a_command_held() {
    let _one = serial();
    let name = unique_name("ccl");
    let mut plan = Plan::new(&name, 1, 8 << 20);
    plan.transfer = 64 << 10;
    let before = held();
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let dev = set.open_device(&name).unwrap();
    let cmd = dev.get_command(Timeout::from_millis(30_000)).unwrap();
    assert_eq!(cmd.code(), CommandCode::WRITE);
    let data = cmd.buffer().unwrap();
    assert!(pattern::mismatch(plan.seed, 0, 0, data).is_none());
    let area = mapping_of(data.as_ptr()).unwrap();
    assert!(area.2);
    assert_eq!(set.close().unwrap_err().code(), ErrorCode::Open);
    assert_eq!(
        held(),
        before,
        "released at once although a device was open"
    );
    assert!(
        cmd.buffer().unwrap().iter().all(|&b| b == 0),
        "the held command's buffer is dead, unshared memory"
    );
    assert_eq!(cmd.complete_ok().unwrap_err().code(), ErrorCode::Protocol);
    assert_eq!(
        dev.get_command(Timeout::POLL).unwrap_err().code(),
        ErrorCode::Protocol
    );
    drop(dev);
    drop(set);
    assert!(!range_mapped((area.0, area.1)));
    assert_eq!(peer.wait(WAIT), 2, "the engine sees the abort");
    assert!(
        peer.seen.iter().any(|l| l.starts_with("ERROR VD_E_ABORT")),
        "{:?}",
        peer.seen
    );
}

#[test]
fn client_close_after_the_normal_end_releases_all_with_the_device_held() {
    let _one = serial();
    let name = unique_name("ccn");
    let mut plan = Plan::new(&name, 1, 4 << 20);
    plan.transfer = 64 << 10;
    let before = held();
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    let r = run_client(&set, &plan, &[0], &|_| {}).unwrap();
    assert_eq!((r.mismatches, r.errors, r.bytes[0]), (0, 0, plan.total));
    // A device handle opened for the normal end is kept past Close (run_client dropped
    // its own; open_device on the ended device is refused, so hold the set's clone).
    let clone = set.clone();
    set.close().unwrap();
    assert_eq!(held(), before);
    assert_eq!(
        clone.open_device(&name).unwrap_err().code(),
        ErrorCode::Protocol
    );
    assert_eq!(peer.wait(WAIT), 0, "{:?}", peer.seen);
}

#[test]
fn secondary_close_releases_all_with_its_device_held() {
    let _one = serial();
    let name = unique_name("csc");
    let mut plan = Plan::new(&name, 2, 4 << 20);
    plan.transfer = 64 << 10;
    let mut pargs = args("client", &plan);
    pargs.push("which=0".into());
    let mut primary = Peer::spawn(PEER, &pargs, None);
    primary.expect_line("CREATED", WAIT);
    let mut server = Peer::spawn(PEER, &args("server", &plan), None);
    primary.expect_line("CONFIGURED", WAIT);
    let before = held();
    let set = ClientSet::open_in_secondary(&name).unwrap();
    let dev = set.open_device(&device_name(&name, 1)).unwrap();
    let mut off = 0;
    loop {
        match dev.get_command(Timeout::from_millis(30_000)) {
            Ok(cmd) => {
                if let Some(b) = cmd.buffer() {
                    assert!(pattern::mismatch(plan.seed, 1, off, b).is_none());
                    off += b.len() as u64;
                }
                cmd.complete_ok().unwrap();
            }
            Err(e) if e.code() == ErrorCode::Close => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(off, plan.device_bytes(1));
    set.close().unwrap();
    assert_eq!(held(), before, "a secondary's Close releases all too");
    assert_eq!(
        dev.get_command(Timeout::POLL).unwrap_err().code(),
        ErrorCode::Protocol
    );
    primary.expect_line("SERVED", WAIT);
    primary.send_line("go");
    assert_eq!(primary.wait(WAIT), 0, "{:?}", primary.seen);
    assert_eq!(server.wait(WAIT), 0, "{:?}", server.seen);
}

/// `serverTimeOut` = 500 ms; the engine pauses 0, 0.6 and 2 intervals before each
/// command and the client holds each for 600 ms (more than what an idle-counting clock
/// leaves after a 0.6-interval gap, less than two intervals): no command is aborted.
#[test]
fn server_timeout_counts_only_pending_time_whatever_the_idle_gaps() {
    let _one = serial();
    let name = unique_name("gap");
    let plan = Plan::new(&name, 1, 0);
    let mut cfg = client_config(&plan);
    cfg.server_time_out = 500;
    let set = ClientSet::create(&name, &cfg).unwrap();
    let mut peer = Peer::spawn(PEER, &["gap-server".into(), format!("set={name}")], None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let dev = set.open_device(&name).unwrap();
    peer.expect_line("READY", WAIT);
    for (k, gap_ms) in [0u64, 300, 1000].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(gap_ms));
        peer.send_line("write");
        let cmd = dev.get_command(Timeout::from_millis(30_000)).unwrap();
        assert!(pattern::mismatch(plan.seed, 0, k as u64 * 65536, cmd.buffer().unwrap()).is_none());
        std::thread::sleep(Duration::from_millis(600));
        cmd.complete_ok()
            .unwrap_or_else(|e| panic!("after an idle gap of {gap_ms} ms: {e}"));
        assert_eq!(
            peer.expect_line("CALLBACK", WAIT),
            "CALLBACK 0",
            "after an idle gap of {gap_ms} ms"
        );
    }
    peer.send_line("close");
    assert_eq!(
        dev.get_command(Timeout::from_millis(30_000))
            .unwrap_err()
            .code(),
        ErrorCode::Close
    );
    assert_eq!(set.abort_cause(), None);
    set.close().unwrap();
    assert_eq!(peer.wait(WAIT), 0, "{:?}", peer.seen);
}

/// The C shape's destructor without `Close` (the SDK's `~ClientVirtualDeviceSet`): the set
/// is closed and aborted, and its device object kept alive pins nothing.
#[test]
fn object_client_dropped_without_close_releases_all_with_its_device_object_alive() {
    let _one = serial();
    let name = unique_name("cod");
    let mut plan = Plan::new(&name, 1, 8 << 20);
    plan.transfer = 64 << 10;
    let before = held();
    let set = ClientVirtualDeviceSet::new();
    set.create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &args("server", &plan), None);
    set.get_configuration(Timeout::from_millis(30_000)).unwrap();
    let dev = set.open_device(&name).unwrap();
    let cmd = dev.get_command(Timeout::from_millis(30_000)).unwrap();
    assert_eq!(cmd.command_code, CommandCode::WRITE.value());
    drop(set);
    assert_eq!(held(), before, "the destructor released everything");
    assert_eq!(
        dev.complete_command(cmd.handle, completion::ERROR_SUCCESS, cmd.size, 0)
            .unwrap_err()
            .code(),
        ErrorCode::Protocol
    );
    // SAFETY: the command's buffer address stays mapped (dead, private memory) while its
    // device object lives.
    let first = unsafe { std::ptr::read_volatile(cmd.buffer) };
    assert_eq!(first, 0);
    assert_eq!(peer.wait(WAIT), 2, "the engine sees the abort");
}
