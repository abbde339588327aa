//! The source and target contract (`vdi_backup::source`), checked with the same tests
//! for every scheme that names a file (`file:`, `sqlite:`; a new one adds a case to
//! `schemes()`), then for the schemes whose contract differs in what they name: a
//! program (`cmd:`: the verdict is its exit status, it never outlives the operation, a
//! target program sees the end of its input only at the commit) and a directory tree
//! (`dir:`: a tar stream that restores every kind of file with its metadata, a target
//! extracted safely, in place only when whole, replacing only a directory and only with
//! force when it is not empty). Standard input/output (`-`) is the process's own
//! streams: its source is unchecked by definition (tested here) and its target is tested
//! through the `vdi` binary (restores to a pipe, `crates/vdi-cli/tests`). `postgres:`
//! needs a server: `crates/vdi-cli/tests/postgres.rs`.

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

// ---------------------------------------------------------------------------------------
// cmd: a program

fn cmd(words: &str) -> Spec {
    Spec::parse(&format!("cmd:{words}")).unwrap()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

#[test]
fn a_program_source_streams_its_output_and_its_exit_status_is_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data");
    let want = file_content(&p);
    let s = cmd(&format!("cat '{}'", p.display()));
    assert_eq!(s.kind(), SourceKind::Command);
    assert_eq!(s.path(), None::<&Path>);
    assert_eq!(s.probe().unwrap(), None, "a program's size is not known");
    let mut src = s.open_source().unwrap();
    assert!(src.checked(), "a program's end is told by its exit status");
    let mut got = Vec::new();
    src.read_to_end(&mut got).unwrap();
    assert_eq!(got, want);
    src.finish().unwrap();

    // Data, then a failure: the verdict is the failure, with the program's own words.
    let mut src = cmd("sh -c 'printf data; echo \"the disk is on fire\" >&2; exit 3'")
        .open_source()
        .unwrap();
    let mut got = Vec::new();
    src.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"data");
    let e = src.finish().unwrap_err();
    assert_eq!(e.kind(), Kind::Input, "{e}");
    let m = e.to_string();
    assert!(m.contains("exited with status 3"), "{m}");
    assert!(m.contains("the disk is on fire"), "{m}");

    // Killed by a signal: a failure too.
    let mut src = cmd("sh -c 'printf x; kill -9 $$'").open_source().unwrap();
    src.read_to_end(&mut Vec::new()).unwrap();
    let e = src.finish().unwrap_err();
    assert!(e.to_string().contains("signal 9 (SIGKILL)"), "{e}");
}

