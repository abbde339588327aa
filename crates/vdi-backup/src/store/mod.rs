//! Where backups are kept: a [`Store`] holds one backup (a manifest and one stream object
//! per device), written through a [`StoreWriter`] and read through a [`StoreReader`].
//! [`locate`] picks the store a name on the command line means (`-` is standard
//! output/input, anything else a directory), the way restic's location registry picks a
//! backend by scheme.
//!
//! Implementations: [`dir::DirStore`] (a directory on disk), [`stdio::Stdio`] (one bare
//! stream on standard output or input), `s3::S3Store` (S3-compatible object storage,
//! with the `s3` feature), [`mem::MemStore`] (memory, for tests), and
//! [`faulty::FaultyStore`] (any store, failing or cutting a write on purpose, for tests).
//!
//! # The contract
//!
//! Every store keeps these guarantees, and `tests/conformance_stores.rs` checks them for
//! every implementation (a new store runs the same suite):
//!
//! 1. **One writer at a time.** [`Store::begin`] takes the store for the whole backup; a
//!    second `begin` is refused with [`Kind::SetBusy`](crate::Kind::SetBusy), naming the
//!    holder where the store can tell. The hold ends however the writer ends (commit,
//!    drop, process death).
//! 2. **Nothing replaced without `force`.** A store that holds a backup (or what an
//!    interrupted one left) refuses `begin` without `force` ([`Kind::TargetExists`](crate::Kind::TargetExists)).
//! 3. **The manifest last.** [`StoreWriter::commit`] stores the manifest only after every
//!    object created by the writer has been [finished](ObjectWriter::finish); it refuses
//!    otherwise. A backup is complete exactly when its manifest is there.
//! 4. **Replace only on success.** With `force`, the old backup stays readable, whole,
//!    until the commit; it is removed only after the new one is complete, and where the
//!    store can, in one step ([`Properties::atomic_replace`]). A writer dropped without a
//!    commit removes (or aborts) everything it wrote and leaves the old backup as it was.
//! 5. **Reading is bounded and never blocks.** A reader returns only regular objects,
//!    never follows a link, never waits for a writer (a FIFO is refused), and reads a
//!    manifest of at most [`MAX_MANIFEST_BYTES`].
//!
//! The directory store adds: files `0600` and directories `0700` unless told otherwise
//! (`--mode`), and no file it did not write is ever removed.
//!
//! ```
//! use std::io::Write;
//! use vdi_backup::store::{Store, mem::MemStore};
//! # fn main() -> vdi_backup::Result<()> {
//! let store = MemStore::new();
//! let mut w = store.begin(false)?;
//! let mut o = w.create("device-0.stream")?;
//! o.write_all(b"data")?;
//! o.finish()?;
//! w.commit(b"{}")?;
//! assert_eq!(store.open()?.read_manifest()?, Some(b"{}".to_vec()));
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::Result;
use crate::codec;
use crate::error::{Kind, fail};
use crate::format::manifest::{BackupError, Compression, Manifest, StreamEntry, check_manifest};
use crate::format::stream::{self, StreamHeader};

pub mod dir;
pub mod faulty;
pub mod mem;
#[cfg(feature = "s3")]
pub mod s3;
pub mod stdio;

pub use dir::MAX_MANIFEST_BYTES;

/// What a store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Properties {
    /// A commit replaces the backup the store held in one step: a reader sees the old
    /// backup or the new one, whole, never a mix.
    pub atomic_replace: bool,
    /// The store keeps a manifest (false: a bare stream on standard output/input).
    pub keeps_manifest: bool,
    /// The most streams (devices) one backup may have.
    pub max_streams: u32,
}

/// Where backups are kept (see the module's contract).
pub trait Store: Send + Sync + fmt::Debug {
    /// How messages name it: `backup directory bk`, `standard output`.
    fn describe(&self) -> String;
    /// What it can do.
    fn properties(&self) -> Properties;
    /// Starts writing a new backup (contract 1, 2 and 4).
    fn begin(&self, force: bool) -> Result<Box<dyn StoreWriter>>;
    /// Opens the backup it holds for reading (contract 5).
    fn open(&self) -> Result<Box<dyn StoreReader>, BackupError>;
}

