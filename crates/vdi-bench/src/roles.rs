//! What each child process does. Every producer stamps the start after the bench says
//! `go`; every consumer stamps the end after it has checksummed the last byte; both then
//! report their memory figures.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use vdi::sys::shm::SharedMemory;
use vdi::{
    ClientSet, CommandCode, Completion, ErrorCode, ServerBuffer, ServerCommand, ServerDevice,
    ServerSet, Timeout, VdConfig, completion, features,
};
use vdi_bench::clock::now_ns;
use vdi_bench::libvdi::LibVdi;
use vdi_bench::mem::{CpuUsage, MemStatus};
use vdi_bench::raw_ring::RawRing;
use vdi_bench::work::{self, Plan};

use crate::ctl::{Args, Link};

/// Runs `role`; the caller reports an error to the bench.
pub fn run(role: &str, link: &Link, args: &Args, fds: Vec<OwnedFd>) -> Result<()> {
    match role {
        "vdi-client" => vdi_client(link, args),
        "c-client" => c_client(link, args),
        "vdi-server" => vdi_server(link, args),
        "latency-server" => latency_server(link, args),
        "stream-producer" => stream_producer(link, args, one_fd(fds)?),
        "stream-consumer" => stream_consumer(link, args, one_fd(fds)?),
        "ring-producer" => ring_producer(link, args, one_fd(fds)?),
        "ring-consumer" => ring_consumer(link, args, one_fd(fds)?),
        _ => bail!("unknown role {role}"),
    }
}

fn one_fd(fds: Vec<OwnedFd>) -> Result<OwnedFd> {
    fds.into_iter()
        .next()
        .ok_or_else(|| anyhow!("the bench sent no descriptor"))
}

/// Memory figures now, and CPU use since `since` (taken when the timed part began).
fn mem_fields(since: &CpuUsage) -> String {
    let m = MemStatus::current();
    let u = CpuUsage::current().since(since);
    format!(
        "rss_kib={} hwm_kib={} anon_kib={} shmem_kib={} user_us={} sys_us={} vcsw={} ivcsw={}",
        m.rss_kib,
        m.hwm_kib,
        m.anon_kib,
        m.shmem_kib,
        u.user_us,
        u.system_us,
        u.voluntary,
        u.involuntary
    )
}

fn plan(args: &Args) -> Result<Plan> {
    Ok(Plan {
        devices: args.u32("devices").unwrap_or(1),
        total: args.u64("total")?,
        transfer: args.u32("transfer")?,
    })
}

/// The name of device `i` (device 0 has the set's name).
fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}#{i}")
    }
}

/// Counts devices (or chains) that finished; the bench's main thread sleeps on it.
#[derive(Default)]
struct Done {
    n: Mutex<u32>,
    cv: Condvar,
}

