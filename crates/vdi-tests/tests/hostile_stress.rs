//! Multi-process hostile-peer stress: one process (`vdi-hostile`) attaches the normal way,
//! as the server, as the primary client or as a secondary client, runs the reference
//! engine or backup application, and meanwhile scribbles random garbage into the shared
//! control state (set header, device blocks, ring positions and entries, command slots;
//! never the buffer areas). The honest peers are `vdi-peer` in the other roles: the
//! engine and the primary client against a hostile server or primary; with a hostile
//! secondary (serving some devices of two or three), an honest engine and an honest
//! primary that serves the other devices and closes the set once the secondary is gone.
//! There the client sets `serverTimeOut` ([`SECONDARY_SERVER_TIMEOUT_MS`]): the secondary
//! can write every device's rings, so it can erase a command sent to the primary and then
//! leave politely, and only a time-out ends the engine's and the primary's wait for it.
//!
//! For every run: every process exits on its own, with success or an error report
//! (never a panic's exit code 101, never a signal such as SIGSEGV or SIGBUS), the honest
//! ones within [`RUN_LIMIT`] (the hostile one exits by its own deadline, without closing
//! anything, if it gets stuck); an honest success moved exactly the plan's bytes for its
//! devices and verified every one of them (the reference roles check each byte against
//! the pattern, so garbage that redirected a command to another buffer shows up as a
//! mismatch, never as a silent success); and nothing is left behind (no set socket, no
//! `/dev/shm` entry). The engine's report covers every device, the hostile secondary's
//! too: its success means every command came back whole (and, in a restore, with the
//! right bytes), whatever the garbage did to the secondary's own devices.
//!
//! One exception is counted apart, not failed: an honest *client* (the primary) that
//! reports success for a shorter stream than planned while the engine does not report
//! success. The garbage set `SERVER_CLOSED`, which is an early `CloseDevice` that no
//! client can tell from a real one (every byte it got was still checked;
//! docs/shm-layout.md note N22). A short success of an honest *server* is a failure.
//!
//! Garbage is confined to the control state on purpose: bytes written into a data buffer
//! are indistinguishable from data (zero copy), so they could not be told apart from a
//! silent wrong result of the library.
//!
//! Runs: `VDI_HOSTILE_RUNS` (default 40; a third of the runs have a hostile secondary, the
//! rest a hostile server or primary, half each), 4 at a time; `VDI_HOSTILE_SEED` picks
//! the first seed (default fixed; `random` for a fresh one); `VDI_HOSTILE_ROLE=server`,
//! `client` or `secondary` runs only the seeds of that scenario. Long mode:
//! `VDI_HOSTILE_RUNS=500 cargo test -p vdi-tests --test hostile_stress -- --nocapture`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vdi_tests::{Peer, Plan, dev_shm_entries, socket_exists, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
const HOSTILE: &str = env!("CARGO_BIN_EXE_vdi-hostile");
/// The honest processes must have exited this long after the run started.
const RUN_LIMIT: Duration = Duration::from_secs(15);
/// The hostile process gives up (exits without closing) after this long.
const HOSTILE_DEADLINE_MS: u64 = 6000;
const PARALLEL: usize = 4;
/// The client's `serverTimeOut` with a hostile secondary (see `one_run`): the engine's set
/// aborts once nothing has completed for twice this long with commands outstanding.
const SECONDARY_SERVER_TIMEOUT_MS: u32 = 2000;

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

/// Which process is hostile.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hostile {
    Server,
    Client,
    Secondary,
}

/// How an honest process ended.
enum Honest {
    /// Exit 0 with exactly the planned bytes.
    Success,
    /// Exit 0 with fewer bytes than planned (a client only: see the module doc).
    Short(u64),
    /// Anything else that is not a failure: mismatches, failed commands, an error report.
    Other(String),
}