/// A backup being written.
pub trait StoreWriter: Send + fmt::Debug {
    /// Creates object `name` (a device's stream).
    fn create(&mut self, name: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Where object `name` goes, as messages say it (`in bk/device-0.stream`,
    /// `on standard output`).
    fn where_(&self, name: &str) -> String;
    /// Stores `manifest` last and makes the backup the store's (contract 3 and 4).
    fn commit(self: Box<Self>, manifest: &[u8]) -> Result<Commit>;
}

/// One object being written.
pub trait ObjectWriter: Write + Send + fmt::Debug {
    /// Makes what was written so far durable (`VDC_Flush`).
    fn sync(&mut self) -> io::Result<()>;
    /// The object is complete and durable; nothing more is written to it.
    fn finish(&mut self) -> io::Result<()>;
}

/// A stored backup being read.
pub trait StoreReader: Send + Sync + fmt::Debug {
    /// How messages name the backup (`bk`).
    fn place(&self) -> String;
    /// How messages name its object `name` (`bk/manifest.json`).
    fn place_of(&self, name: &str) -> String;
    /// The manifest's bytes (at most [`MAX_MANIFEST_BYTES`]), `None` if there is none
    /// (an interrupted backup; or a store that keeps no manifest).
    fn read_manifest(&self) -> Result<Option<Vec<u8>>, BackupError>;
    /// Opens object `name`: a regular object only, never through a link, never waiting.
    /// The error completes the sentence "object NAME ..." (`is missing`).
    fn open(&self, name: &str) -> Result<Object, String>;
    /// The names of the objects it holds.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Whether this is still the backup the store holds (a `--force` backup may have
    /// replaced it since it was opened; a reader then opens it again).
    fn still_current(&self) -> bool {
        true
    }
}

/// An object opened for reading.
pub struct Object {
    /// Its bytes.
    pub reader: Box<dyn Read + Send>,
    /// Its length, if the store knows it.
    pub len: Option<u64>,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object").field("len", &self.len).finish()
    }
}

/// What a commit did besides storing the backup, as sentences for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    /// The backup id of the backup it replaced, if any.
    pub replaced: Option<String>,
    /// What it did besides (removed the leftovers of an interrupted backup, moved files
    /// it did not write), said unless quiet.
    pub notes: Vec<String>,
    /// What a user must know (files kept under another name), always said.
    pub warnings: Vec<String>,
}

/// The store a name on the command line means: `-` is standard output (for a backup)
/// and standard input (for a restore); `s3://BUCKET/PREFIX` a backup in S3-compatible
/// object storage (with the `s3` feature); anything else is a backup directory, made
/// with `modes`.
pub fn locate(name: &str, modes: dir::Modes) -> Result<Arc<dyn Store>> {
    if name == "-" {
        return Ok(Arc::new(stdio::Stdio));
    }
    if name.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Arc::new(s3::S3Store::new(name)?));
        #[cfg(not(feature = "s3"))]
        return Err(fail(
            Kind::Usage,
            format!("{name}: this vdi was built without S3 support (the s3 feature)"),
        ));
    }
    Ok(Arc::new(dir::DirStore::new(name, modes)))
}

/// Keeps count of the objects a writer created and has not finished, so that its commit
/// can refuse (the manifest last, contract 3). Every store's writer wraps its objects
/// with [`Tracker::track`] and asks [`Tracker::all_finished`] at commit.
#[derive(Clone, Debug, Default)]
pub struct Tracker(Arc<TrackerState>);

#[derive(Debug, Default)]
struct TrackerState {
    open: AtomicU32,
    abandoned: AtomicBool,
}

