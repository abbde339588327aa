//! The rounds, and what is made of their samples: the table and the JSON object.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{Value, json};
use vdi_bench::mem::MemStatus;

use crate::bench::{self, Client, LatencySample, Sample, Settings, StreamSetup};
use crate::ctl::Hub;

/// Every sample of a run, in the order taken.
#[derive(Default)]
pub struct Results {
    pub vdi: Vec<Sample>,
    /// The same as `vdi`, served by the C client over libvdi.
    pub vdi_c: Vec<Sample>,
    pub vdi4: Vec<Sample>,
    pub pipe: Vec<Sample>,
    pub unix: Vec<Sample>,
    pub ring: Vec<Sample>,
    pub latency: Vec<LatencySample>,
    /// The same as `latency`, served by the C client.
    pub latency_c: Vec<LatencySample>,
    pub pipe_setup: StreamSetup,
    pub unix_setup: StreamSetup,
    pub vdi4_buffers: u32,
    /// `/proc/loadavg`'s one-minute figure before and after the run (other work on the
    /// machine shows here).
    pub load: (f64, f64),
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// A progress line on a terminal (nothing when stderr is a file or a pipe).
fn progress(msg: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprint!("\r{msg:<60}\r");
    }
}

/// Runs `rounds` rounds (after an unrecorded warm-up), each transport once per round.
pub fn run_all(s: &Settings) -> Result<Results> {
    let hub = Hub::new()?;
    let mut r = Results {
        vdi4_buffers: s.buffers.max(4),
        load: (loadavg(), 0.0),
        ..Results::default()
    };
    let warm = (s.total / 16).max(u64::from(s.transfer) * 2);
    let rounds = u32::from(s.warmup) + s.rounds;
    for round in 0..rounds {
        let record = round >= u32::from(s.warmup);
        let total = if record { s.total } else { warm };
        let tag = if record {
            format!("round {}/{}", round + 1 - u32::from(s.warmup), s.rounds)
        } else {
            "warm-up".to_owned()
        };
        // The Rust and the C client back to back, so the two see the same machine; which
        // goes first alternates from round to round, so neither always follows the same
        // transport.
        let c_first = round % 2 == 1;
        for c in [c_first, !c_first] {
            match (c, &s.libvdi) {
                (false, _) if s.wants("vdi") => {
                    progress(&format!("{tag}: vdi"));
                    let x = bench::vdi(&hub, s, Client::Rust, s.devices, s.buffers, total)?;
                    if record {
                        r.vdi.push(x);
                    }
                }
                (true, Some(lib)) if s.wants("vdi-c") => {
                    progress(&format!("{tag}: vdi, C client"));
                    let x = bench::vdi(&hub, s, Client::C(lib), s.devices, s.buffers, total)?;
                    if record {
                        r.vdi_c.push(x);
                    }
                }
                _ => {}
            }
        }
        if s.wants("vdi4") && s.devices != 4 {
            progress(&format!("{tag}: vdi, 4 devices"));
            let x = bench::vdi(&hub, s, Client::Rust, 4, r.vdi4_buffers, total)?;
            if record {
                r.vdi4.push(x);
            }
        }
        if s.wants("pipe") {
            progress(&format!("{tag}: pipe"));
            let (x, setup) = bench::stream(&hub, s, "pipe", total)?;
            r.pipe_setup = setup;
            if record {
                r.pipe.push(x);
            }
        }
        if s.wants("unix") {
            progress(&format!("{tag}: unix socket"));
            let (x, setup) = bench::stream(&hub, s, "unix", total)?;
            r.unix_setup = setup;
            if record {
                r.unix.push(x);
            }
        }
        if s.wants("ring") {
            progress(&format!("{tag}: raw ring"));
            let x = bench::ring(&hub, s, total)?;
            if record {
                r.ring.push(x);
            }
        }
        let (busy, idle) = if record {
            (s.busy_samples, s.idle_samples)
        } else {
            (s.busy_samples / 10 + 1, 2)
        };
        for c in [c_first, !c_first] {
            match (c, &s.libvdi) {
                (false, _) if s.wants("latency") => {
                    progress(&format!("{tag}: latency"));
                    let x = bench::latency(&hub, s, Client::Rust, busy, idle)?;
                    if record {
                        r.latency.push(x);
                    }
                }
                (true, Some(lib)) if s.wants("latency-c") => {
                    progress(&format!("{tag}: latency, C client"));
                    let x = bench::latency(&hub, s, Client::C(lib), busy, idle)?;
                    if record {
                        r.latency_c.push(x);
                    }
                }
                _ => {}
            }
        }
    }
    if s.devices == 4 {
        r.vdi4 = r.vdi.clone();
        r.vdi4_buffers = s.buffers;
    }
    progress("");
    r.load.1 = loadavg();
    Ok(r)
}

