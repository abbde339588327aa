//! `vdi sql`, and the `sqlcmd` and `osql` stand-ins: T-SQL BACKUP and RESTORE statements
//! (parsed by `vdi_backup::tsql`) run by the reference engine against the virtual device
//! sets a VDI client created, printing what SQL Server and sqlcmd print, so that a client
//! which starts `sqlcmd -Q "BACKUP DATABASE db TO VIRTUAL_DEVICE='set'"` works unchanged
//! with this binary on `PATH` under the name `sqlcmd`.
//!
//! A database name is looked up in the catalog: `--database NAME=SOURCE`, then
//! `VDI_DATABASES` (`NAME=SOURCE;NAME=SOURCE`), then `[databases]` in the configuration
//! file. A BACKUP streams that source; a RESTORE writes it back (an existing target only
//! `WITH REPLACE`).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use vdi_backup::engine::{self, EngineCfg, EngineReport};
use vdi_backup::error::kind_of;
use vdi_backup::fault::{Fault, Role, only_role};
use vdi_backup::source::Spec;
use vdi_backup::tsql::{self, Plan, SqlError, Verb};
use vdi_backup::{Kind, Result, fail};

use crate::cli::SqlArgs;

/// Whose output and command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `vdi sql`: `Msg N, Level L, State 1, Line L`.
    Sql,
    /// `sqlcmd`: `Msg N, Level L, State 1, Server S, Line L`.
    Sqlcmd,
    /// `osql`: as sqlcmd.
    Osql,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Dialect::Sql => "vdi sql",
            Dialect::Sqlcmd => "Sqlcmd",
            Dialect::Osql => "osql",
        }
    }
}

/// The catalog: database name (compared without case, as SQL Server does) to source.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    map: BTreeMap<String, String>,
}

impl Catalog {
    /// `given` (NAME=SOURCE each) over `VDI_DATABASES` over the configuration file.
    pub fn load(given: &[String]) -> Result<Catalog> {
        let mut map = BTreeMap::new();
        for (k, v) in &crate::config::get().databases {
            map.insert(k.to_lowercase(), v.clone());
        }
        if let Ok(env) = std::env::var("VDI_DATABASES") {
            for item in env.split(';').filter(|s| !s.trim().is_empty()) {
                let (k, v) = split_entry(item, "VDI_DATABASES")?;
                map.insert(k, v);
            }
        }
        for item in given {
            let (k, v) = split_entry(item, "--database")?;
            map.insert(k, v);
        }
        Ok(Catalog { map })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.map.get(&name.to_lowercase()).map(String::as_str)
    }
}

fn split_entry(item: &str, from: &str) -> Result<(String, String)> {
    match item.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_lowercase(), v.trim().to_owned()))
        }
        _ => Err(fail(
            Kind::Usage,
            format!("{from} '{item}' is not NAME=SOURCE: write e.g. shop=sqlite:/srv/shop.db"),
        )),
    }
}

/// How statements run and print.
#[derive(Clone, Debug)]
pub struct Style {
    /// Whose output.
    pub dialect: Dialect,
    /// The server name messages carry (sqlcmd's `-S`).
    pub server: String,
    /// Column headers on result sets (`-h -1`: none).
    pub headers: bool,
    /// `-W`: no trailing spaces in result sets.
    pub trim: bool,
    /// `-s`: the column separator.
    pub sep: String,
    /// How long to wait for the set a statement names.
    pub wait: Duration,
    /// Faults for the engine to inject.
    pub faults: Vec<Fault>,
    /// `-b`: stop at the first error.
    pub stop_on_error: bool,
    /// `-V`: errors below this level do not count (sqlcmd's default 11... i.e. level > 10).
    pub min_level: u8,
    /// The device mode (`--mode`, or `VDI_MODE` for sqlcmd and osql).
    pub mode: vdi_backup::engine::DeviceMode,
}

impl Style {
    fn msg(&self, e: &SqlError) -> String {
        match self.dialect {
            Dialect::Sql => e.to_string(),
            Dialect::Sqlcmd | Dialect::Osql => format!(
                "Msg {}, Level {}, State 1, Server {}, Line {}\n{}",
                e.number, e.level, self.server, e.line, e.text
            ),
        }
    }
}

/// What a script did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Statements that failed (or batches that did not parse).
    pub errors: u32,
    /// The highest error level seen.
    pub max_level: u8,
    /// The worst failure's kind (for `vdi sql`'s exit code).
    pub worst: Option<Kind>,
}

