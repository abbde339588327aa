//! The orchestrator: starts the two processes of each sample, hands them their
//! descriptors, says `go`, collects their stamps and memory figures.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
use rustix::pipe::PipeFlags;
use vdi::sys::shm::SharedMemory;
use vdi_bench::mem::{CpuUsage, MemStatus};
use vdi_bench::raw_ring;

use crate::ctl::{Hub, Msg, Peer};

/// What one run measures and how.
#[derive(Clone, Debug)]
pub struct Settings {
    pub devices: u32,
    pub transfer: u32,
    pub buffers: u32,
    pub total: u64,
    pub rounds: u32,
    pub engine: String,
    pub busy_samples: u64,
    pub idle_samples: u64,
    pub idle_pause_us: u64,
    pub warmup: bool,
    pub only: Vec<String>,
    /// `--quick`: a smoke test; its figures mean little.
    pub quick: bool,
    /// Producers on CPU 0, consumers on CPU 1.
    pub pin: bool,
    /// libvdi.so for the C client rows (`None`: those rows are skipped, see `c_skipped`).
    pub libvdi: Option<PathBuf>,
    /// Why the C client rows are skipped (`--quick` without the library).
    pub c_skipped: Option<String>,
}

impl Settings {
    /// The extra argument that pins a producer (`consumer == false`) or a consumer.
    fn cpu(&self, consumer: bool) -> Vec<String> {
        if self.pin {
            vec![format!("cpu={}", u32::from(consumer))]
        } else {
            Vec::new()
        }
    }

    pub fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }

    /// How long a sample may take before the bench gives up on it.
    fn limit(&self, total: u64) -> Duration {
        Duration::from_secs(30) + Duration::from_nanos(total / 100) // 100 MB/s at worst
    }
}

/// One throughput sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub gbps: f64,
    pub consumer: MemStatus,
    pub producer: MemStatus,
    /// CPU use of each side during the timed part.
    pub consumer_cpu: CpuUsage,
    pub producer_cpu: CpuUsage,
    /// Bytes moved.
    pub bytes: u64,
    /// Shared buffer area (vdi) or ring segment bytes.
    pub area: u64,
}

impl Sample {
    fn new(gbps: f64, bytes: u64, c: &Msg, p: &Msg, area: u64) -> Sample {
        Sample {
            gbps,
            consumer: mem_of(c),
            producer: mem_of(p),
            consumer_cpu: cpu_of(c),
            producer_cpu: cpu_of(p),
            bytes,
            area,
        }
    }
}

/// One latency sample (a round of round trips), in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencySample {
    pub busy_n: u64,
    pub busy_p50: f64,
    pub busy_p99: f64,
    pub busy_mean: f64,
    pub idle_n: u64,
    pub idle_p50: f64,
    pub idle_p99: f64,
}

fn mem_of(m: &Msg) -> MemStatus {
    let f = |k: &str| m.u64(k).unwrap_or(0);
    MemStatus {
        rss_kib: f("rss_kib"),
        hwm_kib: f("hwm_kib"),
        anon_kib: f("anon_kib"),
        shmem_kib: f("shmem_kib"),
    }
}

fn cpu_of(m: &Msg) -> CpuUsage {
    let f = |k: &str| m.u64(k).unwrap_or(0);
    CpuUsage {
        user_us: f("user_us"),
        system_us: f("sys_us"),
        voluntary: f("vcsw"),
        involuntary: f("ivcsw"),
    }
}

fn rate(total: u64, start: u64, end: u64) -> Result<f64> {
    if end <= start {
        bail!("the consumer finished ({end}) before the producer started ({start})");
    }
    Ok(total as f64 / (end - start) as f64) // bytes per ns = GB/s
}

static SETS: AtomicU32 = AtomicU32::new(0);

fn set_name() -> String {
    format!(
        "vdi-bench-{}-{}",
        std::process::id(),
        SETS.fetch_add(1, Ordering::Relaxed)
    )
}

const SETUP: Duration = Duration::from_secs(30);

/// Runs the producer: `ready` from both, `go`, `done` from both, both exit.
fn drive(s: &Settings, total: u64, consumer: Peer, producer: Peer) -> Result<(f64, Msg, Msg)> {
    producer.expect("ready", SETUP)?;
    consumer.expect("ready", SETUP)?;
    producer.send("go")?;
    let limit = s.limit(total);
    let p = producer.expect("done", limit)?;
    let c = consumer.expect("done", limit)?;
    if c.u64("bad").unwrap_or(0) > 0 {
        bail!("{} chunks arrived with a wrong checksum", c.u64("bad")?);
    }
    producer.finish(SETUP)?;
    consumer.finish(SETUP)?;
    let gbps = rate(total, p.u64("start_ns")?, c.u64("end_ns")?)?;
    Ok((gbps, c, p))
}

/// Which client serves a vdi sample.
#[derive(Clone, Copy, Debug)]
pub enum Client<'a> {
    /// The Rust library's typed API (`vdi::ClientSet`).
    Rust,
    /// libvdi.so's C entry points, driven by the serving loop in C (`c/c_client.c`).
    C(&'a Path),
}

impl Client<'_> {
    fn role(&self) -> &'static str {
        match self {
            Client::Rust => "vdi-client",
            Client::C(_) => "c-client",
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Client::Rust => Vec::new(),
            Client::C(lib) => vec![format!("libvdi={}", lib.display())],
        }
    }
}

