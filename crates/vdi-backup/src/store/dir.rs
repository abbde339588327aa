//! A backup directory on disk, and the guarantees the tool gives about it, each kept in
//! one place:
//!
//! - **no link is followed in a backup directory**: every file in it is opened or made
//!   relative to the directory's descriptor with `O_NOFOLLOW` ([`BackupDir`]), and only
//!   regular files are read from it (a FIFO, a device or a link is refused without
//!   blocking: [`BackupDir::open_regular`]);
//! - **one backup at a time**: a backup holds an exclusive lock on its destination
//!   directory (`flock` on the directory itself, so no lock file is ever made or left
//!   behind) for its whole run; the kernel releases it however the process ends
//!   ([`LockedDir`]); a second backup is refused with the holder's pid;
//! - **a backup is replaced only by a complete one**: `--force` writes the new backup in
//!   a staging directory beside the old one and swaps the two directories in one step
//!   (`renameat2(RENAME_EXCHANGE)`) once the new one is complete; only then are the old
//!   backup's files removed, and only those vdi wrote ([`NewBackup`]);
//! - **private by default**: files are made `0600` and directories `0700` unless
//!   `--mode` says otherwise ([`Modes`]).
//!
//! ```
//! use vdi_backup::store::dir::Modes;
//! assert_eq!(Modes::parse("600"), Ok(Modes::DEFAULT));
//! assert_eq!(Modes::parse("640").unwrap().label(), "files 0640, directories 0750");
//! assert!(Modes::parse("0400").is_err()); // the owner must be able to read and write
//! ```

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{
    self as rfs, AtFlags, CWD, FileType, FlockOperation, Mode, OFlags, RenameFlags, Stat,
};

use crate::codec;
use crate::format::manifest::{self, MANIFEST};

/// The largest manifest the tool reads (a manifest of 64 devices is about 20 KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The temporary name the manifest is written under before it is renamed into place.
pub const MANIFEST_TMP: &str = ".manifest.json.tmp";

/// What kind of file a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix-domain socket.
    Socket,
    /// A character device (`/dev/null`, a terminal).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// Something else.
    Unknown,
}

impl FileKind {
    /// The kind of a file from its `st_mode`.
    pub fn of(st: &Stat) -> FileKind {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => FileKind::Regular,
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            _ => FileKind::Unknown,
        }
    }

    /// The kind of the file at `path` (not following a link there).
    pub fn at(path: &Path) -> io::Result<FileKind> {
        Ok(FileKind::of(&rfs::statat(
            CWD,
            path,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// `a regular file`, `a FIFO (named pipe)`, ...
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO (named pipe)",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Unknown => "a special file",
        }
    }
}

/// Why a file of a backup directory could not be opened for reading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// There is no such file.
    #[error("is missing")]
    Missing,
    /// It is not a regular file (what it is).
    #[error(
        "is {}, not a regular file: a backup holds only regular files, and vdi never follows a link or reads a special file in a backup",
        .0.describe()
    )]
    NotRegular(FileKind),
    /// It is larger than such a file can be.
    #[error("has {len} bytes, more than the {max} such a file can have")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Another error.
    #[error("cannot be opened: {0}")]
    Io(io::Error),
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// An open directory of a backup: every file in it is reached through this descriptor,
/// never by a path that could lead elsewhere.
#[derive(Debug)]
pub struct BackupDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl BackupDir {
    /// Opens the directory `path` for reading a backup. A symbolic link there is refused
    /// (vdi follows no link in a backup), and so is anything that is not a directory.
    pub fn open(path: &Path) -> io::Result<BackupDir> {
        // Without a trailing slash, which would make the kernel follow a link there.
        let plain: PathBuf = path.components().collect();
        match rfs::openat(
            CWD,
            &plain,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(BackupDir {
                fd,
                path: path.to_owned(),
            }),
            Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => Err(
                not_a_directory(path, "a backup is a directory, or - for standard input"),
            ),
            Err(e) => Err(errno(e)),
        }
    }