impl Outcome {
    fn failed(&mut self, level: u8, kind: Kind) {
        self.errors += 1;
        self.max_level = self.max_level.max(level);
        if self.worst.is_none() || kind != Kind::Usage {
            self.worst = Some(kind);
        }
    }
}

/// Runs a script (batches separated by `GO`), printing to `out`.
pub fn run_script(script: &str, cat: &Catalog, style: &Style, out: &mut dyn Write) -> Outcome {
    let mut o = Outcome::default();
    'batches: for b in tsql::batches(script) {
        for _ in 0..b.repeat {
            match tsql::compile_batch(&b.text, b.first_line) {
                Err(e) => {
                    let _ = writeln!(out, "{}", style.msg(&e));
                    o.failed(e.level, Kind::Usage);
                }
                Ok(plans) => {
                    for p in plans {
                        let r = match p {
                            Ok(plan) => execute(&plan, cat, style, out),
                            // Refused as written: the set the client made for it is
                            // aborted, so that the client is not left waiting for its
                            // GetConfiguration time-out (SQL Server leaves it waiting).
                            Err(r) => {
                                if let Some(d) = r.devices.first() {
                                    abort_set(d);
                                }
                                Err((r.errors, Kind::Usage))
                            }
                        };
                        if let Err((errs, kind)) = r {
                            for e in &errs {
                                let _ = writeln!(out, "{}", style.msg(e));
                            }
                            let level = errs.iter().map(|e| e.level).max().unwrap_or(16);
                            o.failed(level, kind);
                            if style.stop_on_error && level >= style.min_level {
                                break 'batches;
                            }
                        }
                    }
                }
            }
            if style.stop_on_error && o.max_level >= style.min_level {
                break 'batches;
            }
        }
    }
    let _ = out.flush();
    o
}

type Failure = (Vec<SqlError>, Kind);

/// Aborts the set `name` if a client created it, so that it is not left waiting for a
/// statement that will not run.
fn abort_set(name: &str) {
    if let Ok(s) = vdi::ServerSet::open(name) {
        let _ = s.signal_abort();
        let _ = s.close();
    }
}

