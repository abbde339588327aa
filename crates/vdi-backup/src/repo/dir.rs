//! A repository in a directory ([`DirLocation`]), and a plain backup directory read as a
//! one-backup repository ([`PlainLocation`]).
//!
//! Each backup is a backup directory `REPO/ID` written by [`DirStore`] (its lock, private
//! modes, manifest last, no link followed). A lease is the file `REPO/locks/ID`, made
//! under a temporary name, locked with `flock` and only then renamed into place without
//! replacing anything: a lease that is there is held, or its holder died (the kernel
//! released the lock), never "about to be held". The catalog is replaced by a rename and
//! its read-change-write is serialised by a `flock` on `REPO` itself.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, CWD, FlockOperation, Mode, OFlags, RenameFlags};

use super::{CATALOG, CatalogGuard, Lease, Location, MARKER, parse_id};
use crate::Result;
use crate::error::{Context, Kind, fail};
use crate::format::manifest::{self, MANIFEST};
use crate::store::Store;
use crate::store::dir::{BackupDir, DirStore, LockedDir, MANIFEST_TMP, Modes, is_stream_file_name};

const LOCKS: &str = "locks";
const CATALOG_TMP: &str = ".catalog.json.tmp";

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A repository in directory `path`.
#[derive(Clone, Debug)]
pub struct DirLocation {
    path: PathBuf,
    modes: Modes,
}

impl DirLocation {
    /// The repository in `path`, whose new files and directories get `modes`.
    pub fn new(path: impl Into<PathBuf>, modes: Modes) -> DirLocation {
        DirLocation {
            path: path.into(),
            modes,
        }
    }

    fn open(&self) -> Result<BackupDir> {
        BackupDir::open(&self.path)
            .with_context(|| format!("cannot read repository {}", self.path.display()))
            .map_err(|e| fail(Kind::Input, e.to_string()))
    }

    fn locks_dir(&self) -> Result<BackupDir> {
        let p = self.path.join(LOCKS);
        match rfs::mkdirat(
            CWD,
            &p,
            Mode::from_raw_mode(self.modes.dir.unwrap_or(0o777)),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(fail(
                    Kind::Other,
                    format!("cannot make {}: {}", p.display(), errno(e)),
                ));
            }
        }
        BackupDir::open(&p).with_context(|| format!("cannot open {}", p.display()))
    }

    fn lease_fd(&self, id: &str) -> Result<Option<OwnedFd>> {
        let p = self.path.join(LOCKS).join(id);
        match rfs::openat(
            CWD,
            &p,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(fail(
                Kind::Input,
                format!("cannot read the lease {}: {}", p.display(), errno(e)),
            )),
        }
    }
}

/// A held lease: its file, locked; removed (while still locked) when dropped.
#[derive(Debug)]
struct DirLease {
    dir: BackupDir,
    id: String,
    _fd: OwnedFd,
}

impl Lease for DirLease {}

impl Drop for DirLease {
    fn drop(&mut self) {
        let _ = self.dir.remove(&self.id);
    }
}

