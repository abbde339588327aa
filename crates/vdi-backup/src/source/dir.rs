//! `dir:PATH`: a directory tree. As a source, a tar stream made by the engine
//! ([`super::tar_out`]: kinds, modes, owners, links, sparse files, extended
//! attributes); as a target, that stream extracted safely ([`super::untar`]: nothing
//! outside the target, no link followed) into a new directory beside the target, which
//! takes the target's place only once it is whole and synced. An existing target must be
//! an empty directory, or any directory with `--force` (its old contents are removed
//! once the new tree is in place); anything else there is refused, even with `--force`.
//!
//! ```
//! use vdi_backup::source::Spec;
//! let s = Spec::parse("dir:/srv/www").unwrap();
//! assert_eq!(s.kind().name(), "dir");
//! assert_eq!(s.path(), Some(std::path::Path::new("/srv/www")));
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::chan::{ChanWriter, Why, chan};
use super::file::partial_prefix;
use super::tar_out::TarSource;
use super::untar::{self, Summary, XErr};
use super::{InOrder, Scheme, Source, Target, TargetOptions, parent_dir};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::{Sink, SourceKind};
use crate::store::dir::FileKind;
use crate::util::{is_disk_full, sync_dir};

/// Directory trees.
#[derive(Debug)]
pub struct DirScheme;

/// Checks that `p` is a directory this process can list (without opening anything
/// that could block).
pub fn check_source_dir(p: &Path) -> Result<()> {
    let m = std::fs::metadata(p).map_err(|e| super::unreadable("source directory", p, &e))?;
    if !m.is_dir() {
        let k = FileKind::at(p)
            .map(|k| k.describe())
            .unwrap_or("not a directory");
        let hint = if m.is_file() {
            format!(": back up a file with file:{}", p.display())
        } else {
            String::new()
        };
        return Err(fail(
            Kind::Input,
            format!("source {} is {k}, not a directory{hint}", p.display()),
        ));
    }
    std::fs::read_dir(p).map_err(|e| super::unreadable("source directory", p, &e))?;
    Ok(())
}

impl Scheme for DirScheme {
    fn prefix(&self) -> &'static str {
        "dir:"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Directory
    }
    fn probe(&self, rest: &str) -> Result<Option<u64>> {
        check_source_dir(Path::new(rest))?;
        Ok(None)
    }
    fn open_source(&self, rest: &str) -> Result<Box<dyn Source>> {
        let p = Path::new(rest);
        check_source_dir(p)?;
        Ok(Box::new(TarSource::start(p)?))
    }
    fn check_target(&self, rest: &str, force: bool) -> Result<()> {
        check_tree_target(Path::new(rest), force, "")
    }
    fn open_target(&self, rest: &str, opts: TargetOptions) -> Result<Box<dyn Target>> {
        Ok(Box::new(TreeTarget::open(
            Path::new(rest),
            opts,
            untar::Options::default(),
            None,
        )?))
    }
}

/// Whether the directory `p` has no entries.
fn is_empty_dir(p: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(p)?.next().is_none())
}

/// Refuses a tree target `p` where something other than a directory is (even with
/// `force`), or a directory that is not empty without `force`; its parent must exist.
/// `when` is `""` or ` during the restore`.
pub fn check_tree_target(p: &Path, force: bool, when: &str) -> Result<()> {
    match FileKind::at(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
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
        Err(e) => Err(fail(
            Kind::Input,
            format!("cannot look at target {}: {e}", p.display()),
        )),
        Ok(FileKind::Directory) => {
            let empty = is_empty_dir(p).map_err(|e| {
                fail(
                    Kind::Input,
                    format!("cannot list target {}: {e}", p.display()),
                )
            })?;
            if empty || force {
                Ok(())
            } else if when.is_empty() {
                Err(fail(
                    Kind::TargetExists,
                    format!(
                        "target {} is a directory that is not empty; use --force to replace it (its contents are removed once the restored tree is in place)",
                        p.display()
                    ),
                ))
            } else {
                Err(fail(
                    Kind::TargetExists,
                    format!(
                        "target {} was filled{when}; use --force to replace it",
                        p.display()
                    ),
                ))
            }
        }
        Ok(FileKind::Symlink) => {
            let to = std::fs::read_link(p)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default();
            Err(fail(
                Kind::TargetExists,
                format!(
                    "target {} is a symbolic link{to}: refused, even with --force; name the directory itself",
                    p.display()
                ),
            ))
        }
        Ok(k) => Err(fail(
            Kind::TargetExists,
            format!(
                "target {} is {}, not a directory: refused, even with --force (a tree is restored into a directory)",
                p.display(),
                k.describe()
            ),
        )),
    }
}

