//! `vdi demo`: a sample SQLite database with realistic rows, backed up through VDI with
//! several devices (the engine in its own process), restored to a new file, and checked
//! (`PRAGMA integrity_check`, and every row of every table equal to the original).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, params};
use serde_json::json;
use vdi_backup::format::manifest::Compression;
use vdi_backup::units::{human_bytes, human_rate};
use vdi_backup::{Context, Result};

use crate::cli::{DemoArgs, EngineKnobs};
use crate::progress::Mode;
use crate::spawn as runner;
use vdi_backup::error::{Kind, fail};
use vdi_backup::source;

const FIRST: [&str; 24] = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Dennis",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "John",
    "Ken",
    "Linus",
    "Margaret",
    "Niklaus",
    "Ole",
    "Radia",
    "Rob",
    "Sophie",
    "Tim",
    "Unix",
    "Vint",
    "Whitfield",
    "Yukihiro",
];
const LAST: [&str; 20] = [
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Ritchie",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Lamarr",
    "Sutherland",
    "Backus",
    "Thompson",
    "Torvalds",
    "Hamilton",
    "Wirth",
    "Dahl",
    "Perlman",
    "Pike",
    "Wilson",
    "Berners-Lee",
];
const CITIES: [&str; 16] = [
    "Amsterdam",
    "Berlin",
    "Cairo",
    "Dublin",
    "Espoo",
    "Florence",
    "Geneva",
    "Helsinki",
    "Istanbul",
    "Jakarta",
    "Kyoto",
    "Lisbon",
    "Montreal",
    "Nairobi",
    "Oslo",
    "Prague",
];
const WORDS: [&str; 32] = [
    "sturdy",
    "compact",
    "wireless",
    "refurbished",
    "handmade",
    "organic",
    "ergonomic",
    "waterproof",
    "vintage",
    "modular",
    "lamp",
    "keyboard",
    "kettle",
    "backpack",
    "monitor",
    "notebook",
    "blender",
    "headphones",
    "bicycle",
    "tent",
    "with",
    "for",
    "and",
    "extra",
    "battery",
    "cable",
    "steel",
    "oak",
    "blue",
    "matte",
    "deluxe",
    "travel",
];
const STATUS: [&str; 5] = ["placed", "paid", "shipped", "delivered", "returned"];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn date(&mut self) -> String {
        format!(
            "20{:02}-{:02}-{:02} {:02}:{:02}:{:02}",
            15 + self.below(11),
            1 + self.below(12),
            1 + self.below(28),
            self.below(24),
            self.below(60),
            self.below(60)
        )
    }
}

/// Tables and their rows.
pub const TABLES: [&str; 3] = ["customers", "products", "orders"];

