//! `vdi soak`: backs up, verifies and restores in a loop, with random (seeded) sources,
//! device counts, transfer sizes, buffer counts and compression, and checks every byte of
//! every restore; stops at the first failure with the seed that reproduces it.
//!
//! Run `i` of `vdi soak --seed S` draws its parameters from seed `S + i` alone, so
//! `vdi soak --runs 1 --seed S+i` repeats exactly that run.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::Serialize;
use serde_json::json;
use vdi_backup::format::manifest::Compression;
use vdi_backup::units::human_bytes;
use vdi_backup::{Context, Result};

use crate::cli::{EngineKnobs, SoakArgs};
use crate::output::print_json;
use crate::progress::Mode;
use crate::spawn as runner;
use vdi_backup::cancel;
use vdi_backup::error::{Kind, fail, kind_of};

/// One run's parameters.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// The seed the run's parameters (and its source data) come from.
    pub seed: u64,
    /// `file` or `sqlite`.
    pub source: &'static str,
    /// Source size for a file; rows for a database.
    pub size: u64,
    /// Devices.
    pub devices: u32,
    /// The backup's max transfer size.
    pub max_transfer: u32,
    /// The backup's block size.
    pub block_size: u32,
    /// The backup's buffer count (None: the engine's default).
    pub buffers: Option<u32>,
    /// The restore's max transfer size.
    pub restore_transfer: u32,
    /// The restore's block size.
    pub restore_block: u32,
    /// Compression of the stored streams.
    pub compression: String,
}

impl Params {
    /// Draws run `seed`'s parameters; files are at most `max_size` bytes.
    pub fn draw(seed: u64, max_size: u64) -> Params {
        let mut r = fastrand::Rng::with_seed(seed);
        let block_size = 512u32 << r.u32(0..8);
        let max_transfer = match r.u32(0..4) {
            0 => 65536,
            1 => 65536 * r.u32(1..=4),
            2 => 65536 * r.u32(1..=16),
            _ => 65536 * r.u32(1..=64),
        };
        let restore_transfer = if r.bool() {
            max_transfer
        } else {
            65536 * r.u32(1..=16)
        };
        let restore_block = if r.bool() {
            block_size
        } else {
            512u32 << r.u32(0..8)
        };
        let sqlite = r.u32(0..8) == 0;
        let size = if sqlite {
            r.u64(0..=3000)
        } else {
            let b = u64::from(block_size);
            let payload = u64::from(vdi_backup::format::stream::max_payload(max_transfer));
            match r.u32(0..10) {
                0 => 0,
                1 => r.u64(1..b),
                2 => b * r.u64(1..64) + r.u64(0..3).saturating_sub(1),
                3 => payload * r.u64(1..8) + r.u64(0..3).saturating_sub(1),
                _ => r.u64(0..=max_size),
            }
            .min(max_size)
        };
        let devices = if r.u32(0..4) == 0 { 1 } else { r.u32(1..=8) };
        let buffers = if r.bool() {
            None
        } else {
            Some(r.u32(devices..=devices * 5))
        };
        let compression = match r.u32(0..5) {
            0 | 1 => "none".to_owned(),
            2 => "zstd".to_owned(),
            _ => format!("zstd:{}", r.i32(1..=9)),
        };
        Params {
            seed,
            source: if sqlite { "sqlite" } else { "file" },
            size,
            devices,
            max_transfer,
            block_size,
            buffers,
            restore_transfer,
            restore_block,
            compression,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} {}, {} device(s), transfer {}K/{}K (backup/restore), block {}/{}, buffers {}, {}",
            self.source,
            if self.source == "file" {
                human_bytes(self.size)
            } else {
                format!("{} rows", self.size)
            },
            self.devices,
            self.max_transfer / 1024,
            self.restore_transfer / 1024,
            self.block_size,
            self.restore_block,
            self.buffers
                .map_or_else(|| "default".to_owned(), |b| b.to_string()),
            self.compression
        )
    }
}

