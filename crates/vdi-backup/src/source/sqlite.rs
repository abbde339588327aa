//! `sqlite:PATH`: a live SQLite database as a source (the pages of one committed state,
//! whatever other processes write meanwhile, read straight into the engine's buffers
//! with no scratch copy: [`super::sqlite_pages`]) and as a target (checked to be a whole
//! database, optionally with `PRAGMA integrity_check`, before it is put in place; an old
//! journal or WAL beside it is never applied to it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::file::{FileTarget, target_failure};
use super::sqlite_pages::PageSource;
use super::{Scheme, Source, Target, TargetOptions, check_regular};
use crate::error::{Kind, fail};
use crate::format::stream::{Sink, SourceKind};
use crate::store::dir::FileKind;
use crate::{Context, Result};

/// SQLite databases.
#[derive(Debug)]
pub struct Sqlite;

impl Scheme for Sqlite {
    fn prefix(&self) -> &'static str {
        "sqlite:"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Sqlite
    }
    fn probe(&self, rest: &str) -> Result<Option<u64>> {
        let p = Path::new(rest);
        check_regular("source database", p)?;
        let conn = open_db_read_only(p)?;
        let (pages, size): (i64, i64) = conn
            .query_row(
                "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| not_a_db(p, &e))?;
        Ok(Some((pages.max(0) as u64) * (size.max(0) as u64)))
    }
    fn open_source(&self, rest: &str) -> Result<Box<dyn Source>> {
        Ok(Box::new(PageSource::open(Path::new(rest))?))
    }
    fn check_target(&self, rest: &str, force: bool) -> Result<()> {
        super::file::check_file_target(Path::new(rest), force)
    }
    fn open_target(&self, rest: &str, opts: TargetOptions) -> Result<Box<dyn Target>> {
        Ok(Box::new(DatabaseTarget(FileTarget::open(
            Path::new(rest),
            opts,
        )?)))
    }
}

/// A database being restored: a file target whose data must be a whole database.
struct DatabaseTarget(FileTarget);

impl Target for DatabaseTarget {
    fn begin(&self, devices: u32) {
        self.0.begin(devices);
    }
    fn sink(&self) -> Box<dyn Sink + Send> {
        self.0.sink()
    }
    fn device_done(&self, failed: bool) {
        self.0.device_done(failed);
    }
    fn commit(self: Box<Self>, total: u64, check: bool) -> Result<Option<String>> {
        let t = self.0;
        t.finish(total)?;
        header_check(t.temporary()).map_err(|e| {
            fail(
                Kind::Damaged,
                format!("the restored data is not a whole SQLite database: {e}"),
            )
        })?;
        let mut verdict = None;
        if check {
            let rows = integrity_check(t.temporary()).map_err(|e| {
                fail(
                    Kind::Damaged,
                    format!("the restored data is not a SQLite database: {e}"),
                )
            })?;
            if rows != ["ok"] {
                return Err(fail(
                    Kind::Damaged,
                    format!(
                        "the restored database fails PRAGMA integrity_check: {}",
                        rows.join("; ")
                    ),
                ));
            }
            verdict = Some("ok".to_owned());
        }
        // An old database's journal or WAL must not be applied to the new one.
        for side in ["-wal", "-shm", "-journal"] {
            let mut p = t.path().to_owned().into_os_string();
            p.push(side);
            let p = PathBuf::from(p);
            match FileKind::at(&p) {
                Err(_) => {}
                Ok(FileKind::Regular) if t.force() => {
                    std::fs::remove_file(&p).map_err(|e| target_failure(&p, &e))?;
                }
                Ok(FileKind::Regular) => {
                    return Err(fail(
                        Kind::TargetExists,
                        format!("{} exists; use --force to replace it", p.display()),
                    ));
                }
                Ok(k) => {
                    return Err(fail(
                        Kind::TargetExists,
                        format!(
                            "{} is {}, not the database's journal: remove it or restore elsewhere",
                            p.display(),
                            k.describe()
                        ),
                    ));
                }
            }
        }
        t.persist()?;
        Ok(verdict)
    }
}

pub(crate) fn not_a_db(p: &Path, e: &rusqlite::Error) -> crate::Error {
    fail(
        Kind::Input,
        format!(
            "source {} is not a readable SQLite database: {e}",
            p.display()
        ),
    )
}