#[test]
fn a_program_that_cannot_run_is_refused_before_anything_starts() {
    let e = cmd("no-such-program-anywhere --x").probe().unwrap_err();
    assert_eq!(e.kind(), Kind::Input, "{e}");
    assert!(e.to_string().contains("not found in PATH"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = cmd(&dir.path().display().to_string()).probe().unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
    let e = cmd("sh -c 'unclosed").probe().unwrap_err();
    assert_eq!(e.kind(), Kind::Usage, "{e}");
    let e = cmd("  ").probe().unwrap_err();
    assert_eq!(e.kind(), Kind::Usage, "{e}");
    assert!(Spec::parse("cmd:").is_err());
    let e = cmd("no-such-program-anywhere")
        .check_target(false)
        .unwrap_err();
    assert_eq!(e.kind(), Kind::Input, "{e}");
}

#[test]
fn words_are_split_as_a_shell_would_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a file with spaces; and $HOME");
    std::fs::write(&p, b"quoted").unwrap();
    // No shell: the $HOME and the ; are part of the name.
    let mut src = cmd(&format!("cat \"{}\"", p.display()))
        .open_source()
        .unwrap();
    let mut got = Vec::new();
    src.read_to_end(&mut got).unwrap();
    src.finish().unwrap();
    assert_eq!(got, b"quoted");
}

#[test]
fn a_dropped_program_source_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // A pipeline whose members run for ever: the program and what it started.
    let mut src = cmd(&format!(
        "sh -c 'echo $$ > \"{0}\"; sleep 1000 & echo $! >> \"{0}\"; yes'",
        pids.display()
    ))
    .open_source()
    .unwrap();
    let mut buf = [0u8; 4096];
    src.read_exact(&mut buf).unwrap();
    let listed: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| alive(*p)));
    drop(src); // as when the backup fails
    // The program itself is reaped by then; what it started was sent SIGKILL with its
    // group, and dies as soon as the kernel gets to it.
    assert!(!alive(listed[0]), "the program outlived the source");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(listed[1]) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {} outlived the source",
            listed[1]
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_program_target_sees_the_end_of_its_input_only_at_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = file_content(&dir.path().join("made"));
    let out = dir.path().join("out");
    // The program puts its output in place only after a clean end of its input.
    let s = cmd(&format!(
        "sh -c 'cat > \"{0}.tmp\" && mv \"{0}.tmp\" \"{0}\"'",
        out.display()
    ));
    assert_eq!(s.path(), None::<&Path>);
    s.check_target(false).unwrap();
    // Dropped before the commit: the program is killed, never sees the end.
    restore_into(&s, TargetOptions { force: false }, &data, false).unwrap();
    assert!(!out.exists(), "the program must not have finished");
    restore_into(&s, TargetOptions { force: false }, &data, true).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // A program that fails: the commit fails, with its words.
    let s = cmd("sh -c 'cat > /dev/null; echo \"no room for it\" >&2; exit 2'");
    let e = restore_into(&s, TargetOptions { force: false }, &data, true).unwrap_err();
    assert!(e.to_string().contains("exited with status 2"), "{e}");
    assert!(e.to_string().contains("no room for it"), "{e}");
}

#[test]
fn a_program_target_that_stops_reading_fails_the_restore() {
    let data = vec![7u8; 8 << 20];
    let s = cmd("sh -c 'head -c 10 > /dev/null; echo \"enough\" >&2'");
    let t = s.open_target(TargetOptions { force: false }).unwrap();
    t.begin(1);
    let mut sink = t.sink();
    let mut failed = None;
    for (k, c) in data.chunks(1 << 20).enumerate() {
        let h = ChunkHeader {
            len: c.len() as u32,
            seq: k as u64,
            offset: (k << 20) as u64,
            crc: 0,
        };
        if let Err(e) = sink.payload(&h, 0, c).and_then(|()| sink.chunk_end(&h)) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("writing into a program that stopped reading fails");
    assert!(e.to_string().contains("stopped reading its input"), "{e}");
    assert!(e.to_string().contains("enough"), "{e}");
    t.device_done(true);
    drop(sink);
    drop(t);
}

// ---------------------------------------------------------------------------------------
// dir: a directory tree

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).is_ok()
}

fn get_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names[..]) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|s| s.starts_with(b"user."))
        .map(|k| {
            let mut val = vec![0u8; 65536];
            let m = rustix::fs::lgetxattr(p, k, &mut val[..]).unwrap();
            val.truncate(m);
            (String::from_utf8_lossy(k).into_owned(), val)
        })
        .collect();
    v.sort();
    v
}

