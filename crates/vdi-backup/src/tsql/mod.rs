//! The T-SQL front of the test engine: the `BACKUP` and `RESTORE` statements that VDI
//! clients send (through `sqlcmd -Q "..."` or `osql`), lexed ([`lex`]), parsed
//! ([`parse`]) and checked into a [`Plan`] the engine runs; every refusal is a
//! [`SqlError`] in SQL Server's shape (`Msg N, Level L, State 1, Line L` and a text that
//! says what to change).
//!
//! ```
//! use vdi_backup::tsql::{compile_batch, Verb};
//! let plans = compile_batch(
//!     "BACKUP DATABASE shop TO VIRTUAL_DEVICE='set1' WITH FORMAT, MAXTRANSFERSIZE=1048576",
//!     1,
//! )
//! .unwrap();
//! let plan = plans[0].as_ref().unwrap();
//! assert_eq!(plan.verb, Verb::BackupDatabase);
//! assert_eq!(plan.devices, ["set1"]);
//! assert_eq!(plan.max_transfer, Some(1 << 20));
//! ```
//!
//! Which options are honoured, accepted without effect, or refused:
//!
//! | option | BACKUP | RESTORE |
//! |---|---|---|
//! | `BUFFERCOUNT = n` | the engine's buffer count (1 to 4096) | the same |
//! | `MAXTRANSFERSIZE = n` | the transfer size (64 KiB to 4 MiB, a multiple of 64 KiB) | the same |
//! | `BLOCKSIZE = n` | the block size (512 to 64 KiB, a power of two) | the same |
//! | `STATS [= n]` | `n percent processed.` lines (default 10) | the same |
//! | `REPLACE` | refused (Msg 3032) | overwrite an existing target |
//! | `FORMAT`, `INIT`, `NOFORMAT`, `NOINIT`, `SKIP`, `NOSKIP`, `NAME`, `DESCRIPTION`, `COPY_ONLY`, `CHECKSUM`, `NO_CHECKSUM`, `COMPRESSION`, `NO_COMPRESSION`, `REWIND`, `NOREWIND`, `UNLOAD`, `NOUNLOAD`, `CONTINUE_AFTER_ERROR`, `STOP_ON_ERROR` | accepted (the stream always carries a checksum per chunk and is written whole) | the same where SQL Server allows it |
//! | `NORECOVERY` | `BACKUP LOG` only | accepted |
//! | `RECOVERY`, `FILE = 1` | refused | accepted |
//! | `DIFFERENTIAL` | refused (Msg 3035: no differential backups here) | refused |
//! | `STOPAT` | refused (Msg 3032) | refused (Msg 4338: whole backups only) |
//! | anything else | refused (Msg 155) | refused (Msg 155) |

pub mod lex;
pub mod parse;

use std::fmt;

pub use lex::{Batch, Pos, batches};
pub use parse::{Statement, Verb};

use parse::{Opt, Value};

/// The most devices a statement may name (SQL Server's limit).
pub const MAX_DEVICES: usize = 64;

/// An error in SQL Server's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// The message number (`Msg N`).
    pub number: u32,
    /// The severity (`Level`): 15 for syntax, 16 for the rest.
    pub level: u8,
    /// The line of the batch (`Line L`).
    pub line: u32,
    /// What went wrong and what to do.
    pub text: String,
}

impl SqlError {
    /// A level-16 error.
    pub fn new(number: u32, line: u32, text: impl Into<String>) -> SqlError {
        SqlError {
            number,
            level: 16,
            line,
            text: text.into(),
        }
    }

    fn syntax(number: u32, line: u32, text: impl Into<String>) -> SqlError {
        SqlError {
            level: 15,
            ..SqlError::new(number, line, text)
        }
    }

    /// `Msg 3013 ... VERB is terminating abnormally.`, which ends every failed BACKUP or
    /// RESTORE.
    pub fn terminating(verb: Verb, line: u32) -> SqlError {
        SqlError::new(
            3013,
            line,
            format!("{} is terminating abnormally.", verb.words()),
        )
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Msg {}, Level {}, State 1, Line {}\n{}",
            self.number, self.level, self.line, self.text
        )
    }
}

/// A checked statement: what the engine is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What it does.
    pub verb: Verb,
    /// The database it names.
    pub database: Option<String>,
    /// The virtual devices' names, in order (the first is the set's name).
    pub devices: Vec<String>,
    /// `BUFFERCOUNT`.
    pub buffer_count: Option<u32>,
    /// `MAXTRANSFERSIZE`.
    pub max_transfer: Option<u32>,
    /// `BLOCKSIZE`.
    pub block_size: Option<u32>,
    /// `REPLACE`.
    pub replace: bool,
    /// `STATS [= n]`: print progress every n percent.
    pub stats: Option<u32>,
    /// The statement's line in its batch.
    pub line: u32,
}