impl Tracker {
    /// Wraps a new object's writer.
    pub fn track<W: ObjectWriter + 'static>(&self, name: &str, w: W) -> Box<dyn ObjectWriter> {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        Box::new(Tracked {
            inner: w,
            name: name.to_owned(),
            tracker: self.clone(),
            finished: false,
        })
    }

    /// `Ok` if every object created is finished and none was dropped unfinished.
    pub fn all_finished(&self) -> Result<()> {
        if self.0.abandoned.load(Ordering::Acquire) {
            return Err(fail(
                Kind::Other,
                "an object of the backup was dropped before it was finished: the backup is not complete and was not committed",
            ));
        }
        let open = self.0.open.load(Ordering::Acquire);
        if open > 0 {
            return Err(fail(
                Kind::Other,
                format!(
                    "{open} object(s) of the backup are not finished: the manifest is written only after every stream is complete"
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Tracked<W: ObjectWriter> {
    inner: W,
    name: String,
    tracker: Tracker,
    finished: bool,
}

impl<W: ObjectWriter> Write for Tracked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.finished {
            return Err(io::Error::other(format!(
                "object {} is already finished",
                self.name
            )));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: ObjectWriter> ObjectWriter for Tracked<W> {
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn finish(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.inner.finish()?;
        self.finished = true;
        self.tracker.0.open.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }
}

impl<W: ObjectWriter> Drop for Tracked<W> {
    fn drop(&mut self) {
        if !self.finished {
            self.tracker.0.abandoned.store(true, Ordering::Release);
            self.tracker.0.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A failure to read a stored backup, as a kind and a message: `Input` when it cannot be
/// read at all, `Damaged` when what is there is not a complete backup.
pub fn backup_failure(e: BackupError) -> crate::Error {
    e.into()
}

/// A stored backup, opened: its manifest, checked, and each stream object (or why it
/// cannot be used), all opened together from one reader.
#[derive(Debug)]
pub struct OpenedBackup {
    /// The reader they came from.
    pub reader: Box<dyn StoreReader>,
    /// The manifest, checked.
    pub manifest: Manifest,
    /// Each device's stream, or what is wrong with it.
    pub streams: Vec<Result<Object, String>>,
}

/// Opens the backup `store` holds: its manifest and every stream object it lists, each
/// checked against the manifest (it holds this backup's stream of this device, when
/// the manifest records the stream id, and has the recorded size). If the backup was
/// replaced while it was being opened (`vdi backup --force`), it is opened again, so what
/// is returned is one backup, whole.
pub fn open_backup(store: &dyn Store) -> Result<OpenedBackup, BackupError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let reader = store.open()?;
        let manifest = reader.read_manifest().and_then(|bytes| {
            let bytes = bytes.ok_or_else(|| BackupError::NoManifest {
                place: reader.place(),
            })?;
            check_manifest(&bytes, &reader.place_of(crate::format::manifest::MANIFEST))
        });
        if manifest.is_err() && tries < 3 && !reader.still_current() {
            continue;
        }
        let manifest = manifest?;
        let streams: Vec<Result<Object, String>> = manifest
            .streams
            .iter()
            .map(|e| open_stream(reader.as_ref(), &manifest, e))
            .collect();
        if tries < 3 && !reader.still_current() {
            continue;
        }
        return Ok(OpenedBackup {
            reader,
            manifest,
            streams,
        });
    }
}

/// Enough of a stored stream to decode its header: a zstd block is at most 128 KiB.
const HEAD: usize = 256 << 10;

/// The stream header at the start of a stored stream whose first bytes are `head`.
/// Whether a stream whose header says `found` sits where the manifest keeps device
/// `expected`; if not, which device's stream it is (the files were swapped or renamed).
fn on_its_device(what: &str, manifest: &Manifest, expected: u32, found: u32) -> Result<(), String> {
    if found == expected {
        return Ok(());
    }
    let theirs = manifest
        .streams
        .get(found as usize)
        .map(|e| format!(", which the manifest calls {}", e.file))
        .unwrap_or_default();
    Err(format!(
        "{what} holds the stream of device {found}{theirs}: the stream files were swapped or renamed"
    ))
}

fn peek_header(head: &[u8], compression: Compression) -> Option<StreamHeader> {
    let media: Box<dyn Read + Send> = Box::new(io::Cursor::new(head.to_vec()));
    let mut r = codec::StreamReader::new_unhashed(media, compression).ok()?;
    let mut buf = vec![0u8; stream::HEADER_FIXED_LEN + stream::MAX_NAME + 4];
    let n = r.read_full(&mut buf).ok()?;
    StreamHeader::peek(&buf[..n])
}

/// Opens the stream object of `entry` (of `manifest`): a regular object holding this
/// device's stream of this backup, of the size the manifest records.
fn open_stream(
    reader: &dyn StoreReader,
    manifest: &Manifest,
    entry: &StreamEntry,
) -> Result<Object, String> {
    let what = format!("stream file {} (device {})", entry.file, entry.device);
    let Object { mut reader, len } = reader
        .open(&entry.file)
        .map_err(|e| format!("{what} {e}"))?;
    let len = len.ok_or_else(|| format!("cannot read {what}: its size is unknown"))?;
    if manifest.encryption.is_some() {
        // The container header names the backup and the device in the clear.
        let mut head = vec![0u8; crate::seal::HEADER_LEN];
        let got = codec::read_full(&mut reader, &mut head)
            .map_err(|e| format!("cannot read {what}: {e}"))?;
        head.truncate(got);
        if let Some(h) = crate::seal::peek_header(&head) {
            let theirs = stream::hex_id(&h.backup_id);
            if theirs != manifest.backup_id {
                return Err(format!(
                    "{what} belongs to another backup ({theirs}), not to this one ({}): it was replaced after the backup",
                    manifest.backup_id
                ));
            }
            on_its_device(&what, manifest, entry.device, h.device)?;
        }
        reader = Box::new(io::Cursor::new(head).chain(reader));
    } else if let Some(id) = &manifest.stream_id {
        let n = match manifest.compression {
            Compression::None => stream::HEADER_FIXED_LEN + stream::MAX_NAME + 4,
            Compression::Zstd { .. } => HEAD,
            // A whole first lz4 block.
            Compression::Lz4 => (4 << 20) + 64,
        };
        let mut head = vec![0u8; n.min(usize::try_from(len).unwrap_or(usize::MAX))];
        let got = codec::read_full(&mut reader, &mut head)
            .map_err(|e| format!("cannot read {what}: {e}"))?;
        head.truncate(got);
        if let Some(h) = peek_header(&head, manifest.compression) {
            if stream::hex_id(&h.stream_id) != *id {
                return Err(format!(
                    "{what} belongs to another backup (stream id {}), not to this one ({id}): it was replaced after the backup",
                    stream::hex_id(&h.stream_id)
                ));
            }
            on_its_device(&what, manifest, entry.device, h.device)?;
        }
        // What was read to look at the header comes first again.
        reader = Box::new(io::Cursor::new(head).chain(reader));
    }
    if len < entry.stored_bytes {
        return Err(format!(
            "{what} is truncated: it has {len} bytes, the manifest records {}",
            entry.stored_bytes
        ));
    }
    if len > entry.stored_bytes {
        return Err(format!(
            "{what} has {len} bytes, the manifest records {}: it was changed after the backup",
            entry.stored_bytes
        ));
    }
    Ok(Object {
        reader,
        len: Some(len),
    })
}