/// min, median, max (`None` when empty).
fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((v[0], med, v[n - 1]))
}

fn gbps(v: &[Sample]) -> Option<(f64, f64, f64)> {
    stats(&v.iter().map(|x| x.gbps).collect::<Vec<_>>())
}

/// Per GiB moved, medians over the samples: (producer CPU ms, consumer CPU ms,
/// voluntary switches, involuntary switches), both processes.
fn per_gib(v: &[Sample]) -> Option<[f64; 4]> {
    let med = |f: &dyn Fn(&Sample) -> f64| {
        stats(
            &v.iter()
                .map(|x| f(x) * (1u64 << 30) as f64 / x.bytes.max(1) as f64)
                .collect::<Vec<_>>(),
        )
        .map(|t| t.1)
    };
    let ms = |u: &vdi_bench::mem::CpuUsage| (u.user_us + u.system_us) as f64 / 1e3;
    Some([
        med(&|x| ms(&x.producer_cpu))?,
        med(&|x| ms(&x.consumer_cpu))?,
        med(&|x| (x.producer_cpu.voluntary + x.consumer_cpu.voluntary) as f64)?,
        med(&|x| (x.producer_cpu.involuntary + x.consumer_cpu.involuntary) as f64)?,
    ])
}

fn median_of(v: &[LatencySample], f: impl Fn(&LatencySample) -> f64) -> Option<f64> {
    stats(&v.iter().map(f).collect::<Vec<_>>()).map(|x| x.1)
}

fn ratio(a: &[Sample], b: &[Sample]) -> Option<f64> {
    Some(gbps(a)?.1 / gbps(b)?.1)
}

/// `a`'s CPU per GiB (producer and consumer together) over `b`'s, medians.
fn cpu_ratio(a: &[Sample], b: &[Sample]) -> Option<f64> {
    let (x, y) = (per_gib(a)?, per_gib(b)?);
    Some((x[0] + x[1]) / (y[0] + y[1]).max(f64::MIN_POSITIVE))
}

/// The peak of each figure over the samples.
fn peak(v: &[Sample], side: impl Fn(&Sample) -> MemStatus) -> MemStatus {
    v.iter()
        .map(side)
        .fold(MemStatus::default(), |a, m| MemStatus {
            rss_kib: a.rss_kib.max(m.rss_kib),
            hwm_kib: a.hwm_kib.max(m.hwm_kib),
            anon_kib: a.anon_kib.max(m.anon_kib),
            shmem_kib: a.shmem_kib.max(m.shmem_kib),
        })
}

/// Memory limit: the configured buffer area plus 32 MiB.
const SLACK: u64 = 32 << 20;

struct MemCheck {
    area: u64,
    client: MemStatus,
    server: MemStatus,
}

impl MemCheck {
    fn of(v: &[Sample]) -> Option<MemCheck> {
        let area = v.iter().map(|x| x.area).max()?;
        Some(MemCheck {
            area,
            client: peak(v, |x| x.consumer),
            server: peak(v, |x| x.producer),
        })
    }

    fn limit(&self) -> u64 {
        self.area + SLACK
    }

    fn within(&self) -> bool {
        self.client.hwm_kib * 1024 <= self.limit() && self.server.hwm_kib * 1024 <= self.limit()
    }
}

/// A target: what is measured, the bound, and whether it holds.
struct Target {
    name: &'static str,
    bound: String,
    value: Option<f64>,
    unit: &'static str,
    met: Option<bool>,
}