fn execute(plan: &Plan, cat: &Catalog, style: &Style, out: &mut dyn Write) -> Result<(), Failure> {
    let line = plan.line;
    let dev0 = plan.devices.first().cloned().unwrap_or_default();
    let refuse = |e: SqlError, kind: Kind| -> Failure {
        abort_set(&dev0);
        (vec![e, SqlError::terminating(plan.verb, line)], kind)
    };
    let only = matches!(
        plan.verb,
        Verb::HeaderOnly | Verb::FileListOnly | Verb::VerifyOnly | Verb::LabelOnly
    );
    let db = plan.database.clone().unwrap_or_default();
    let source = match plan.database.as_deref().map(|d| (d, cat.get(d))) {
        Some((_, Some(s))) => Some(s.to_owned()),
        Some((d, None)) if !only => {
            return Err(refuse(
                SqlError::new(
                    911,
                    line,
                    format!(
                        "Database '{d}' does not exist. Make sure that the name is entered correctly. (The vdi test engine looks names up in --database {d}=SOURCE, VDI_DATABASES='{d}=SOURCE' or [databases] in its configuration file; e.g. {d}=sqlite:/path/{d}.db.)"
                    ),
                ),
                Kind::Usage,
            ));
        }
        _ => None,
    };
    let spec = match &source {
        Some(s) if !only => Some(Spec::parse(s).map_err(|e| {
            refuse(
                SqlError::new(
                    911,
                    line,
                    format!("Database '{db}' maps to '{s}', which is not a source vdi takes: {e}"),
                ),
                Kind::Usage,
            )
        })?),
        _ => None,
    };
    if let Err(e) = only_role(&style.faults, Role::Engine, "sql") {
        return Err(refuse(
            SqlError::new(3013, line, e.to_string()),
            Kind::Usage,
        ));
    }
    let check = check_env();
    let cfg = EngineCfg {
        set: dev0.clone(),
        buffer_count: check.buffer_count.or(plan.buffer_count),
        max_transfer: plan.max_transfer.unwrap_or(1 << 20),
        block_size: plan
            .block_size
            .unwrap_or(4096)
            .min(plan.max_transfer.unwrap_or(1 << 20)),
        wait: style.wait,
        trust_owner: None,
        faults: style.faults.clone(),
        parent: None,
        stall: Some(check.stall.unwrap_or(Duration::from_secs(120))),
        device_names: plan.devices.clone(),
        mode: style.mode,
        probe: check.probe,
    };
    let started = std::time::Instant::now();
    let report = if plan.verb.is_backup() {
        let spec = spec
            .as_ref()
            .ok_or_else(|| refuse(SqlError::new(911, line, "no database named"), Kind::Usage))?;
        engine::backup(&cfg, spec)
    } else if let Some(spec) = &spec {
        if let Some(p) = spec.path()
            && p.exists()
            && !plan.replace
        {
            return Err(refuse(
                SqlError::new(
                    3159,
                    line,
                    format!(
                        "The tail of the log for the database \"{db}\" has not been backed up. Use WITH REPLACE to overwrite the contents of the database: its target {} exists.",
                        p.display()
                    ),
                ),
                Kind::TargetExists,
            ));
        }
        engine::restore(&cfg, spec, plan.replace, false)
    } else {
        // HEADERONLY, FILELISTONLY, VERIFYONLY: the streams are read and checked whole,
        // into a scratch file that is then dropped.
        let tmp = tempfile::tempdir().map_err(|e| {
            refuse(
                SqlError::new(3201, line, format!("Cannot make a scratch directory: {e}")),
                Kind::Other,
            )
        })?;
        let scratch = Spec::parse(&format!("file:{}", tmp.path().join("check").display()))
            .map_err(|e| refuse(SqlError::new(3201, line, e.to_string()), Kind::Other))?;
        engine::restore(&cfg, &scratch, true, false)
    };
    if let Some(dir) = &check.dir {
        crate::commands::check::record(dir, plan.verb.words(), &report);
    }
    let report = report.map_err(|e| {
        let kind = kind_of(&e);
        let text = e.own_message();
        let sql = if text.contains("no virtual device set named") {
            SqlError::new(
                3201,
                line,
                format!(
                    "Cannot open backup device '{dev0}'. Operating system error 0x80770004(failed to find the specified object). {text}: the backup application creates the set (ClientVirtualDeviceSet::Create) before it runs this statement."
                ),
            )
        } else if kind == Kind::Usage {
            SqlError::new(
                3201,
                line,
                format!("Cannot open backup device '{dev0}'. {text}."),
            )
        } else if kind == Kind::Damaged {
            SqlError::new(
                3241,
                line,
                format!(
                    "The media family on device '{dev0}' is incorrectly formed. SQL Server cannot process this media family. {text}."
                ),
            )
        } else if plan.verb.is_backup() {
            SqlError::new(3202, line, format!("Write on \"{dev0}\" failed: {text}."))
        } else {
            SqlError::new(3203, line, format!("Read on \"{dev0}\" failed: {text}."))
        };
        (vec![sql, SqlError::terminating(plan.verb, line)], kind)
    })?;
    print_success(plan, &db, &report, started.elapsed(), style, out);
    Ok(())
}

/// What `vdi check-client` asks of the engine it runs through this stand-in.
struct CheckEnv {
    /// `VDI_CHECK_DIR`: where the engine's outcome is recorded.
    dir: Option<std::path::PathBuf>,
    /// `VDI_BUFFER_COUNT`: the buffer count, over the statement's.
    buffer_count: Option<u32>,
    /// `VDI_STALL_MS`: how long a command may stay uncompleted.
    stall: Option<Duration>,
    /// `VDI_PROBE_COMMAND`: a command code the client was not offered, sent first.
    probe: Option<u32>,
}

fn check_env() -> CheckEnv {
    let num = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    CheckEnv {
        dir: std::env::var_os("VDI_CHECK_DIR")
            .filter(|v| !v.is_empty())
            .map(Into::into),
        buffer_count: num("VDI_BUFFER_COUNT")
            .filter(|n| (1..=65536).contains(n))
            .map(|n| n as u32),
        stall: num("VDI_STALL_MS")
            .filter(|&n| n > 0)
            .map(Duration::from_millis),
        probe: num("VDI_PROBE_COMMAND")
            .filter(|&n| (1..=u64::from(u32::MAX)).contains(&n))
            .map(|n| n as u32),
    }
}

const PAGE: u64 = 8192;

