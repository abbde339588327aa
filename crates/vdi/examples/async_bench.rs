//! Busy-path throughput of the async client against the synchronous one, in one run: an
//! engine thread in this process sends Writes as fast as its buffers come back (`DEPTH`
//! in flight, nothing touches the data, so the figure is the per-command cost of the
//! protocol and of the client's fetch), and each client completes them.
//!
//! ```text
//! cargo run -p vdi --release --features tokio --example async_bench [COMMANDS] [ROUNDS]
//! ```
//!
//! Clients: `sync` (a thread: `get_command`, complete), `async-1` (a current-thread
//! runtime: `get_command().await`, complete inline), `async-mt` (a 2-worker runtime,
//! complete inline), `async-mt-spawn` (2 workers, each command completed by a task of its
//! own, the pattern of an uploader). Prints each round and the median.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use vdi::async_client::AsyncClientSet;
use vdi::{
    ClientSet, CommandCode, ErrorCode, ServerCommand, ServerSet, Timeout, VdConfig, features,
};

const TRANSFER: u32 = 64 << 10;
const DEPTH: u32 = 16;

/// A client: serves the device of the set; for the async ones, how many fetches waited
/// on a blocking thread.
type Client = fn(&ClientSet, &str) -> Result<Option<u64>, vdi::VdError>;

fn main() {
    let mut args = std::env::args().skip(1);
    let commands: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    println!(
        "{commands} Writes of {} KiB, {DEPTH} in flight, {rounds} rounds",
        TRANSFER >> 10
    );
    let clients: [(&str, Client); 4] = [
        ("sync", sync_client),
        ("async-1", |s, n| async_client(s, n, false, false)),
        ("async-mt", |s, n| async_client(s, n, true, false)),
        ("async-mt-spawn", |s, n| async_client(s, n, true, true)),
    ];
    let mut table = Vec::new();
    // Rounds interleave the clients, so that a change in the machine's load hits all.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    for round in 0..rounds {
        for (i, (label, client)) in clients.iter().enumerate() {
            match run(commands, *client) {
                Ok((rate, waits)) => {
                    let waits = waits.map_or("-".to_owned(), |w| w.to_string());
                    println!(
                        "{label:>15} round {round}: {rate:>9.0} commands/s  {:>6.2} GiB/s  waits on a thread: {waits}",
                        rate * f64::from(TRANSFER) / f64::from(1u32 << 30)
                    );
                    rates[i].push(rate);
                }
                Err(e) => {
                    eprintln!("async_bench: {label}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    for ((label, _), mut r) in clients.iter().zip(rates) {
        r.sort_by(f64::total_cmp);
        table.push((*label, r[r.len() / 2]));
    }
    println!("\nmedian commands/s:");
    let base = table[0].1;
    for (label, rate) in table {
        println!(
            "{label:>15}: {rate:>9.0}  ({:.2} µs/command, {:.2}x sync)",
            1e6 / rate,
            rate / base
        );
    }
}

/// One round: a fresh set, the engine on a thread, `client` on this one; commands per
/// second over the whole stream, and the client's blocking waits.
fn run(commands: u32, client: Client) -> Result<(f64, Option<u64>), vdi::VdError> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "async-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let set = ClientSet::create(&name, &VdConfig::with_devices(1))?;
    let n2 = name.clone();
    let engine = std::thread::spawn(move || engine(&n2, commands));
    set.get_configuration(Timeout::from_millis(30_000))?;
    let start = Instant::now();
    let waits = client(&set, &name)?;
    let elapsed = start.elapsed();
    set.close()?;
    engine.join().map_err(|_| {
        vdi::VdError::new(
            ErrorCode::Unexpected,
            vdi::Reason::InvalidArgument("the engine thread panicked".into()),
        )
    })??;
    Ok((f64::from(commands) / elapsed.as_secs_f64(), waits))
}

fn engine(name: &str, commands: u32) -> Result<(), vdi::VdError> {
    let set = ServerSet::open(name)?;
    set.begin_configuration(features::WRITE_MEDIA, 512, 0, TRANSFER, 10_000)?;
    set.request_buffers(TRANSFER, 0, DEPTH)?;
    set.end_configuration()?;
    std::thread::scope(|s| -> Result<(), vdi::VdError> {
        let agent = s.spawn(|| set.execute_completion_agent());
        let dev = set.open_device(name)?;
        let (tx, rx) = mpsc::channel();
        for _ in 0..DEPTH {
            tx.send(Some(set.allocate_buffer(TRANSFER, 0)?)).ok();
        }
        for _ in 0..commands {
            let Ok(Some(buf)) = rx.recv() else { break };
            let tx = tx.clone();
            dev.send_command(ServerCommand::write(buf, TRANSFER), move |done| {
                tx.send(done.buffer).ok();
            })?;
        }
        let (ftx, frx) = mpsc::channel();
        dev.send_command(ServerCommand::new(CommandCode::FLUSH), move |_| {
            ftx.send(()).ok();
        })?;
        let _ = frx.recv_timeout(Duration::from_secs(60));
        dev.close_device()?;
        agent.join().unwrap_or(Ok(()))
    })?;
    set.close()
}

fn sync_client(set: &ClientSet, name: &str) -> Result<Option<u64>, vdi::VdError> {
    let dev = set.open_device(name)?;
    loop {
        match dev.get_command(Timeout::from_millis(30_000)) {
            Ok(cmd) => cmd.complete_ok()?,
            Err(e) if e.code() == ErrorCode::Close => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn async_client(
    set: &ClientSet,
    name: &str,
    multi_thread: bool,
    spawn: bool,
) -> Result<Option<u64>, vdi::VdError> {
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread().build()
    }
    .map_err(|e| {
        vdi::VdError::new(
            ErrorCode::Unexpected,
            vdi::Reason::AsyncRuntime(e.to_string()),
        )
    })?;
    let set = AsyncClientSet::new(set.clone());
    rt.block_on(async {
        let dev = set.open_device(name).await?;
        loop {
            match dev.get_command(Timeout::from_millis(30_000)).await {
                Ok(cmd) if spawn => {
                    tokio::spawn(async move { cmd.complete_ok() });
                }
                Ok(cmd) => cmd.complete_ok()?,
                Err(e) if e.code() == ErrorCode::Close => return Ok(Some(dev.blocking_waits())),
                Err(e) => return Err(e),
            }
        }
    })
}