/// The C client's busy p50 minus the Rust client's, in µs (medians over the rounds).
fn c_minus_rust_busy_p50(r: &Results) -> Option<f64> {
    Some(
        median_of(&r.latency_c, |l| l.busy_p50)? / 1e3
            - median_of(&r.latency, |l| l.busy_p50)? / 1e3,
    )
}

/// The median over the rounds of C / Rust throughput and of C - Rust busy p50 (µs),
/// each round's two samples taken back to back: less sensitive to a noisy machine than
/// the figures of the targets (ratios of medians), shown beside them in the JSON.
fn c_paired(r: &Results) -> (Option<f64>, Option<f64>) {
    let tp: Vec<f64> = r
        .vdi_c
        .iter()
        .zip(&r.vdi)
        .map(|(c, rust)| c.gbps / rust.gbps)
        .collect();
    let lat: Vec<f64> = r
        .latency_c
        .iter()
        .zip(&r.latency)
        .map(|(c, rust)| (c.busy_p50 - rust.busy_p50) / 1e3)
        .collect();
    (stats(&tp).map(|x| x.1), stats(&lat).map(|x| x.1))
}

/// Bounds of the C client against the Rust client.
const C_THROUGHPUT_MIN: f64 = 0.95;
const C_BUSY_P50_MAX_EXTRA_US: f64 = 0.1;

fn targets(r: &Results) -> Vec<Target> {
    let at_least = |name, value: Option<f64>, min: f64| Target {
        name,
        bound: format!(">= {min}x"),
        value,
        unit: "x",
        met: value.map(|v| v >= min),
    };
    // A bound in microseconds ("us": "<= 1 us") or a ratio ("x": "<= 1.15x").
    let at_most = |name, value: Option<f64>, max: f64, unit: &'static str| Target {
        name,
        bound: if unit == "x" {
            format!("<= {max}x")
        } else {
            format!("<= {max} {unit}")
        },
        value,
        unit,
        met: value.map(|v| v <= max),
    };
    let mem = |name, m: Option<MemCheck>| Target {
        name,
        bound: "<= area + 32 MiB".into(),
        value: m
            .as_ref()
            .map(|m| (m.client.hwm_kib.max(m.server.hwm_kib) * 1024) as f64 / (1 << 20) as f64),
        unit: "MiB",
        met: m.as_ref().map(MemCheck::within),
    };
    vec![
        at_least("vdi / pipe", ratio(&r.vdi, &r.pipe), 15.0),
        at_least("vdi / unix socket", ratio(&r.vdi, &r.unix), 8.0),
        at_least("vdi / raw ring", ratio(&r.vdi, &r.ring), 0.8),
        at_least("vdi 4 devices / vdi", ratio(&r.vdi4, &r.vdi), 1.0),
        at_most(
            "vdi 4 devices CPU per GiB / vdi's",
            cpu_ratio(&r.vdi4, &r.vdi),
            1.15,
            "x",
        ),
        at_most(
            "busy round trip p50",
            median_of(&r.latency, |l| l.busy_p50 / 1e3),
            1.0,
            "us",
        ),
        at_most(
            "busy round trip p99",
            median_of(&r.latency, |l| l.busy_p99 / 1e3),
            5.0,
            "us",
        ),
        at_least(
            "C client / Rust client",
            ratio(&r.vdi_c, &r.vdi),
            C_THROUGHPUT_MIN,
        ),
        Target {
            name: "C client busy p50 - Rust client's",
            bound: format!("<= +{C_BUSY_P50_MAX_EXTRA_US} us"),
            value: c_minus_rust_busy_p50(r),
            unit: "us",
            met: c_minus_rust_busy_p50(r).map(|v| v <= C_BUSY_P50_MAX_EXTRA_US),
        },
        mem("vdi peak RSS", MemCheck::of(&r.vdi)),
        mem("vdi 4 devices peak RSS", MemCheck::of(&r.vdi4)),
    ]
}