fn print_success(
    plan: &Plan,
    db: &str,
    r: &EngineReport,
    took: Duration,
    style: &Style,
    out: &mut dyn Write,
) {
    if let Some(n) = plan.stats {
        let mut p = n;
        while p <= 100 {
            let _ = writeln!(out, "{p} percent processed.");
            p += n;
        }
        if !100u32.is_multiple_of(n) {
            let _ = writeln!(out, "100 percent processed.");
        }
    }
    let pages = r.source_bytes.div_ceil(PAGE);
    let secs = took.as_secs_f64().max(0.001);
    let rate = r.source_bytes as f64 / 1048576.0 / secs;
    let shown_db = if db.is_empty() { "NULL" } else { db };
    match plan.verb {
        Verb::BackupDatabase | Verb::BackupLog | Verb::RestoreDatabase | Verb::RestoreLog => {
            let _ = writeln!(
                out,
                "Processed {pages} pages for database '{shown_db}', file '{shown_db}' on file 1."
            );
            let _ = writeln!(
                out,
                "{} successfully processed {pages} pages in {secs:.3} seconds ({rate:.3} MB/sec).",
                plan.verb.words()
            );
        }
        Verb::VerifyOnly => {
            let _ = writeln!(out, "The backup set on file 1 is valid.");
        }
        Verb::HeaderOnly => table(
            &[
                "BackupName",
                "BackupType",
                "Position",
                "DeviceType",
                "DatabaseName",
                "BackupSize",
                "Devices",
                "StreamId",
            ],
            &[vec![
                "NULL".into(),
                "1".into(),
                "1".into(),
                "7".into(),
                shown_db.into(),
                r.source_bytes.to_string(),
                r.devices.to_string(),
                r.stream_id.clone().unwrap_or_default(),
            ]],
            style,
            out,
        ),
        Verb::FileListOnly => table(
            &[
                "LogicalName",
                "PhysicalName",
                "Type",
                "FileGroupName",
                "Size",
                "FileId",
            ],
            &[vec![
                shown_db.into(),
                shown_db.into(),
                "D".into(),
                "PRIMARY".into(),
                r.source_bytes.to_string(),
                "1".into(),
            ]],
            style,
            out,
        ),
        Verb::LabelOnly => {}
    }
}

/// A result set, as sqlcmd prints it: headers, dashes, rows, `(N rows affected)`.
fn table(cols: &[&str], rows: &[Vec<String>], style: &Style, out: &mut dyn Write) {
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|v| v.chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if style.trim {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0))
                }
            })
            .collect();
        parts.join(&style.sep)
    };
    if style.headers {
        let _ = writeln!(
            out,
            "{}",
            line(cols.iter().map(|c| c.to_string()).collect())
        );
        let _ = writeln!(
            out,
            "{}",
            line(
                widths
                    .iter()
                    .zip(cols)
                    .map(|(w, c)| "-".repeat(if style.trim { c.len() } else { *w }))
                    .collect()
            )
        );
    }
    for r in rows {
        let _ = writeln!(out, "{}", line(r.clone()));
    }
    let _ = writeln!(out, "\n({} rows affected)", rows.len());
}

/// `vdi sql`.
pub(super) fn run(a: &SqlArgs) -> Result<()> {
    let script = match (&a.statement, &a.input) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => read_input(p)?,
        (None, None) => {
            return Err(fail(
                Kind::Usage,
                "no statement: give one (vdi sql \"BACKUP DATABASE shop TO VIRTUAL_DEVICE='set1'\") or -i FILE",
            ));
        }
    };
    let cat = Catalog::load(&a.databases)?;
    let style = Style {
        dialect: Dialect::Sql,
        server: host(),
        headers: true,
        trim: false,
        sep: " ".into(),
        wait: Duration::from_secs(a.wait),
        faults: a.inject.clone(),
        stop_on_error: false,
        min_level: 11,
        mode: a.mode,
    };
    let o = run_script(&script, &cat, &style, &mut std::io::stdout());
    if o.errors > 0 {
        return Err(fail(
            o.worst.unwrap_or(Kind::Other),
            format!(
                "{} statement(s) or batch(es) failed: the Msg lines above say why",
                o.errors
            ),
        ));
    }
    Ok(())
}