/// A tree with every kind of file: files (one sparse, one empty, one with set-id bits,
/// an unreadable mode), directories (one with the sticky bit, one read-only, a deep
/// one), a symbolic link inside and one pointing out, a hard link, a FIFO, a device file
/// (as root), extended attributes, another owner (as root), old times.
fn make_tree(root: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    std::fs::create_dir_all(root.join("sub/deep/deeper")).unwrap();
    std::fs::create_dir(root.join("sticky")).unwrap();
    std::fs::create_dir(root.join("readonly")).unwrap();
    std::fs::write(root.join("readonly/inside"), b"in a read-only directory").unwrap();
    std::fs::write(root.join("plain"), b"plain text\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect();
    std::fs::write(root.join("sub/deep/deeper/big"), &big).unwrap();
    std::fs::write(root.join("setid"), b"#!/bin/sh\n").unwrap();
    std::fs::write(root.join("secret"), b"mode 0").unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 20 << 20).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    std::fs::hard_link(root.join("plain"), root.join("sub/hardlink")).unwrap();
    std::os::unix::fs::symlink("../plain", root.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("outward")).unwrap();
    mkfifo(&root.join("fifo"));
    let xattrs = set_xattr(&root.join("plain"), "user.colour", b"blue")
        && set_xattr(&root.join("sub"), "user.dir", b"a directory's attribute")
        && set_xattr(&root.join("sparse"), "user.bin", &[0, 1, 2, 255]);
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o644),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        std::os::unix::fs::chown(root.join("plain"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("sub/link"), Some(4321), Some(8765)).unwrap();
    }
    mode(&root.join("setid"), 0o6755);
    mode(&root.join("secret"), 0o000);
    mode(&root.join("sticky"), 0o1777);
    mode(&root.join("sub/deep"), 0o750);
    mode(root, 0o711);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(root.join("sub/deep/deeper/big"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    mode(&root.join("readonly"), 0o555);
    xattrs
}

/// Everything that must come back of a tree: per entry, its kind, mode, owner (as
/// root), time (of what is not a directory: a directory's changes when its contents
/// are made), size, contents digest, link target, device, xattrs, and which entries are
/// one file (hard links).
fn describe_tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut inodes: Vec<(u64, String)> = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "link"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let mut line = format!("{} {kind} {:o}", rel.display(), m.mode() & 0o7777);
        if is_root() {
            line += &format!(" {}:{}", m.uid(), m.gid());
        }
        if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let readable = m.permissions().mode() & 0o400 != 0 || is_root();
            let digest = if readable {
                blake3::hash(&std::fs::read(&p).unwrap()).to_hex()[..16].to_owned()
            } else {
                "unreadable".into()
            };
            line += &format!(" {} bytes {digest} t{}", m.len(), m.mtime());
            if m.nlink() > 1 {
                let first = inodes
                    .iter()
                    .find(|(i, _)| *i == m.ino())
                    .map(|(_, n)| n.clone());
                match first {
                    Some(f) => line += &format!(" same-as {f}"),
                    None => inodes.push((m.ino(), rel.display().to_string())),
                }
            }
        }
        if ft.is_symlink() {
            line += &format!(
                " -> {} t{}",
                std::fs::read_link(&p).unwrap().display(),
                m.mtime()
            );
        }
        if ft.is_char_device() {
            line += &format!(" dev {}", m.rdev());
        }
        for (k, v) in get_xattrs(&p) {
            line += &format!(" {k}={v:?}");
        }
        out.push(line);
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        }
    }
    out
}

/// Reads a source whole.
fn read_source(s: &Spec) -> Vec<u8> {
    let mut src = s.open_source().unwrap();
    let mut v = Vec::new();
    src.read_to_end(&mut v).unwrap();
    src.finish().unwrap();
    v
}

fn dir_spec(p: &Path) -> Spec {
    spec("dir:", p)
}

#[test]
fn a_directory_restores_with_every_kind_of_file_and_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir(&src).unwrap();
    let xattrs = make_tree(&src);
    let s = dir_spec(&src);
    assert_eq!(s.kind(), SourceKind::Directory);
    assert_eq!(s.probe().unwrap(), None);
    let mut src_reader = s.open_source().unwrap();
    assert_eq!(src_reader.kind(), SourceKind::Directory);
    assert!(src_reader.checked());
    let mut tar_bytes = Vec::new();
    src_reader.read_to_end(&mut tar_bytes).unwrap();
    src_reader.finish().unwrap();
    assert!(
        (tar_bytes.len() as u64) < 8 << 20,
        "the sparse file's holes are not in the stream ({} bytes)",
        tar_bytes.len()
    );
    // The same bytes each time (name order).
    assert_eq!(read_source(&s), tar_bytes);

    let target = dir.path().join("restored");
    let t = dir_spec(&target);
    t.check_target(false).unwrap();
    restore_into(&t, TargetOptions { force: false }, &tar_bytes, true).unwrap();
    let (want, got) = (describe_tree(&src), describe_tree(&target));
    assert_eq!(want, got);
    assert!(want.iter().any(|l| l.contains("same-as plain")), "{want:?}");
    if xattrs {
        assert!(got.iter().any(|l| l.contains("user.colour")), "{got:?}");
        assert!(got.iter().any(|l| l.contains("user.dir")), "{got:?}");
    }
    if is_root() {
        assert!(got.iter().any(|l| l.contains("chardev")), "{got:?}");
        assert!(got.iter().any(|l| l.contains("1234:5678")), "{got:?}");
    }
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(target.join("sparse")).unwrap();
    assert!(
        m.blocks() * 512 < 1 << 20,
        "the sparse file stays sparse ({} blocks)",
        m.blocks()
    );
    // Nothing else beside the target (no staging directory left).
    assert_eq!(
        entries(dir.path()),
        vec!["restored".to_owned(), "tree".to_owned()]
    );
    for p in [&src, &target] {
        make_writable(p);
    }
}