fn size(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The readable table.
pub fn table(s: &Settings, r: &Results, elapsed: f64) -> String {
    let mut o = String::new();
    let plural = if s.devices == 1 { "" } else { "s" };
    let _ = writeln!(
        o,
        "vdi-bench: {} device{plural}, {} transfers, {} buffers, {} per sample, {} round{} (engine: {}{})",
        s.devices,
        size(u64::from(s.transfer)),
        s.buffers,
        size(s.total),
        s.rounds,
        if s.rounds == 1 { "" } else { "s" },
        s.engine,
        if s.pin {
            "; producers on CPU 0, consumers on CPU 1"
        } else {
            ""
        }
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<38} {:>9} {:>9} {:>9} {:>9}",
        "throughput (GB/s)", "median", "min", "max", "vdi/this"
    );
    let vdi_med = gbps(&r.vdi).map(|x| x.1);
    let rows: [(String, &[Sample]); 6] = [
        (format!("vdi, {} device{plural}", s.devices), &r.vdi),
        (
            format!("vdi, {} device{plural}, C client", s.devices),
            &r.vdi_c,
        ),
        (
            format!("vdi, 4 devices ({} buffers)", r.vdi4_buffers),
            &r.vdi4,
        ),
        (
            format!("pipe ({} pipe)", size(r.pipe_setup.buffer)),
            &r.pipe,
        ),
        (
            format!("unix socket ({} sndbuf)", size(r.unix_setup.buffer)),
            &r.unix,
        ),
        (
            format!(
                "raw ring ({} x {} slots)",
                s.buffers,
                size(u64::from(s.transfer))
            ),
            &r.ring,
        ),
    ];
    for (name, v) in rows.iter().map(|(n, v)| (n.clone(), *v)) {
        match gbps(v) {
            Some((lo, med, hi)) => {
                let rel = vdi_med.map_or("-".into(), |m| format!("{:.2}x", m / med));
                let _ = writeln!(o, "{name:<38} {med:>9.2} {lo:>9.2} {hi:>9.2} {rel:>9}");
            }
            None => {
                let _ = writeln!(o, "{name:<38} {:>9}", "skipped");
            }
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<38} {:>9} {:>9} {:>9} {:>9}",
        "per GiB moved (medians)", "prod. ms", "cons. ms", "sleeps", "preempt."
    );
    for (name, v) in &rows {
        if let Some([p, c, vol, inv]) = per_gib(v) {
            let _ = writeln!(o, "{name:<38} {p:>9.1} {c:>9.1} {vol:>9.0} {inv:>9.0}");
        }
    }
    let _ = writeln!(
        o,
        "(CPU milliseconds of the producer and the consumer process, and their voluntary and involuntary context switches)"
    );
    let _ = writeln!(o);
    if !r.latency.is_empty() || !r.latency_c.is_empty() {
        let _ = writeln!(
            o,
            "{:<38} {:>9} {:>9} {:>9}",
            "command round trip (no data)", "p50", "p99", "mean"
        );
        for (who, v) in [("", &r.latency), (", C client", &r.latency_c)] {
            if v.is_empty() {
                continue;
            }
            let us = |f: &dyn Fn(&LatencySample) -> f64| {
                median_of(v, f).map_or("-".into(), |x| format!("{:.2} us", x / 1e3))
            };
            let n_busy: u64 = v.iter().map(|l| l.busy_n).sum();
            let n_idle: u64 = v.iter().map(|l| l.idle_n).sum();
            let _ = writeln!(
                o,
                "{:<38} {:>9} {:>9} {:>9}",
                format!("busy{who}, back to back ({n_busy})"),
                us(&|l| l.busy_p50),
                us(&|l| l.busy_p99),
                us(&|l| l.busy_mean)
            );
            let _ = writeln!(
                o,
                "{:<38} {:>9} {:>9}",
                format!("idle{who}, {} ms apart ({n_idle})", s.idle_pause_us / 1000),
                us(&|l| l.idle_p50),
                us(&|l| l.idle_p99)
            );
        }
        let _ = writeln!(o, "(samples in brackets)");
        let _ = writeln!(o);
    }
    if let Some(why) = &s.c_skipped {
        let _ = writeln!(o, "C client rows skipped: {why}");
        let _ = writeln!(o);
    }
    let mems = [
        (
            format!("vdi, {} device{plural}", s.devices),
            MemCheck::of(&r.vdi),
        ),
        ("vdi, 4 devices".to_owned(), MemCheck::of(&r.vdi4)),
    ];
    if mems.iter().any(|m| m.1.is_some()) {
        let _ = writeln!(
            o,
            "{:<24} {:>11} {:>11} {:>11} {:>11} {:>11}",
            "peak RSS (VmHWM)", "client", "server", "of it shm", "area", "limit"
        );
        for (name, m) in mems {
            if let Some(m) = m {
                let _ = writeln!(
                    o,
                    "{name:<24} {:>11} {:>11} {:>11} {:>11} {:>11}",
                    mib(m.client.hwm_kib),
                    mib(m.server.hwm_kib),
                    mib(m.client.shmem_kib.max(m.server.shmem_kib)),
                    mib(m.area / 1024),
                    mib(m.limit() / 1024),
                );
            }
        }
        let _ = writeln!(
            o,
            "({} moved per sample; the limit is the buffer area + 32 MiB)",
            size(s.total)
        );
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "{:<38} {:>9} {:>18} {:>8}",
        "target", "value", "bound", ""
    );
    for t in targets(r) {
        let v = t.value.map_or("-".into(), |v| format!("{v:.2} {}", t.unit));
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "skipped",
        };
        let _ = writeln!(o, "{:<38} {v:>9} {:>18} {met:>8}", t.name, t.bound);
    }
    if s.quick {
        let _ = writeln!(
            o,
            "(--quick moves too little for these figures to mean much: it checks that every transport works)"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "took {elapsed:.1} s; load average {:.2} before, {:.2} after ({} CPUs)",
        r.load.0,
        r.load.1,
        cpus()
    );
    o
}

