//! A live SQLite database's pages, read straight into the engine's buffers (one
//! `pread` per run of pages, no scratch copy), as they are in one committed state of the
//! database, whatever other processes write meanwhile.
//!
//! How it stays one committed state. The source holds a read transaction on its own
//! read-only connection for as long as it reads (`BEGIN`, then a read: SQLite takes its
//! read lock), and reads the files under it:
//!
//! - **Rollback-journal modes** (`DELETE`, `TRUNCATE`, `PERSIST`): the read transaction
//!   holds a `SHARED` lock on the database file. No writer can change the file while any
//!   `SHARED` lock is held (changing it needs the `EXCLUSIVE` lock, which waits for every
//!   reader to leave), so the file's first `page_count` pages (the count as the
//!   transaction sees it) are the committed state the transaction sees. Writers wait
//!   for the backup to end, as they do for `sqlite3 .backup`; a writer whose busy
//!   timeout is shorter than the backup gets `SQLITE_BUSY`.
//! - **WAL mode**: committed pages may be in the `-wal` file rather than the database
//!   file. The source reads the WAL's header and frames after its read transaction
//!   began, keeps the frames up to the last *valid commit frame* X (valid: the header's
//!   salts and the running checksum match, as SQLite itself checks them), and reads each
//!   page from the last frame ≤ X that holds it, else from the database file; the
//!   database then has the page count that commit frame records. That is the committed
//!   state at X, and nothing it reads can change while it reads it:
//!   - a frame ≤ X is never overwritten: the WAL restarts from its start only when no
//!     reader uses it (a read mark above 0, which this source's transaction holds
//!     whenever the WAL was not wholly checkpointed when it began);
//!   - a checkpoint copies into the database file only frames ≤ the smallest read mark
//!     of the readers, ≤ this transaction's, ≤ X: so it writes only pages that have a
//!     frame ≤ X, which the source reads from the WAL, never the database file's copy;
//!   - a reader whose read mark is 0 (the WAL was wholly checkpointed) keeps every
//!     checkpoint from writing the database file at all, and the frames it then finds
//!     are either checkpointed already (the same pages) or of a new WAL generation on
//!     top of that file, each valid prefix of which ends in a committed state;
//!   - a frame being written as it is read fails its checksum, and the scan stops
//!     before it, at the last whole commit.
//!
//! The source's descriptors of the database and WAL files are opened before its
//! connection and closed after it: closing a descriptor of a file drops every POSIX
//! lock the process holds on it, SQLite's too. (The engine process has no other
//! connection to the database; a program that links this library and keeps a
//! connection of its own to the same database in the same process should not run this
//! source concurrently with it.)

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;

use super::sqlite::{not_a_db, open_db_read_only};
use super::{Source, check_regular};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::SourceKind;

/// The database's pages in one committed state.
pub struct PageSource {
    // Declared (so dropped) first: the read transaction ends before the files close.
    conn: Option<Connection>,
    db: File,
    wal: Option<File>,
    path: PathBuf,
    page: u64,
    pages: u64,
    /// Page number → where its data is in the WAL.
    frames: HashMap<u32, u64>,
    pos: u64,
    seconds: f64,
}