    /// The directory as it was named.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stat(&self) -> io::Result<Stat> {
        rfs::fstat(&self.fd).map_err(errno)
    }

    /// Whether `path` still names this directory (it was not renamed or replaced since
    /// it was opened: a backup replaced by `--force` while it was being opened).
    pub fn still_at_path(&self) -> bool {
        match (
            self.stat(),
            rfs::statat(CWD, &self.path, AtFlags::SYMLINK_NOFOLLOW),
        ) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    /// The kind of entry `name` (not following a link), if it exists.
    pub fn kind_of(&self, name: &str) -> io::Result<Option<FileKind>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileKind::of(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Opens the regular file `name` of this directory for reading: a link is not
    /// followed, and a FIFO or a device is refused without blocking; a file larger than
    /// `max` bytes is refused too.
    pub fn open_regular(&self, name: &str, max: Option<u64>) -> Result<File, FileError> {
        check_name(name).map_err(FileError::Io)?;
        let fd = match rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Err(FileError::Missing),
            Err(rustix::io::Errno::LOOP) => return Err(FileError::NotRegular(FileKind::Symlink)),
            Err(e) => {
                // A device or socket may refuse to be opened at all: say what it is.
                return Err(match self.kind_of(name) {
                    Ok(Some(k)) if k != FileKind::Regular => FileError::NotRegular(k),
                    _ => FileError::Io(errno(e)),
                });
            }
        };
        let st = rfs::fstat(&fd).map_err(|e| FileError::Io(errno(e)))?;
        let kind = FileKind::of(&st);
        if kind != FileKind::Regular {
            return Err(FileError::NotRegular(kind));
        }
        let len = st.st_size.max(0) as u64;
        if let Some(max) = max
            && len > max
        {
            return Err(FileError::TooLarge { len, max });
        }
        // Reads of a regular file never block anyway; clear the flag all the same.
        let fl = rfs::fcntl_getfl(&fd).map_err(|e| FileError::Io(errno(e)))?;
        rfs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| FileError::Io(errno(e)))?;
        Ok(File::from(fd))
    }

    /// Reads the whole regular file `name`, which may hold at most `max` bytes (checked
    /// again while reading: a file that grows is cut off there, not read without end).
    pub fn read_regular(&self, name: &str, max: u64) -> Result<Vec<u8>, FileError> {
        let f = self.open_regular(name, Some(max))?;
        let mut v = Vec::new();
        f.take(max + 1).read_to_end(&mut v).map_err(FileError::Io)?;
        if v.len() as u64 > max {
            return Err(FileError::TooLarge {
                len: v.len() as u64,
                max,
            });
        }
        Ok(v)
    }

    /// The names of the entries of this directory (not `.` and `..`), sorted.
    pub fn entries(&self) -> io::Result<Vec<String>> {
        let mut d = rfs::Dir::read_from(&self.fd).map_err(errno)?;
        let mut v = Vec::new();
        while let Some(e) = d.read() {
            let e = e.map_err(errno)?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            v.push(String::from_utf8_lossy(n).into_owned());
        }
        v.sort();
        Ok(v)
    }

    /// Makes the new file `name` (it must not exist: a link or anything else there is
    /// never opened) with `mode` (`None`: 0666 less the umask).
    pub fn create(&self, name: &str, mode: Option<u32>) -> io::Result<File> {
        check_name(name)?;
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode.unwrap_or(0o666)),
        )
        .map_err(errno)?;
        if let Some(m) = mode {
            // Exactly the mode asked for, whatever the umask.
            rfs::fchmod(&fd, Mode::from_raw_mode(m)).map_err(errno)?;
        }
        Ok(File::from(fd))
    }

    /// Removes the entry `name` (a link itself, never what it points to); a missing one
    /// is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        rfs::fsync(&self.fd).map_err(errno)
    }

    /// Writes `bytes` to `name` atomically: to [`MANIFEST_TMP`]-style temporary `tmp`
    /// first (made anew: whatever had that name is removed, never followed), synced,
    /// renamed to `name`, the directory synced. On any failure the temporary is removed.
    pub fn write_atomically(
        &self,
        name: &str,
        tmp: &str,
        bytes: &[u8],
        mode: Option<u32>,
    ) -> io::Result<()> {
        self.remove(tmp)?;
        let r = (|| {
            let mut f = self.create(tmp, mode)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            rfs::renameat(&self.fd, tmp, &self.fd, name).map_err(errno)?;
            self.sync()
        })();
        if r.is_err() {
            let _ = self.remove(tmp);
        }
        r
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a plain file name"),
        ));
    }
    Ok(())
}

fn not_a_directory(path: &Path, hint: &str) -> io::Error {
    let path: PathBuf = path.components().collect();
    let path = path.as_path();
    let what = match rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileKind::of(&st) == FileKind::Symlink => {
            let to = rfs::readlinkat(CWD, path, Vec::new())
                .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
                .unwrap_or_else(|_| "?".into());
            format!(
                "it is a symbolic link (to {to}); vdi does not follow symbolic links for a backup: name the directory itself"
            )
        }
        Ok(st) => format!(
            "it is {}, not a directory ({hint})",
            FileKind::of(&st).describe()
        ),
        Err(_) => format!("it is not a directory ({hint})"),
    };
    io::Error::new(io::ErrorKind::NotADirectory, what)
}

/// A directory this process holds the exclusive lock of (`flock`): the one lock type of
/// the tool. No lock file is made; the lock goes with the last descriptor, so the kernel
/// releases it however the process ends. The descriptor is close-on-exec: an engine
/// started by this process does not inherit it.
#[derive(Debug)]
pub struct LockedDir(BackupDir);

impl std::ops::Deref for LockedDir {
    type Target = BackupDir;
    fn deref(&self) -> &BackupDir {
        &self.0
    }
}

/// The lock of a directory is held by another process (described, if it can be found).
#[derive(Debug)]
pub struct Held(pub Option<String>);

impl LockedDir {
    /// Takes the lock of `dir` without waiting.
    pub fn lock(dir: BackupDir) -> Result<LockedDir, (BackupDir, Held)> {
        match rfs::flock(&dir.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(LockedDir(dir)),
            Err(_) => {
                let who = holder(&dir);
                Err((dir, Held(who)))
            }
        }
    }
}

/// The process holding a `flock` on `dir`, from `/proc/locks`: "process 123 (vdi backup
/// ...)".
fn holder(dir: &BackupDir) -> Option<String> {
    let st = dir.stat().ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        rfs::major(st.st_dev),
        rfs::minor(st.st_dev),
        st.st_ino
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        let i = f.iter().position(|w| *w == "FLOCK")?;
        (f.get(i + 4) == Some(&want.as_str())).then(|| f.get(i + 3).map(|p| p.to_string()))?
    })?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(if cmd.is_empty() {
        format!("process {pid}")
    } else {
        format!("process {pid} ({cmd})")
    })
}

/// The modes of what a backup makes: files, and the directories it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    /// Files (`None`: 0666 less the umask).
    pub file: Option<u32>,
    /// Directories (`None`: 0777 less the umask).
    pub dir: Option<u32>,
}

impl Modes {
    /// Files 0600, directories 0700: readable by their owner only.
    pub const DEFAULT: Modes = Modes {
        file: Some(0o600),
        dir: Some(0o700),
    };
    /// The process's umask decides (files 0666, directories 0777, less the umask).
    pub const UMASK: Modes = Modes {
        file: None,
        dir: None,
    };