fn read_input(p: &std::path::Path) -> Result<String> {
    if p.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| fail(Kind::Input, format!("reading standard input: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(p).map_err(|e| {
        fail(
            Kind::Input,
            format!("reading the script {}: {e}", p.display()),
        )
    })
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The options of sqlcmd and osql that take a value.
const WITH_VALUE: &[char] = &[
    'S', 'U', 'P', 'Q', 'q', 'i', 'o', 'd', 'h', 's', 't', 'V', 'l', 'w', 'H', 'y', 'Y', 'a', 'f',
    'v', 'c', 'A', 'L', 'n',
];
/// The options that are flags.
const FLAGS: &[char] = &[
    'E', 'b', 'W', 'e', 'r', 'I', 'C', 'N', 'X', 'k', 'K', 'R', 'x', 'u',
];

/// Parses sqlcmd's (or osql's) arguments into the script, the style and the output file.
fn parse_sqlcmd(
    dialect: Dialect,
    args: &[String],
) -> std::result::Result<(String, Style, Option<String>), String> {
    let mut style = Style {
        dialect,
        server: host(),
        headers: true,
        trim: false,
        sep: " ".into(),
        wait: Duration::from_secs(10),
        faults: Vec::new(),
        stop_on_error: false,
        min_level: 11,
        mode: Default::default(),
    };
    if let Ok(m) = std::env::var("VDI_MODE")
        && !m.trim().is_empty()
    {
        style.mode = vdi_backup::engine::DeviceMode::parse(&m)
            .map_err(|e| format!("{}: VDI_MODE: {e}", dialect.name()))?;
    }
    let mut script: Option<String> = None;
    let mut output = None;
    let mut it = args.iter();
    let tool = dialect.name();
    while let Some(a) = it.next() {
        let Some(opt) = a.strip_prefix('-').or_else(|| a.strip_prefix('/')) else {
            return Err(format!(
                "{tool}: '{a}': Unexpected argument. Argument values that contain spaces must be surrounded by quotation marks."
            ));
        };
        let mut chars = opt.chars();
        let Some(c) = chars.next() else {
            return Err(format!("{tool}: '-': Unknown Option. Enter '-?' for help."));
        };
        if c == '?' {
            return Err(format!(
                "usage: {} [-S server] [-U login] [-P password] [-E] [-d db] [-Q \"query\" | -q \"query\" | -i file] [-b] [-V level] [-h headers] [-W] [-s sep] [-t seconds] [-o file]\n(the vdi test engine's stand-in: runs BACKUP and RESTORE on virtual device sets; see vdi sql --help)",
                if dialect == Dialect::Osql {
                    "osql"
                } else {
                    "sqlcmd"
                }
            ));
        }
        let rest: String = chars.collect();
        if FLAGS.contains(&c) {
            if c == 'b' {
                style.stop_on_error = true;
            } else if c == 'W' {
                style.trim = true;
            }
            continue;
        }
        if !WITH_VALUE.contains(&c) {
            return Err(format!(
                "{tool}: '-{c}': Unknown Option. Enter '-?' for help."
            ));
        }
        let value = if rest.is_empty() {
            match it.next() {
                Some(v) => v.clone(),
                None => {
                    return Err(format!(
                        "{tool}: '-{c}': Missing argument. Enter '-?' for help."
                    ));
                }
            }
        } else {
            rest
        };
        match c {
            'S' => style.server = value,
            'Q' | 'q' => script = Some(value),
            'i' => {
                let mut text = String::new();
                for f in value.split(',') {
                    let t = std::fs::read_to_string(f).map_err(|e| {
                        format!("{tool}: Error occurred while opening or operating on file {f} (Reason: {e}).")
                    })?;
                    text.push_str(&t);
                    text.push_str("\nGO\n");
                }
                script = Some(text);
            }
            'o' => output = Some(value),
            'h' => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("{tool}: '-h {value}': Argument not a number."))?;
                style.headers = n != -1;
            }
            's' => style.sep = value,
            't' => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("{tool}: '-t {value}': Argument not a number."))?;
                if n > 0 {
                    style.wait = Duration::from_secs(n.min(65534));
                }
            }
            'V' => {
                let n: u8 = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=25).contains(n))
                    .ok_or_else(|| {
                        format!("{tool}: '-V {value}': Argument out of range: use 1 to 25.")
                    })?;
                style.min_level = n;
            }
            _ => {}
        }
    }
    if let Ok(f) = std::env::var("VDI_INJECT") {
        for one in f.split(',').filter(|s| !s.trim().is_empty()) {
            style
                .faults
                .push(Fault::parse(one.trim()).map_err(|e| format!("{tool}: VDI_INJECT: {e}"))?);
        }
    }
    let script = script.ok_or_else(|| {
        format!(
            "{tool}: no query: the vdi test engine's stand-in runs -Q \"query\", -q \"query\" or -i file (no interactive mode)."
        )
    })?;
    Ok((script, style, output))
}