/// Writes `size` bytes drawn from `seed`: random runs mixed with repeated and zero runs,
/// so that compression has something to find and something it cannot shrink.
fn write_file(path: &Path, seed: u64, size: u64) -> Result<()> {
    let mut r = fastrand::Rng::with_seed(seed ^ 0x5eed_f11e);
    let mut f = BufWriter::new(std::fs::File::create(path)?);
    let mut left = size;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = (r.usize(1..=buf.len()) as u64).min(left) as usize;
        match r.u32(0..3) {
            0 => r.fill(&mut buf[..n]),
            1 => buf[..n].fill(r.u8(..)),
            _ => buf[..n].fill(0),
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Makes a database of `rows` random rows.
fn write_db(path: &Path, seed: u64, rows: u64) -> Result<()> {
    let mut r = fastrand::Rng::with_seed(seed ^ 0xdb);
    let mut c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, s TEXT, b BLOB);",
    )?;
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4)")?;
        for id in 0..rows {
            let blob: Vec<u8> = (0..r.usize(0..3000)).map(|_| r.u8(..)).collect();
            let s: String = (0..r.usize(0..40)).map(|_| r.alphanumeric()).collect();
            st.execute(rusqlite::params![id as i64, r.i64(..), s, blob])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// blake3 of every row of table `t`, in order.
fn db_digest(path: &Path) -> Result<String> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare("SELECT id, n, s, b FROM t ORDER BY id")?;
    let mut rows = st.query([])?;
    let mut h = blake3::Hasher::new();
    while let Some(row) = rows.next()? {
        h.update(&row.get::<_, i64>(0)?.to_le_bytes());
        h.update(&row.get::<_, i64>(1)?.to_le_bytes());
        let s: String = row.get(2)?;
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
        let b: Vec<u8> = row.get(3)?;
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(&b);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Compares two files byte by byte; says where they first differ.
fn compare_files(a: &Path, b: &Path) -> Result<()> {
    let (la, lb) = (std::fs::metadata(a)?.len(), std::fs::metadata(b)?.len());
    if la != lb {
        return Err(fail(
            Kind::Damaged,
            format!("the restored file has {lb} bytes, the source {la}"),
        ));
    }
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = vdi_backup::codec::read_full(&mut fa, &mut ba)?;
        let m = vdi_backup::codec::read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..m])
                .position(|(x, y)| x != y)
                .unwrap_or(n.min(m));
            return Err(fail(
                Kind::Damaged,
                format!(
                    "the restored file differs from the source at byte {}",
                    at + i as u64
                ),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        at += n as u64;
    }
}

/// What one run moved.
struct RunOutcome {
    source_bytes: u64,
    stored_bytes: u64,
}

fn one_run(p: &Params, dir: &Path) -> Result<RunOutcome> {
    let (src, target) = match p.source {
        "sqlite" => {
            let s = dir.join("src.db");
            write_db(&s, p.seed, p.size).context("making the source database")?;
            (s, dir.join("restored.db"))
        }
        _ => {
            let s = dir.join("src.bin");
            write_file(&s, p.seed, p.size).context("making the source file")?;
            (s, dir.join("restored.bin"))
        }
    };
    let bk = dir.join("backup");
    let compression = Compression::parse(&p.compression).map_err(|e| fail(Kind::Usage, e))?;
    let knobs = EngineKnobs {
        device_mode: Default::default(),
        buffer_count: p.buffers,
        max_transfer_size: p.max_transfer,
        block_size: p.block_size,
    };
    let spec = |path: &Path| format!("{}:{}", p.source, path.display());
    let b = runner::backup(&runner::BackupRequest {
        secret: None,
        source: &spec(&src),
        dest: &bk.display().to_string(),
        devices: p.devices,
        compression,
        set: None,
        force: false,
        modes: vdi_backup::store::dir::Modes::DEFAULT,
        stall: Some(std::time::Duration::from_secs(300)),
        knobs: &knobs,
        display: std::sync::Arc::new(Mode::pick(true)),
        faults: &[],
    })
    .context("backup")?;
    let report = vdi_backup::verify::verify_dir(&bk).map_err(|e| {
        fail(
            Kind::Damaged,
            format!("vdi verify: the backup is not complete: {e}"),
        )
    })?;
    if !report.ok() {
        return Err(fail(
            Kind::Damaged,
            format!("vdi verify: {}", report.problems.join("; ")),
        ));
    }
    let rknobs = EngineKnobs {
        device_mode: Default::default(),
        buffer_count: None,
        max_transfer_size: p.restore_transfer,
        block_size: p.restore_block,
    };
    let r = runner::restore(&runner::RestoreRequest {
        secret: None,
        backup: &bk.display().to_string(),
        target: &spec(&target),
        devices: None,
        set: None,
        force: false,
        integrity_check: p.source == "sqlite",
        stall: Some(std::time::Duration::from_secs(300)),
        knobs: &rknobs,
        display: std::sync::Arc::new(Mode::pick(true)),
        faults: &[],
    })
    .context("restore")?;
    if p.source == "sqlite" {
        let (a, b) = (db_digest(&src)?, db_digest(&target)?);
        if a != b {
            return Err(fail(
                Kind::Damaged,
                format!("the restored database's rows differ from the source's ({b} vs {a})"),
            ));
        }
    } else {
        compare_files(&src, &target)?;
        if r.engine.source_bytes != p.size {
            return Err(fail(
                Kind::Damaged,
                format!(
                    "the engine restored {} bytes of a {}-byte source",
                    r.engine.source_bytes, p.size
                ),
            ));
        }
    }
    Ok(RunOutcome {
        source_bytes: b.engine.source_bytes,
        stored_bytes: b.done.manifest.total_stored_bytes,
    })
}

/// `vdi soak`.
/// How often a soak says how it is going.
const SAY_EVERY: Duration = Duration::from_secs(5);

pub fn run(a: &SoakArgs) -> Result<()> {
    let seed = a.seed.unwrap_or_else(|| fastrand::u64(..) >> 16);
    let limit = match (a.duration, a.runs) {
        (None, None) => Some(Duration::from_secs(600)),
        (d, _) => d,
    };
    let quiet = a.output.quiet || a.output.json;
    let scratch = match &a.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("vdi-soak-")
            .tempdir_in(d)
            .with_context(|| format!("creating a scratch directory in {}", d.display()))?,
        None => tempfile::Builder::new()
            .prefix("vdi-soak-")
            .tempdir()
            .context("creating a scratch directory")?,
    };
    if !quiet {
        tracing::info!(
            "soak: seed {seed}, {}{}, files up to {}, scratch {}",
            limit.map_or_else(String::new, |d| format!("for {} s", d.as_secs())),
            match (limit, a.runs) {
                (Some(_), Some(n)) => format!(" or {n} runs"),
                (None, Some(n)) => format!("{n} runs"),
                _ => String::new(),
            },
            human_bytes(a.max_size),
            scratch.path().display()
        );
    }
    let t0 = Instant::now();
    let mut last_said = t0;
    let (mut runs, mut bytes, mut stored) = (0u64, 0u64, 0u64);
    let mut failure: Option<(Params, vdi_backup::Error, PathBuf)> = None;
    loop {
        if a.runs.is_some_and(|n| runs >= n) || limit.is_some_and(|d| t0.elapsed() >= d) {
            break;
        }
        if cancel::interrupted() {
            break;
        }
        let p = Params::draw(seed.wrapping_add(runs), a.max_size);
        let dir = scratch.path().join(format!("run-{runs}"));
        std::fs::create_dir(&dir).context("creating the run's directory")?;
        let started = Instant::now();
        match one_run(&p, &dir) {
            Ok(o) => {
                runs += 1;
                bytes += o.source_bytes;
                stored += o.stored_bytes;
                let _ = std::fs::remove_dir_all(&dir);
                // A summary after the first run and then every few seconds, not a line
                // per run.
                if !quiet && (runs == 1 || last_said.elapsed() >= SAY_EVERY) {
                    last_said = Instant::now();
                    let el = t0.elapsed().as_secs_f64();
                    tracing::info!(
                        "soak: run {runs} ok; {runs} runs, 0 failures in {el:.0} s ({:.1} runs/s): {} backed up and restored; last run {:.2} s: {}",
                        runs as f64 / el.max(1e-3),
                        human_bytes(bytes),
                        started.elapsed().as_secs_f64(),
                        p.describe(),
                    );
                }
            }
            Err(e) => {
                failure = Some((p, e, dir));
                break;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let interrupted = cancel::interrupted();
    let kept = failure.as_ref().and_then(|(_, _, dir)| {
        if a.keep_failed {
            let keep = scratch.path().with_extension("failed");
            std::fs::rename(dir, &keep).ok().map(|()| keep)
        } else {
            None
        }
    });
    drop(scratch);
    if a.output.json {
        print_json(
            &json!({
                "command": "soak",
                "ok": failure.is_none() && !interrupted,
                "seed": seed,
                "runs": runs,
                "source_bytes": bytes,
                "moved_bytes": bytes * 2,
                "stored_bytes": stored,
                "seconds": secs,
                "failed_run": failure.as_ref().map(|(p, e, _)| json!({
                    "params": p,
                    "error": format!("{e:#}"),
                    "reproduce": format!("vdi soak --runs 1 --seed {} --max-size {}", p.seed, a.max_size),
                })),
            }),
            false,
        );
    }
    if let Some((p, e, _)) = failure {
        let kind = match kind_of(&e) {
            Kind::Other => Kind::Damaged,
            k => k,
        };
        return Err(fail(
            kind,
            format!(
                "soak run {} failed after {runs} good run(s) in {secs:.0} s: {e:#}\n  parameters: {}\n  reproduce with: vdi soak --runs 1 --seed {} --max-size {}{}",
                runs + 1,
                p.describe(),
                p.seed,
                a.max_size,
                kept.map_or_else(String::new, |k| format!(
                    "\n  its files are kept in {}",
                    k.display()
                ))
            ),
        ));
    }
    if interrupted {
        return Err(fail(
            Kind::Interrupted,
            format!("soak interrupted after {runs} good run(s) in {secs:.0} s (seed {seed})"),
        ));
    }
    if !a.output.json && !a.output.quiet {
        tracing::info!(
            "soak: {runs} runs, 0 failures in {secs:.0} s ({:.2} h): {} backed up, verified and restored byte for byte ({} stored); seed {seed}",
            secs / 3600.0,
            human_bytes(bytes),
            human_bytes(stored)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    fn slurp(p: &Path) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        std::fs::File::open(p)?.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn durations() {
        assert_eq!(
            crate::cli::parse_duration("90"),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            crate::cli::parse_duration("10m"),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            crate::cli::parse_duration("1h30m"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(crate::cli::parse_duration("5s"), Ok(Duration::from_secs(5)));
        for bad in ["", "m", "10x", "10m5", "-3"] {
            assert!(crate::cli::parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_are_valid_and_repeatable() {
        for seed in 0..2000 {
            let p = Params::draw(seed, 8 << 20);
            assert_eq!(p.describe(), Params::draw(seed, 8 << 20).describe());
            assert!((1..=8).contains(&p.devices));
            assert!(p.max_transfer.is_multiple_of(65536) && p.max_transfer <= 4 << 20);
            assert!(p.restore_transfer.is_multiple_of(65536) && p.restore_transfer <= 4 << 20);
            assert!(p.block_size.is_power_of_two() && (512..=65536).contains(&p.block_size));
            assert!(p.restore_block.is_power_of_two() && p.restore_block <= 65536);
            assert!(p.source == "sqlite" || p.size <= 8 << 20);
            Compression::parse(&p.compression).unwrap();
        }
    }

    #[test]
    fn files_compare() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        write_file(&a, 7, 300_001).unwrap();
        write_file(&b, 7, 300_001).unwrap();
        assert_eq!(slurp(&a).unwrap().len(), 300_001);
        compare_files(&a, &b).unwrap();
        let mut v = slurp(&b).unwrap();
        v[123_456] ^= 1;
        std::fs::write(&b, &v).unwrap();
        let e = compare_files(&a, &b).unwrap_err();
        assert!(format!("{e}").contains("byte 123456"), "{e}");
    }
}