fn db_size(conn: &Connection) -> Result<u64> {
    let (pages, size): (i64, i64) = conn.query_row(
        "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((pages.max(0) * size.max(0)) as u64)
}

/// Creates a shop database of about `target` bytes: customers, products and orders.
pub fn make_sample_db(path: &Path, target: u64) -> Result<u64> {
    let mut conn =
        Connection::open(path).with_context(|| format!("creating {}", path.display()))?;
    // Generated fast (no journal, a large cache, the index built at the end), then put in
    // WAL mode as a live database would be.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA cache_size = -262144;
         CREATE TABLE customers(
             id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
             city TEXT NOT NULL, joined TEXT NOT NULL);
         CREATE TABLE products(
             id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
             description TEXT NOT NULL, price_cents INTEGER NOT NULL);
         CREATE TABLE orders(
             id INTEGER PRIMARY KEY,
             customer_id INTEGER NOT NULL REFERENCES customers(id),
             product_id INTEGER NOT NULL REFERENCES products(id),
             quantity INTEGER NOT NULL, ordered_at TEXT NOT NULL, status TEXT NOT NULL,
             note TEXT);",
    )?;
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let scale = (target / (300 << 20)).max(1);
    let customers = (20_000 * scale).min(200_000);
    let products = 2_000 * scale.min(5);
    {
        let tx = conn.transaction()?;
        {
            let mut c = tx.prepare("INSERT INTO customers VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for id in 1..=customers {
                let (f, l) = (FIRST[rng.below(FIRST.len())], LAST[rng.below(LAST.len())]);
                c.execute(params![
                    id as i64,
                    format!("{f} {l}"),
                    format!("{}.{}{id}@example.com", f.to_lowercase(), l.to_lowercase()),
                    CITIES[rng.below(CITIES.len())],
                    rng.date()
                ])?;
            }
            let mut p = tx.prepare("INSERT INTO products VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for id in 1..=products {
                let n = 3 + rng.below(3);
                let d = 12 + rng.below(20);
                p.execute(params![
                    id as i64,
                    format!("SKU-{id:06}"),
                    rng.words(n),
                    rng.words(d),
                    (199 + rng.below(50_000)) as i64
                ])?;
            }
        }
        tx.commit()?;
    }
    let mut id = 0i64;
    loop {
        let tx = conn.transaction()?;
        {
            let mut o = tx.prepare("INSERT INTO orders VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
            for _ in 0..20_000 {
                id += 1;
                let note = if rng.below(3) == 0 {
                    None
                } else {
                    let n = 4 + rng.below(12);
                    Some(rng.words(n))
                };
                o.execute(params![
                    id,
                    1 + rng.below(customers as usize) as i64,
                    1 + rng.below(products as usize) as i64,
                    1 + rng.below(5) as i64,
                    rng.date(),
                    STATUS[rng.below(STATUS.len())],
                    note
                ])?;
            }
        }
        tx.commit()?;
        // The index, built last, adds about a tenth.
        if db_size(&conn)? * 100 >= target * 88 {
            break;
        }
    }
    conn.execute_batch(
        "CREATE INDEX orders_by_customer ON orders(customer_id);
         PRAGMA journal_mode = WAL;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )?;
    db_size(&conn)
}

/// Row count and a blake3 digest of every row (in id order) of each table.
pub fn table_digests(path: &Path) -> Result<Vec<(String, u64, String)>> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for t in TABLES {
        let mut st = conn.prepare(&format!("SELECT * FROM {t} ORDER BY id"))?;
        let cols = st.column_count();
        let mut rows = st.query([])?;
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            for i in 0..cols {
                let v = r.get_ref(i)?;
                match v {
                    rusqlite::types::ValueRef::Null => h.update(b"\0N"),
                    rusqlite::types::ValueRef::Integer(x) => h.update(&x.to_le_bytes()),
                    rusqlite::types::ValueRef::Real(x) => h.update(&x.to_le_bytes()),
                    rusqlite::types::ValueRef::Text(s) | rusqlite::types::ValueRef::Blob(s) => {
                        h.update(&(s.len() as u64).to_le_bytes());
                        h.update(s)
                    }
                };
            }
            n += 1;
        }
        out.push((t.to_owned(), n, h.finalize().to_hex().to_string()));
    }
    Ok(out)
}