/// Waits for one honest process and judges its report: `want` bytes for its devices;
/// `client` says it is a client (which cannot tell an early close from a real one).
fn judge(
    p: &mut Peer,
    role: &str,
    want: u64,
    client: bool,
    until: Instant,
    what: &str,
    scribbled: &str,
) -> Result<Honest, String> {
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.wait(left)))
        .map_err(|_| {
            format!(
                "HANG: the honest {role} did not exit within {RUN_LIMIT:?} ({what}); it printed {:?}",
                p.seen
            )
        })?;
    let seen = |p: &Peer, prefix: &str| p.seen.iter().find(|l| l.starts_with(prefix)).cloned();
    Ok(match code {
        0 => {
            // The exit can overtake the last line on its way through the reader thread.
            let done = seen(p, "DONE")
                .or_else(|| p.try_line("DONE", Duration::from_secs(5)))
                .ok_or_else(|| {
                    format!(
                        "the honest {role} exited 0 without DONE ({what}): {:?}",
                        p.seen
                    )
                })?;
            let bytes = field(&done, "bytes").unwrap_or(0);
            if bytes < want && client {
                Honest::Short(bytes)
            } else if bytes != want {
                return Err(format!(
                    "SILENT WRONG RESULT: the honest {role} reported success with {bytes} of {want} bytes ({what}; {scribbled}); it printed {:?}",
                    p.seen
                ));
            } else {
                Honest::Success
            }
        }
        1 => Honest::Other("reported mismatches or failed commands".to_owned()),
        2 => {
            let e = seen(p, "ERROR")
                .or_else(|| p.try_line("ERROR", Duration::from_secs(5)))
                .unwrap_or_default();
            // The reference roles turn a panicked device or agent thread into an error
            // report: that is a panic all the same.
            if e.contains("panicked") {
                return Err(format!("PANIC in the honest {role} ({what}): {e}"));
            }
            let code = e.split_whitespace().nth(1).unwrap_or("?");
            Honest::Other(if code == "VD_E_UNEXPECTED" {
                // A system call failed (say, a send to a peer that just died): keep the
                // reason in the summary.
                format!(
                    "error {}",
                    e.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
                )
            } else {
                format!("error {code}")
            })
        }
        c => {
            return Err(format!(
                "the honest {role} exited with {c} (101 = panic, -1 = signal): {what}; {scribbled}; it printed {:?}",
                p.seen
            ));
        }
    })
}

/// The first draws of a run's two random streams: which process is hostile. A separate
/// stream picks the secondary scenario (a third of the runs), so that the other runs of a
/// seed are the same as before it existed.
fn scenario(r: &mut fastrand::Rng, rs: &mut fastrand::Rng) -> Hostile {
    match (r.bool(), rs.u8(..3)) {
        (_, 0) => Hostile::Secondary,
        (true, _) => Hostile::Server,
        (false, _) => Hostile::Client,
    }
}

fn streams(seed: u64) -> (fastrand::Rng, fastrand::Rng) {
    (
        fastrand::Rng::with_seed(seed),
        fastrand::Rng::with_seed(seed ^ 0x5EC0_0D42),
    )
}