    /// `umask`, or an octal file mode such as `600`, `640` or `0644` (permission bits
    /// only; the owner must be able to read and write). Directories get the same mode
    /// plus search (x) wherever it gives read.
    pub fn parse(s: &str) -> Result<Modes, String> {
        if s == "umask" {
            return Ok(Modes::UMASK);
        }
        let m = u32::from_str_radix(s, 8)
            .ok()
            .filter(|_| (3..=4).contains(&s.len()))
            .ok_or_else(|| {
                format!("'{s}': give an octal file mode such as 600, 640 or 644, or 'umask'")
            })?;
        if m & !0o777 != 0 {
            return Err(format!(
                "mode {m:04o}: only permission bits (at most 0777) are allowed"
            ));
        }
        if m & 0o600 != 0o600 {
            return Err(format!(
                "mode {m:04o}: the owner must be able to read and write the backup (6 as the first digit)"
            ));
        }
        Ok(Modes {
            file: Some(m),
            dir: Some(m | ((m & 0o444) >> 2)),
        })
    }

    /// For people: `files 0600, directories 0700` or `0666/0777 less the umask`.
    pub fn label(&self) -> String {
        match (self.file, self.dir) {
            (Some(f), Some(d)) => format!("files {f:04o}, directories {d:04o}"),
            _ => "files 0666 and directories 0777, less the umask".into(),
        }
    }
}

/// Why a destination cannot take a new backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestError {
    /// Another process holds the destination's lock.
    #[error(
        "destination {path} is in use by another backup: {holder} holds its lock; wait for it to finish, or choose another destination"
    )]
    Locked {
        /// The destination.
        path: PathBuf,
        /// Who holds it.
        holder: String,
    },
    /// The destination exists and may not be written or replaced (the message says
    /// why and what to do).
    #[error("{0}")]
    Refused(String),
    /// Writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl DestError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> DestError {
        let what = what.into();
        move |source| DestError::Io { what, source }
    }

    /// The I/O error behind it, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            DestError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What the destination held before this backup.
#[derive(Debug)]
enum Old {
    /// No backup and nothing vdi wrote (possibly other files, which are left alone).
    Nothing,
    /// A backup: its manifest and the stream files it lists.
    Backup {
        backup_id: String,
        files: Vec<String>,
        leftovers: Vec<String>,
    },
    /// Files of a backup that never completed (stream files holding a vdi stream, or a
    /// temporary manifest), and no manifest.
    Leftovers(Vec<String>),
}

/// Whether `name` is a name vdi gives a stream file (`device-N.stream[.zst]`).
pub fn is_stream_file_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("device-") else {
        return false;
    };
    let rest = rest.strip_suffix(".enc").unwrap_or(rest);
    let digits = rest
        .strip_suffix(".stream")
        .or_else(|| rest.strip_suffix(".stream.zst"))
        .or_else(|| rest.strip_suffix(".stream.lz4"));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn classify(dir: &BackupDir) -> Result<Old, DestError> {
    let shown = dir.path().display().to_string();
    let names = dir
        .entries()
        .map_err(DestError::io(format!("reading the destination {shown}")))?;
    let mut leftovers: Vec<String> = Vec::new();
    let mut foreign_streams: Vec<String> = Vec::new();
    for n in &names {
        if n == MANIFEST_TMP {
            leftovers.push(n.clone());
        } else if is_stream_file_name(n) {
            let ours = dir
                .open_regular(n, None)
                .is_ok_and(|f| codec::holds_vdi_stream(&f, n));
            if ours {
                leftovers.push(n.clone());
            } else {
                foreign_streams.push(n.clone());
            }
        }
    }
    if names.iter().any(|n| n == MANIFEST) {
        let bytes = dir.read_regular(MANIFEST, MAX_MANIFEST_BYTES).map_err(|e| {
            DestError::Refused(format!(
                "destination {shown} holds a {MANIFEST} that vdi did not write: it {e}; remove it, or choose another destination"
            ))
        })?;
        let m = manifest::parse_manifest_any(&bytes).map_err(|why| {
            DestError::Refused(format!(
                "destination {shown} holds a {MANIFEST} that is not a vdi manifest ({why}); vdi does not write over what it did not write: choose another destination"
            ))
        })?;
        let files: Vec<String> = m.streams.iter().map(|s| s.file.clone()).collect();
        leftovers.retain(|n| !files.contains(n));
        return Ok(Old::Backup {
            backup_id: m.backup_id,
            files,
            leftovers,
        });
    }
    if !foreign_streams.is_empty() && leftovers.is_empty() {
        return Err(DestError::Refused(format!(
            "destination {shown} holds {}, which vdi did not write (it holds no vdi stream); move it away, or choose another destination",
            foreign_streams.join(", ")
        )));
    }
    if leftovers.is_empty() {
        Ok(Old::Nothing)
    } else {
        Ok(Old::Leftovers(leftovers))
    }
}

/// Where the new backup's files are made.
#[derive(Debug)]
enum Into_ {
    /// In the destination itself (it held no backup).
    Dest,
    /// In a staging directory beside it, swapped with it at the end.
    Staging { name: OsString, dir: LockedDir },
}

/// A destination made ready for a new backup: locked for the whole backup, with the new
/// files made in it (if it held no backup) or in a staging directory beside it (to
/// replace a backup, `--force`). Dropped before [`NewBackup::commit`], it removes what it
/// made and leaves the destination as it was.
#[derive(Debug)]
pub struct NewBackup {
    dest: PathBuf,
    parent: OwnedFd,
    name: OsString,
    /// The destination (the old one, once swapped), locked.
    dest_dir: LockedDir,
    created_dest: bool,
    into: Into_,
    old: Old,
    modes: Modes,
    made: Vec<String>,
    committed: bool,
    /// What a process that exits at once (a second Ctrl-C; a stop that cannot wait for
    /// a slow compression) removes: the same as a drop.
    pending: Arc<Mutex<Pending>>,
    _on_exit: crate::cancel::ExitGuard,
}

