//! Multi-process hostile-peer stress: one process (`vdi-hostile`) attaches the normal way,
//! as the server or as the primary client, runs the reference engine or backup
//! application, and meanwhile scribbles random garbage into the shared control state
//! (set header, device blocks, ring positions and entries, command slots; never the
//! buffer areas). The honest peer is `vdi-peer` in the other role.
//!
//! For every run: both processes exit on their own, with success or an error report
//! (never a panic's exit code 101, never a signal such as SIGSEGV or SIGBUS), the honest one
//! within [`RUN_LIMIT`] (the hostile one exits by its own deadline, without closing
//! anything, if it gets stuck); an honest success moved exactly the plan's bytes and
//! verified every one of them (the reference roles check each byte against the pattern,
//! so garbage that redirected a command to another buffer shows up as a mismatch, never
//! as a silent success); and nothing is left behind (no set socket, no `/dev/shm` entry).
//! One exception is counted apart, not failed: an honest *client* that reports success
//! for a shorter stream than planned. The hostile server's garbage set `SERVER_CLOSED`,
//! which is an early `CloseDevice` that no client can tell from a real one (every byte
//! it got was still checked; docs/shm-layout.md note N22). A short success of an honest
//! *server* is a failure.
//!
//! Garbage is confined to the control state on purpose: bytes written into a data buffer
//! are indistinguishable from data (zero copy), so they could not be told apart from a
//! silent wrong result of the library.
//!
//! Runs: `VDI_HOSTILE_RUNS` (default 40), 4 at a time; `VDI_HOSTILE_SEED` picks the first
//! seed (default fixed; `random` for a fresh one). Long mode:
//! `VDI_HOSTILE_RUNS=500 cargo test -p vdi-tests --test hostile_stress -- --nocapture`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vdi_tests::{Peer, Plan, dev_shm_entries, socket_exists, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
const HOSTILE: &str = env!("CARGO_BIN_EXE_vdi-hostile");
/// The honest process must have exited this long after the run started.
const RUN_LIMIT: Duration = Duration::from_secs(15);
/// The hostile process gives up (exits without closing) after this long.
const HOSTILE_DEADLINE_MS: u64 = 6000;
const PARALLEL: usize = 4;

fn args(mode: &str, plan: &Plan, extra: &[String]) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v.extend_from_slice(extra);
    v
}

/// The `key=` value of a `DONE ...` line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// What one run came to (for the summary), or why it failed.
static GARBAGE: AtomicU64 = AtomicU64::new(0);

