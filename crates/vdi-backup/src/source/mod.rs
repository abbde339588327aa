//! What is backed up and what is restored: a [`Source`] the engine reads and a
//! [`Target`] it rebuilds, each named on the command line by a scheme
//! (`file:PATH`, `sqlite:PATH`, `-`) that picks its implementation ([`Spec`]).
//!
//! Adding a kind of source or target is one new file implementing [`Scheme`] (and the
//! [`Source`] and [`Target`] it opens) plus one line in [`SCHEMES`]; nothing else matches
//! on the kind.
//!
//! The contracts, which `tests/conformance_sources.rs` checks for every scheme:
//! - a source is opened without ever blocking (a FIFO where a file should be is refused),
//!   says what it is, and tells at [`Source::finish`] whether its producer ended normally
//!   (a source that cannot tell, standard input, says so with [`Source::checked`]);
//! - a target never replaces anything but a regular file, and then only with `force`;
//!   nothing appears in its place until [`Target::commit`], and a target dropped
//!   uncommitted leaves nothing behind.
//!
//! ```
//! use vdi_backup::source::Spec;
//! assert_eq!(Spec::parse("sqlite:a.db").unwrap().label(), "sqlite:a.db");
//! assert!(Spec::parse("-").unwrap().is_stdio());
//! assert_eq!(Spec::parse("/x").unwrap().label(), "file:/x");
//! assert!(Spec::parse("sqlite:").is_err());
//! ```

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::{Sink, SourceKind};
use crate::store::dir::FileKind;

mod chan;
pub mod cmd;
pub mod dir;
pub mod file;
mod in_order;
pub mod postgres;
pub mod program;
pub mod sqlite;
pub mod sqlite_pages;
pub mod stdio;
pub mod tar_out;
pub mod untar;

pub use in_order::InOrder;
pub use stdio::{PolledStdin, note_closed_standard_streams, stdin_file, stdout_file};

/// What the engine backs up: bytes, in order, and at the end the producer's verdict.
pub trait Source: Read + Send {
    /// The kind recorded in the stream header.
    fn kind(&self) -> SourceKind;
    /// Bytes, if known before the end.
    fn size(&self) -> Option<u64>;
    /// Whether [`finish`](Source::finish) can tell a producer that ended normally from
    /// one that was cut short (false for standard input: the backup then records the
    /// source as unchecked).
    fn checked(&self) -> bool;
    /// After the last byte was read, before the backup is marked complete: `Err` if the
    /// producer failed (the backup then fails, before `VDC_Complete`).
    fn finish(&mut self) -> Result<()>;
    /// Seconds spent preparing the source before the first byte (a database snapshot).
    fn prepare_seconds(&self) -> f64 {
        0.0
    }
}

/// What the engine restores into.
pub trait Target: Send + Sync {
    /// The engine will write through `devices` devices.
    fn begin(&self, devices: u32);
    /// Where one device's decoded chunks go (each device thread has its own sink).
    fn sink(&self) -> Box<dyn Sink + Send>;
    /// A device's stream ended (`failed`: the restore will fail).
    fn device_done(&self, failed: bool);
    /// Makes the target whole (`total` source bytes) and durable and puts it in place;
    /// returns the verdict of the target's own check when `check` asks for one (a
    /// database's integrity check). Until this succeeds nothing is in the target's place,
    /// and a target dropped before it leaves nothing behind.
    fn commit(self: Box<Self>, total: u64, check: bool) -> Result<Option<String>>;
}

/// How a target is opened.
#[derive(Clone, Copy, Debug)]
pub struct TargetOptions {
    /// Replace an existing regular file.
    pub force: bool,
}