/// What an uncommitted backup made, by path, for a cleanup that runs without the
/// destructor (the process is exiting).
#[derive(Debug, Default)]
struct Pending {
    /// The directory the files are in.
    dir: PathBuf,
    files: Vec<String>,
    /// The directory itself goes too (made by this backup), if it is empty then.
    remove_dir: bool,
    /// Committed or cleaned up already: nothing to do.
    done: bool,
}

impl Pending {
    fn clean(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for f in self.files.iter().map(String::as_str).chain([MANIFEST_TMP]) {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// What [`NewBackup::commit`] did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The id of the backup it replaced.
    pub replaced: Option<String>,
    /// Files of an interrupted backup it removed.
    pub removed_leftovers: Vec<String>,
    /// Files vdi did not write that were in the destination: moved into the new one
    /// (or, where a name was taken, kept in `kept_in`).
    pub moved: Vec<String>,
    /// Where files vdi did not write were kept, when they could not be moved.
    pub kept_in: Option<PathBuf>,
}

fn same_file(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

fn random_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A name beside `name` (a hidden one unless `visible`), short enough for any file system.
fn beside(name: &OsStr, what: &str, visible: bool) -> OsString {
    let b = name.as_bytes();
    let b = &b[..b.len().min(180)];
    let mut s = OsString::from(if visible { "" } else { "." });
    s.push(OsStr::from_bytes(b));
    s.push(format!(".vdi-{what}-{}", random_suffix()));
    s
}

impl NewBackup {
    /// Makes `dest` ready for a new backup: refuses a link or anything but a directory
    /// there, creates it (with the directory mode) if it does not exist, takes its lock
    /// (refused, with the holder, if another backup has it), and looks at what it holds:
    /// a backup or the files of an interrupted one are replaced only with `force`.
    pub fn prepare(dest: &Path, force: bool, modes: Modes) -> Result<NewBackup, DestError> {
        let shown = dest.display().to_string();
        let (parent_path, name) = split(dest)?;
        let parent = rfs::openat(
            CWD,
            &parent_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DestError::Io {
            what: format!(
                "cannot write the destination {shown}: its directory {}",
                parent_path.display()
            ),
            source: errno(e),
        })?;
        let mut tries = 0;
        let (dest_dir, created_dest) = loop {
            tries += 1;
            let mut created = false;
            match rfs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileKind::of(&st) == FileKind::Directory => {}
                Ok(_) => {
                    return Err(DestError::Refused(format!(
                        "destination {shown} cannot hold a backup: {}",
                        not_a_directory(dest, "a backup is written into a directory")
                    )));
                }
                Err(rustix::io::Errno::NOENT) => {
                    match rfs::mkdirat(
                        &parent,
                        &name,
                        Mode::from_raw_mode(modes.dir.unwrap_or(0o777)),
                    ) {
                        Ok(()) => created = true,
                        Err(rustix::io::Errno::EXIST) => continue,
                        Err(e) => {
                            return Err(DestError::Io {
                                what: format!("cannot create the destination {shown}"),
                                source: errno(e),
                            });
                        }
                    }
                }
                Err(e) => {
                    return Err(DestError::Io {
                        what: format!("cannot read the destination {shown}"),
                        source: errno(e),
                    });
                }
            }
            let fd = match rfs::openat(
                &parent,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                // Replaced between the look and the open: look again.
                Err(
                    rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT,
                ) if tries < 5 => {
                    continue;
                }
                Err(e) => {
                    return Err(DestError::Io {
                        what: format!("cannot open the destination {shown}"),
                        source: errno(e),
                    });
                }
            };
            if created && let Some(m) = modes.dir {
                rfs::fchmod(&fd, Mode::from_raw_mode(m))
                    .map_err(|e| DestError::io(format!("setting the mode of {shown}"))(errno(e)))?;
            }
            let dir = BackupDir {
                fd,
                path: dest.to_owned(),
            };
            let locked = match LockedDir::lock(dir) {
                Ok(l) => l,
                Err((_, Held(who))) => {
                    return Err(DestError::Locked {
                        path: dest.to_owned(),
                        holder: who.unwrap_or_else(|| "another process".into()),
                    });
                }
            };
            // The lock is on what was opened: it must still be what `dest` names (a
            // backup that failed may have removed the directory it had created).
            let now = rfs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW);
            match (now, locked.stat()) {
                (Ok(a), Ok(b)) if same_file(&a, &b) => break (locked, created),
                _ if tries < 5 => continue,
                _ => {
                    return Err(DestError::Refused(format!(
                        "destination {shown} keeps being replaced by another process; try again"
                    )));
                }
            }
        };
        let pending = Arc::new(Mutex::new(Pending {
            dir: dest.to_owned(),
            remove_dir: created_dest,
            ..Pending::default()
        }));
        let p2 = pending.clone();
        let on_exit = crate::cancel::before_exit_while(move || {
            p2.lock().unwrap_or_else(|e| e.into_inner()).clean();
        });
        let mut nb = NewBackup {
            dest: dest.to_owned(),
            parent,
            name,
            dest_dir,
            created_dest,
            into: Into_::Dest,
            old: Old::Nothing,
            modes,
            made: Vec::new(),
            committed: false,
            pending,
            _on_exit: on_exit,
        };
        nb.old = classify(&nb.dest_dir)?;
        let replace = match &nb.old {
            Old::Nothing => false,
            Old::Backup { backup_id, .. } if !force => {
                return Err(DestError::Refused(format!(
                    "destination {shown} already holds a backup (backup id {backup_id}); use --force to replace it (the new backup is written beside it and replaces it only once it is complete), or keep many backups in a repository (vdi init REPO, then vdi backup SOURCE REPO)"
                )));
            }
            Old::Leftovers(files) if !force => {
                return Err(DestError::Refused(format!(
                    "destination {shown} holds no backup, but the files of one that did not complete ({}; no {MANIFEST}): use --force to replace them, or remove them",
                    files.join(", ")
                )));
            }
            _ => true,
        };
        if replace {
            nb.into = nb.staging()?;
            let mut p = nb.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.dir = nb.target().path().to_owned();
            p.remove_dir = true;
        }
        Ok(nb)
    }

    /// Makes the staging directory beside the destination, with the destination's
    /// permissions and owner, locked.
    fn staging(&self) -> Result<Into_, DestError> {
        let shown = self.dest.display().to_string();
        if is_mount_point(&self.parent, &self.name, &self.dest_dir) {
            return Err(DestError::Refused(format!(
                "cannot replace the backup in {shown}: it is a mount point, and vdi replaces a backup by writing the new one beside it and swapping the two once the new one is complete; back up into a directory below {shown}, or remove the old backup first"
            )));
        }
        let st = self
            .dest_dir
            .stat()
            .map_err(DestError::io(format!("reading the destination {shown}")))?;
        let name = beside(&self.name, "new", false);
        let what = || format!("cannot write beside the destination {shown}");
        rfs::mkdirat(&self.parent, &name, Mode::from_raw_mode(0o700))
            .map_err(|e| DestError::io(what())(errno(e)))?;
        let fd = rfs::openat(
            &self.parent,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DestError::io(what())(errno(e)))?;
        let dir = LockedDir::lock(BackupDir {
            fd,
            path: source_dir(&self.parent_path(), &name),
        })
        .map_err(|_| DestError::Refused(format!("{}: its staging directory is in use", what())))?;
        // The new directory takes the place of the old one: it keeps its permissions
        // and owner (what was set on the destination stays so).
        let _ = rfs::fchown(
            &dir.fd,
            Some(rfs::Uid::from_raw(st.st_uid)),
            Some(rfs::Gid::from_raw(st.st_gid)),
        );
        rfs::fchmod(&dir.fd, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| DestError::io(what())(errno(e)))?;
        Ok(Into_::Staging { name, dir })
    }

    fn parent_path(&self) -> PathBuf {
        crate::store::dir::parent_of(&self.dest)
    }

    fn target(&self) -> &BackupDir {
        match &self.into {
            Into_::Dest => &self.dest_dir,
            Into_::Staging { dir, .. } => dir,
        }
    }

    /// The destination as named.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Whether this backup replaces one (`--force` on a destination that held one, or
    /// the files of an interrupted one).
    pub fn replaces(&self) -> bool {
        matches!(self.into, Into_::Staging { .. })
    }

    /// Makes the new file `name` of the backup (it is removed again unless the backup
    /// is committed).
    pub fn create(&mut self, name: &str) -> Result<File, DestError> {
        let f = self
            .target()
            .create(name, self.modes.file)
            .map_err(DestError::io(format!(
                "cannot write the destination {}: creating {name}",
                self.dest.display()
            )))?;
        self.made.push(name.to_owned());
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .files
            .push(name.to_owned());
        Ok(f)
    }

    /// Completes the backup: syncs its directory, writes `manifest` (the completion
    /// marker) atomically, and, when it replaces a backup, swaps the new directory into
    /// the destination's place and only then removes the old backup's files (those vdi
    /// wrote; any other file there is moved into the new destination, or kept).
    pub fn commit(mut self, manifest: &[u8]) -> Result<Committed, DestError> {
        // A process exiting at once waits for the commit, and then leaves a committed
        // backup alone.
        let pending = self.pending.clone();
        let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.commit_inner(manifest);
        if self.committed {
            pending.done = true;
        }
        r
    }

    fn commit_inner(&mut self, manifest: &[u8]) -> Result<Committed, DestError> {
        let shown = self.dest.display().to_string();
        let io = |what: &str| DestError::io(format!("{what} in {shown}"));
        let target = self.target();
        target.sync().map_err(io("syncing the new backup"))?;
        target
            .write_atomically(MANIFEST, MANIFEST_TMP, manifest, self.modes.file)
            .map_err(io("writing the manifest"))?;
        if self.created_dest {
            let _ = rfs::fsync(&self.parent);
        }
        let mut done = Committed::default();
        let Into_::Staging {
            name: staging,
            dir: new_dir,
        } = &self.into
        else {
            self.committed = true;
            return Ok(done);
        };
        // The destination must still be the directory that was locked.
        let now = rfs::statat(&self.parent, &self.name, AtFlags::SYMLINK_NOFOLLOW);
        let was = self.dest_dir.stat();
        if !matches!((&now, &was), (Ok(a), Ok(b)) if same_file(a, b)) {
            self.committed = true;
            return Err(DestError::Refused(format!(
                "destination {shown} was moved or replaced during the backup; the new backup is complete in {}",
                new_dir.path().display()
            )));
        }
        let old_name = match rfs::renameat_with(
            &self.parent,
            staging,
            &self.parent,
            &self.name,
            RenameFlags::EXCHANGE,
        ) {
            Ok(()) => staging.clone(),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                // A file system without an atomic exchange: two renames, with a moment
                // in which the destination is missing (both backups are whole then).
                let old = beside(&self.name, "old", false);
                rfs::renameat(&self.parent, &self.name, &self.parent, &old)
                    .map_err(|e| io("moving the old backup aside")(errno(e)))?;
                rfs::renameat(&self.parent, staging, &self.parent, &self.name)
                    .map_err(|e| io("putting the new backup in place")(errno(e)))?;
                old
            }
            Err(e) => return Err(io("putting the new backup in place")(errno(e))),
        };
        self.committed = true;
        let _ = rfs::fsync(&self.parent);
        // From here on the new backup is in place: what follows only tidies up.
        let old_dir = &self.dest_dir;
        match &self.old {
            Old::Backup {
                backup_id,
                files,
                leftovers,
            } => {
                // The old backup stops claiming completion before its streams go.
                let _ = old_dir.remove(MANIFEST);
                let _ = old_dir.sync();
                for f in files {
                    let _ = old_dir.remove(f);
                }
                for f in leftovers {
                    let _ = old_dir.remove(f);
                }
                done.replaced = Some(backup_id.clone());
                done.removed_leftovers = leftovers.clone();
            }
            Old::Leftovers(files) => {
                for f in files {
                    let _ = old_dir.remove(f);
                }
                done.removed_leftovers = files.clone();
            }
            Old::Nothing => {}
        }
        let rest = old_dir.entries().unwrap_or_default();
        let mut kept = false;
        for n in rest {
            let moved = rfs::renameat_with(
                &old_dir.fd,
                n.as_str(),
                &new_dir.fd,
                n.as_str(),
                RenameFlags::NOREPLACE,
            );
            if moved.is_ok() {
                done.moved.push(n);
            } else {
                kept = true;
            }
        }
        let _ = new_dir.sync();
        let same = rfs::statat(&self.parent, &old_name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .zip(old_dir.stat().ok())
            .is_some_and(|(a, b)| same_file(&a, &b));
        if same {
            if kept {
                let visible = beside(&self.name, "kept", true);
                if rfs::renameat_with(
                    &self.parent,
                    &old_name,
                    &self.parent,
                    &visible,
                    RenameFlags::NOREPLACE,
                )
                .is_ok()
                {
                    done.kept_in = Some(source_dir(&self.parent_path(), &visible));
                } else {
                    done.kept_in = Some(source_dir(&self.parent_path(), &old_name));
                }
            } else {
                let _ = rfs::unlinkat(&self.parent, &old_name, AtFlags::REMOVEDIR);
            }
        }
        let _ = rfs::fsync(&self.parent);
        Ok(done)
    }
}

impl Drop for NewBackup {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.done && !self.committed {
            // The exit hook cleaned up already.
            return;
        }
        pending.done = true;
        drop(pending);
        if self.committed {
            return;
        }
        let target = self.target();
        for f in &self.made {
            let _ = target.remove(f);
        }
        let _ = target.remove(MANIFEST_TMP);
        let dir_name = match &self.into {
            Into_::Staging { name, .. } => Some(name.clone()),
            Into_::Dest if self.created_dest => Some(self.name.clone()),
            Into_::Dest => None,
        };
        if let Some(n) = dir_name {
            let same = rfs::statat(&self.parent, &n, AtFlags::SYMLINK_NOFOLLOW)
                .ok()
                .zip(target.stat().ok())
                .is_some_and(|(a, b)| same_file(&a, &b));
            if same {
                // Only an empty directory goes: a file someone put there stays.
                let _ = rfs::unlinkat(&self.parent, &n, AtFlags::REMOVEDIR);
            }
        }
    }
}