/// What the WAL holds up to its last valid commit frame.
#[derive(Debug, Default)]
pub struct WalState {
    /// Page number → offset of the page's data (its last frame up to the commit).
    pub frames: HashMap<u32, u64>,
    /// The database's size in pages at that commit (0: no valid commit).
    pub db_pages: u32,
    /// Frames read (up to the commit).
    pub commit_frame: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum of `data` (a multiple of 8 bytes), going on from `s`.
fn checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for c in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(&c[..4]), be32(&c[4..]))
        } else {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// Reads a WAL file as SQLite recovers one: its header, then frames while their salts
/// and running checksum hold; returns what the last valid commit frame makes. A WAL
/// whose header is not valid (empty, being reset, another page size) holds nothing.
pub fn scan_wal(f: &File, page: u64) -> io::Result<WalState> {
    let mut st = WalState::default();
    let mut h = [0u8; 32];
    if !read_at_full(f, &mut h, 0)? {
        return Ok(st);
    }
    let magic = be32(&h[0..4]);
    if magic & !1 != 0x377f_0682
        || be32(&h[4..8]) != 3_007_000
        || u64::from(be32(&h[8..12])) != page
    {
        return Ok(st);
    }
    let big = magic & 1 == 1;
    let mut s = checksum(big, &h[..24], (0, 0));
    if s != (be32(&h[24..28]), be32(&h[28..32])) {
        return Ok(st);
    }
    let salts = [h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]];
    let frame = 24 + page as usize;
    // Frames are read a batch at a time.
    let per = ((4 << 20) / frame).max(1);
    let mut buf = vec![0u8; per * frame];
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut off = 32u64;
    let mut k = 0u64;
    'scan: loop {
        let n = read_some_at(f, &mut buf, off)?;
        let whole = n / frame;
        if whole == 0 {
            break;
        }
        for i in 0..whole {
            let fr = &buf[i * frame..(i + 1) * frame];
            if fr[8..16] != salts {
                break 'scan;
            }
            s = checksum(big, &fr[..8], s);
            s = checksum(big, &fr[24..], s);
            if s != (be32(&fr[16..20]), be32(&fr[20..24])) {
                break 'scan;
            }
            k += 1;
            let pgno = be32(&fr[0..4]);
            pending.push((pgno, off + (i * frame) as u64 + 24));
            let commit = be32(&fr[4..8]);
            if commit != 0 {
                st.frames.extend(pending.drain(..));
                st.db_pages = commit;
                st.commit_frame = k;
            }
        }
        off += (whole * frame) as u64;
        if whole < per {
            break;
        }
    }
    // Pages past the database's end at that commit are not part of it.
    let end = st.db_pages;
    st.frames.retain(|p, _| *p <= end);
    Ok(st)
}

/// Reads `buf.len()` bytes at `off`; false if the file ends first.
fn read_at_full(f: &File, buf: &mut [u8], off: u64) -> io::Result<bool> {
    let n = read_some_at(f, buf, off)?;
    Ok(n == buf.len())
}