fn one_run(seed: u64) -> Result<(String, Duration), String> {
    let mut r = fastrand::Rng::with_seed(seed);
    let hostile_server = r.bool();
    let name = unique_name("hostile");
    let mut plan = Plan::new(&name, r.u32(1..=2), u64::from(r.u32(4..=64)) << 20);
    plan.transfer = 64 << 10;
    plan.depth = r.u32(1..=4);
    plan.restore = r.bool();
    plan.complete = r.bool();
    plan.reverse = r.bool();
    plan.prefix = if r.u8(..4) == 0 { 512 } else { 0 };
    plan.seed = r.u64(..);
    let what = format!(
        "seed {seed}: hostile {}, {}, {} device(s), {} bytes, depth {}",
        if hostile_server { "server" } else { "client" },
        if plan.restore { "restore" } else { "backup" },
        plan.devices,
        plan.total,
        plan.depth
    );
    let hostile_args = [
        format!("hseed={seed}"),
        format!("hdeadline={HOSTILE_DEADLINE_MS}"),
        format!(
            "hlog={}",
            u8::from(std::env::var_os("VDI_HOSTILE_ONE").is_some())
        ),
    ];
    let start = Instant::now();
    // The creator first; the other side attaches once it has said CREATED.
    let (mut honest, mut hostile) = if hostile_server {
        let mut honest = Peer::spawn(PEER, &args("client", &plan, &[]), None);
        honest.expect_line("CREATED", Duration::from_secs(10));
        let hostile = Peer::spawn(HOSTILE, &args("server", &plan, &hostile_args), None);
        (honest, hostile)
    } else {
        let mut hostile = Peer::spawn(HOSTILE, &args("client", &plan, &hostile_args), None);
        hostile.expect_line("CREATED", Duration::from_secs(10));
        let honest = Peer::spawn(PEER, &args("server", &plan, &[]), None);
        (honest, hostile)
    };
    let left = |d: Duration| {
        d.saturating_sub(start.elapsed())
            .max(Duration::from_millis(10))
    };
    let honest_code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        honest.wait(left(RUN_LIMIT))
    }))
    .map_err(|_| {
        format!(
            "HANG: the honest peer did not exit within {RUN_LIMIT:?} ({what}); it printed {:?}",
            honest.seen
        )
    })?;
    let honest_time = start.elapsed();
    let hostile_code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        hostile.wait(left(RUN_LIMIT + Duration::from_secs(5)))
    }))
    .map_err(|_| {
        format!(
            "HANG: the hostile peer did not exit ({what}); it printed {:?}",
            hostile.seen
        )
    })?;
    let seen = |p: &Peer, prefix: &str| p.seen.iter().find(|l| l.starts_with(prefix)).cloned();
    let scribbled = seen(&hostile, "SCRIBBLED")
        .or_else(|| {
            (hostile_code != 3)
                .then(|| hostile.try_line("SCRIBBLED", Duration::from_secs(2)))
                .flatten()
        })
        .unwrap_or_else(|| "SCRIBBLED ?".into());
    GARBAGE.fetch_add(field(&scribbled, "writes").unwrap_or(0), Ordering::Relaxed);
    if let Some(e) = seen(&hostile, "ERROR").filter(|e| e.contains("panicked")) {
        return Err(format!("PANIC in the hostile peer's library ({what}): {e}"));
    }
    if !matches!(hostile_code, 0..=3) {
        return Err(format!(
            "the hostile peer (which runs the library too) exited with {hostile_code} (101 = panic, -1 = signal): {what}; it printed {:?}",
            hostile.seen
        ));
    }
    let outcome = match honest_code {
        0 => {
            // The exit can overtake the last line on its way through the reader thread.
            let done = seen(&honest, "DONE")
                .or_else(|| honest.try_line("DONE", Duration::from_secs(5)))
                .ok_or_else(|| format!("exit 0 without DONE ({what}): {:?}", honest.seen))?;
            let bytes = field(&done, "bytes").unwrap_or(0);
            if bytes < plan.total && hostile_server {
                // The server decides where a device's stream ends: garbage that sets
                // SERVER_CLOSED in a device's state word is an early CloseDevice, which
                // no client can tell from a real one (only VDC_Complete, at the
                // application level, says a backup is whole: docs/shm-layout.md N22).
                // Every byte the client did get was checked (mismatches=0).
                return Ok((
                    "success, short stream (the hostile server's garbage closed a device early)"
                        .to_owned(),
                    honest_time,
                ));
            }
            if bytes != plan.total {
                return Err(format!(
                    "SILENT WRONG RESULT: the honest peer reported success with {bytes} of {} bytes ({what}; {scribbled}); it printed {:?}",
                    plan.total, honest.seen
                ));
            }
            "success".to_owned()
        }
        1 => "reported mismatches or failed commands".to_owned(),
        2 => {
            let e = seen(&honest, "ERROR")
                .or_else(|| honest.try_line("ERROR", Duration::from_secs(5)))
                .unwrap_or_default();
            // The reference roles turn a panicked device or agent thread into an error
            // report: that is a panic all the same.
            if e.contains("panicked") {
                return Err(format!("PANIC in the honest peer ({what}): {e}"));
            }
            let code = e.split_whitespace().nth(1).unwrap_or("?");
            if code == "VD_E_UNEXPECTED" {
                // A system call failed (say, a send to a peer that just died): keep the
                // reason in the summary.
                format!(
                    "error {}",
                    e.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
                )
            } else {
                format!("error {code}")
            }
        }
        c => {
            return Err(format!(
                "the honest peer exited with {c} (101 = panic, -1 = signal): {what}; {scribbled}; it printed {:?}",
                honest.seen
            ));
        }
    };
    // Both processes are gone: the set's socket must be too.
    let t = Instant::now();
    while socket_exists(&name) && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if socket_exists(&name) {
        return Err(format!("the socket of {name} was left behind ({what})"));
    }
    if hostile_code == 3 {
        // Not a failure of the honest side (it saw a dead peer), but worth a look: the
        // hostile process's own library calls did not finish in time.
        println!(
            "note: the hostile peer hit its deadline ({what}); it printed {:?}",
            hostile.seen
        );
    }
    let hostile_end = match hostile_code {
        3 => "hostile hit its deadline",
        0 => "hostile done",
        1 => "hostile reported errors",
        _ => "hostile error",
    };
    Ok((format!("{outcome} / {hostile_end}"), honest_time))
}

#[test]
fn hostile_peer_processes_scribbling_the_control_state() {
    let runs: u64 = std::env::var("VDI_HOSTILE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let base: u64 = match std::env::var("VDI_HOSTILE_SEED").ok().as_deref() {
        None => 0xBAD_5EED,
        Some("random") => fastrand::u64(..),
        Some(v) => v.parse().unwrap(),
    };
    println!("hostile stress: {runs} runs, {PARALLEL} at a time, VDI_HOSTILE_SEED={base}");
    let shm_before = dev_shm_entries();
    let t = Instant::now();
    let next = AtomicU64::new(0);
    let outcomes = Mutex::new(BTreeMap::<String, u64>::new());
    let failures = Mutex::new(Vec::<String>::new());
    let max_honest = Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs {
                        return;
                    }
                    let seed = base.wrapping_add(i);
                    match one_run(seed) {
                        Ok((kind, d)) => {
                            let mut m = max_honest.lock().unwrap();
                            *m = (*m).max(d);
                            drop(m);
                            *outcomes.lock().unwrap().entry(kind).or_default() += 1;
                        }
                        Err(e) => {
                            eprintln!("FAILED run, {e}");
                            failures.lock().unwrap().push(e);
                        }
                    }
                }
            });
        }
    });
    println!(
        "hostile stress: {runs} runs in {:.1?}; {} garbage writes reported (runs cut by the deadline not counted); slowest honest exit {:.1?}",
        t.elapsed(),
        GARBAGE.load(Ordering::Relaxed),
        max_honest.lock().unwrap()
    );
    for (k, n) in outcomes.lock().unwrap().iter() {
        println!("  {n:5}  {k}");
    }
    let failures = failures.into_inner().unwrap();
    let shm_after = dev_shm_entries();
    let new: Vec<&String> = shm_after
        .iter()
        .filter(|e| !shm_before.contains(e) && (e.contains("vdi") || e.contains("hostile")))
        .collect();
    assert!(new.is_empty(), "left in /dev/shm: {new:?}");
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Repeats one run with the scribbler's writes logged: `VDI_HOSTILE_ONE=seed`.
#[test]
fn hostile_one_seed_from_env() {
    let Some(seed) = std::env::var("VDI_HOSTILE_ONE")
        .ok()
        .and_then(|v| v.parse().ok())
    else {
        return;
    };
    println!("{:?}", one_run(seed));
}