/// One kind of source and target, as a scheme of names (`sqlite:PATH`).
pub trait Scheme: Sync + Send + std::fmt::Debug {
    /// The prefix it is named with (`"sqlite:"`), or `"-"` for the standard streams.
    fn prefix(&self) -> &'static str;
    /// The kind a source of this scheme records.
    fn kind(&self) -> SourceKind;
    /// Whether the data passes through this process's standard input or output.
    fn is_stdio(&self) -> bool {
        false
    }
    /// The path it names, if it names one.
    fn path<'a>(&self, rest: &'a str) -> Option<&'a Path> {
        Some(Path::new(rest))
    }
    /// Checks that the source can be read (without blocking); its size if known.
    fn probe(&self, rest: &str) -> Result<Option<u64>>;
    /// Opens the source.
    fn open_source(&self, rest: &str) -> Result<Box<dyn Source>>;
    /// Checks that the target may be written (before anything is restored).
    fn check_target(&self, rest: &str, force: bool) -> Result<()>;
    /// Opens the target.
    fn open_target(&self, rest: &str, opts: TargetOptions) -> Result<Box<dyn Target>>;
}

/// Every scheme; the first whose prefix matches a name picks it, and a bare path is a
/// file.
pub static SCHEMES: &[&dyn Scheme] = &[
    &stdio::Stdio,
    &sqlite::Sqlite,
    &cmd::Cmd,
    &dir::DirScheme,
    &postgres::Postgres,
    &postgres::PostgresData,
    &file::FileScheme,
];

/// A source or target as named on the command line.
#[derive(Clone, Debug)]
pub struct Spec {
    scheme: &'static dyn Scheme,
    rest: String,
}

impl PartialEq for Spec {
    fn eq(&self, o: &Spec) -> bool {
        self.scheme.prefix() == o.scheme.prefix() && self.rest == o.rest
    }
}

impl Spec {
    /// Parses `sqlite:PATH`, `file:PATH`, `-`, or a bare path (a file).
    pub fn parse(s: &str) -> Result<Spec> {
        if s == "-" {
            return Ok(Spec {
                scheme: &stdio::Stdio,
                rest: String::new(),
            });
        }
        let (scheme, rest): (&'static dyn Scheme, &str) = SCHEMES
            .iter()
            .filter(|sc| !sc.is_stdio())
            .find_map(|sc| s.strip_prefix(sc.prefix()).map(|r| (*sc, r)))
            .unwrap_or((&file::FileScheme, s));
        if rest.is_empty() {
            return Err(fail(
                Kind::Usage,
                format!("'{s}' names no path (use {}PATH)", scheme.prefix()),
            ));
        }
        Ok(Spec {
            scheme,
            rest: rest.to_owned(),
        })
    }

    /// As the user would write it.
    pub fn label(&self) -> String {
        if self.scheme.is_stdio() {
            "-".into()
        } else {
            format!("{}{}", self.scheme.prefix(), self.rest)
        }
    }

    /// The kind recorded in the stream header.
    pub fn kind(&self) -> SourceKind {
        self.scheme.kind()
    }

    /// Whether the data passes through this process's standard input or output.
    pub fn is_stdio(&self) -> bool {
        self.scheme.is_stdio()
    }

    /// The path it names, if any.
    pub fn path(&self) -> Option<&Path> {
        self.scheme.path(&self.rest)
    }

    /// Checks that the source can be read; returns its size if known.
    pub fn probe(&self) -> Result<Option<u64>> {
        self.scheme.probe(&self.rest)
    }

    /// Opens the source for the engine.
    pub fn open_source(&self) -> Result<Box<dyn Source>> {
        self.scheme.open_source(&self.rest)
    }

    /// Checks that the target may be written.
    pub fn check_target(&self, force: bool) -> Result<()> {
        self.scheme.check_target(&self.rest, force)
    }

    /// Opens the target for the engine.
    pub fn open_target(&self, opts: TargetOptions) -> Result<Box<dyn Target>> {
        self.scheme.open_target(&self.rest, opts)
    }
}

pub(crate) fn unreadable(what: &str, path: &Path, e: &io::Error) -> crate::Error {
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
pub(crate) fn open_input(what: &str, path: &Path, devices_too: bool) -> Result<(File, u64)> {
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
        FileKind::Directory => Some(format!(
            ": to back up a directory, name it dir:{} (a tar stream of the tree)",
            path.display()
        )),
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

pub(crate) fn check_regular(what: &str, path: &Path) -> Result<File> {
    open_input(what, path, false).map(|(f, _)| f)
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