/// Makes every directory under `p` writable and searchable by its owner (not following
/// links), so that the tree can be removed.
fn make_removable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let mode = m.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            make_removable(&e.path());
        }
    }
}

/// Removes the tree `p` (whatever modes its directories have).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    make_removable(p);
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// A directory being restored into, removed when dropped unless it was put in place.
struct Staging {
    path: PathBuf,
    kept: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = remove_tree(&self.path);
        }
    }
}

/// What a kind of tree target checks once the tree is extracted and synced, before it
/// is put in place (PostgreSQL's `pg_verifybackup`); its verdict, if it gives one.
pub type TreeCheck = Box<dyn Fn(&Path, &Summary) -> Result<Option<String>> + Send + Sync>;

/// A tree being restored: the tar stream, in source order, into an extracting thread.
pub struct TreeTarget {
    out: Arc<InOrder<ChanWriter>>,
    thread: Mutex<Option<JoinHandle<std::result::Result<Summary, XErr>>>>,
    staging: Staging,
    path: PathBuf,
    force: bool,
    check: Option<TreeCheck>,
}

fn tree_failure(path: &Path, e: &XErr) -> crate::Error {
    match e {
        XErr::Refused(s) => fail(Kind::Damaged, format!("restoring {}: {s}", path.display())),
        XErr::Io(s, io) if is_disk_full(io) => fail(
            Kind::DiskFull,
            format!("no space left restoring {}: {s}: {io}", path.display()),
        ),
        XErr::Io(s, io) => fail(
            Kind::Other,
            format!("restoring {}: {s}: {io}", path.display()),
        ),
    }
}

