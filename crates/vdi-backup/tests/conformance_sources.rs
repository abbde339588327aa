//! The source and target contract (`vdi_backup::source`), checked with the same tests
//! for every scheme that names a path (`file:`, `sqlite:`); a new scheme adds one case to
//! `schemes()`. Standard input/output (`-`) is the process's own streams: its source is
//! unchecked by definition (tested here) and its target is tested through the `vdi`
//! binary (restores to a pipe, `crates/vdi-cli/tests`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use vdi_backup::Kind;
use vdi_backup::format::stream::{ChunkHeader, SourceKind};
use vdi_backup::source::{Spec, TargetOptions};

/// A scheme, and a valid content for it of about `n` bytes, written at `path`.
struct Case {
    prefix: &'static str,
    kind: SourceKind,
    make: fn(&Path) -> Vec<u8>,
}

fn file_content(p: &Path) -> Vec<u8> {
    let v: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(p, &v).unwrap();
    v
}

fn sqlite_content(p: &Path) -> Vec<u8> {
    let c = rusqlite::Connection::open(p).unwrap();
    c.execute_batch(
        "CREATE TABLE t(x TEXT); INSERT INTO t SELECT hex(randomblob(200)) FROM generate_series(1, 300);",
    )
    .unwrap_or_else(|_| {
        // Without the series extension: a loop in Rust.
        c.execute_batch("CREATE TABLE IF NOT EXISTS t(x TEXT);").unwrap();
        for i in 0..300 {
            c.execute("INSERT INTO t VALUES (?1)", [format!("{i:0>400}")])
                .unwrap();
        }
    });
    drop(c);
    std::fs::read(p).unwrap()
}

fn schemes() -> Vec<Case> {
    vec![
        Case {
            prefix: "file:",
            kind: SourceKind::File,
            make: file_content,
        },
        Case {
            prefix: "sqlite:",
            kind: SourceKind::Sqlite,
            make: sqlite_content,
        },
    ]
}

fn spec(prefix: &str, p: &Path) -> Spec {
    Spec::parse(&format!("{prefix}{}", p.display())).unwrap()
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Lists a directory (to show that nothing was left behind).
fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_source_reads_whole_and_says_what_it_is() {
    for c in schemes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        let want = (c.make)(&p);
        let s = spec(c.prefix, &p);
        assert_eq!(s.kind(), c.kind);
        assert_eq!(s.probe().unwrap(), Some(want.len() as u64), "{}", c.prefix);
        let mut src = s.open_source().unwrap();
        assert_eq!(src.kind(), c.kind);
        assert_eq!(src.size(), Some(want.len() as u64));
        assert!(
            src.checked(),
            "{}: a path's source can tell its end",
            c.prefix
        );
        let mut got = Vec::new();
        src.read_to_end(&mut got).unwrap();
        if c.kind == SourceKind::File {
            assert_eq!(got, want);
        } else {
            // A snapshot: the same database, whatever header bytes the copy rewrites.
            assert_eq!(got.len(), want.len());
            assert_eq!(&got[..16], b"SQLite format 3\0");
        }
        src.finish().unwrap();
        // Nothing of the source (a snapshot) is left in the directory.
        assert_eq!(entries(dir.path()), vec!["src".to_owned()], "{}", c.prefix);
    }
}

#[test]
fn a_source_that_is_not_a_file_is_refused_without_blocking() {
    for c in schemes() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        for p in [fifo.clone(), dir.path().to_owned()] {
            let s = spec(c.prefix, &p);
            let e = s.probe().unwrap_err();
            assert_eq!(e.kind(), Kind::Input, "{} {}: {e}", c.prefix, p.display());
            assert!(e.to_string().contains("not a file"), "{e}");
            let e = s.open_source().err().unwrap();
            assert_eq!(e.kind(), Kind::Input, "{e}");
        }
        let e = spec(c.prefix, &dir.path().join("missing"))
            .probe()
            .unwrap_err();
        assert_eq!(e.kind(), Kind::Input, "{e}");
    }
}