/// A statement refused as written: SQL Server's errors, and the virtual devices it named
/// (so that the engine can abort a set that a client created for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The errors, the last one `Msg 3013 ... is terminating abnormally.`
    pub errors: Vec<SqlError>,
    /// The virtual device names the statement named.
    pub devices: Vec<String>,
}

/// Compiles one batch (`first_line`: its first line in the script, for the column and
/// line an error names). A syntax error fails the whole batch (nothing in it runs, as in
/// SQL Server); otherwise each statement is a plan or the errors that refuse it.
pub fn compile_batch(text: &str, first_line: u32) -> Result<Vec<Result<Plan, Refused>>, SqlError> {
    let at = |p: Pos| {
        format!(
            "line {}, column {}",
            p.line.saturating_add(first_line.saturating_sub(1)),
            p.col
        )
    };
    let tokens = lex::lex(text).map_err(|e| {
        let n = if e.what.contains("comment") { 113 } else { 105 };
        SqlError::syntax(
            n,
            e.pos.line,
            format!(
                "{} starting at {}: close it.",
                upper_first(&e.what),
                at(e.pos)
            ),
        )
    })?;
    let end = end_pos(text);
    let statements = parse::parse(&tokens, end).map_err(|e| {
        let near = match &e.near {
            Some(n) => format!("Incorrect syntax near '{n}'"),
            None => "Incorrect syntax near the end of the batch".to_owned(),
        };
        SqlError::syntax(
            102,
            e.pos.line,
            format!("{near} at {}: expected {}.", at(e.pos), e.expected),
        )
    })?;
    Ok(statements
        .iter()
        .map(|s| {
            plan(s).map_err(|errors| Refused {
                errors,
                devices: s
                    .devices
                    .iter()
                    .filter(|d| d.kind == "VIRTUAL_DEVICE")
                    .map(|d| d.name.clone())
                    .collect(),
            })
        })
        .collect())
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn end_pos(text: &str) -> Pos {
    let line = text.split('\n').count().max(1);
    let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Pos {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        col: u32::try_from(col).unwrap_or(u32::MAX),
    }
}

/// Options accepted without an effect of their own, and where SQL Server allows them.
const ACCEPTED: &[(&str, bool, bool)] = &[
    // (name, on BACKUP, on RESTORE)
    ("FORMAT", true, false),
    ("NOFORMAT", true, false),
    ("INIT", true, false),
    ("NOINIT", true, false),
    ("SKIP", true, false),
    ("NOSKIP", true, false),
    ("NAME", true, false),
    ("DESCRIPTION", true, false),
    ("MEDIANAME", true, false),
    ("MEDIADESCRIPTION", true, false),
    ("COPY_ONLY", true, false),
    ("CHECKSUM", true, true),
    ("NO_CHECKSUM", true, true),
    ("COMPRESSION", true, false),
    ("NO_COMPRESSION", true, false),
    ("REWIND", true, true),
    ("NOREWIND", true, true),
    ("UNLOAD", true, true),
    ("NOUNLOAD", true, true),
    ("CONTINUE_AFTER_ERROR", true, true),
    ("STOP_ON_ERROR", true, true),
    ("RECOVERY", false, true),
    ("NORECOVERY", false, true),
    ("FILE", false, true),
    ("REPLACE", false, true),
];

/// Options SQL Server knows that the test engine refuses, and why.
const REFUSED: &[(&str, u32, &str)] = &[
    (
        "DIFFERENTIAL",
        3035,
        "Cannot perform a differential backup: the vdi test engine makes full backups only (each backup streams the whole database). Remove WITH DIFFERENTIAL.",
    ),
    (
        "STOPAT",
        4338,
        "The STOPAT clause is not supported: the vdi test engine restores whole backups only, never to a point in time. Remove WITH STOPAT.",
    ),
    (
        "STOPATMARK",
        4338,
        "The STOPATMARK clause is not supported: the vdi test engine restores whole backups only. Remove it.",
    ),
    (
        "STOPBEFOREMARK",
        4338,
        "The STOPBEFOREMARK clause is not supported: the vdi test engine restores whole backups only. Remove it.",
    ),
    (
        "MOVE",
        3032,
        "WITH MOVE is not supported: the target of a restore is the database's source in the catalog (vdi sql --database NAME=TARGET). Remove it.",
    ),
    (
        "ENCRYPTION",
        3032,
        "WITH ENCRYPTION is not supported by the vdi test engine: the backup application encrypts. Remove it.",
    ),
    (
        "STANDBY",
        3032,
        "WITH STANDBY is not supported by the vdi test engine. Remove it.",
    ),
    (
        "PARTIAL",
        3032,
        "WITH PARTIAL is not supported by the vdi test engine (whole databases only). Remove it.",
    ),
    (
        "NO_TRUNCATE",
        3032,
        "WITH NO_TRUNCATE is not supported by the vdi test engine. Remove it.",
    ),
];

fn num(o: &Opt, line: u32, verb: Verb) -> Result<u64, SqlError> {
    match &o.value {
        Some(Value::Num(n)) => n.parse::<u64>().map_err(|_| {
            SqlError::new(
                3250,
                line,
                format!(
                    "The value '{n}' is not within range for the {} parameter: write a whole number.",
                    o.name
                ),
            )
        }),
        Some(v) => Err(SqlError::new(
            3250,
            line,
            format!(
                "The value '{}' is not within range for the {} parameter: write a whole number ({} = 1048576).",
                v.shown(),
                o.name,
                o.name
            ),
        )),
        None => Err(SqlError::syntax(
            102,
            line,
            format!(
                "Incorrect syntax near '{}' at line {}, column {}: {} needs = value in {}.",
                o.name,
                o.pos.line,
                o.pos.col,
                o.name,
                verb.words()
            ),
        )),
    }
}

fn plan(s: &Statement) -> Result<Plan, Vec<SqlError>> {
    let line = s.pos.line;
    let backup = s.verb.is_backup();
    let op = if backup { "BACKUP" } else { "RESTORE" };
    let refuse = |e: SqlError| vec![e, SqlError::terminating(s.verb, line)];
    if s.devices.len() > MAX_DEVICES {
        return Err(refuse(SqlError::new(
            3205,
            line,
            format!(
                "Too many backup devices specified for backup or restore; only {MAX_DEVICES} are allowed (this statement names {}).",
                s.devices.len()
            ),
        )));
    }
    let mut devices: Vec<String> = Vec::new();
    for d in &s.devices {
        if d.kind != "VIRTUAL_DEVICE" {
            return Err(refuse(SqlError::new(
                3201,
                line,
                format!(
                    "Cannot open backup device '{}'. The vdi test engine serves VIRTUAL_DEVICE only, not {}: write VIRTUAL_DEVICE = '{}' and create that virtual device set in the backup application first.",
                    d.name, d.kind, d.name
                ),
            )));
        }
        if d.name.is_empty() || d.name.contains(['/', '\\', '\0']) || d.name.len() > 128 {
            return Err(refuse(SqlError::new(
                3201,
                line,
                format!(
                    "Cannot open backup device '{}'. A virtual device name is 1 to 128 bytes without /, \\ or NUL.",
                    d.name
                ),
            )));
        }
        if devices.contains(&d.name) {
            return Err(refuse(SqlError::new(
                3201,
                line,
                format!(
                    "Cannot open backup device '{}'. The statement names it twice; name each virtual device once.",
                    d.name
                ),
            )));
        }
        devices.push(d.name.clone());
    }
    let mut p = Plan {
        verb: s.verb,
        database: s.database.clone(),
        devices,
        buffer_count: None,
        max_transfer: None,
        block_size: None,
        replace: false,
        stats: None,
        line,
    };
    for o in &s.options {
        let name = o.name.as_str();
        match name {
            "BUFFERCOUNT" => {
                let n = num(o, line, s.verb).map_err(&refuse)?;
                if !(1..=4096).contains(&n) {
                    return Err(refuse(SqlError::new(
                        3250,
                        line,
                        format!(
                            "The value '{n}' is not within range for the BUFFERCOUNT parameter: use 1 to 4096."
                        ),
                    )));
                }
                p.buffer_count = Some(n as u32);
            }
            "MAXTRANSFERSIZE" => {
                let n = num(o, line, s.verb).map_err(&refuse)?;
                if !(65536..=4 << 20).contains(&n) || n % 65536 != 0 {
                    return Err(refuse(SqlError::new(
                        3250,
                        line,
                        format!(
                            "The value '{n}' is not within range for the MAXTRANSFERSIZE parameter: use a multiple of 65536 from 65536 to 4194304."
                        ),
                    )));
                }
                p.max_transfer = Some(n as u32);
            }
            "BLOCKSIZE" => {
                let n = num(o, line, s.verb).map_err(&refuse)?;
                if !(512..=65536).contains(&n) || !n.is_power_of_two() {
                    return Err(refuse(SqlError::new(
                        3250,
                        line,
                        format!(
                            "The value '{n}' is not within range for the BLOCKSIZE parameter: use a power of two from 512 to 65536."
                        ),
                    )));
                }
                p.block_size = Some(n as u32);
            }
            "STATS" => {
                let n = if o.value.is_some() {
                    num(o, line, s.verb).map_err(&refuse)?
                } else {
                    10
                };
                if !(1..=100).contains(&n) {
                    return Err(refuse(SqlError::new(
                        3250,
                        line,
                        format!(
                            "The value '{n}' is not within range for the STATS parameter: use 1 to 100."
                        ),
                    )));
                }
                p.stats = Some(n as u32);
            }
            "NORECOVERY" if s.verb == Verb::BackupLog => {}
            "FILE" if !backup => {
                let n = num(o, line, s.verb).map_err(&refuse)?;
                if n != 1 {
                    return Err(refuse(SqlError::new(
                        3250,
                        line,
                        format!(
                            "The value '{n}' is not within range for the FILE parameter: a virtual device holds one backup set, FILE = 1."
                        ),
                    )));
                }
            }
            _ => {
                if let Some((_, n, why)) = REFUSED.iter().find(|(r, _, _)| *r == name) {
                    return Err(refuse(SqlError::new(*n, line, *why)));
                }
                match ACCEPTED.iter().find(|(a, _, _)| *a == name) {
                    Some((_, on_b, on_r)) if (backup && *on_b) || (!backup && *on_r) => {
                        if name == "REPLACE" {
                            p.replace = true;
                        }
                    }
                    Some(_) => {
                        return Err(refuse(SqlError::new(
                            3032,
                            line,
                            format!(
                                "One or more of the options ({name}) are not supported for this statement ({}). Remove it.",
                                s.verb.words()
                            ),
                        )));
                    }
                    None => {
                        return Err(refuse(SqlError::syntax(
                            155,
                            line,
                            format!(
                                "'{}' is not a recognized {op} option (line {}, column {}).",
                                o.name, o.pos.line, o.pos.col
                            ),
                        )));
                    }
                }
            }
        }
    }
    if s.verb == Verb::LabelOnly {
        return Err(refuse(SqlError::new(
            3032,
            line,
            "RESTORE LABELONLY is not supported by the vdi test engine (virtual devices carry no media label): use RESTORE HEADERONLY.",
        )));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ok(s: &str) -> Plan {
        compile_batch(s, 1).unwrap().remove(0).unwrap()
    }

    fn refused(s: &str) -> Vec<SqlError> {
        compile_batch(s, 1).unwrap().remove(0).unwrap_err().errors
    }

    fn syntax(s: &str) -> SqlError {
        compile_batch(s, 1).unwrap_err()
    }

    const B: &str = "BACKUP DATABASE shop TO VIRTUAL_DEVICE='v'";
    const R: &str = "RESTORE DATABASE shop FROM VIRTUAL_DEVICE='v'";

    #[test]
    fn honoured_options() {
        let p = ok(&format!(
            "{B} WITH BUFFERCOUNT=8, MAXTRANSFERSIZE=65536, BLOCKSIZE=4096, STATS"
        ));
        assert_eq!(
            (p.buffer_count, p.max_transfer, p.block_size, p.stats),
            (Some(8), Some(65536), Some(4096), Some(10))
        );
        assert!(ok(&format!("{R} WITH REPLACE, STATS=5")).replace);
        for o in [
            "FORMAT",
            "INIT",
            "CHECKSUM",
            "COMPRESSION",
            "COPY_ONLY",
            "NAME = N'nightly'",
        ] {
            ok(&format!("{B} WITH {o}"));
        }
        ok(&format!("{R} WITH NORECOVERY, CHECKSUM, FILE = 1"));
        ok("BACKUP LOG shop TO VIRTUAL_DEVICE='v' WITH NORECOVERY");
    }

    #[test]
    fn refused_options_say_why_and_terminate() {
        let cases = [
            (format!("{B} WITH DIFFERENTIAL"), 3035, "full backups only"),
            (
                format!("{R} WITH STOPAT = '2026-01-01'"),
                4338,
                "point in time",
            ),
            (
                format!("{B} WITH STOPAT = '2026-01-01'"),
                4338,
                "whole backups",
            ),
            (format!("{B} WITH REPLACE"), 3032, "(REPLACE)"),
            (format!("{R} WITH FORMAT"), 3032, "(FORMAT)"),
            (format!("{B} WITH NORECOVERY"), 3032, "NORECOVERY"),
            (
                format!("{B} WITH FROBNICATE"),
                155,
                "not a recognized BACKUP option",
            ),
            (
                format!("{B} WITH MAXTRANSFERSIZE=1000"),
                3250,
                "multiple of 65536",
            ),
            (format!("{B} WITH MAXTRANSFERSIZE=8388608"), 3250, "4194304"),
            (format!("{B} WITH BLOCKSIZE=3000"), 3250, "power of two"),
            (format!("{B} WITH BUFFERCOUNT=0"), 3250, "1 to 4096"),
            (format!("{B} WITH BUFFERCOUNT='x'"), 3250, "whole number"),
            (format!("{B} WITH STATS=0"), 3250, "1 to 100"),
            (format!("{R} WITH FILE=2"), 3250, "FILE = 1"),
            (format!("{R} WITH MOVE"), 3032, "MOVE"),
            (
                "BACKUP DATABASE shop TO DISK='/tmp/x.bak'".into(),
                3201,
                "VIRTUAL_DEVICE only",
            ),
            (
                "BACKUP DATABASE shop TO VIRTUAL_DEVICE='a', VIRTUAL_DEVICE='a'".into(),
                3201,
                "twice",
            ),
            (
                "RESTORE LABELONLY FROM VIRTUAL_DEVICE='a'".into(),
                3032,
                "HEADERONLY",
            ),
        ];
        for (sql, n, text) in cases {
            let e = refused(&sql);
            assert_eq!(e[0].number, n, "{sql}: {e:?}");
            assert!(e[0].text.contains(text), "{sql}: {}", e[0].text);
            assert_eq!(e[1].number, 3013, "{sql}");
            assert!(e[1].text.ends_with("is terminating abnormally."));
        }
        assert_eq!(
            refused(&format!("{B} WITH STATS = 'x'"))[1].to_string(),
            "Msg 3013, Level 16, State 1, Line 1\nBACKUP DATABASE is terminating abnormally."
        );
    }

    #[test]
    fn sixty_four_devices_and_no_more() {
        let devs = |n: usize| {
            (0..n)
                .map(|i| format!("VIRTUAL_DEVICE='d{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(
            ok(&format!("BACKUP DATABASE x TO {}", devs(64)))
                .devices
                .len(),
            64
        );
        let e = refused(&format!("BACKUP DATABASE x TO {}", devs(65)));
        assert_eq!(e[0].number, 3205);
    }

    #[test]
    fn syntax_errors_name_line_and_column_of_the_script() {
        let e = syntax("\n\nBACKUP DATABASE shop TO VIRTUAL_DEVICE 'x'");
        assert_eq!((e.number, e.level, e.line), (102, 15, 3));
        assert!(
            e.text.contains("near 'x' at line 3, column 40"),
            "{}",
            e.text
        );
        let e = compile_batch("BACKUP DATABASE shop TO\n VIRTUAL_DEVICE='x", 10).unwrap_err();
        assert_eq!(e.number, 105);
        assert!(e.text.contains("line 11, column 17"), "{}", e.text);
        assert_eq!(syntax("/* BACKUP").number, 113);
        assert!(syntax("BACKUP DATABASE").text.contains("end of the batch"));
    }

    #[test]
    fn display_is_sql_servers_shape() {
        let e = SqlError::new(3201, 2, "Cannot open backup device 'x'.");
        assert_eq!(
            e.to_string(),
            "Msg 3201, Level 16, State 1, Line 2\nCannot open backup device 'x'."
        );
    }

    mod garbage {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn never_panics(s in "\\PC{0,200}") {
                for b in batches(&s) {
                    let _ = compile_batch(&b.text, b.first_line);
                }
            }

            #[test]
            fn never_panics_on_near_misses(
                parts in proptest::collection::vec(
                    prop_oneof![
                        Just("BACKUP"), Just("RESTORE"), Just("DATABASE"), Just("LOG"),
                        Just("HEADERONLY"), Just("TO"), Just("FROM"), Just("WITH"),
                        Just("VIRTUAL_DEVICE"), Just("="), Just(","), Just("'x'"),
                        Just("N'y'"), Just("[db]"), Just("\"q\""), Just("STATS"),
                        Just("MAXTRANSFERSIZE"), Just("99999999999999999999"), Just("--c\n"),
                        Just("/*"), Just("*/"), Just(";"), Just("\nGO\n"), Just("'"),
                        Just("shop"),
                    ],
                    0..30,
                )
            ) {
                let s = parts.join(" ");
                for b in batches(&s) {
                    let _ = compile_batch(&b.text, b.first_line);
                }
            }
        }
    }
}