fn one_run(seed: u64) -> Result<(String, Duration), String> {
    let (mut r, mut rs) = streams(seed);
    let hostile = scenario(&mut r, &mut rs);
    let name = unique_name("hostile");
    let mut plan = Plan::new(&name, r.u32(1..=2), u64::from(r.u32(4..=64)) << 20);
    plan.transfer = 64 << 10;
    plan.depth = r.u32(1..=4);
    plan.restore = r.bool();
    plan.complete = r.bool();
    plan.reverse = r.bool();
    plan.prefix = if r.u8(..4) == 0 { 512 } else { 0 };
    plan.seed = r.u64(..);
    // With a secondary: two or three devices; the secondary serves some of them (never
    // device 0), the primary the others.
    let (primary_devs, secondary_devs): (Vec<u32>, Vec<u32>) = if hostile == Hostile::Secondary {
        // The secondary maps the whole queue segment, every device's rings included: its
        // garbage can rewind another device's submission tail and so erase a command the
        // engine sent the primary, then finish its own devices and leave politely. No
        // process dies, and the engine and the primary wait for each other (the primary
        // up to its own 30 s GetCommand time-out). That is a peer that never answers, and
        // `serverTimeOut` is what bounds it (docs/shm-layout.md §8): the client sets it
        // here, as a real one that admits secondaries it does not trust must.
        plan.server_timeout = SECONDARY_SERVER_TIMEOUT_MS;
        plan.devices = rs.u32(2..=3);
        let mask = if plan.devices == 2 { 1 } else { rs.u32(1..=3) };
        (0..plan.devices).partition(|&d| d == 0 || mask & (1 << (d - 1)) == 0)
    } else {
        ((0..plan.devices).collect(), Vec::new())
    };
    let what = format!(
        "seed {seed}: hostile {}, {}, {} device(s){}, {} bytes, depth {}",
        match hostile {
            Hostile::Server => "server",
            Hostile::Client => "client",
            Hostile::Secondary => "secondary",
        },
        if plan.restore { "restore" } else { "backup" },
        plan.devices,
        if secondary_devs.is_empty() {
            String::new()
        } else {
            format!(" (secondary serves {secondary_devs:?})")
        },
        plan.total,
        plan.depth
    );
    let mut hostile_args = vec![
        format!("hseed={seed}"),
        format!("hdeadline={HOSTILE_DEADLINE_MS}"),
        // Every write as a `SCRIBBLE` line, for the report of a failed run.
        "hlog=1".to_owned(),
    ];
    let start = Instant::now();
    // The creator first; the others attach once it has said CREATED (a secondary once
    // the primary has said CONFIGURED).
    let (mut engine, mut primary, mut hostile_peer) = match hostile {
        Hostile::Server => {
            let mut honest = Peer::spawn(PEER, &args("client", &plan, &[]), None);
            honest.expect_line("CREATED", Duration::from_secs(10));
            let hostile = Peer::spawn(HOSTILE, &args("server", &plan, &hostile_args), None);
            (None, Some(honest), hostile)
        }
        Hostile::Client => {
            let mut hostile = Peer::spawn(HOSTILE, &args("client", &plan, &hostile_args), None);
            hostile.expect_line("CREATED", Duration::from_secs(10));
            let honest = Peer::spawn(PEER, &args("server", &plan, &[]), None);
            (Some(honest), None, hostile)
        }
        Hostile::Secondary => {
            let mut primary = Peer::spawn(
                PEER,
                &args(
                    "client",
                    &plan,
                    &[vdi_tests::device_list_arg(&primary_devs)],
                ),
                None,
            );
            primary.expect_line("CREATED", Duration::from_secs(10));
            let engine = Peer::spawn(PEER, &args("server", &plan, &[]), None);
            if primary
                .try_line("CONFIGURED", Duration::from_secs(10))
                .is_none()
            {
                return Err(format!(
                    "the honest primary did not get its configuration ({what}); it printed {:?}",
                    primary.seen
                ));
            }
            hostile_args.push(vdi_tests::device_list_arg(&secondary_devs));
            let hostile = Peer::spawn(HOSTILE, &args("secondary", &plan, &hostile_args), None);
            (Some(engine), Some(primary), hostile)
        }
    };
    let until = start + RUN_LIMIT;
    let hostile_wait = |h: &mut Peer| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.wait(
                (until + Duration::from_secs(5))
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            )
        }))
        .map_err(|_| {
            format!(
                "HANG: the hostile peer did not exit ({what}); it printed {:?}",
                h.seen
            )
        })
    };
    let scribbled = |h: &mut Peer, code: i32| {
        h.seen
            .iter()
            .find(|l| l.starts_with("SCRIBBLED"))
            .cloned()
            .or_else(|| {
                (code != 3)
                    .then(|| h.try_line("SCRIBBLED", Duration::from_secs(2)))
                    .flatten()
            })
            .unwrap_or_else(|| "SCRIBBLED ?".into())
    };
    // A hostile secondary first: the primary closes the set only once it is gone.
    let mut hostile_code = None;
    let mut early = String::new();
    if hostile == Hostile::Secondary {
        let code = hostile_wait(&mut hostile_peer)?;
        hostile_code = Some(code);
        early = scribbled(&mut hostile_peer, code);
        if let Some(p) = primary.as_mut() {
            // A primary that has already exited no longer reads: that is its own report.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.send_line("go")));
        }
    }
    let primary_want: u64 = primary_devs.iter().map(|&d| plan.device_bytes(d)).sum();
    let primary_end = primary.as_mut().map(|p| {
        judge(
            p,
            "primary client",
            primary_want,
            true,
            until,
            &what,
            &early,
        )
    });
    let engine_end = engine
        .as_mut()
        .map(|p| judge(p, "engine", plan.total, false, until, &what, &early));
    let honest_time = start.elapsed();
    let hostile_code = match hostile_code {
        Some(c) => c,
        None => hostile_wait(&mut hostile_peer)?,
    };
    if std::env::var_os("VDI_HOSTILE_ONE").is_some() {
        for (who, p) in [
            ("engine", engine.as_ref()),
            ("primary", primary.as_ref()),
            ("hostile", Some(&hostile_peer)),
        ] {
            if let Some(p) = p {
                println!("{who} printed {:#?}", p.seen);
            }
        }
    }
    // A failure of one honest process: with what every process printed.
    let context = |e: String| {
        let seen = |p: Option<&Peer>| p.map(|p| format!("{:?}", p.seen)).unwrap_or_default();
        format!(
            "{e}\n    engine printed {}\n    primary printed {}\n    hostile printed {:?}",
            seen(engine.as_ref()),
            seen(primary.as_ref()),
            hostile_peer.seen
        )
    };
    let primary_end = primary_end.transpose().map_err(context)?;
    let engine_end = engine_end.transpose().map_err(context)?;
    let scribbled = scribbled(&mut hostile_peer, hostile_code);
    GARBAGE.fetch_add(field(&scribbled, "writes").unwrap_or(0), Ordering::Relaxed);
    if let Some(e) = hostile_peer
        .seen
        .iter()
        .find(|l| l.starts_with("ERROR") && l.contains("panicked"))
    {
        return Err(format!("PANIC in the hostile peer's library ({what}): {e}"));
    }
    if !matches!(hostile_code, 0..=3) {
        return Err(format!(
            "the hostile peer (which runs the library too) exited with {hostile_code} (101 = panic, -1 = signal): {what}; it printed {:?}",
            hostile_peer.seen
        ));
    }
    let describe = |h: &Honest| match h {
        Honest::Success => "success".to_owned(),
        Honest::Short(_) => "success, short stream".to_owned(),
        Honest::Other(s) => s.clone(),
    };
    let outcome = match (&engine_end, &primary_end) {
        // A hostile client: the engine alone is honest.
        // (`judge` never calls a server's success short.)
        (Some(e), None) => describe(e),
        // A hostile server: the garbage may close a device early (N22).
        (None, Some(Honest::Short(_))) => {
            "success, short stream (the hostile server's garbage closed a device early)".to_owned()
        }
        (None, Some(p)) => describe(p),
        (Some(e), Some(p)) => {
            if let (Honest::Success, Honest::Short(b)) = (e, p) {
                // The engine got every command back whole, yet the primary saw fewer
                // bytes for its devices than the engine sent.
                return Err(format!(
                    "SILENT WRONG RESULT: the engine succeeded but the primary reported success with {b} of {primary_want} bytes ({what}; {scribbled}); engine {:?}, primary {:?}",
                    engine.as_ref().map(|p| &p.seen),
                    primary.as_ref().map(|p| &p.seen)
                ));
            }
            let p = match p {
                Honest::Short(_) => {
                    "success, short stream (garbage closed a device early)".to_owned()
                }
                p => describe(p),
            };
            format!("engine {}, primary {p}", describe(e))
        }
        (None, None) => return Err(format!("no honest process ({what})")),
    };
    // Every process is gone: the set's socket must be too.
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
            hostile_peer.seen
        );
    }
    let hostile_end = match hostile_code {
        3 => "hostile hit its deadline",
        0 => "hostile done",
        1 => "hostile reported errors",
        _ => "hostile error",
    };
    let role = match hostile {
        Hostile::Server => "server",
        Hostile::Client => "client",
        Hostile::Secondary => "secondary",
    };
    Ok((format!("[{role}] {outcome} / {hostile_end}"), honest_time))
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
    let only = match std::env::var("VDI_HOSTILE_ROLE").ok().as_deref() {
        None => None,
        Some("server") => Some(Hostile::Server),
        Some("client") => Some(Hostile::Client),
        Some("secondary") => Some(Hostile::Secondary),
        Some(v) => panic!("VDI_HOSTILE_ROLE={v}: server, client or secondary"),
    };
    println!(
        "hostile stress: {runs} seeds{}, {PARALLEL} at a time, VDI_HOSTILE_SEED={base}",
        only.map(|h| format!(" (only the hostile {h:?} runs)"))
            .unwrap_or_default()
    );
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
                    if let Some(only) = only {
                        let (mut r, mut rs) = streams(seed);
                        if scenario(&mut r, &mut rs) != only {
                            continue;
                        }
                    }
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
    let ran =
        outcomes.lock().unwrap().values().sum::<u64>() + failures.lock().unwrap().len() as u64;
    println!(
        "hostile stress: {ran} runs in {:.1?}; {} garbage writes reported (runs cut by the deadline not counted); slowest honest exit {:.1?}",
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
        "{} of {ran} runs failed:\n{}",
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