/// Reads as much of `buf` as the file holds at `off`.
fn read_some_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl PageSource {
    /// Opens `path` and begins its read transaction.
    pub fn open(path: &Path) -> Result<PageSource> {
        let t = Instant::now();
        // Opened before the connection, closed after it (see the module's notes).
        let db = check_regular("source database", path)?;
        let conn = open_db_read_only(path)?;
        let q = |sql: &str| -> Result<i64> {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(|e| not_a_db(path, &e))
        };
        conn.execute_batch("BEGIN")
            .map_err(|e| not_a_db(path, &e))?;
        // The first read takes the read lock: from here on the state is held.
        q("SELECT count(*) FROM sqlite_schema")?;
        let page = q("PRAGMA page_size")?.max(512) as u64;
        let mut pages = q("PRAGMA page_count")?.max(0) as u64;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| not_a_db(path, &e))?;
        let mut frames = HashMap::new();
        let mut wal = None;
        if mode.eq_ignore_ascii_case("wal") {
            let mut wp = path.as_os_str().to_owned();
            wp.push("-wal");
            let wp = PathBuf::from(wp);
            match File::open(&wp) {
                Ok(f) => {
                    let st = scan_wal(&f, page)
                        .map_err(|e| fail(Kind::Input, format!("reading {}: {e}", wp.display())))?;
                    if st.db_pages > 0 {
                        pages = u64::from(st.db_pages);
                        frames = st.frames;
                    }
                    wal = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(fail(Kind::Input, format!("reading {}: {e}", wp.display())));
                }
            }
        }
        if pages == 0 {
            return Err(fail(
                Kind::Input,
                format!("source {} is an empty database (no pages)", path.display()),
            ));
        }
        Ok(PageSource {
            conn: Some(conn),
            db,
            wal,
            path: path.to_owned(),
            page,
            pages,
            frames,
            pos: 0,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn short(&self, at: u64) -> io::Error {
        io::Error::other(format!(
            "the database file {} ends at byte {at}, before the {} pages of the state being read: it was changed without SQLite's locks (or truncated); back it up again",
            self.path.display(),
            self.pages
        ))
    }
}

impl Read for PageSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let total = self.pages * self.page;
        if self.pos >= total || buf.is_empty() {
            return Ok(0);
        }
        let pgno = (self.pos / self.page) as u32 + 1;
        let in_page = self.pos % self.page;
        if let Some(&at) = self.frames.get(&pgno) {
            // The page as the WAL holds it.
            let n = buf.len().min((self.page - in_page) as usize);
            let wal = self
                .wal
                .as_ref()
                .ok_or_else(|| io::Error::other("no WAL file"))?;
            if !read_at_full(wal, &mut buf[..n], at + in_page)? {
                return Err(io::Error::other(
                    "the WAL file ended inside a frame it holds",
                ));
            }
            self.pos += n as u64;
            return Ok(n);
        }
        // A run of pages from the database file, up to the next one the WAL holds.
        let mut end = (self.pos + buf.len() as u64).min(total);
        if !self.frames.is_empty() {
            let mut p = u64::from(pgno) + 1;
            while (p - 1) * self.page < end {
                if self.frames.contains_key(&(p as u32)) {
                    end = (p - 1) * self.page;
                    break;
                }
                p += 1;
            }
        }
        let n = (end - self.pos) as usize;
        let got = read_some_at(&self.db, &mut buf[..n], self.pos)?;
        if got < n {
            return Err(self.short(self.pos + got as u64));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Source for PageSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Sqlite
    }
    fn size(&self) -> Option<u64> {
        Some(self.pages * self.page)
    }
    fn checked(&self) -> bool {
        true
    }
    fn finish(&mut self) -> Result<()> {
        if self.pos != self.pages * self.page {
            return Err(fail(
                Kind::Input,
                format!(
                    "the database {} was read to byte {} of {}",
                    self.path.display(),
                    self.pos,
                    self.pages * self.page
                ),
            ));
        }
        // The read transaction ends; the files close after it (when this is dropped).
        self.conn = None;
        Ok(())
    }
    fn prepare_seconds(&self) -> f64 {
        self.seconds
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_wal_is_read_to_its_last_whole_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(5000));
             INSERT INTO t VALUES (randomblob(5000));",
        )
        .unwrap();
        let wp = dir.path().join("w.db-wal");
        let f = File::open(&wp).unwrap();
        let st = scan_wal(&f, 4096).unwrap();
        assert!(st.db_pages > 0 && !st.frames.is_empty(), "{st:?}");
        let whole = st.commit_frame;
        // Cut the last frame in half: the scan stops at the commit before it.
        let len = std::fs::metadata(&wp).unwrap().len();
        let copy = dir.path().join("cut-wal");
        let mut bytes = std::fs::read(&wp).unwrap();
        bytes.truncate((len - 2000) as usize);
        std::fs::write(&copy, &bytes).unwrap();
        let st2 = scan_wal(&File::open(&copy).unwrap(), 4096).unwrap();
        assert!(st2.commit_frame < whole);
        // A flipped byte in a frame: the scan stops before that frame.
        let mut bytes = std::fs::read(&wp).unwrap();
        bytes[32 + 24 + 100] ^= 0xff;
        std::fs::write(&copy, &bytes).unwrap();
        let st3 = scan_wal(&File::open(&copy).unwrap(), 4096).unwrap();
        assert_eq!(st3.commit_frame, 0);
        assert!(st3.frames.is_empty());
        // Another page size: not this database's WAL.
        assert_eq!(scan_wal(&f, 1024).unwrap().db_pages, 0);
    }
}