/// Writes `data` through the target's sinks (two devices, chunks out of order), then
/// commits or drops it.
fn restore_into(
    s: &Spec,
    opts: TargetOptions,
    data: &[u8],
    commit: bool,
) -> vdi_backup::Result<()> {
    let t = s.open_target(opts)?;
    t.begin(2);
    let mut sinks = [t.sink(), t.sink()];
    let chunks: Vec<(u64, &[u8])> = data
        .chunks(4096)
        .enumerate()
        .map(|(i, c)| (i as u64 * 4096, c))
        .collect();
    for (k, (off, c)) in chunks.iter().enumerate().rev() {
        let h = ChunkHeader {
            len: c.len() as u32,
            seq: k as u64,
            offset: *off,
            crc: 0,
        };
        let sink = &mut sinks[k % 2];
        sink.payload(&h, 0, c).unwrap();
        sink.chunk_end(&h).unwrap();
    }
    t.device_done(false);
    t.device_done(false);
    if commit {
        t.commit(data.len() as u64, true)?;
    }
    Ok(())
}

#[test]
fn a_target_appears_only_when_committed_and_whole() {
    for c in schemes() {
        let dir = tempfile::tempdir().unwrap();
        let data = (c.make)(&dir.path().join("made"));
        std::fs::remove_file(dir.path().join("made")).unwrap();
        let t = dir.path().join("target");
        let s = spec(c.prefix, &t);
        s.check_target(false).unwrap();
        // Dropped before the commit: nothing is left, not even a temporary file.
        restore_into(&s, TargetOptions { force: false }, &data, false).unwrap();
        assert!(
            entries(dir.path()).is_empty(),
            "{}: {:?}",
            c.prefix,
            entries(dir.path())
        );
        restore_into(&s, TargetOptions { force: false }, &data, true).unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), data, "{}", c.prefix);
        assert_eq!(entries(dir.path()), vec!["target".to_owned()]);
    }
}

#[test]
fn an_existing_target_is_replaced_only_with_force_and_only_if_it_is_a_file() {
    for c in schemes() {
        let dir = tempfile::tempdir().unwrap();
        let data = (c.make)(&dir.path().join("made"));
        let t = dir.path().join("target");
        std::fs::write(&t, b"old").unwrap();
        let s = spec(c.prefix, &t);
        let e = s.check_target(false).unwrap_err();
        assert_eq!(e.kind(), Kind::TargetExists, "{e}");
        let e = restore_into(&s, TargetOptions { force: false }, &data, true).unwrap_err();
        assert_eq!(e.kind(), Kind::TargetExists, "{e}");
        assert_eq!(std::fs::read(&t).unwrap(), b"old");
        restore_into(&s, TargetOptions { force: true }, &data, true).unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), data);
        // Never a FIFO, a link or a directory, even with force; they stay as they were.
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&t, &link).unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        for p in [&fifo, &link, &sub] {
            let s = spec(c.prefix, p);
            let e = s.check_target(true).unwrap_err();
            assert_eq!(e.kind(), Kind::TargetExists, "{}: {e}", p.display());
            assert!(e.to_string().contains("even with --force"), "{e}");
            assert!(s.open_target(TargetOptions { force: true }).is_err());
        }
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(sub.is_dir());
        let e = spec(c.prefix, &dir.path().join("no/such/dir/t"))
            .check_target(false)
            .unwrap_err();
        assert_eq!(e.kind(), Kind::Input, "{e}");
    }
}

#[test]
fn a_database_target_refuses_what_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("db");
    let s = spec("sqlite:", &t);
    let junk = vec![7u8; 8192];
    let e = restore_into(&s, TargetOptions { force: false }, &junk, true).unwrap_err();
    assert_eq!(e.kind(), Kind::Damaged, "{e}");
    assert!(!t.exists(), "nothing is put in the target's place");
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn standard_input_is_an_unchecked_source() {
    let s = Spec::parse("-").unwrap();
    assert!(s.is_stdio());
    assert_eq!(s.kind(), SourceKind::Stdin);
    assert_eq!(s.path(), None::<&Path>);
    let src = s.open_source().unwrap();
    assert!(
        !src.checked(),
        "its end cannot tell a finished producer from a killed one"
    );
    assert_eq!(src.size(), None);
}
