//! Sources and targets (`sqlite:PATH`, `file:PATH`, `-`), and what the engine needs of
//! SQLite: a consistent snapshot of a live database and an integrity check.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Context, Result};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Kind, fail};
use crate::format::stream::SourceKind;
use crate::store::dir::FileKind;

/// A source or target as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// A plain file.
    File(PathBuf),
    /// A SQLite database.
    Sqlite(PathBuf),
    /// Standard input or output.
    Std,
}

impl Spec {
    /// Parses `sqlite:PATH`, `file:PATH`, `-`, or a bare path (a file).
    pub fn parse(s: &str) -> Result<Spec> {
        if s == "-" {
            return Ok(Spec::Std);
        }
        let (kind, path) = if let Some(p) = s.strip_prefix("sqlite:") {
            ("sqlite", p)
        } else if let Some(p) = s.strip_prefix("file:") {
            ("file", p)
        } else {
            ("file", s)
        };
        if path.is_empty() {
            return Err(fail(
                Kind::Usage,
                format!("'{s}' names no path (use {kind}:PATH)"),
            ));
        }
        Ok(match kind {
            "sqlite" => Spec::Sqlite(PathBuf::from(path)),
            _ => Spec::File(PathBuf::from(path)),
        })
    }

    /// As the user would write it.
    pub fn label(&self) -> String {
        match self {
            Spec::File(p) => format!("file:{}", p.display()),
            Spec::Sqlite(p) => format!("sqlite:{}", p.display()),
            Spec::Std => "-".into(),
        }
    }

    /// The kind recorded in the stream header.
    pub fn kind(&self) -> SourceKind {
        match self {
            Spec::File(_) => SourceKind::File,
            Spec::Sqlite(_) => SourceKind::Sqlite,
            Spec::Std => SourceKind::Stdin,
        }
    }
}

fn unreadable(what: &str, path: &Path, e: &io::Error) -> crate::Error {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => " (permission denied: run as a user who may read it)",
        _ => "",
    };
    fail(
        Kind::Input,
        format!("cannot read {what} {}: {e}{hint}", path.display()),
    )
}

/// Opens the source `path` for reading without ever blocking in the open (a FIFO there
/// would wait for a writer for ever): a regular file, or (for `file:` sources) a block
/// device; anything else is refused, saying what it is. Returns the file and its size.
fn open_input(what: &str, path: &Path, devices_too: bool) -> Result<(File, u64)> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unreadable(what, path, &io::Error::from_raw_os_error(e.raw_os_error())))?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| unreadable(what, path, &io::Error::from_raw_os_error(e.raw_os_error())))?;
    let kind = FileKind::of(&st);
    let hint = match kind {
        FileKind::Regular => None,
        FileKind::BlockDevice if devices_too => None,
        FileKind::Directory => Some(String::new()),
        FileKind::Fifo => Some(format!(
            ": to back up what a program writes into it, read it as standard input: vdi backup - DEST < {}",
            path.display()
        )),
        FileKind::BlockDevice => Some(": a database is a regular file".into()),
        _ => Some(": vdi backs up regular files and block devices (disks)".into()),
    };
    if let Some(hint) = hint {
        return Err(fail(
            Kind::Input,
            format!(
                "{what} {} is {}, not a file{hint}",
                path.display(),
                kind.describe()
            ),
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&fd)
        .map_err(|e| unreadable(what, path, &io::Error::from_raw_os_error(e.raw_os_error())))?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)
        .map_err(|e| unreadable(what, path, &io::Error::from_raw_os_error(e.raw_os_error())))?;
    let mut f = File::from(fd);
    let size = if kind == FileKind::BlockDevice {
        // A device's length is where its end is.
        let end = f
            .seek(io::SeekFrom::End(0))
            .map_err(|e| unreadable(what, path, &e))?;
        f.seek(io::SeekFrom::Start(0))
            .map_err(|e| unreadable(what, path, &e))?;
        end
    } else {
        st.st_size.max(0) as u64
    };
    Ok((f, size))
}