impl TreeTarget {
    /// Opens a tree target at `path`: a new directory beside it, and the thread that
    /// extracts into it. `check` runs on the whole tree before it is put in place.
    pub fn open(
        path: &Path,
        opts: TargetOptions,
        xopts: untar::Options,
        check: Option<TreeCheck>,
    ) -> Result<TreeTarget> {
        check_tree_target(path, opts.force, "")?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "target".into());
        let dir = tempfile::Builder::new()
            .prefix(&partial_prefix(&name, std::process::id()))
            .tempdir_in(parent_dir(path))
            .map_err(|e| {
                fail(
                    if is_disk_full(&e) {
                        Kind::DiskFull
                    } else {
                        Kind::Other
                    },
                    format!(
                        "making a directory beside {} to restore into: {e}",
                        path.display()
                    ),
                )
            })?;
        let staging = Staging {
            path: dir.keep(),
            kept: false,
        };
        let why = Why::default();
        let (tx, rx) = chan("the tar extractor", why.clone());
        let (root, p2) = (staging.path.clone(), path.to_owned());
        let thread = std::thread::Builder::new()
            .name("untar".into())
            .spawn(move || {
                let r = untar::extract(rx, &root, xopts);
                if let Err(e) = &r {
                    let kind = match e {
                        XErr::Refused(_) => io::ErrorKind::InvalidData,
                        XErr::Io(_, io) if is_disk_full(io) => io::ErrorKind::StorageFull,
                        XErr::Io(..) => io::ErrorKind::Other,
                    };
                    why.set(kind, tree_failure(&p2, e).own_message());
                }
                r
            })
            .map_err(|e| fail(Kind::Other, format!("starting the tar extractor: {e}")))?;
        Ok(TreeTarget {
            out: Arc::new(InOrder::new(tx, "the tar extractor")),
            thread: Mutex::new(Some(thread)),
            staging,
            path: path.to_owned(),
            force: opts.force,
            check,
        })
    }

    fn join(&self) -> Result<Summary> {
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match t.map(JoinHandle::join) {
            Some(Ok(Ok(s))) => Ok(s),
            Some(Ok(Err(e))) => Err(tree_failure(&self.path, &e)),
            Some(Err(_)) => Err(fail(Kind::Other, "the tar extractor panicked")),
            None => Err(fail(Kind::Other, "the tar extractor was already joined")),
        }
    }

    /// Puts the restored tree in the target's place: renamed there if nothing is there,
    /// else exchanged with the directory there (which is then removed).
    fn place(&mut self) -> Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        check_tree_target(&self.path, self.force, " during the restore")?;
        let fail_io = |e: rustix::io::Errno, what: &str| {
            fail(Kind::Other, format!("{what} {}: {e}", self.path.display()))
        };
        let exists = std::fs::symlink_metadata(&self.path).is_ok();
        if !exists {
            match renameat_with(
                CWD,
                &self.staging.path,
                CWD,
                &self.path,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    self.staging.kept = true;
                }
                Err(rustix::io::Errno::EXIST) => {
                    return Err(fail(
                        Kind::TargetExists,
                        format!(
                            "target {} appeared during the restore; use --force to replace it",
                            self.path.display()
                        ),
                    ));
                }
                Err(e) => return Err(fail_io(e, "putting the restored tree in place at")),
            }
        } else {
            match renameat_with(
                CWD,
                &self.staging.path,
                CWD,
                &self.path,
                RenameFlags::EXCHANGE,
            ) {
                // The old tree now has the staging name: removed when it drops.
                Ok(()) => {}
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                    // A file system without exchange: move the old tree aside first.
                    let aside = PathBuf::from(format!("{}.vdi-old", self.staging.path.display()));
                    std::fs::rename(&self.path, &aside).map_err(|e| {
                        fail(
                            Kind::Other,
                            format!("moving the old {} aside: {e}", self.path.display()),
                        )
                    })?;
                    if let Err(e) = std::fs::rename(&self.staging.path, &self.path) {
                        let _ = std::fs::rename(&aside, &self.path);
                        return Err(fail(
                            Kind::Other,
                            format!(
                                "putting the restored tree in place at {}: {e}",
                                self.path.display()
                            ),
                        ));
                    }
                    self.staging.path = aside;
                }
                Err(e) => return Err(fail_io(e, "putting the restored tree in place at")),
            }
        }
        sync_dir(&parent_dir(&self.path)).map_err(|e| {
            fail(
                Kind::Other,
                format!("syncing the directory of {}: {e}", self.path.display()),
            )
        })
    }
}

impl Drop for TreeTarget {
    fn drop(&mut self) {
        // Uncommitted (or committed: then the thread is joined already): the extractor
        // reads an early end and stops before its directory is removed.
        self.out.with_out(ChanWriter::abandon);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Target for TreeTarget {
    fn begin(&self, devices: u32) {
        self.out.begin(devices);
    }
    fn sink(&self) -> Box<dyn Sink + Send> {
        self.out.sink()
    }
    fn device_done(&self, failed: bool) {
        self.out.device_done(failed);
    }
    fn commit(mut self: Box<Self>, total: u64, _check: bool) -> Result<Option<String>> {
        let flushed = self.out.finish(total);
        let closed = self.out.with_out(ChanWriter::close);
        // The extractor's own failure says more than a pipe that broke because of it.
        let summary = self.join()?;
        flushed?;
        closed.map_err(|e| {
            fail(
                Kind::Other,
                format!("restoring {}: {e}", self.path.display()),
            )
        })?;
        if summary.xattrs_skipped > 0 {
            tracing::warn!(
                "{} extended attribute(s) could not be restored (not supported by the target's file system, or not permitted to this user)",
                summary.xattrs_skipped
            );
        }
        let verdict = match &self.check {
            Some(c) => c(&self.staging.path, &summary)?,
            None => None,
        };
        self.place()?;
        Ok(verdict)
    }
}