struct DirGuard(#[allow(dead_code)] OwnedFd);
impl CatalogGuard for DirGuard {}

impl Location for DirLocation {
    fn describe(&self) -> String {
        format!("repository {}", self.path.display())
    }

    fn place(&self, id: &str) -> String {
        self.path.join(id).display().to_string()
    }

    fn read_marker(&self) -> Result<Option<Vec<u8>>> {
        let Ok(dir) = BackupDir::open(&self.path) else {
            return Ok(None);
        };
        match dir.read_regular(MARKER, 64 << 10) {
            Ok(b) => Ok(Some(b)),
            Err(crate::store::dir::FileError::Missing) => Ok(None),
            Err(e) => Err(fail(
                Kind::Input,
                format!("cannot read {}: it {e}", self.path.join(MARKER).display()),
            )),
        }
    }

    fn create(&self, marker: &[u8]) -> Result<()> {
        let shown = self.path.display();
        match rfs::mkdirat(
            CWD,
            &self.path,
            Mode::from_raw_mode(self.modes.dir.unwrap_or(0o777)),
        ) {
            Ok(()) => {
                if let Some(m) = self.modes.dir {
                    let _ = rfs::chmodat(CWD, &self.path, Mode::from_raw_mode(m), AtFlags::empty());
                }
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(fail(
                    if e == rustix::io::Errno::NOSPC {
                        Kind::DiskFull
                    } else {
                        Kind::Other
                    },
                    format!("cannot make repository {shown}: {}", errno(e)),
                ));
            }
        }
        let dir = self.open()?;
        let names = dir.entries().context(format!("reading {shown}"))?;
        if names.iter().any(|n| n == MARKER) {
            return Err(fail(
                Kind::TargetExists,
                format!(
                    "{shown} is a repository already: back up into it with vdi backup SOURCE {shown}"
                ),
            ));
        }
        if names.iter().any(|n| n == MANIFEST) {
            return Err(fail(
                Kind::TargetExists,
                format!(
                    "{shown} holds a plain backup (made by vdi backup SOURCE {shown} before it was a repository); make the repository elsewhere, or move that backup into it as {shown}/ID"
                ),
            ));
        }
        if !names.is_empty() {
            return Err(fail(
                Kind::TargetExists,
                format!(
                    "{shown} is not empty ({}): a repository is made in a new or empty directory",
                    names.join(", ")
                ),
            ));
        }
        dir.write_atomically(MARKER, ".vdi-repository.json.tmp", marker, self.modes.file)
            .with_context(|| format!("writing {}", self.path.join(MARKER).display()))?;
        self.locks_dir()?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>> {
        let dir = self.open()?;
        let mut ids = Vec::new();
        for n in dir
            .entries()
            .with_context(|| format!("reading repository {}", self.path.display()))?
        {
            if parse_id(&n).is_some()
                && dir
                    .kind_of(&n)
                    .ok()
                    .flatten()
                    .is_some_and(|k| k == crate::store::dir::FileKind::Directory)
            {
                ids.push(n);
            }
        }
        Ok(ids)
    }

    fn store(&self, id: &str) -> Arc<dyn Store> {
        Arc::new(DirStore::new(self.path.join(id), self.modes))
    }

    fn read_catalog(&self) -> Result<Option<Vec<u8>>> {
        let dir = self.open()?;
        match dir.read_regular(CATALOG, 64 << 20) {
            Ok(b) => Ok(Some(b)),
            Err(crate::store::dir::FileError::Missing) => Ok(None),
            // Anything else there (a link, a huge file) is not the catalog: rebuilt.
            Err(_) => Ok(None),
        }
    }

    fn write_catalog(&self, bytes: &[u8]) -> Result<()> {
        let dir = self.open()?;
        dir.write_atomically(CATALOG, CATALOG_TMP, bytes, self.modes.file)
            .map_err(|e| {
                fail(
                    if crate::util::is_disk_full(&e) {
                        Kind::DiskFull
                    } else {
                        Kind::Other
                    },
                    format!(
                        "cannot write the catalog {}: {e}",
                        self.path.join(CATALOG).display()
                    ),
                )
            })
    }

    fn lock_catalog(&self) -> Result<Box<dyn CatalogGuard>> {
        let fd = rfs::openat(
            CWD,
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            fail(
                Kind::Input,
                format!(
                    "cannot open repository {}: {}",
                    self.path.display(),
                    errno(e)
                ),
            )
        })?;
        rfs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| {
            fail(
                Kind::Other,
                format!(
                    "cannot lock repository {}: {}",
                    self.path.display(),
                    errno(e)
                ),
            )
        })?;
        Ok(Box::new(DirGuard(fd)))
    }

    fn lease(&self, id: &str, holder: &str) -> Result<Option<Box<dyn Lease>>> {
        let locks = self.locks_dir()?;
        if locks.kind_of(id).ok().flatten().is_some()
            || self.path.join(id).symlink_metadata().is_ok()
        {
            return Ok(None);
        }
        let tmp = format!(".{id}.{}-{:08x}", std::process::id(), fastrand::u32(..));
        let mut f = locks
            .create(&tmp, self.modes.file)
            .with_context(|| format!("making a lease in {}", locks.path().display()))?;
        let fail_tmp = |e: io::Error| {
            let _ = locks.remove(&tmp);
            crate::Error::from(e).context(format!("making a lease in {}", locks.path().display()))
        };
        writeln!(f, "{holder}").map_err(fail_tmp)?;
        let fd = OwnedFd::from(f);
        rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| fail_tmp(errno(e)))?;
        let p = locks.path().to_owned();
        match rfs::renameat_with(CWD, p.join(&tmp), CWD, p.join(id), RenameFlags::NOREPLACE) {
            Ok(()) => Ok(Some(Box::new(DirLease {
                dir: locks,
                id: id.to_owned(),
                _fd: fd,
            }))),
            Err(rustix::io::Errno::EXIST) => {
                let _ = locks.remove(&tmp);
                Ok(None)
            }
            Err(e) => Err(fail_tmp(errno(e))),
        }
    }

    fn leased(&self, id: &str) -> Result<Option<String>> {
        let Some(fd) = self.lease_fd(id)? else {
            return Ok(None);
        };
        match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Err(_) => {
                let mut text = String::new();
                let _ = io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text);
                let h = text.trim();
                Ok(Some(if h.is_empty() {
                    "another process".into()
                } else {
                    h.to_owned()
                }))
            }
            Ok(()) => {
                // Its holder died: the lease is stale; removed while this process
                // holds its lock, so no live holder is ever removed.
                let _ = rfs::unlinkat(CWD, self.path.join(LOCKS).join(id), AtFlags::empty());
                Ok(None)
            }
        }
    }

    fn remove(&self, id: &str) -> Result<Vec<String>> {
        if parse_id(id).is_none() {
            return Err(fail(Kind::Usage, format!("'{id}' is not a backup id")));
        }
        let path = self.path.join(id);
        remove_backup_dir(&path)
    }
}