/// `vdi demo`.
pub fn run(a: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let quiet = a.output.quiet || a.output.json;
    let say = |s: String| {
        if !quiet {
            crate::print_line(format_args!("{s}"));
        }
    };
    let (_tmp, dir): (Option<tempfile::TempDir>, PathBuf) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("vdi-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            let p = t.path().to_owned();
            if a.keep {
                (None, t.keep())
            } else {
                (Some(t), p)
            }
        }
    };
    let db = dir.join("sample.db");
    let bk = dir.join("backup");
    let restored = dir.join("restored.db");
    for p in [&db, &restored] {
        for side in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{side}", p.display()));
        }
    }
    say(format!(
        "vdi demo: a sample SQLite database backed up and restored through the Virtual Device Interface\n  working in {}",
        dir.display()
    ));

    let t = Instant::now();
    let size = make_sample_db(&db, a.size)?;
    let before = table_digests(&db)?;
    let rows: u64 = before.iter().map(|t| t.1).sum();
    let gen_secs = t.elapsed();
    say(format!(
        "1. made {}: {} in 3 tables ({}), {rows} rows, in {:.1} s",
        db.display(),
        human_bytes(size),
        before
            .iter()
            .map(|(t, n, _)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        gen_secs.as_secs_f64()
    ));

    let knobs = EngineKnobs {
        device_mode: Default::default(),
        buffer_count: None,
        max_transfer_size: 1 << 20,
        block_size: 4096,
    };
    let display: std::sync::Arc<dyn vdi_backup::meter::Show> =
        std::sync::Arc::new(Mode::pick(quiet));
    let src = format!("sqlite:{}", db.display());
    let b = runner::backup(&runner::BackupRequest {
        secret: None,
        source: &src,
        dest: &bk.display().to_string(),
        devices: a.devices,
        compression: Compression::None,
        set: None,
        force: true,
        modes: vdi_backup::store::dir::Modes::DEFAULT,
        stall: Some(std::time::Duration::from_secs(300)),
        knobs: &knobs,
        faults: &[],
        display: display.clone(),
    })?;
    say(format!(
        "2. vdi backup {src} {} --devices {}\n   {:.2} s, {}: the engine (pid {}) took a consistent snapshot in {:.2} s and streamed {} in {} chunks through {} devices of set {} in {:.2} s ({})",
        bk.display(),
        a.devices,
        b.total.as_secs_f64(),
        human_rate(b.engine.source_bytes, b.total),
        b.engine.pid,
        b.engine.snapshot_seconds,
        human_bytes(b.engine.source_bytes),
        b.engine.chunks,
        a.devices,
        b.done.manifest.set_name,
        b.done.elapsed.as_secs_f64(),
        human_rate(b.engine.source_bytes, b.done.elapsed)
    ));

    let tgt = format!("sqlite:{}", restored.display());
    let r = runner::restore(&runner::RestoreRequest {
        secret: None,
        backup: &bk.display().to_string(),
        target: &tgt,
        devices: None,
        set: None,
        force: true,
        integrity_check: false,
        stall: Some(std::time::Duration::from_secs(300)),
        knobs: &knobs,
        faults: &[],
        display: display.clone(),
    })?;
    say(format!(
        "3. vdi restore {} {tgt}\n   {:.2} s, {}: the engine (pid {}) read {} back through {} devices and rebuilt the database",
        bk.display(),
        r.total.as_secs_f64(),
        human_rate(r.engine.source_bytes, r.total),
        r.engine.pid,
        human_bytes(r.engine.source_bytes),
        r.engine.devices
    ));

    let t = Instant::now();
    let check = source::sqlite::integrity_check(&restored)?;
    let after = table_digests(&restored)?;
    if check != ["ok"] {
        return Err(fail(
            Kind::Damaged,
            format!(
                "the restored database fails PRAGMA integrity_check: {}",
                check.join("; ")
            ),
        ));
    }
    if after != before {
        return Err(fail(
            Kind::Damaged,
            format!("the restored database differs from the original: {after:?} != {before:?}"),
        ));
    }
    say(format!(
        "4. checked {}: PRAGMA integrity_check = ok; every row of every table equal to the original (blake3 of {rows} rows), in {:.2} s",
        restored.display(),
        t.elapsed().as_secs_f64()
    ));
    if a.output.json {
        crate::output::print_json(
            &json!({
                "command": "demo",
                "ok": true,
                "dir": dir,
                "database_bytes": size,
                "rows": rows,
                "devices": a.devices,
                "generate_seconds": gen_secs.as_secs_f64(),
                "backup_seconds": b.total.as_secs_f64(),
                "backup_bytes_per_second": vdi_backup::units::bytes_per_sec(b.engine.source_bytes, b.total),
                "restore_seconds": r.total.as_secs_f64(),
                "restore_bytes_per_second": vdi_backup::units::bytes_per_sec(r.engine.source_bytes, r.total),
                "integrity_check": "ok",
                "identical": true,
                "kept": _tmp.is_none(),
            }),
            false,
        );
    }
    say(format!(
        "done in {:.1} s. {}",
        t0.elapsed().as_secs_f64(),
        if _tmp.is_none() {
            format!(
                "The files are in {}; try: vdi verify {}",
                dir.display(),
                bk.display()
            )
        } else {
            "Keep the files with --keep.".to_owned()
        }
    ));
    Ok(())
}