fn transport(v: &[Sample], extra: Value) -> Value {
    let mut obj = match gbps(v) {
        Some((lo, med, hi)) => json!({
            "gbps_median": med,
            "gbps_min": lo,
            "gbps_max": hi,
            "samples_gbps": v.iter().map(|x| x.gbps).collect::<Vec<_>>(),
            "per_gib": per_gib(v).map(|[p, c, vol, inv]| json!({
                "producer_cpu_ms": p,
                "consumer_cpu_ms": c,
                "voluntary_switches": vol,
                "involuntary_switches": inv,
            })),
        }),
        None => {
            json!({"gbps_median": null, "gbps_min": null, "gbps_max": null, "samples_gbps": []})
        }
    };
    if let (Value::Object(o), Value::Object(e)) = (&mut obj, extra) {
        o.extend(e);
    }
    obj
}

fn mem_json(m: &MemStatus) -> Value {
    json!({
        "vm_rss_bytes": m.rss_kib * 1024,
        "vm_hwm_bytes": m.hwm_kib * 1024,
        "rss_anon_bytes": m.anon_kib * 1024,
        "rss_shmem_bytes": m.shmem_kib * 1024,
    })
}

fn memcheck_json(m: Option<MemCheck>) -> Value {
    match m {
        Some(m) => json!({
            "buffer_area_bytes": m.area,
            "limit_bytes": m.limit(),
            "client": mem_json(&m.client),
            "server": mem_json(&m.server),
            "within_limit": m.within(),
        }),
        None => Value::Null,
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Every figure, as one JSON object.
pub fn json(s: &Settings, r: &Results, elapsed: f64) -> Value {
    let lat = |f: &dyn Fn(&LatencySample) -> f64| median_of(&r.latency, f).map(|v| v / 1e3);
    let lat_c = |f: &dyn Fn(&LatencySample) -> f64| median_of(&r.latency_c, f).map(|v| v / 1e3);
    let ring_bytes = vdi_bench::raw_ring::segment_size(s.buffers, s.transfer as usize);
    json!({
        "transports": {
            "vdi": transport(&r.vdi, json!({"devices": s.devices, "buffers": s.buffers})),
            "vdi_c_client": transport(&r.vdi_c, json!({
                "devices": s.devices,
                "buffers": s.buffers,
                "libvdi": s.libvdi.as_ref().map(|p| p.display().to_string()),
                "skipped": s.c_skipped,
            })),
            "vdi_4_devices": transport(&r.vdi4, json!({"devices": 4, "buffers": r.vdi4_buffers})),
            "pipe": transport(&r.pipe, json!({"pipe_size_bytes": r.pipe_setup.buffer})),
            "unix": transport(&r.unix, json!({"sndbuf_bytes": r.unix_setup.buffer})),
            "raw_ring": transport(&r.ring, json!({"slots": s.buffers, "segment_bytes": ring_bytes})),
        },
        "ratios": {
            "vdi_over_pipe": ratio(&r.vdi, &r.pipe),
            "vdi_over_unix": ratio(&r.vdi, &r.unix),
            "vdi_over_raw_ring": ratio(&r.vdi, &r.ring),
            "vdi4_over_vdi1": ratio(&r.vdi4, &r.vdi),
            "vdi4_cpu_per_gib_over_vdi1": cpu_ratio(&r.vdi4, &r.vdi),
            "c_client_over_rust_client": ratio(&r.vdi_c, &r.vdi),
            "c_client_busy_p50_minus_rust_us": c_minus_rust_busy_p50(r),
            "c_client_over_rust_client_paired_median": c_paired(r).0,
            "c_client_busy_p50_minus_rust_us_paired_median": c_paired(r).1,
        },
        "latency_us": {
            "busy_p50": lat(&|l| l.busy_p50),
            "busy_p99": lat(&|l| l.busy_p99),
            "busy_mean": lat(&|l| l.busy_mean),
            "idle_p50": lat(&|l| l.idle_p50),
            "idle_p99": lat(&|l| l.idle_p99),
            "busy_samples": r.latency.iter().map(|l| l.busy_n).sum::<u64>(),
            "idle_samples": r.latency.iter().map(|l| l.idle_n).sum::<u64>(),
            "busy_p50_per_round": r.latency.iter().map(|l| l.busy_p50 / 1e3).collect::<Vec<_>>(),
            "idle_p50_per_round": r.latency.iter().map(|l| l.idle_p50 / 1e3).collect::<Vec<_>>(),
            "c_client": {
                "busy_p50": lat_c(&|l| l.busy_p50),
                "busy_p99": lat_c(&|l| l.busy_p99),
                "busy_mean": lat_c(&|l| l.busy_mean),
                "idle_p50": lat_c(&|l| l.idle_p50),
                "idle_p99": lat_c(&|l| l.idle_p99),
                "busy_samples": r.latency_c.iter().map(|l| l.busy_n).sum::<u64>(),
                "idle_samples": r.latency_c.iter().map(|l| l.idle_n).sum::<u64>(),
                "busy_p50_per_round": r.latency_c.iter().map(|l| l.busy_p50 / 1e3).collect::<Vec<_>>(),
            },
        },
        "memory": {
            "vdi": memcheck_json(MemCheck::of(&r.vdi)),
            "vdi_4_devices": memcheck_json(MemCheck::of(&r.vdi4)),
            "vdi_c_client": memcheck_json(MemCheck::of(&r.vdi_c)),
            "bytes_moved_per_sample": s.total,
        },
        "targets": targets(r).iter().map(|t| json!({
            "name": t.name,
            "bound": t.bound,
            "value": t.value,
            "unit": t.unit,
            "met": t.met,
        })).collect::<Vec<_>>(),
        "params": {
            "devices": s.devices,
            "transfer_size": s.transfer,
            "buffers": s.buffers,
            "total_bytes": s.total,
            "rounds": s.rounds,
            "engine": s.engine,
            "busy_samples_per_round": s.busy_samples,
            "idle_samples_per_round": s.idle_samples,
            "idle_pause_ms": s.idle_pause_us / 1000,
            "warmup": s.warmup,
            "quick": s.quick,
            "pin": s.pin,
            "only": s.only,
            "cpus": cpus(),
            "loadavg_before": r.load.0,
            "loadavg_after": r.load.1,
        },
        "elapsed_s": elapsed,
    })
}