/// Runs sqlcmd or osql with `args`; returns sqlcmd's exit code (1 under `-b` after an
/// error of level `-V` or more, else 0; 1 for a bad command line).
pub fn sqlcmd_main(dialect: Dialect, args: &[String]) -> u8 {
    let (script, style, output) = match parse_sqlcmd(dialect, args) {
        Ok(v) => v,
        Err(e) => {
            println!("{e}");
            return 1;
        }
    };
    let cat = match Catalog::load(&[]) {
        Ok(c) => c,
        Err(e) => {
            println!("{}: {e}", dialect.name());
            return 1;
        }
    };
    let o = match output {
        Some(path) => match std::fs::File::create(&path) {
            Ok(mut f) => run_script(&script, &cat, &style, &mut f),
            Err(e) => {
                println!(
                    "{}: Error occurred while opening or operating on file {path} (Reason: {e}).",
                    dialect.name()
                );
                return 1;
            }
        },
        None => run_script(&script, &cat, &style, &mut std::io::stdout()),
    };
    u8::from(style.stop_on_error && o.max_level >= style.min_level)
}

/// `vdi sqlcmd ARGS` / `vdi osql ARGS`: exits with sqlcmd's code.
pub(super) fn exit_with(dialect: Dialect, args: &[String]) -> Result<()> {
    let code = sqlcmd_main(dialect, args);
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code));
}

/// This binary run as `sqlcmd` or `osql` (argv\[0\]).
pub fn argv0_main(dialect: Dialect, args: &[String]) -> ExitCode {
    crate::output::init_logging(true, 0);
    crate::interrupt::install();
    ExitCode::from(sqlcmd_main(dialect, args))
}

/// Which stand-in argv\[0\] names, if any.
pub fn dialect_of(argv0: &std::ffi::OsStr) -> Option<Dialect> {
    let name = std::path::Path::new(argv0)
        .file_name()?
        .to_str()?
        .to_ascii_lowercase();
    match name.strip_suffix(".exe").unwrap_or(&name) {
        "sqlcmd" => Some(Dialect::Sqlcmd),
        "osql" => Some(Dialect::Osql),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sqlcmd_options_as_clients_pass_them() {
        let args: Vec<String> = [
            "-S",
            ".",
            "-U",
            "sa",
            "-P",
            "pw",
            "-b",
            "-h-1",
            "-W",
            "-s,",
            "-t",
            "30",
            "-V",
            "16",
            "-Q",
            "BACKUP DATABASE a TO VIRTUAL_DEVICE='x'",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (script, style, out) = parse_sqlcmd(Dialect::Sqlcmd, &args).unwrap();
        assert!(script.starts_with("BACKUP"));
        assert_eq!(style.server, ".");
        assert!(style.stop_on_error && style.trim && !style.headers);
        assert_eq!((style.sep.as_str(), style.min_level), (",", 16));
        assert_eq!(style.wait, Duration::from_secs(30));
        assert!(out.is_none());
        let e = parse_sqlcmd(Dialect::Sqlcmd, &["-Z".into()]).unwrap_err();
        assert_eq!(e, "Sqlcmd: '-Z': Unknown Option. Enter '-?' for help.");
        assert!(
            parse_sqlcmd(Dialect::Osql, &["-E".into()])
                .unwrap_err()
                .contains("no query")
        );
        assert!(
            parse_sqlcmd(Dialect::Sqlcmd, &["-Q".into()])
                .unwrap_err()
                .contains("Missing argument")
        );
    }

    #[test]
    fn argv0_names() {
        assert_eq!(
            dialect_of("/usr/bin/sqlcmd".as_ref()),
            Some(Dialect::Sqlcmd)
        );
        assert_eq!(dialect_of("OSQL.EXE".as_ref()), Some(Dialect::Osql));
        assert_eq!(dialect_of("vdi".as_ref()), None);
    }
}