/// Removes the backup in directory `path` (taking its lock first: a backup being
/// written is never removed): its manifest, then its streams and what an interrupted
/// backup leaves, then the directory if nothing else is in it.
fn remove_backup_dir(path: &Path) -> Result<Vec<String>> {
    let shown = path.display().to_string();
    let dir = BackupDir::open(path)
        .map_err(|e| fail(Kind::Input, format!("cannot open {shown}: {e}")))?;
    let dir = LockedDir::lock(dir).map_err(|(_, held)| {
        fail(
            Kind::SetBusy,
            format!(
                "{shown} is being written by {}: it is not removed",
                held.0.unwrap_or_else(|| "another process".into())
            ),
        )
    })?;
    let files: Vec<String> = dir
        .read_regular(MANIFEST, crate::store::MAX_MANIFEST_BYTES)
        .ok()
        .and_then(|b| manifest::parse_manifest_any(&b).ok())
        .map(|m| m.streams.into_iter().map(|s| s.file).collect())
        .unwrap_or_default();
    let mut removed = Vec::new();
    // The manifest first: the backup stops claiming completion before its streams go.
    if dir.kind_of(MANIFEST).ok().flatten().is_some() {
        dir.remove(MANIFEST)
            .with_context(|| format!("removing {shown}/{MANIFEST}"))?;
        let _ = dir.sync();
        removed.push(MANIFEST.to_owned());
    }
    for n in dir.entries().with_context(|| format!("reading {shown}"))? {
        let ours = n == MANIFEST_TMP || files.contains(&n) || is_stream_file_name(&n);
        if ours && dir.remove(&n).is_ok() {
            removed.push(n);
        }
    }
    let _ = dir.sync();
    let rest = dir.entries().unwrap_or_default();
    if !rest.is_empty() {
        return Err(fail(
            Kind::Other,
            format!(
                "{shown}: its backup was removed, but it holds files vdi did not write ({}), which were left there",
                rest.join(", ")
            ),
        ));
    }
    std::fs::remove_dir(path).with_context(|| format!("removing {shown}"))?;
    Ok(removed)
}

// ---------------------------------------------------------------------------------------

/// A plain backup directory (a manifest at its top), read as a repository of that one
/// backup, under an id made from its start time and its backup id. Read-only: nothing
/// is leased, cataloged or removed in it.
#[derive(Clone, Debug)]
pub struct PlainLocation {
    path: PathBuf,
    id: String,
}

impl PlainLocation {
    /// The plain backup in `path`, if it holds a vdi manifest.
    pub fn open(path: &str) -> Option<PlainLocation> {
        let dir = BackupDir::open(Path::new(path)).ok()?;
        let bytes = dir
            .read_regular(MANIFEST, crate::store::MAX_MANIFEST_BYTES)
            .ok()?;
        let m = manifest::parse_manifest_any(&bytes).ok()?;
        Some(PlainLocation {
            path: PathBuf::from(path),
            id: plain_id(&m),
        })
    }
}

/// The id a plain backup is listed under: its start time and the start of its backup id.
pub fn plain_id(m: &manifest::Manifest) -> String {
    let t = super::new_id(m.started);
    let suffix: String = m
        .backup_id
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .chain("0000".chars())
        .take(4)
        .collect();
    format!("{}{suffix}", &t[..17])
}

struct NoGuard;
impl CatalogGuard for NoGuard {}

impl Location for PlainLocation {
    fn describe(&self) -> String {
        format!(
            "backup {} (a plain backup, not a repository)",
            self.path.display()
        )
    }

    fn place(&self, _id: &str) -> String {
        self.path.display().to_string()
    }

    fn read_marker(&self) -> Result<Option<Vec<u8>>> {
        Ok(Some(
            format!(
                "{{\"format\": \"{}\", \"version\": {}}}",
                super::FORMAT,
                super::VERSION
            )
            .into_bytes(),
        ))
    }

    fn create(&self, _marker: &[u8]) -> Result<()> {
        Err(fail(
            Kind::TargetExists,
            format!("{} holds a plain backup", self.path.display()),
        ))
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(vec![self.id.clone()])
    }

    fn store(&self, _id: &str) -> Arc<dyn Store> {
        Arc::new(DirStore::new(&self.path, Modes::DEFAULT))
    }

    fn read_catalog(&self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn write_catalog(&self, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }

    fn lock_catalog(&self) -> Result<Box<dyn CatalogGuard>> {
        Ok(Box::new(NoGuard))
    }

    fn lease(&self, _id: &str, _holder: &str) -> Result<Option<Box<dyn Lease>>> {
        Err(fail(
            Kind::Usage,
            format!(
                "{} is a plain backup, not a repository: make one with vdi init REPO",
                self.path.display()
            ),
        ))
    }

    fn leased(&self, _id: &str) -> Result<Option<String>> {
        Ok(None)
    }

    fn is_plain(&self) -> bool {
        true
    }

    fn remove(&self, _id: &str) -> Result<Vec<String>> {
        Err(fail(
            Kind::Usage,
            format!(
                "{} is a plain backup, not a repository: vdi expire removes backups of a repository only (remove the directory yourself if you no longer want it)",
                self.path.display()
            ),
        ))
    }
}
