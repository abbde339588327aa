//! `vdi-bench`: moves the same stream between two processes over vdi, a pipe, a Unix
//! stream socket and a hand-written shared-memory ring, interleaved round by round, and
//! reports throughput (min / median / max, ratios of medians), command round-trip
//! latency and the resident memory of the vdi processes. See the crate's README.

mod bench;
mod ctl;
mod report;
mod roles;

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;

use bench::Settings;
use vdi_bench::libvdi::LibVdi;

/// Compares vdi with a pipe, a Unix socket and a raw shared-memory ring.
#[derive(Parser, Debug)]
#[command(name = "vdi-bench", version)]
struct Cli {
    /// vdi devices for the main vdi figure (1..64); a 4-device run is always added.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// Bytes per command / write / slot (64K .. 4M, a multiple of 64 KiB).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    transfer_size: u64,
    /// Buffers (vdi, spread over the devices) and ring slots.
    #[arg(long, default_value_t = 8)]
    buffers: u32,
    /// Bytes moved per sample [default: 2G, 8M with --quick].
    #[arg(long, value_parser = parse_size)]
    total: Option<u64>,
    /// Interleaved rounds; each runs every transport once [default: 9, 1 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// Back-to-back round trips per round [default: 20000, 2000 with --quick].
    #[arg(long)]
    latency_samples: Option<u64>,
    /// Round trips after a pause, per round [default: 40, 5 with --quick].
    #[arg(long)]
    idle_samples: Option<u64>,
    /// The pause before each idle round trip, in milliseconds.
    #[arg(long, default_value_t = 3)]
    idle_pause_ms: u64,
    /// How the vdi engine produces: `callback` (refill and resend from the completion
    /// callback) or `threads` (a sender thread per device).
    #[arg(long, default_value = "callback")]
    engine: String,
    /// Run only these (comma-separated): vdi, vdi-c, vdi4, pipe, unix, ring, latency,
    /// latency-c.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A few MiB, one round, few round trips: checks that everything works, in seconds.
    #[arg(long)]
    quick: bool,
    /// Pin every producer process to CPU 0 and every consumer process to CPU 1 (by
    /// default the scheduler places them, and may put both on one CPU for a whole sample).
    #[arg(long)]
    pin: bool,
    /// Skip the unrecorded warm-up round.
    #[arg(long)]
    no_warmup: bool,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// libvdi.so for the C client rows [default: beside this executable, where
    /// `cargo build -p vdi-ffi` in the same profile puts it].
    #[arg(long)]
    libvdi: Option<std::path::PathBuf>,
}

/// Parses `4096`, `64K`, `1M`, `4G` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown unit in '{s}' (use K, M, G)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size"))?;
    if n.is_nan() || n < 0.0 {
        return Err(format!("'{s}' is not a size"));
    }
    Ok((n * mult as f64) as u64)
}

fn settings(cli: &Cli) -> Result<Settings> {
    if !(1..=vdi::config::MAX_DEVICES).contains(&cli.devices) {
        bail!("--devices must be 1 to {}", vdi::config::MAX_DEVICES);
    }
    let t = cli.transfer_size;
    if !(64 << 10..=4 << 20).contains(&t) || !t.is_multiple_of(64 << 10) {
        bail!("--transfer-size must be a multiple of 64 KiB from 64K to 4M");
    }
    if cli.buffers < cli.devices || cli.buffers > raw_ring_max() {
        bail!(
            "--buffers must be at least --devices and at most {}",
            raw_ring_max()
        );
    }
    if !matches!(cli.engine.as_str(), "callback" | "threads") {
        bail!("--engine must be callback or threads");
    }
    for o in &cli.only {
        if !matches!(
            o.as_str(),
            "vdi" | "vdi-c" | "vdi4" | "pipe" | "unix" | "ring" | "latency" | "latency-c"
        ) {
            bail!("--only takes vdi, vdi-c, vdi4, pipe, unix, ring, latency, latency-c (not {o})");
        }
    }
    let q = cli.quick;
    let wants = |w: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == w);
    let (mut libvdi, mut c_skipped) = (None, None);
    if wants("vdi-c") || wants("latency-c") {
        let path = match &cli.libvdi {
            Some(p) => p.clone(),
            None => LibVdi::default_path()
                .ok_or_else(|| anyhow::anyhow!("cannot tell where this executable is"))?,
        };
        if path.exists() {
            LibVdi::load(&path)?; // every entry point is there: fail now, not mid-run
            libvdi = Some(path);
        } else if q && cli.libvdi.is_none() {
            // A smoke test must run anywhere: say what is missing, run the rest.
            c_skipped = Some(format!(
                "{} not built: `{}`",
                path.display(),
                LibVdi::build_hint(&path)
            ));
        } else {
            // The error says which command builds it.
            LibVdi::load(&path)?;
        }
    }
    let total = cli.total.unwrap_or(if q { 8 << 20 } else { 2 << 30 });
    if total < t {
        bail!("--total must be at least one transfer");
    }
    Ok(Settings {
        devices: cli.devices,
        transfer: t as u32,
        buffers: cli.buffers,
        total,
        rounds: cli.rounds.unwrap_or(if q { 1 } else { 9 }).max(1),
        engine: cli.engine.clone(),
        busy_samples: cli
            .latency_samples
            .unwrap_or(if q { 2000 } else { 20_000 })
            .max(1),
        idle_samples: cli.idle_samples.unwrap_or(if q { 5 } else { 40 }),
        idle_pause_us: cli.idle_pause_ms * 1000,
        warmup: !q && !cli.no_warmup,
        only: cli.only.clone(),
        quick: q,
        pin: cli.pin,
        libvdi,
        c_skipped,
    })
}

fn raw_ring_max() -> u32 {
    vdi_bench::raw_ring::MAX_SLOTS
}

fn child(args: &[String]) -> Result<()> {
    let [role, hub, rest @ ..] = args else {
        bail!("usage: vdi-bench {} ROLE SOCKET ARGS...", ctl::CHILD);
    };
    let (link, fds) = ctl::Link::connect(hub)?;
    let a = ctl::Args::parse(rest);
    if let Ok(cpu) = a.u32("cpu") {
        // Before any thread starts: the threads this process creates inherit it.
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu as usize);
        rustix::thread::sched_setaffinity(None, &set)
            .map_err(|e| anyhow::anyhow!("pinning to CPU {cpu}: {e}"))?;
    }
    if let Err(e) = roles::run(role, &link, &a, fds) {
        // The bench reports it (with the role); say it here only if the bench is gone.
        let msg: String = format!("error {e:#}").chars().take(3000).collect();
        if link.send(&msg).is_err() {
            eprintln!("vdi-bench {role}: {e:#}");
        }
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let r = if argv.get(1).map(String::as_str) == Some(ctl::CHILD) {
        child(&argv[2..])
    } else {
        bench_main()
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdi-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench_main() -> Result<()> {
    let cli = Cli::parse();
    let s = settings(&cli)?;
    let started = Instant::now();
    let results = report::run_all(&s)?;
    let elapsed = started.elapsed().as_secs_f64();
    let table = report::table(&s, &results, elapsed);
    if cli.json {
        eprint!("{table}");
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&s, &results, elapsed))?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("lots").is_err());
    }
}