/// Whether the directory `name` of `parent` is a mount point (a backup in it cannot be
/// swapped with one beside it).
fn is_mount_point(parent: &OwnedFd, name: &OsStr, dir: &BackupDir) -> bool {
    if let Ok(x) = rfs::statx(
        &dir.fd,
        "",
        AtFlags::EMPTY_PATH,
        rfs::StatxFlags::BASIC_STATS,
    ) && x
        .stx_attributes_mask
        .contains(rfs::StatxAttributes::MOUNT_ROOT)
    {
        return x.stx_attributes.contains(rfs::StatxAttributes::MOUNT_ROOT);
    }
    let _ = name;
    match (rfs::fstat(parent), dir.stat()) {
        (Ok(p), Ok(d)) => p.st_dev != d.st_dev,
        _ => false,
    }
}

/// The directory a path is in (`.` for a bare name).
pub fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn source_dir(parent: &Path, name: &OsStr) -> PathBuf {
    parent.join(name)
}

/// The directory `dest` is in, and its name there (`.` and `..` resolved).
fn split(dest: &Path) -> Result<(PathBuf, OsString), DestError> {
    let plain = dest.file_name().filter(|_| {
        !matches!(
            dest.components().next_back(),
            Some(std::path::Component::ParentDir)
        )
    });
    if let Some(n) = plain {
        return Ok((parent_of(dest), n.to_owned()));
    }
    let real = std::fs::canonicalize(dest).map_err(DestError::io(format!(
        "cannot read the destination {}",
        dest.display()
    )))?;
    match real.file_name() {
        Some(n) => Ok((parent_of(&real), n.to_owned())),
        None => Err(DestError::Refused(format!(
            "destination {} is the root directory: give a directory below it",
            dest.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stream_file_names() {
        assert!(is_stream_file_name("device-0.stream"));
        assert!(is_stream_file_name("device-63.stream.zst"));
        assert!(is_stream_file_name("device-3.stream.lz4"));
        assert!(is_stream_file_name("device-3.stream.enc"));
        assert!(is_stream_file_name("device-3.stream.zst.enc"));
        assert!(!is_stream_file_name("device-3.stream.enc.zst"));
        assert!(!is_stream_file_name("device-.stream"));
        assert!(!is_stream_file_name("device-0.stream.bak"));
        assert!(!is_stream_file_name("device-x.stream"));
        assert!(!is_stream_file_name("manifest.json"));
    }

    #[test]
    fn modes() {
        assert_eq!(Modes::parse("600"), Ok(Modes::DEFAULT));
        assert_eq!(
            Modes::parse("0644"),
            Ok(Modes {
                file: Some(0o644),
                dir: Some(0o755)
            })
        );
        assert_eq!(Modes::parse("umask"), Ok(Modes::UMASK));
        for bad in ["", "6", "400", "0700x", "1644", "77777", "-600"] {
            assert!(Modes::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_planted_link_at_the_temporary_name_is_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let bk = d.path().join("bk");
        std::fs::create_dir(&bk).unwrap();
        std::os::unix::fs::symlink(&victim, bk.join(MANIFEST_TMP)).unwrap();
        let dir = BackupDir::open(&bk).unwrap();
        dir.write_atomically(MANIFEST, MANIFEST_TMP, b"{}", Some(0o600))
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(bk.join(MANIFEST)).unwrap(), b"{}");
        assert!(!bk.join(MANIFEST_TMP).exists());
        // And a new file is never opened through a link either.
        std::os::unix::fs::symlink(&victim, bk.join("device-0.stream")).unwrap();
        assert!(dir.create("device-0.stream", Some(0o600)).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        // A non-empty directory where the file goes: the rename fails.
        std::fs::create_dir_all(d.path().join(MANIFEST).join("x")).unwrap();
        let dir = BackupDir::open(d.path()).unwrap();
        assert!(
            dir.write_atomically(MANIFEST, MANIFEST_TMP, b"{}", None)
                .is_err()
        );
        assert!(!d.path().join(MANIFEST_TMP).exists());
    }

    #[test]
    fn only_regular_files_are_opened() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"12345").unwrap();
        std::os::unix::fs::symlink(d.path().join("f"), d.path().join("l")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let dir = BackupDir::open(d.path()).unwrap();
        assert!(dir.open_regular("f", Some(5)).is_ok());
        assert!(matches!(
            dir.open_regular("f", Some(4)),
            Err(FileError::TooLarge { len: 5, max: 4 })
        ));
        assert!(matches!(
            dir.open_regular("l", None),
            Err(FileError::NotRegular(FileKind::Symlink))
        ));
        assert!(matches!(
            dir.open_regular("sub", None),
            Err(FileError::NotRegular(FileKind::Directory))
        ));
        assert!(matches!(
            dir.open_regular("none", None),
            Err(FileError::Missing)
        ));
        assert!(dir.open_regular("../f", None).is_err());
    }

    #[test]
    fn an_abandoned_backup_leaves_the_destination_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("new");
        {
            let mut nb = NewBackup::prepare(&dest, false, Modes::DEFAULT).unwrap();
            nb.create("device-0.stream").unwrap();
            assert!(dest.join("device-0.stream").exists());
            // A second one is refused while this one holds the lock.
            assert!(matches!(
                NewBackup::prepare(&dest, true, Modes::DEFAULT),
                Err(DestError::Locked { .. })
            ));
        }
        assert!(!dest.exists(), "the directory it made is removed");
        let manifest = br#"{"format": "vdi-backup", "backup_id": "old", "streams": []}"#;
        let manifest = String::from_utf8_lossy(manifest).replace(
            "\"streams\": []",
            "\"version\": 1, \"stream_id\": null, \"set_name\": \"s\", \"tool\": \"t\", \"started\": 0, \"completed\": 0, \"source\": {\"kind\": \"file\", \"name\": \"x\", \"bytes\": 0}, \"device_count\": 1, \"block_size\": 4096, \"max_transfer_size\": 65536, \"compression\": {\"algorithm\": \"none\"}, \"total_stream_bytes\": 0, \"total_stored_bytes\": 0, \"streams\": [{\"device\": 0, \"file\": \"device-0.stream\", \"stream_bytes\": 0, \"stored_bytes\": 0, \"blake3\": \"\"}], \"complete\": true",
        );
        let mut nb = NewBackup::prepare(&dest, false, Modes::DEFAULT).unwrap();
        nb.create("device-0.stream").unwrap();
        nb.commit(manifest.as_bytes()).unwrap();
        // A replacement abandoned half-way: the old backup stays, nothing is left beside.
        let before = std::fs::read(dest.join(MANIFEST)).unwrap();
        {
            let mut nb = NewBackup::prepare(&dest, true, Modes::DEFAULT).unwrap();
            assert!(nb.replaces());
            nb.create("device-0.stream").unwrap();
        }
        assert_eq!(std::fs::read(dest.join(MANIFEST)).unwrap(), before);
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![OsString::from("new")]);
        // Completed, it takes the old one's place and removes the old one's files.
        let mut nb = NewBackup::prepare(&dest, true, Modes::DEFAULT).unwrap();
        nb.create("device-0.stream.zst").unwrap();
        let done = nb
            .commit(
                manifest
                    .replace("device-0.stream", "device-0.stream.zst")
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(done.replaced.as_deref(), Some("old"));
        let mut names: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                OsString::from("device-0.stream.zst"),
                OsString::from(MANIFEST)
            ]
        );
    }
}

// ---------------------------------------------------------------------------------------
// A backup in a directory: its manifest.

use crate::format::manifest::{BackupError, Manifest, check_manifest, manifest_bytes};
use crate::format::stream;

/// Reads and checks the manifest of backup directory `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let r = DirReader(open_dir(dir)?);
    let bytes =
        crate::store::StoreReader::read_manifest(&r)?.ok_or_else(|| BackupError::NoManifest {
            place: dir.display().to_string(),
        })?;
    check_manifest(&bytes, &dir.join(MANIFEST).display().to_string())
}

/// Opens the backup directory `dir` (not following a link there).
pub fn open_dir(dir: &Path) -> Result<BackupDir, BackupError> {
    BackupDir::open(dir)
        .map_err(|e| BackupError::Unreadable(format!("cannot read backup {}: {e}", dir.display())))
}

/// Writes `manifest` into `dir` atomically: a temporary file, synced, renamed to
/// [`MANIFEST`], then the directory synced (the temporary is removed on any failure).
/// The file is made with mode 0600.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> io::Result<()> {
    BackupDir::open(dir)?.write_atomically(
        MANIFEST,
        MANIFEST_TMP,
        &manifest_bytes(manifest)?,
        Some(0o600),
    )
}