/// Gives back write permission to the read-only directory of `make_tree`, so that the
/// temporary directory can be removed.
fn make_writable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755));
    let _ = std::fs::set_permissions(
        root.join("readonly"),
        std::fs::Permissions::from_mode(0o755),
    );
}

#[test]
fn a_directory_source_that_is_not_a_directory_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for p in [&fifo, &file] {
        let s = dir_spec(p);
        let e = s.probe().unwrap_err();
        assert_eq!(e.kind(), Kind::Input, "{e}");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(s.open_source().is_err());
    }
    assert!(
        dir_spec(&file)
            .probe()
            .unwrap_err()
            .to_string()
            .contains("file:"),
        "a file is pointed to file:"
    );
    let e = dir_spec(&dir.path().join("missing")).probe().unwrap_err();
    assert_eq!(e.kind(), Kind::Input, "{e}");
    // And a directory named as a file is pointed to dir:.
    let e = spec("file:", dir.path()).probe().unwrap_err();
    assert!(e.to_string().contains("dir:"), "{e}");
}

fn small_tree(p: &Path) -> Vec<u8> {
    std::fs::create_dir_all(p.join("d")).unwrap();
    std::fs::write(p.join("d/f"), b"new contents").unwrap();
    read_source(&dir_spec(p))
}

#[test]
fn a_directory_target_appears_only_when_committed_and_replaces_only_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_tree(&dir.path().join("src"));
    let t = dir.path().join("target");
    let s = dir_spec(&t);
    // Dropped before the commit: nothing is left.
    restore_into(&s, TargetOptions { force: false }, &data, false).unwrap();
    assert_eq!(entries(dir.path()), vec!["src".to_owned()]);
    // An empty directory is taken without force.
    std::fs::create_dir(&t).unwrap();
    restore_into(&s, TargetOptions { force: false }, &data, true).unwrap();
    assert_eq!(std::fs::read(t.join("d/f")).unwrap(), b"new contents");
    // A directory that is not empty: only with force, and then replaced whole.
    std::fs::write(t.join("old"), b"old").unwrap();
    let e = s.check_target(false).unwrap_err();
    assert_eq!(e.kind(), Kind::TargetExists, "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    let e = restore_into(&s, TargetOptions { force: false }, &data, true).unwrap_err();
    assert_eq!(e.kind(), Kind::TargetExists, "{e}");
    assert!(t.join("old").exists());
    restore_into(&s, TargetOptions { force: true }, &data, true).unwrap();
    assert!(!t.join("old").exists(), "the old contents went");
    assert_eq!(std::fs::read(t.join("d/f")).unwrap(), b"new contents");
    assert_eq!(
        entries(dir.path()),
        vec!["src".to_owned(), "target".to_owned()]
    );
    // Never a file, a FIFO or a link, even with force.
    let file = dir.path().join("file");
    std::fs::write(&file, b"a file").unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&t, &link).unwrap();
    for p in [&file, &fifo, &link] {
        let e = dir_spec(p).check_target(true).unwrap_err();
        assert_eq!(e.kind(), Kind::TargetExists, "{}: {e}", p.display());
        assert!(e.to_string().contains("even with --force"), "{e}");
        assert!(
            dir_spec(p)
                .open_target(TargetOptions { force: true })
                .is_err()
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"a file");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let e = dir_spec(&dir.path().join("no/such/dir/t"))
        .check_target(false)
        .unwrap_err();
    assert_eq!(e.kind(), Kind::Input, "{e}");
}