fn check_regular(what: &str, path: &Path) -> Result<File> {
    open_input(what, path, false).map(|(f, _)| f)
}

/// Checks that the source can be read; returns its size if known.
pub fn check_source(spec: &Spec) -> Result<Option<u64>> {
    match spec {
        Spec::Std => {
            stdin_file().map_err(|e| fail(Kind::Usage, format!("source -: {e}")))?;
            Ok(None)
        }
        Spec::File(p) => {
            let (mut f, len) = open_input("source file", p, true)?;
            let mut probe = [0u8; 1];
            if len > 0 {
                f.read(&mut probe)
                    .map_err(|e| unreadable("source file", p, &e))?;
            }
            Ok(Some(len))
        }
        Spec::Sqlite(p) => {
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
    }
}

fn not_a_db(p: &Path, e: &rusqlite::Error) -> crate::Error {
    fail(
        Kind::Input,
        format!(
            "source {} is not a readable SQLite database: {e}",
            p.display()
        ),
    )
}

fn open_db_read_only(p: &Path) -> Result<Connection> {
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

/// Takes a consistent snapshot of the live database `db` into the new file `into`, with
/// SQLite's online backup API copying every page in one step (one read transaction, so
/// the snapshot is one committed state even while other processes write).
pub fn snapshot_sqlite(db: &Path, into: &Path) -> Result<u64> {
    let src = open_db_read_only(db)?;
    src.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| not_a_db(db, &e))?;
    let mut dst = Connection::open(into)
        .with_context(|| format!("creating the snapshot file {}", into.display()))?;
    // A scratch copy: no journal, no fsync (it is read once, then deleted).
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .with_context(|| format!("preparing the snapshot file {}", into.display()))?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst)
            .with_context(|| format!("starting a snapshot of {}", db.display()))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match b
                .step(-1)
                .with_context(|| format!("taking a snapshot of {}", db.display()))?
            {
                rusqlite::backup::StepResult::Done => break,
                _ if Instant::now() > deadline => {
                    return Err(fail(
                        Kind::Input,
                        format!(
                            "the database {} stayed locked for 2 minutes; no snapshot could be taken",
                            db.display()
                        ),
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    dst.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("closing the snapshot {}", into.display()))?;
    for side in ["-wal", "-journal"] {
        let p = PathBuf::from(format!("{}{side}", into.display()));
        if std::fs::metadata(&p).is_ok_and(|m| m.len() > 0) {
            return Err(crate::Error::other(format!(
                "the snapshot left a non-empty {} file; it would not be whole",
                p.display()
            )));
        }
    }
    Ok(std::fs::metadata(into)?.len())
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

/// Which of standard input, output and error were closed when the process started.
static CLOSED: [std::sync::atomic::AtomicBool; 3] = [
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
];

/// Notes which of standard input, output and error the process was started without
/// (`>&-`). Rust's runtime puts `/dev/null`, opened read-write, in place of a closed one
/// before `main`, so a backup "to standard output" went into `/dev/null` and was
/// reported as a success. A shell's `> /dev/null` opens it write-only (`< /dev/null`
/// read-only): only a read-write `/dev/null` is taken for a closed stream. Call first
/// thing in `main`.
pub fn note_closed_standard_streams() {
    use rustix::fs::{FileType, OFlags};
    let filler = |fd: std::os::fd::BorrowedFd<'_>| {
        let Ok(st) = rustix::fs::fstat(fd) else {
            return true;
        };
        let null = FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
            && rustix::fs::major(st.st_rdev) == 1
            && rustix::fs::minor(st.st_rdev) == 3;
        null && rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f & OFlags::RWMODE == OFlags::RDWR)
    };
    let fds = [
        filler(io::stdin().as_fd()),
        filler(io::stdout().as_fd()),
        filler(io::stderr().as_fd()),
    ];
    for (i, closed) in fds.into_iter().enumerate() {
        CLOSED[i].store(closed, std::sync::atomic::Ordering::Release);
    }
}

fn closed(i: usize, what: &str, redirect: &str) -> io::Result<()> {
    if CLOSED[i].load(std::sync::atomic::Ordering::Acquire) {
        return Err(io::Error::other(format!(
            "{what} is closed (the command was started with {redirect}&-): redirect it to a file or a pipe"
        )));
    }
    Ok(())
}

/// A duplicate of standard input as a file (read without Rust's buffering).
pub fn stdin_file() -> io::Result<File> {
    closed(0, "standard input", "<")?;
    Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
}

/// Standard input, read so that a producer that never writes again cannot hold this
/// process for ever: each read waits (poll, a fifth of a second at a time) until there
/// is data or the end, and gives up once the operation is over
/// ([`crate::cancel::stopping`]: a signal, an aborted set, a peer gone).
#[derive(Debug)]
pub struct PolledStdin(File);

impl PolledStdin {
    /// Standard input, duplicated.
    pub fn open() -> io::Result<PolledStdin> {
        stdin_file().map(PolledStdin)
    }
}

impl Read for PolledStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        loop {
            if crate::cancel::stopping() {
                return Err(io::Error::other(
                    "the operation ended while waiting for standard input",
                ));
            }
            let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
            match poll(&mut fds, Some(&tick)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => return self.0.read(buf),
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
    }
}

/// A duplicate of standard output as a file (written without line buffering).
pub fn stdout_file() -> io::Result<File> {
    closed(1, "standard output", ">")?;
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

/// The engine's open source.
pub struct OpenSource {
    /// Where the bytes come from.
    pub reader: Box<dyn Read + Send>,
    /// Bytes, if known.
    pub size: Option<u64>,
    /// Kept alive until the backup ends (the snapshot lives in it).
    pub _snapshot: Option<tempfile::TempDir>,
    /// Seconds the snapshot took.
    pub snapshot_secs: f64,
}

/// The environment variable through which `vdi backup`/`vdi restore` gives the engine it
/// starts a scratch directory. Whichever of the two processes outlives the other removes
/// it: `vdi` once the engine has exited, however it ended (even SIGKILL), and the engine
/// ([`EngineScratch`]) whenever it ends by itself, so that a `vdi` killed in the middle
/// leaves nothing in `$TMPDIR` either.
pub const SCRATCH_ENV: &str = "VDI_ENGINE_SCRATCH";

/// The engine's hold on the scratch directory named by [`SCRATCH_ENV`]: removes it when
/// dropped (every return, error and unwind of the engine) or when a second interrupt
/// exits the process at once.
#[derive(Debug)]
pub struct EngineScratch(PathBuf);

impl EngineScratch {
    /// The directory named by [`SCRATCH_ENV`], if it is set (only `vdi backup`/`vdi
    /// restore` sets it, for an engine it starts with `--parent-pid`).
    pub fn from_env() -> Option<EngineScratch> {
        let dir = PathBuf::from(std::env::var_os(SCRATCH_ENV)?);
        let d2 = dir.clone();
        crate::cancel::before_exit(move || {
            let _ = std::fs::remove_dir_all(&d2);
        });
        Some(EngineScratch(dir))
    }
}

impl Drop for EngineScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens `spec` for the engine: a snapshot first for a SQLite database.
pub fn open_source(spec: &Spec) -> Result<OpenSource> {
    match spec {
        Spec::Std => Ok(OpenSource {
            reader: Box::new(
                PolledStdin::open().map_err(|e| fail(Kind::Usage, format!("source -: {e}")))?,
            ),
            size: None,
            _snapshot: None,
            snapshot_secs: 0.0,
        }),
        Spec::File(p) => {
            let (f, size) = open_input("source file", p, true)?;
            Ok(OpenSource {
                reader: Box::new(f),
                size: Some(size),
                _snapshot: None,
                snapshot_secs: 0.0,
            })
        }
        Spec::Sqlite(p) => {
            check_regular("source database", p)?;
            let t = Instant::now();
            let mut builder = tempfile::Builder::new();
            builder.prefix("vdi-snapshot-");
            let dir = match std::env::var_os(SCRATCH_ENV) {
                Some(d) => builder.tempdir_in(d),
                None => builder.tempdir(),
            }
            .context("creating a directory for the database snapshot")?;
            let snap = dir.path().join("snapshot.db");
            let size = snapshot_sqlite(p, &snap)?;
            let f = File::open(&snap).context("opening the snapshot")?;
            // Unlinked at once: the open descriptor keeps the snapshot readable, and the
            // kernel frees it when this process ends, however it ends (even SIGKILL), so
            // nothing is ever left in $TMPDIR.
            dir.close()
                .context("removing the snapshot's directory name")?;
            Ok(OpenSource {
                reader: Box::new(f),
                size: Some(size),
                _snapshot: None,
                snapshot_secs: t.elapsed().as_secs_f64(),
            })
        }
    }
}

/// Checks that `spec` may be written: refuses an existing target without `force`,
/// anything but a regular file there even with it (a device such as `/dev/null`, a FIFO,
/// a link, a directory: restoring renames a new file into the target's place, which
/// would replace it), and a target whose directory does not exist.
pub fn check_target(spec: &Spec, force: bool) -> Result<()> {
    let p = match spec {
        Spec::Std => return Ok(()),
        Spec::File(p) | Spec::Sqlite(p) => p,
    };
    check_target_path(p, force, "")?;
    let parent = parent_dir(p);
    if !parent.is_dir() {
        return Err(fail(
            Kind::Input,
            format!(
                "cannot create target {}: directory {} does not exist",
                p.display(),
                parent.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses to put a restored file in place of `p` if something other than a regular file
/// is there, or if anything is there without `force`. `when` says when it was found
/// (`""`, or ` during the restore`).
pub fn check_target_path(p: &Path, force: bool, when: &str) -> Result<()> {
    match FileKind::at(p) {
        Ok(FileKind::Regular) if !force => Err(fail(
            Kind::TargetExists,
            if when.is_empty() {
                format!(
                    "target {} already exists; use --force to replace it",
                    p.display()
                )
            } else {
                format!(
                    "target {} appeared{when}; use --force to replace it",
                    p.display()
                )
            },
        )),
        Ok(FileKind::Regular) => Ok(()),
        Ok(k) => {
            let what = if k == FileKind::Symlink {
                let to = std::fs::read_link(p)
                    .map(|t| format!(" (to {})", t.display()))
                    .unwrap_or_default();
                format!("a symbolic link{to}; name the file itself")
            } else {
                format!(
                    "{}; a restore makes a regular file and puts it in the target's place, which would replace it",
                    k.describe()
                )
            };
            Err(fail(
                Kind::TargetExists,
                format!(
                    "target {} is {what}: refused, even with --force",
                    p.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(
            Kind::Input,
            format!("cannot look at target {}: {e}", p.display()),
        )),
    }
}

/// The directory a path lives in (`.` for a bare name).
pub fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("-").unwrap(), Spec::Std);
        assert_eq!(
            Spec::parse("sqlite:a.db").unwrap(),
            Spec::Sqlite("a.db".into())
        );
        assert_eq!(Spec::parse("file:/x").unwrap(), Spec::File("/x".into()));
        assert_eq!(Spec::parse("/x").unwrap(), Spec::File("/x".into()));
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
    fn snapshot_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);",
        )
        .unwrap();
        let snap = dir.path().join("s.db");
        let n = snapshot_sqlite(&db, &snap).unwrap();
        assert!(n > 0);
        assert_eq!(integrity_check(&snap).unwrap(), vec!["ok".to_owned()]);
        let s = Connection::open(&snap).unwrap();
        let k: i64 = s
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(k, 3);
        assert!(check_source(&Spec::Sqlite(db.clone())).unwrap().unwrap() > 0);
        std::fs::write(dir.path().join("junk"), b"not a database at all, really").unwrap();
        let e = check_source(&Spec::Sqlite(dir.path().join("junk"))).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), Kind::Input);
    }
}