pub(crate) fn open_db_read_only(p: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        p,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| not_a_db(p, &e))?;
    // A rollback-journal database whose writer commits back to back can keep a reader
    // out for a long while (each commit briefly excludes readers); wait as long as the
    // snapshot itself may take rather than failing a backup of a busy database.
    conn.busy_timeout(Duration::from_secs(120))
        .map_err(|e| not_a_db(p, &e))?;
    Ok(conn)
}

/// A `file:` URI for `path` (percent-encoding what a URI may not hold).
fn file_uri(path: &Path, query: &str) -> String {
    let mut s = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push('?');
    s.push_str(query);
    s
}

/// `PRAGMA integrity_check` of the database file `path`, opened as immutable (nothing is
/// written next to it); `Ok(vec!["ok"])` when it is sound.
pub fn integrity_check(path: &Path) -> Result<Vec<String>> {
    let conn = Connection::open_with_flags(
        file_uri(path, "immutable=1"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let mut st = conn.prepare("PRAGMA integrity_check")?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()
        .with_context(|| format!("checking {}", path.display()))?;
    Ok(rows)
}

/// Checks the header of the SQLite database file `path` against its length (magic,
/// page size, and the page count the header records when it is valid): cheap, and
/// enough to refuse a file that is not a whole database.
pub fn header_check(path: &Path) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut h = [0u8; 100];
    let n = crate::codec::read_full(&mut f, &mut h).map_err(|e| e.to_string())?;
    if n < 100 || &h[..16] != b"SQLite format 3\0" {
        return Err("it does not start with the SQLite header".into());
    }
    let page = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        p => u64::from(p),
    };
    if !page.is_power_of_two() || !(512..=65536).contains(&page) {
        return Err(format!("its header names page size {page}"));
    }
    if len % page != 0 {
        return Err(format!(
            "its length {len} is not a multiple of its page size {page}"
        ));
    }
    let pages = u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]]));
    let change = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
    let valid_for = u32::from_be_bytes([h[92], h[93], h[94], h[95]]);
    if pages != 0 && change == valid_for && pages * page != len {
        return Err(format!(
            "its header records {pages} pages of {page} bytes, but it holds {} pages",
            len / page
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::source::Spec;

    #[test]
    fn specs() {
        assert!(Spec::parse("-").unwrap().is_stdio());
        assert_eq!(
            Spec::parse("sqlite:a.db").unwrap().kind(),
            SourceKind::Sqlite
        );
        assert_eq!(
            Spec::parse("sqlite:a.db").unwrap().path(),
            Some(Path::new("a.db"))
        );
        assert_eq!(Spec::parse("file:/x").unwrap(), Spec::parse("/x").unwrap());
        assert_eq!(Spec::parse("/x").unwrap().kind(), SourceKind::File);
        assert!(Spec::parse("sqlite:").is_err());
        assert_eq!(Spec::parse("sqlite:a").unwrap().label(), "sqlite:a");
    }

    #[test]
    fn uri_escapes() {
        assert_eq!(
            file_uri(Path::new("/a b/c?#%.db"), "immutable=1"),
            "file:/a%20b/c%3F%23%25.db?immutable=1"
        );
    }

    #[test]
    fn pages_and_check() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);",
        )
        .unwrap();
        // The rows are in the WAL, not yet in the database file: the pages come from both.
        let mut src = Sqlite.open_source(&db.to_string_lossy()).unwrap();
        let mut pages = Vec::new();
        src.read_to_end(&mut pages).unwrap();
        src.finish().unwrap();
        drop(c);
        let snap = dir.path().join("s.db");
        std::fs::write(&snap, &pages).unwrap();
        header_check(&snap).unwrap();
        assert_eq!(integrity_check(&snap).unwrap(), vec!["ok".to_owned()]);
        let s = Connection::open(&snap).unwrap();
        let k: i64 = s
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(k, 3);
        assert!(Sqlite.probe(&db.to_string_lossy()).unwrap().unwrap() > 0);
        std::fs::write(dir.path().join("junk"), b"not a database at all, really").unwrap();
        let e = Sqlite
            .probe(&dir.path().join("junk").to_string_lossy())
            .unwrap_err();
        assert_eq!(crate::error::kind_of(&e), Kind::Input);
    }
}