/// A tar entry with a raw name (which the tar crate's builder would refuse).
fn raw_entry(out: &mut Vec<u8>, name: &[u8], ty: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Restores `tar` into a new `dir:` target, tolerating the sink failing (the extractor
/// may stop before everything is written); the outcome of the whole restore.
fn restore_tar(target: &Path, tar: &[u8]) -> vdi_backup::Result<()> {
    let t = dir_spec(target).open_target(TargetOptions { force: false })?;
    t.begin(1);
    let mut sink = t.sink();
    let h = ChunkHeader {
        len: tar.len() as u32,
        seq: 0,
        offset: 0,
        crc: 0,
    };
    let wrote = sink.payload(&h, 0, tar).and_then(|()| sink.chunk_end(&h));
    t.device_done(wrote.is_err());
    drop(sink);
    if let Err(e) = wrote {
        return Err(vdi_backup::Error::other(e.to_string()));
    }
    t.commit(tar.len() as u64, false).map(|_| ())
}

#[test]
fn hostile_tar_input_is_refused_and_nothing_lands_outside_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("inside");
    std::fs::create_dir(&inside).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let o = outside.display().to_string();
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"ok", Regular, b"", b"fine");
                raw_entry(&mut t, b"../outside/evil", Regular, b"", b"escaped");
                t
            },
            "'..'",
        ),
        (
            "absolute",
            {
                let mut t = Vec::new();
                raw_entry(
                    &mut t,
                    format!("{o}/evil").as_bytes(),
                    Regular,
                    b"",
                    b"escaped",
                );
                t
            },
            "absolute",
        ),
        (
            "through a symbolic link",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"a", Symlink, o.as_bytes(), b"");
                raw_entry(&mut t, b"a/evil", Regular, b"", b"escaped");
                t
            },
            "beyond the symbolic link a",
        ),
        (
            "through a relative link",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"d", Directory, b"", b"");
                raw_entry(&mut t, b"d/up", Symlink, b"../../outside", b"");
                raw_entry(&mut t, b"d/up/evil", Regular, b"", b"escaped");
                t
            },
            "beyond the symbolic link d/up",
        ),
        (
            "a hard link out",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"h", Link, b"../outside/victim", b"");
                t
            },
            "'..'",
        ),
        (
            "a hard link through a link",
            {
                let mut t = Vec::new();
                raw_entry(&mut t, b"a", Symlink, o.as_bytes(), b"");
                raw_entry(&mut t, b"h", Link, b"a/victim", b"");
                t
            },
            "beyond the symbolic link a",
        ),
        ("garbage", vec![0x55u8; 4096], "damaged"),
    ];
    std::fs::write(outside.join("victim"), b"untouched").unwrap();
    for (what, tar, says) in cases {
        let target = inside.join("t");
        let e = restore_tar(&target, &tar).unwrap_err();
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert!(!target.exists(), "{what}: nothing is put in place");
        assert!(
            entries(&inside).is_empty(),
            "{what}: {:?}",
            entries(&inside)
        );
        assert_eq!(entries(&outside), vec!["victim".to_owned()], "{what}");
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"untouched");
    }
    // The same entries without the escape restore (the tests above are not refusing
    // everything).
    let mut t = Vec::new();
    raw_entry(&mut t, b"./d", Directory, b"", b"");
    raw_entry(&mut t, b"d/up", Symlink, b"../../outside", b"");
    raw_entry(&mut t, b"d/f", Regular, b"", b"fine");
    raw_entry(&mut t, b"h", Link, b"d/f", b"");
    t.extend_from_slice(&[0u8; 1024]);
    let target = inside.join("t");
    restore_tar(&target, &t).unwrap();
    assert_eq!(std::fs::read(target.join("h")).unwrap(), b"fine");
    assert_eq!(
        std::fs::read_link(target.join("d/up")).unwrap(),
        Path::new("../../outside")
    );
}
