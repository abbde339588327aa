//! `file:PATH` (or a bare path): a regular file or a block device as a source; a file as
//! a target, restored into a temporary file beside it and renamed into place once whole.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    Scheme, Source, Target, TargetOptions, check_target_path, open_input, parent_dir, unreadable,
};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::{ChunkHeader, Sink, SourceKind};
use crate::util::{is_disk_full, sync_dir};

/// Plain files.
#[derive(Debug)]
pub struct FileScheme;

impl Scheme for FileScheme {
    fn prefix(&self) -> &'static str {
        "file:"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::File
    }
    fn probe(&self, rest: &str) -> Result<Option<u64>> {
        let p = Path::new(rest);
        let (mut f, len) = open_input("source file", p, true)?;
        let mut probe = [0u8; 1];
        if len > 0 {
            f.read(&mut probe)
                .map_err(|e| unreadable("source file", p, &e))?;
        }
        Ok(Some(len))
    }
    fn open_source(&self, rest: &str) -> Result<Box<dyn Source>> {
        let (f, size) = open_input("source file", Path::new(rest), true)?;
        Ok(Box::new(FileSource {
            file: f,
            size,
            kind: SourceKind::File,
            seconds: 0.0,
        }))
    }
    fn check_target(&self, rest: &str, force: bool) -> Result<()> {
        check_file_target(Path::new(rest), force)
    }
    fn open_target(&self, rest: &str, opts: TargetOptions) -> Result<Box<dyn Target>> {
        Ok(Box::new(FileTarget::open(Path::new(rest), opts)?))
    }
}

/// A file (or a block device, or a database snapshot) read from its start.
pub(crate) struct FileSource {
    pub file: File,
    pub size: u64,
    pub kind: SourceKind,
    /// Seconds it took to make (a snapshot).
    pub seconds: f64,
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Source for FileSource {
    fn kind(&self) -> SourceKind {
        self.kind
    }
    fn size(&self) -> Option<u64> {
        Some(self.size)
    }
    fn checked(&self) -> bool {
        true
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn prepare_seconds(&self) -> f64 {
        self.seconds
    }
}

/// Checks that `p` may be restored: refuses an existing target without `force`,
/// anything but a regular file there even with it (a device such as `/dev/null`, a FIFO,
/// a link, a directory: restoring renames a new file into the target's place, which
/// would replace it), and a target whose directory does not exist.
pub fn check_file_target(p: &Path, force: bool) -> Result<()> {
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

/// The failure of a write into the restored target `path`.
pub(crate) fn target_failure(path: &Path, e: &io::Error) -> crate::Error {
    if is_disk_full(e) {
        fail(
            Kind::DiskFull,
            format!(
                "no space left writing the restored target {}: {e}",
                path.display()
            ),
        )
    } else {
        fail(
            Kind::Other,
            format!("writing the restored target {}: {e}", path.display()),
        )
    }
}

/// The name prefix of the temporary file an engine (pid `pid`) restores `name` into.
pub fn partial_prefix(name: &str, pid: u32) -> String {
    format!(".{name}.vdi-partial-{pid}-")
}

/// Removes what a dead engine (pid `pid`) left of its restore of `target` (a temporary
/// file, or a directory a tree was being restored into).
pub fn remove_partial(target: &Path, pid: u32) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = partial_prefix(&name, pid);
    if let Ok(rd) = std::fs::read_dir(parent_dir(target)) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                // A file, or the directory a tree was being restored into.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = super::dir::remove_tree(&e.path());
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// A file being restored: a temporary file beside the target, each chunk written at its
/// source offset; [`FileTarget::finish`] makes it whole and durable, and
/// [`FileTarget::persist`] renames it into place. Dropped before that, the temporary
/// file is removed.
pub struct FileTarget {
    tmp: tempfile::NamedTempFile,
    file: Arc<File>,
    /// Taken by each write (see [`AtOffset`]).
    turn: Arc<Mutex<()>>,
    path: PathBuf,
    force: bool,
}

impl FileTarget {
    /// Opens a temporary file for restoring `path` (after [`check_file_target`]).
    pub fn open(path: &Path, opts: TargetOptions) -> Result<FileTarget> {
        check_file_target(path, opts.force)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "target".into());
        let tmp = tempfile::Builder::new()
            .prefix(&partial_prefix(&name, std::process::id()))
            .tempfile_in(parent_dir(path))
            .map_err(|e| target_failure(path, &e))?;
        let file = Arc::new(
            tmp.as_file()
                .try_clone()
                .map_err(|e| target_failure(path, &e))?,
        );
        Ok(FileTarget {
            tmp,
            file,
            turn: Arc::default(),
            path: path.to_owned(),
            force: opts.force,
        })
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file the data is restored into.
    pub fn temporary(&self) -> &Path {
        self.tmp.path()
    }

    /// Whether an existing target may be replaced.
    pub fn force(&self) -> bool {
        self.force
    }

    /// Sets the length to `total` and makes the data durable.
    pub fn finish(&self, total: u64) -> Result<()> {
        self.file
            .set_len(total)
            .map_err(|e| target_failure(&self.path, &e))?;
        self.file
            .sync_all()
            .map_err(|e| target_failure(&self.path, &e))
    }

    /// Puts the restored file in the target's place (looking at what is there once more
    /// just before the rename) and makes the rename durable.
    pub fn persist(self) -> Result<()> {
        check_target_path(&self.path, self.force, " during the restore")?;
        let FileTarget {
            tmp, file, path, ..
        } = self;
        drop(file);
        tmp.persist(&path)
            .map_err(|e| target_failure(&path, &e.error))?;
        sync_dir(&parent_dir(&path)).map_err(|e| target_failure(&path, &e))
    }
}

/// Writes each chunk's payload at its source offset, one device's thread at a time.
///
/// The kernel takes the file's inode lock for every buffered write anyway (tmpfs, ext4,
/// XFS), so writes to one file never run side by side; left to the kernel, the devices'
/// threads that lose the race spin on that lock (`rwsem_spin_on_owner` was 12% of a
/// 4-device restore's CPU on tmpfs), taking cores from the threads that read, decode and
/// check the other devices' streams. Taken here, the loser sleeps.
struct AtOffset {
    file: Arc<File>,
    turn: Arc<Mutex<()>>,
}

impl Sink for AtOffset {
    fn payload(&mut self, c: &ChunkHeader, at: u32, data: &[u8]) -> io::Result<()> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.file.write_all_at(data, c.offset + u64::from(at))
    }
    fn chunk_end(&mut self, _: &ChunkHeader) -> io::Result<()> {
        Ok(())
    }
}

impl Target for FileTarget {
    fn begin(&self, _devices: u32) {}
    fn sink(&self) -> Box<dyn Sink + Send> {
        Box::new(AtOffset {
            file: self.file.clone(),
            turn: self.turn.clone(),
        })
    }
    fn device_done(&self, _failed: bool) {}
    fn commit(self: Box<Self>, total: u64, _check: bool) -> Result<Option<String>> {
        self.finish(total)?;
        self.persist()?;
        Ok(None)
    }
}
