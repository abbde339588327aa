//! `vdi-hostile`: a peer that works normally and scribbles on the shared control state.
//!
//! ```text
//! vdi-hostile server hseed=N [hdeadline=MS] [hlog=1] (Plan keys: set=NAME devices=N ...)
//!     opens the set as its server, runs the reference engine (run_server)
//! vdi-hostile client hseed=N [hdeadline=MS] (Plan keys)
//!     creates the set, runs the reference backup application (run_client)
//! vdi-hostile secondary which=1,2 hseed=N [hdeadline=MS] (Plan keys)
//!     opens the set in secondary (after the primary's GetConfiguration), runs the
//!     reference backup application for the devices `which`
//! ```
//! Meanwhile a thread writes random garbage into the control and queue segments (never
//! into buffer areas), on a schedule drawn from `hseed` (see `vdi_tests::hostile`). It
//! prints `SEED n`, `SCHEDULE ...`, `CREATED`/`OPENED`, with `hlog=1` a `SCRIBBLE ...` line
//! for each write, then `DONE ...` (exit 0, or 1 with
//! mismatches or errors) or `ERROR code message` (exit 2), and `SCRIBBLED writes=W
//! queue=Q`. At `hdeadline` (default 6000 ms) it exits at once with code 3, without
//! closing anything (`DEADLINE`): the honest peer must then see a dead peer.

use std::time::Duration;

use vdi::protocol::layout::QueueGeometry;
use vdi::{ClientSet, ServerSet};
use vdi_tests::hostile::{Schedule, Scribbler};
use vdi_tests::{Plan, run_client, run_server};

use vdi_tests::say::{done, fail, line as say};

fn key(args: &[String], k: &str) -> Option<u64> {
    args.iter()
        .find_map(|a| a.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: vdi-hostile server|client|secondary hseed=N key=value...");
        std::process::exit(64);
    };
    let plan = match Plan::from_args(&args[1..]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vdi-hostile: {e}");
            std::process::exit(64);
        }
    };
    let seed = key(&args, "hseed").unwrap_or_else(|| fastrand::u64(..));
    let deadline = Duration::from_millis(key(&args, "hdeadline").unwrap_or(6000));
    let mut schedule = Schedule::from_seed(seed);
    schedule.log = key(&args, "hlog") == Some(1);
    say(&format!("SEED {seed}"));
    say(&format!("SCHEDULE {schedule:?}"));
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        say("DEADLINE");
        std::process::exit(3);
    });
    let geo = QueueGeometry::for_buffers(plan.devices, u64::from(plan.devices * plan.depth));
    let start = || Scribbler::start(schedule, plan.devices, Some(geo.capacity));
    let (code, tally) = match mode.as_str() {
        "server" => match ServerSet::open(&plan.set) {
            Ok(set) => {
                say("OPENED");
                let s = start();
                let r = run_server(&set, &plan, &|_| {});
                let tally = s.stop();
                (
                    match r {
                        Ok(r) => done(&r),
                        Err(e) => {
                            let _ = set.close();
                            fail(&e)
                        }
                    },
                    Some(tally),
                )
            }
            Err(e) => (fail(&e), None),
        },
        "client" => match ClientSet::create(&plan.set, &vdi_tests::client_config(&plan)) {
            Ok(set) => {
                say("CREATED");
                let s = start();
                let all: Vec<u32> = (0..plan.devices).collect();
                let r = run_client(&set, &plan, &all, &|_| {});
                let tally = s.stop();
                let c = set.close();
                (
                    match (r, c) {
                        (Ok(r), Ok(())) => done(&r),
                        (Err(e), _) | (_, Err(e)) => fail(&e),
                    },
                    Some(tally),
                )
            }
            Err(e) => (fail(&e), None),
        },
        "secondary" => match ClientSet::open_in_secondary(&plan.set) {
            Ok(set) => {
                say("OPENED");
                let s = start();
                let which = plan.which.clone().unwrap_or_default();
                let r = run_client(&set, &plan, &which, &|_| {});
                let tally = s.stop();
                let c = set.close();
                (
                    match (r, c) {
                        (Ok(r), Ok(())) => done(&r),
                        (Err(e), _) | (_, Err(e)) => fail(&e),
                    },
                    Some(tally),
                )
            }
            Err(e) => (fail(&e), None),
        },
        other => {
            eprintln!("vdi-hostile: unknown mode {other}");
            (64, None)
        }
    };
    if let Some(t) = tally {
        say(&format!(
            "SCRIBBLED writes={} queue={}",
            t.writes, t.queue_writes
        ));
    }
    std::process::exit(code);
}