/// vdi: the client (consumer) creates the set, the server (producer) opens it.
pub fn vdi(
    hub: &Hub,
    s: &Settings,
    client: Client<'_>,
    devices: u32,
    buffers: u32,
    total: u64,
) -> Result<Sample> {
    let name = set_name();
    let args = vec![
        format!("set={name}"),
        format!("devices={devices}"),
        format!("total={total}"),
        format!("transfer={}", s.transfer),
        format!("buffers={buffers}"),
        format!("engine={}", s.engine),
    ];
    let client = hub.spawn(
        client.role(),
        &[args.clone(), client.args(), s.cpu(true)].concat(),
        &[],
    )?;
    client.expect("created", SETUP)?;
    let server = hub.spawn("vdi-server", &[args, s.cpu(false)].concat(), &[])?;
    let (gbps, c, p) = drive(s, total, client, server)?;
    if c.u64("bytes")? != total {
        bail!("the client received {} of {total} bytes", c.u64("bytes")?);
    }
    if p.u64("errors")? > 0 {
        bail!("{} commands failed", p.u64("errors")?);
    }
    Ok(Sample::new(gbps, total, &c, &p, c.u64("area")?))
}

/// What a pipe or socket was set up with.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamSetup {
    /// The pipe's capacity, or the socket's send buffer, in bytes as the kernel reports.
    pub buffer: u64,
}

/// A pipe (its capacity raised to the transfer size) or a Unix stream socket pair
/// (its buffers raised to the transfer size).
pub fn stream(hub: &Hub, s: &Settings, kind: &str, total: u64) -> Result<(Sample, StreamSetup)> {
    let (rx, tx, buffer) = match kind {
        "pipe" => {
            let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
            let size = rustix::pipe::fcntl_setpipe_size(&w, s.transfer as usize)
                .or_else(|_| rustix::pipe::fcntl_getpipe_size(&w))?;
            (r, w, size as u64)
        }
        "unix" => {
            let (a, b) = rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?;
            for fd in [&a, &b] {
                let n = s.transfer as usize;
                // Above wmem_max/rmem_max only root may go (the _force options).
                if sockopt::set_socket_send_buffer_size_force(fd, n).is_err() {
                    let _ = sockopt::set_socket_send_buffer_size(fd, n);
                }
                if sockopt::set_socket_recv_buffer_size_force(fd, n).is_err() {
                    let _ = sockopt::set_socket_recv_buffer_size(fd, n);
                }
            }
            let size = sockopt::socket_send_buffer_size(&b)?;
            (a, b, size as u64)
        }
        _ => bail!("unknown stream kind {kind}"),
    };
    let args = vec![format!("total={total}"), format!("transfer={}", s.transfer)];
    let consumer = hub.spawn(
        "stream-consumer",
        &[args.clone(), s.cpu(true)].concat(),
        &[rx.as_fd()],
    )?;
    let producer = hub.spawn(
        "stream-producer",
        &[args, s.cpu(false)].concat(),
        &[tx.as_fd()],
    )?;
    drop((rx, tx));
    let (gbps, c, p) = drive(s, total, consumer, producer)?;
    Ok((Sample::new(gbps, total, &c, &p, 0), StreamSetup { buffer }))
}

/// The raw ring: one memfd, `buffers` slots of the transfer size.
pub fn ring(hub: &Hub, s: &Settings, total: u64) -> Result<Sample> {
    let size = raw_ring::segment_size(s.buffers, s.transfer as usize);
    let mem = SharedMemory::create("vdi-bench-ring", size)?;
    let fd = mem.dup_fd().ok_or(rustix::io::Errno::BADF)?;
    let args = vec![
        format!("total={total}"),
        format!("transfer={}", s.transfer),
        format!("slots={}", s.buffers),
    ];
    let consumer = hub.spawn(
        "ring-consumer",
        &[args.clone(), s.cpu(true)].concat(),
        &[fd.as_fd()],
    )?;
    let producer = hub.spawn(
        "ring-producer",
        &[args, s.cpu(false)].concat(),
        &[fd.as_fd()],
    )?;
    drop((fd, mem));
    let (gbps, c, p) = drive(s, total, consumer, producer)?;
    Ok(Sample::new(gbps, total, &c, &p, size as u64))
}

/// Command round trips over vdi (one device, no data), served by `client`.
pub fn latency(
    hub: &Hub,
    s: &Settings,
    client: Client<'_>,
    busy: u64,
    idle: u64,
) -> Result<LatencySample> {
    let name = set_name();
    let client = hub.spawn(
        client.role(),
        &[
            vec![
                format!("set={name}"),
                "devices=1".into(),
                "total=0".into(),
                "transfer=65536".into(),
            ],
            client.args(),
            s.cpu(true),
        ]
        .concat(),
        &[],
    )?;
    client.expect("created", SETUP)?;
    let server = hub.spawn(
        "latency-server",
        &[
            vec![
                format!("set={name}"),
                format!("busy={busy}"),
                format!("idle={idle}"),
                format!("pause_us={}", s.idle_pause_us),
            ],
            s.cpu(false),
        ]
        .concat(),
        &[],
    )?;
    server.expect("ready", SETUP)?;
    client.expect("ready", SETUP)?;
    server.send("go")?;
    let limit = SETUP + Duration::from_micros((s.idle_pause_us + 1000) * idle);
    let m = server.expect("done", limit)?;
    client.expect("done", SETUP)?;
    server.finish(SETUP)?;
    client.finish(SETUP)?;
    Ok(LatencySample {
        busy_n: m.u64("busy_n")?,
        busy_p50: m.f64("busy_p50_ns")?,
        busy_p99: m.f64("busy_p99_ns")?,
        busy_mean: m.f64("busy_mean_ns")?,
        idle_n: m.u64("idle_n")?,
        idle_p50: m.f64("idle_p50_ns")?,
        idle_p99: m.f64("idle_p99_ns")?,
    })
}