impl Done {
    fn add(&self) {
        *self.n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    fn wait_for(&self, count: u32) {
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        while *n < count {
            n = self.cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

// ---------------------------------------------------------------------------------------
// vdi: the client (backup application, consumer)

/// Creates the set, serves every device on a thread of its own: checksums each Write's
/// buffer in place and completes it; completes any other command at once.
fn vdi_client(link: &Link, args: &Args) -> Result<()> {
    let name = args.str("set")?;
    let plan = plan(args)?;
    let set = ClientSet::create(name, &VdConfig::with_devices(plan.devices))?;
    link.send("created")?;
    let cfg = set.get_configuration(Timeout::from_millis(30_000))?;
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let usage0 = Mutex::new(CpuUsage::current());
    let results = std::thread::scope(|s| -> Result<Vec<Served>> {
        let handles: Vec<_> = (0..plan.devices)
            .map(|d| {
                let (set, tx) = (&set, tx.clone());
                s.spawn(move || serve_device(set, name, d, &plan, tx))
            })
            .collect();
        drop(tx); // a thread that dies unannounced then ends the count
        let opened = (0..plan.devices).all(|_| rx.recv().unwrap_or(false));
        if opened {
            *usage0.lock().unwrap_or_else(|e| e.into_inner()) = CpuUsage::current();
            link.send("ready")?;
        } else {
            let _ = set.signal_abort();
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a device thread panicked"))?)
            .collect()
    })?;
    let usage0 = *usage0.lock().unwrap_or_else(|e| e.into_inner());
    report_served(link, &results, cfg.buffer_area_size, &usage0)?;
    set.close()?;
    Ok(())
}

/// The client's `done` message: the last device's end, the sums, the memory figures.
fn report_served(link: &Link, results: &[Served], area: u32, usage0: &CpuUsage) -> Result<()> {
    let mem = mem_fields(usage0);
    let end = results.iter().map(|r| r.end_ns).max().unwrap_or(0);
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let commands: u64 = results.iter().map(|r| r.commands).sum();
    let bad: u64 = results.iter().map(|r| r.bad).sum();
    link.send(&format!(
        "done end_ns={end} bytes={bytes} commands={commands} bad={bad} area={area} {mem}"
    ))
}

struct Served {
    end_ns: u64,
    bytes: u64,
    commands: u64,
    bad: u64,
}

/// Whether the chunk at `position` of device `d` is wrong (its length or its checksum):
/// the consumer's check, the same for both clients.
fn bad_chunk(plan: &Plan, d: u32, position: u64, data: &[u8]) -> bool {
    let k = position / u64::from(plan.transfer.max(1));
    let n = data.len();
    work::checksum(data) != work::expected_checksum(n, work::pattern(d, k))
        || n != plan.chunk_len(d, k)
}

fn serve_device(
    set: &ClientSet,
    name: &str,
    d: u32,
    plan: &Plan,
    opened: std::sync::mpsc::Sender<bool>,
) -> Result<Served> {
    let dev = match set.open_device(&device_name(name, d)) {
        Ok(dev) => {
            let _ = opened.send(true);
            dev
        }
        Err(e) => {
            let _ = opened.send(false);
            return Err(e.into());
        }
    };
    let want = plan.device_bytes(d);
    let mut r = Served {
        end_ns: 0,
        bytes: 0,
        commands: 0,
        bad: 0,
    };
    loop {
        let cmd = match dev.get_command(Timeout::Infinite) {
            Ok(cmd) => cmd,
            Err(e) if e.code() == ErrorCode::Close => break,
            Err(e) => return Err(e.into()),
        };
        if cmd.code() != CommandCode::WRITE {
            cmd.complete_ok()?;
            continue;
        }
        // The chunk's number travels as its position, so completions may come back in
        // any order without confusing the check.
        let data = cmd.buffer().unwrap_or(&[]);
        let n = data.len();
        if bad_chunk(plan, d, cmd.position(), data) {
            r.bad += 1;
        }
        cmd.complete(completion::ERROR_SUCCESS, n as u32, 0)?;
        r.bytes += n as u64;
        r.commands += 1;
        if r.bytes >= want && r.end_ns == 0 {
            r.end_ns = now_ns();
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// vdi: the C client (the same work over libvdi's C entry points)

/// As [`vdi_client`], through libvdi.so: the set is created, configured and opened with
/// the C functions, and each device's thread runs the serving loop written in C
/// (`c/c_client.c`: `vdi_client_device_get_command`, the check, `..._complete_command`).
fn c_client(link: &Link, args: &Args) -> Result<()> {
    let lib = LibVdi::load(std::path::Path::new(args.str("libvdi")?))?;
    let name = args.str("set")?;
    let plan = plan(args)?;
    let set = lib.client_set()?;
    set.create(name, plan.devices)?;
    link.send("created")?;
    let cfg = set.get_configuration(30_000)?;
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let usage0 = Mutex::new(CpuUsage::current());
    let results = std::thread::scope(|s| -> Result<Vec<Served>> {
        let handles: Vec<_> = (0..plan.devices)
            .map(|d| {
                let (set, tx, plan) = (&set, tx.clone(), &plan);
                s.spawn(move || -> Result<Served> {
                    let dev = match set.open_device(&device_name(name, d)) {
                        Ok(dev) => {
                            let _ = tx.send(true);
                            dev
                        }
                        Err(e) => {
                            let _ = tx.send(false);
                            return Err(e.into());
                        }
                    };
                    let r = dev.serve(plan.device_bytes(d), |pos, data| {
                        bad_chunk(plan, d, pos, data)
                    })?;
                    Ok(Served {
                        end_ns: r.end_ns,
                        bytes: r.bytes,
                        commands: r.commands,
                        bad: r.bad,
                    })
                })
            })
            .collect();
        drop(tx);
        let opened = (0..plan.devices).all(|_| rx.recv().unwrap_or(false));
        if opened {
            *usage0.lock().unwrap_or_else(|e| e.into_inner()) = CpuUsage::current();
            link.send("ready")?;
        } else {
            let _ = set.signal_abort();
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a device thread panicked"))?)
            .collect()
    })?;
    let usage0 = *usage0.lock().unwrap_or_else(|e| e.into_inner());
    report_served(link, &results, cfg.buffer_area_size, &usage0)?;
    set.close()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// vdi: the server (engine, producer)

fn configure(set: &ServerSet, transfer: u32, buffers: u32) -> Result<()> {
    set.get_configuration()?;
    set.begin_configuration(features::WRITE_MEDIA, 512, 0, transfer, 0)?;
    set.request_buffers(transfer, 0, buffers)?;
    set.end_configuration()?;
    Ok(())
}

/// Opens the set, streams the plan through every device with `buffers / devices`
/// commands in flight on each, then closes.
fn vdi_server(link: &Link, args: &Args) -> Result<()> {
    let name = args.str("set")?;
    let plan = plan(args)?;
    let buffers = args.u32("buffers")?;
    let engine = args.str("engine")?;
    if buffers < plan.devices {
        bail!("{buffers} buffers cannot serve {} devices", plan.devices);
    }
    let set = ServerSet::open(name)?;
    configure(&set, plan.transfer, buffers)?;
    let devices = (0..plan.devices)
        .map(|d| set.open_device(&device_name(name, d)))
        .collect::<Result<Vec<_>, _>>()?;
    // Device d gets buffers / devices of them (the first few one more).
    let mut per_device: Vec<Vec<ServerBuffer>> = (0..plan.devices).map(|_| Vec::new()).collect();
    for b in 0..buffers {
        per_device[(b % plan.devices) as usize].push(set.allocate_buffer(plan.transfer, 0)?);
    }
    let errors = Arc::new(AtomicU64::new(0));
    let mut usage0 = CpuUsage::current();
    let start = std::thread::scope(|s| -> Result<u64> {
        let agent = s.spawn(|| set.execute_completion_agent());
        let run = || -> Result<u64> {
            link.send("ready")?;
            link.expect("go")?;
            usage0 = CpuUsage::current();
            let start = now_ns();
            match engine {
                "callback" => callback_engine(devices, per_device, &plan, &errors)?,
                "threads" => threads_engine(devices, per_device, &plan, &errors)?,
                _ => bail!("unknown engine {engine}"),
            }
            Ok(start)
        };
        let r = run();
        if r.is_err() {
            let _ = set.signal_abort();
        }
        let agent = agent
            .join()
            .map_err(|_| anyhow!("the completion agent panicked"))?;
        let start = r?;
        agent?;
        Ok(start)
    })?;
    let mem = mem_fields(&usage0);
    link.send(&format!(
        "done start_ns={start} errors={} {mem}",
        errors.load(Ordering::Relaxed)
    ))?;
    set.close()?;
    Ok(())
}

/// One device's state for the callback engine.
struct Chain {
    dev: ServerDevice,
    index: u32,
    plan: Plan,
    next: AtomicU64,
    live: AtomicU32,
    errors: Arc<AtomicU64>,
    done: Arc<Done>,
}

impl Chain {
    /// Fills `buf` with the next chunk and sends it; the completion sends the next one.
    fn send_next(self: &Arc<Chain>, mut buf: ServerBuffer) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.plan.chunk_len(self.index, k);
        if n == 0 {
            drop(buf);
            self.retire();
            return;
        }
        work::fill(&mut buf.as_mut_slice()[..n], work::pattern(self.index, k));
        let me = self.clone();
        let cmd =
            ServerCommand::write(buf, n as u32).with_position(k * u64::from(self.plan.transfer));
        // On failure the callback runs at once with the error, and retires the buffer.
        let _ = self
            .dev
            .send_command(cmd, move |done: Completion| me.completed(done));
    }

    fn completed(self: Arc<Chain>, done: Completion) {
        let ok = done.is_success() && done.bytes_transferred == done.size;
        match done.buffer {
            Some(buf) if ok => self.send_next(buf),
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.retire();
            }
        }
    }

    fn retire(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.add();
        }
    }
}

/// The engine that refills and resends each buffer from its completion callback, on the
/// completion agent's thread: one busy thread on the server side, however many devices.
fn callback_engine(
    devices: Vec<ServerDevice>,
    buffers: Vec<Vec<ServerBuffer>>,
    plan: &Plan,
    errors: &Arc<AtomicU64>,
) -> Result<()> {
    let done = Arc::new(Done::default());
    let chains: Vec<Arc<Chain>> = devices
        .into_iter()
        .zip(&buffers)
        .enumerate()
        .map(|(i, (dev, bufs))| {
            Arc::new(Chain {
                dev,
                index: i as u32,
                plan: *plan,
                next: AtomicU64::new(0),
                live: AtomicU32::new(bufs.len() as u32),
                errors: errors.clone(),
                done: done.clone(),
            })
        })
        .collect();
    for (chain, bufs) in chains.iter().zip(buffers) {
        for b in bufs {
            chain.send_next(b);
        }
    }
    done.wait_for(chains.len() as u32);
    for c in &chains {
        c.dev.close_device()?;
    }
    Ok(())
}

/// Buffers handed back by completion callbacks to a device's sender thread.
#[derive(Default)]
struct Returns {
    bufs: Mutex<Vec<ServerBuffer>>,
    count: AtomicU32,
    word: AtomicU32,
}

impl Returns {
    fn put(&self, b: ServerBuffer) {
        self.bufs.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        self.count.fetch_add(1, Ordering::Release);
        vdi::protocol::event::notify(&self.word);
    }

    fn take_all(&self, into: &mut Vec<ServerBuffer>) {
        // The library's own wait (spin, then yield, then sleep): with a sender thread per
        // device there are more waiters than cores, and a pure spin would starve them.
        vdi::protocol::event::wait_until(&self.word, None, || {
            self.count.load(Ordering::Acquire) > 0
        });
        let mut q = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        self.count.fetch_sub(q.len() as u32, Ordering::AcqRel);
        into.append(&mut q);
    }
}

/// The engine with one sender thread per device (fill, send; completions hand the
/// buffers back): the shape of an engine whose producers are its own threads.
fn threads_engine(
    devices: Vec<ServerDevice>,
    buffers: Vec<Vec<ServerBuffer>>,
    plan: &Plan,
    errors: &Arc<AtomicU64>,
) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .into_iter()
            .zip(buffers)
            .enumerate()
            .map(|(i, (dev, mut free))| {
                s.spawn(move || -> Result<()> {
                    let i = i as u32;
                    let owned = free.len();
                    let back = Arc::new(Returns::default());
                    for k in 0..plan.chunks(i) {
                        if free.is_empty() {
                            back.take_all(&mut free);
                        }
                        let Some(mut buf) = free.pop() else {
                            bail!("no buffer came back");
                        };
                        let n = plan.chunk_len(i, k);
                        work::fill(&mut buf.as_mut_slice()[..n], work::pattern(i, k));
                        let (b2, e2) = (back.clone(), errors.clone());
                        let cmd = ServerCommand::write(buf, n as u32)
                            .with_position(k * u64::from(plan.transfer));
                        let _ = dev.send_command(cmd, move |done: Completion| {
                            if !done.is_success() || done.bytes_transferred != done.size {
                                e2.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(b) = done.buffer {
                                b2.put(b);
                            }
                        });
                    }
                    while free.len() < owned {
                        back.take_all(&mut free);
                    }
                    dev.close_device()?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a sender thread panicked"))??;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// vdi: command round trips

struct Lat {
    dev: ServerDevice,
    left: AtomicU64,
    samples: Mutex<Vec<u64>>,
    errors: AtomicU64,
    done: Done,
}

impl Lat {
    /// Sends a Flush; its callback records the round trip and sends the next one, so
    /// exactly one command is in flight and the commands follow back to back.
    fn chain(self: &Arc<Lat>) {
        let me = self.clone();
        let t0 = now_ns();
        let _ = self.dev.send_command(
            ServerCommand::new(CommandCode::FLUSH),
            move |c: Completion| {
                let t1 = now_ns();
                if !c.is_success() {
                    me.errors.fetch_add(1, Ordering::Relaxed);
                    me.done.add();
                    return;
                }
                me.samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t1.saturating_sub(t0));
                if me.left.fetch_sub(1, Ordering::AcqRel) > 1 {
                    me.chain();
                } else {
                    me.done.add();
                }
            },
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Round trips of a command without data (send, get, complete, callback): `busy` back
/// to back, then `idle` ones each after a pause long enough for both sides to sleep.
fn latency_server(link: &Link, args: &Args) -> Result<()> {
    let name = args.str("set")?;
    let busy = args.u64("busy")?.max(1);
    let idle = args.u64("idle")?;
    let pause = Duration::from_micros(args.u64("pause_us")?);
    let set = ServerSet::open(name)?;
    configure(&set, 64 * 1024, 1)?;
    let dev = set.open_device(name)?;
    let lat = Arc::new(Lat {
        dev,
        left: AtomicU64::new(0),
        samples: Mutex::new(Vec::with_capacity(busy as usize + idle as usize)),
        errors: AtomicU64::new(0),
        done: Done::default(),
    });
    let (busy_ns, idle_ns) = std::thread::scope(|s| -> Result<(Vec<u64>, Vec<u64>)> {
        let agent = s.spawn(|| set.execute_completion_agent());
        let run = || -> Result<(Vec<u64>, Vec<u64>)> {
            link.send("ready")?;
            link.expect("go")?;
            // Warm-up, then the busy samples.
            let mut rounds = 0;
            for n in [busy.div_ceil(10), busy] {
                lat.samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                lat.left.store(n, Ordering::Release);
                lat.chain();
                rounds += 1;
                lat.done.wait_for(rounds);
            }
            let busy_ns =
                std::mem::take(&mut *lat.samples.lock().unwrap_or_else(|e| e.into_inner()));
            // Idle: one command at a time after a pause.
            let mut idle_ns = Vec::with_capacity(idle as usize);
            for _ in 0..idle {
                std::thread::sleep(pause);
                lat.left.store(1, Ordering::Release);
                lat.chain();
                rounds += 1;
                lat.done.wait_for(rounds);
                if let Some(&x) = lat.samples.lock().unwrap_or_else(|e| e.into_inner()).last() {
                    idle_ns.push(x);
                }
            }
            if lat.errors.load(Ordering::Relaxed) > 0 {
                bail!("a round-trip command failed");
            }
            lat.dev.close_device()?;
            Ok((busy_ns, idle_ns))
        };
        let r = run();
        if r.is_err() {
            let _ = set.signal_abort();
        }
        let agent = agent
            .join()
            .map_err(|_| anyhow!("the completion agent panicked"))?;
        let r = r?;
        agent?;
        Ok(r)
    })?;
    drop(lat);
    let (mut b, mut i) = (busy_ns, idle_ns);
    b.sort_unstable();
    i.sort_unstable();
    let mean = b.iter().sum::<u64>() as f64 / b.len().max(1) as f64;
    link.send(&format!(
        "done busy_n={} busy_p50_ns={} busy_p99_ns={} busy_mean_ns={mean:.0} busy_max_ns={} idle_n={} idle_p50_ns={} idle_p99_ns={} {}",
        b.len(),
        percentile(&b, 0.5),
        percentile(&b, 0.99),
        b.last().copied().unwrap_or(0),
        i.len(),
        percentile(&i, 0.5),
        percentile(&i, 0.99),
        mem_fields(&CpuUsage::default())
    ))?;
    set.close()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Pipe and Unix stream socket

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => bail!("write: {e}"),
        }
    }
    Ok(())
}

fn read_exact(fd: &OwnedFd, mut buf: &mut [u8]) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => bail!("the stream ended early"),
            Ok(n) => buf = &mut buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => bail!("read: {e}"),
        }
    }
    Ok(())
}

/// Fills a chunk-sized buffer with each chunk in turn and writes it whole.
fn stream_producer(link: &Link, args: &Args, fd: OwnedFd) -> Result<()> {
    let plan = plan(args)?;
    let mut buf = vec![0u8; plan.transfer as usize];
    link.send("ready")?;
    link.expect("go")?;
    let usage0 = CpuUsage::current();
    let start = now_ns();
    for k in 0..plan.chunks(0) {
        let n = plan.chunk_len(0, k);
        work::fill(&mut buf[..n], work::pattern(0, k));
        write_all(&fd, &buf[..n])?;
    }
    drop(fd);
    link.send(&format!("done start_ns={start} {}", mem_fields(&usage0)))
}

/// Reads each chunk whole into a chunk-sized buffer and checksums it.
fn stream_consumer(link: &Link, args: &Args, fd: OwnedFd) -> Result<()> {
    let plan = plan(args)?;
    let mut buf = vec![0u8; plan.transfer as usize];
    let usage0 = CpuUsage::current();
    link.send("ready")?;
    let mut bad = 0u64;
    for k in 0..plan.chunks(0) {
        let n = plan.chunk_len(0, k);
        read_exact(&fd, &mut buf[..n])?;
        if work::checksum(&buf[..n]) != work::expected_checksum(n, work::pattern(0, k)) {
            bad += 1;
        }
    }
    let end = now_ns();
    link.send(&format!(
        "done end_ns={end} bad={bad} {}",
        mem_fields(&usage0)
    ))
}

// ---------------------------------------------------------------------------------------
// Raw ring

fn attach_ring(fd: OwnedFd) -> Result<SharedMemory> {
    SharedMemory::attach(fd, None).map_err(|e| anyhow!("mapping the ring: {e:?}"))
}

/// Fills each chunk in place in the next free slot.
fn ring_producer(link: &Link, args: &Args, fd: OwnedFd) -> Result<()> {
    let plan = plan(args)?;
    let mem = attach_ring(fd)?;
    let (mut p, _) = RawRing::new(&mem, args.u32("slots")?, plan.transfer as usize)?.split();
    link.send("ready")?;
    link.expect("go")?;
    let usage0 = CpuUsage::current();
    let start = now_ns();
    for k in 0..plan.chunks(0) {
        let n = plan.chunk_len(0, k);
        p.send(n, |b| work::fill(b, work::pattern(0, k)))
            .context("ring send")?;
    }
    link.send(&format!("done start_ns={start} {}", mem_fields(&usage0)))
}

/// Checksums each chunk in place in its slot.
fn ring_consumer(link: &Link, args: &Args, fd: OwnedFd) -> Result<()> {
    let plan = plan(args)?;
    let mem = attach_ring(fd)?;
    let (_, mut c) = RawRing::new(&mem, args.u32("slots")?, plan.transfer as usize)?.split();
    let usage0 = CpuUsage::current();
    link.send("ready")?;
    let mut bad = 0u64;
    for k in 0..plan.chunks(0) {
        let n = plan.chunk_len(0, k);
        let (len, sum) = c
            .recv(|b| (b.len(), work::checksum(b)))
            .context("ring receive")?;
        if len != n || sum != work::expected_checksum(n, work::pattern(0, k)) {
            bad += 1;
        }
    }
    let end = now_ns();
    link.send(&format!(
        "done end_ns={end} bad={bad} {}",
        mem_fields(&usage0)
    ))
}