// ---------------------------------------------------------------------------------------
// The directory as a `Store`.

/// A backup directory as a [`Store`](crate::store::Store): [`NewBackup`] writes into it
/// (lock, staging beside it and an exchange to replace, private modes), [`BackupDir`]
/// reads from it (no link followed, only regular files, bounded manifest).
#[derive(Clone, Debug)]
pub struct DirStore {
    path: PathBuf,
    modes: Modes,
}

impl DirStore {
    /// The backup directory `path`, whose new files and directories get `modes`.
    pub fn new(path: impl Into<PathBuf>, modes: Modes) -> DirStore {
        DirStore {
            path: path.into(),
            modes,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A failure to make the destination ready, as a kind and a message.
pub fn dest_failure(e: DestError) -> crate::Error {
    use crate::error::{Kind, fail};
    let kind = match &e {
        DestError::Locked { .. } => Kind::SetBusy,
        DestError::Refused(_) => Kind::TargetExists,
        _ if e.io_error().is_some_and(crate::util::is_disk_full) => Kind::DiskFull,
        _ => Kind::Other,
    };
    fail(kind, e.to_string())
}

impl crate::store::Store for DirStore {
    fn describe(&self) -> String {
        format!("backup directory {}", self.path.display())
    }

    fn properties(&self) -> crate::store::Properties {
        crate::store::Properties {
            atomic_replace: true,
            keeps_manifest: true,
            max_streams: stream::MAX_DEVICES,
        }
    }

    fn begin(&self, force: bool) -> crate::Result<Box<dyn crate::store::StoreWriter>> {
        let new = NewBackup::prepare(&self.path, force, self.modes).map_err(dest_failure)?;
        Ok(Box::new(DirWriter {
            new,
            tracker: crate::store::Tracker::default(),
        }))
    }

    fn open(&self) -> Result<Box<dyn crate::store::StoreReader>, BackupError> {
        Ok(Box::new(DirReader(open_dir(&self.path)?)))
    }
}

#[derive(Debug)]
struct DirWriter {
    new: NewBackup,
    tracker: crate::store::Tracker,
}

/// A stream file of a backup being written.
#[derive(Debug)]
struct DirObject(File);

impl Write for DirObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl crate::store::ObjectWriter for DirObject {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn finish(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl crate::store::StoreWriter for DirWriter {
    fn where_(&self, name: &str) -> String {
        format!("in {}", self.new.dest().join(name).display())
    }

    fn create(&mut self, name: &str) -> crate::Result<Box<dyn crate::store::ObjectWriter>> {
        let f = self.new.create(name).map_err(dest_failure)?;
        Ok(self.tracker.track(name, DirObject(f)))
    }

    fn commit(self: Box<Self>, manifest: &[u8]) -> crate::Result<crate::store::Commit> {
        self.tracker.all_finished()?;
        let d = self.new.dest().display().to_string();
        let c = self.new.commit(manifest).map_err(dest_failure)?;
        let mut out = crate::store::Commit {
            replaced: c.replaced.clone(),
            ..Default::default()
        };
        if let Some(id) = &c.replaced {
            out.notes.push(format!(
                "replaced backup {id} in {d}: its files were removed once the new backup was complete"
            ));
        }
        if !c.removed_leftovers.is_empty() {
            out.notes.push(format!(
                "removed what an interrupted backup had left in {d}: {}",
                c.removed_leftovers.join(", ")
            ));
        }
        if !c.moved.is_empty() {
            out.notes.push(format!(
                "kept in {d} the file(s) vdi did not write: {}",
                c.moved.join(", ")
            ));
        }
        if let Some(k) = &c.kept_in {
            out.warnings.push(format!(
                "files vdi did not write were in {d} under names the new backup uses; they were kept in {}",
                k.display()
            ));
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct DirReader(BackupDir);

impl crate::store::StoreReader for DirReader {
    fn place(&self) -> String {
        self.0.path().display().to_string()
    }

    fn place_of(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }

    fn read_manifest(&self) -> Result<Option<Vec<u8>>, BackupError> {
        let place = self.place_of(MANIFEST);
        match self.0.read_regular(MANIFEST, MAX_MANIFEST_BYTES) {
            Ok(b) => Ok(Some(b)),
            Err(FileError::Missing) => Ok(None),
            Err(FileError::Io(e)) => Err(BackupError::Unreadable(format!(
                "cannot read backup {place}: {e}"
            ))),
            Err(e) => Err(BackupError::BadManifest {
                place,
                what: format!("it {e}"),
            }),
        }
    }

    fn open(&self, name: &str) -> Result<crate::store::Object, String> {
        let f = self.0.open_regular(name, None).map_err(|e| e.to_string())?;
        let len = f.metadata().ok().map(|m| m.len());
        Ok(crate::store::Object {
            reader: Box::new(f),
            len,
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.0.entries()
    }

    fn still_current(&self) -> bool {
        self.0.still_at_path()
    }
}
