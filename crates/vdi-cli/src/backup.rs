//! The backup application's storage format: a backup directory holds one stream file per
//! device and a manifest, written last (specified in `docs/backup-format.md`).
//!
//! ```text
//! DEST/
//!   device-0.stream[.zst]   the bytes the engine wrote through device 0 (zstd-compressed
//!   device-1.stream[.zst]   if the backup was made with --compress zstd)
//!   manifest.json           written after every stream is durable; names the set, the
//!                           backup, the device count, sizes, compression and a blake3
//!                           digest per stream; "complete": true is its last field
//! ```
//!
//! The manifest is written to a temporary name, synced, renamed into place and the
//! directory synced: a directory without `manifest.json` is an interrupted backup, never a
//! complete one.
//!
//! ```
//! use vdi_cli::backup::{Compression, stream_file_name};
//! assert_eq!(Compression::parse("zstd:9"), Ok(Compression::Zstd { level: 9 }));
//! assert_eq!(stream_file_name(1, Compression::None), "device-1.stream");
//! assert_eq!(stream_file_name(0, Compression::Zstd { level: 3 }), "device-0.stream.zst");
//! ```

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backup_dir::{BackupDir, FileError, MANIFEST_TMP, MAX_MANIFEST_BYTES};
use crate::stream::{self, Decoder, DeviceStream, NullSink, StreamHeader};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The value of the manifest's `format` field.
pub const FORMAT: &str = "vdi-backup";
/// The manifest version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The zstd frame magic (a compressed stream starts with it).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How stream files are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Compression {
    /// Stored as the engine wrote them.
    None,
    /// One zstd frame per stream (with zstd's own content checksum).
    Zstd {
        /// The zstd level (1 to 22; 3 is zstd's default).
        level: i32,
    },
}

impl Compression {
    /// `none`, `zstd` or `zstd:LEVEL`.
    pub fn parse(s: &str) -> Result<Compression, String> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd { level: 3 }),
            _ => {
                let level = s
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .ok_or_else(|| format!("'{s}': use none, zstd or zstd:LEVEL (1 to 22)"))?;
                if !(1..=22).contains(&level) {
                    return Err(format!("zstd level {level}: use 1 to 22"));
                }
                Ok(Compression::Zstd { level })
            }
        }
    }

    /// `none` or `zstd:LEVEL`.
    pub fn label(&self) -> String {
        match self {
            Compression::None => "none".into(),
            Compression::Zstd { level } => format!("zstd:{level}"),
        }
    }
}

/// The file name of device `device`'s stream.
pub fn stream_file_name(device: u32, compression: Compression) -> String {
    match compression {
        Compression::None => format!("device-{device}.stream"),
        Compression::Zstd { .. } => format!("device-{device}.stream.zst"),
    }
}

/// One stream of a backup, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// The device index.
    pub device: u32,
    /// The file, relative to the backup directory.
    pub file: String,
    /// Bytes the engine wrote through the device (the uncompressed stream).
    pub stream_bytes: u64,
    /// Bytes of the file.
    pub stored_bytes: u64,
    /// blake3 of the uncompressed stream, hex.
    pub blake3: String,
}

/// Where the data came from, as the backup application saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `file`, `sqlite`, `stdin`, or `unknown` (an engine started by hand).
    pub kind: String,
    /// The source as named on the command line.
    pub name: String,
    /// Bytes of the source, if known.
    pub bytes: Option<u64>,
    /// Whether the source could tell that it ended normally (a file's or a database
    /// snapshot's known size). False for an unchecked stream (standard input): a
    /// producer killed in the middle looks just like one that finished, so the backup
    /// holds everything that arrived, which may not be everything that was meant.
    /// (Absent in manifests written before this field: true.)
    #[serde(default = "yes")]
    pub checked: bool,
}

fn yes() -> bool {
    true
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// This backup's id (chosen by the backup application), 32 hex digits.
    pub backup_id: String,
    /// The id the engine put in every stream header, if the streams are vdi streams.
    pub stream_id: Option<String>,
    /// The virtual device set's name.
    pub set_name: String,
    /// The tool that wrote it (`vdi 0.1.0`).
    pub tool: String,
    /// When the backup started and ended, seconds since the Unix epoch.
    pub started: u64,
    /// When the backup completed.
    pub completed: u64,
    /// What was backed up.
    pub source: SourceInfo,
    /// Devices (= streams).
    pub device_count: u32,
    /// The VDI block size the engine chose.
    pub block_size: u32,
    /// The VDI max transfer size the engine chose.
    pub max_transfer_size: u32,
    /// How the stream files are compressed.
    pub compression: Compression,
    /// Sum of `stream_bytes`.
    pub total_stream_bytes: u64,
    /// Sum of `stored_bytes`.
    pub total_stored_bytes: u64,
    /// One entry per device, in device order.
    pub streams: Vec<StreamEntry>,
    /// The completion marker: true, and the last field written.
    pub complete: bool,
}

/// What is wrong with a backup directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The directory does not exist or cannot be read.
    #[error("cannot read backup {path}: {source}")]
    Unreadable {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No manifest: the backup never completed (or this is not a backup).
    #[error(
        "{path} holds no {MANIFEST}: it is not a completed backup (an interrupted or failed backup leaves none)"
    )]
    NoManifest {
        /// The directory.
        path: PathBuf,
    },
    /// The manifest cannot be parsed or is not complete.
    #[error("{path}: {what}")]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Parses a manifest's bytes as a manifest of this format, complete or not (what a
/// destination must hold for vdi to consider it a backup it wrote).
pub fn parse_manifest_any(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("format is '{}', not '{FORMAT}'", m.format));
    }
    Ok(m)
}

/// Reads and checks the manifest of backup directory `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    read_manifest_in(&open_dir(dir)?)
}

/// Opens the backup directory `dir` (not following a link there).
pub fn open_dir(dir: &Path) -> Result<BackupDir, BackupError> {
    BackupDir::open(dir).map_err(|e| BackupError::Unreadable {
        path: dir.to_owned(),
        source: e,
    })
}

/// Reads and checks the manifest of the open backup directory `dir`: a regular file of
/// at most [`MAX_MANIFEST_BYTES`], never followed through a link, never waited for.
pub fn read_manifest_in(dir: &BackupDir) -> Result<Manifest, BackupError> {
    let path = dir.path().join(MANIFEST);
    let bad = |what: String| BackupError::BadManifest {
        path: path.clone(),
        what,
    };
    let bytes = match dir.read_regular(MANIFEST, MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(FileError::Missing) => {
            return Err(BackupError::NoManifest {
                path: dir.path().to_owned(),
            });
        }
        Err(FileError::Io(e)) => {
            return Err(BackupError::Unreadable { path, source: e });
        }
        Err(e) => return Err(bad(format!("it {e}"))),
    };
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("format is '{}', not '{FORMAT}'", m.format)));
    }
    if m.version != FORMAT_VERSION {
        return Err(bad(format!(
            "manifest version {}; this vdi reads version {FORMAT_VERSION}",
            m.version
        )));
    }
    if !m.complete {
        return Err(bad(
            "the manifest does not carry the completion marker: the backup did not complete".into(),
        ));
    }
    if m.device_count == 0
        || m.device_count > stream::MAX_DEVICES
        || m.streams.len() != m.device_count as usize
    {
        return Err(bad(format!(
            "device_count is {} but {} streams are listed",
            m.device_count,
            m.streams.len()
        )));
    }
    for (i, s) in m.streams.iter().enumerate() {
        if s.device != i as u32 {
            return Err(bad(format!("stream {i} is listed for device {}", s.device)));
        }
        if s.file.contains('/') || s.file.contains('\\') || s.file.starts_with('.') {
            return Err(bad(format!("stream file name '{}' is not allowed", s.file)));
        }
    }
    Ok(m)
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

/// The manifest as it is stored (pretty JSON, `"complete"` last, a final newline).
pub fn manifest_bytes(manifest: &Manifest) -> io::Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(manifest).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text.into_bytes())
}

/// Syncs a directory (so a rename or a new file in it is durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an error means the disk (or quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == io::ErrorKind::StorageFull
}

/// A writer that counts the bytes through it.
#[derive(Debug)]
pub struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Media a stream can be stored on: a file (or standard output) that can be made durable.
pub trait Media: Write + Send {
    /// Makes everything written so far durable (fsync where that means something).
    fn sync(&mut self) -> io::Result<()>;
}

impl Media for File {
    fn sync(&mut self) -> io::Result<()> {
        match self.sync_data() {
            // Pipes, terminals and /dev/full cannot be synced; their data is handed on.
            Err(e) if matches!(e.raw_os_error(), Some(22) | Some(30)) => Ok(()),
            r => r,
        }
    }
}

enum Enc<M: Media> {
    Raw(Counting<M>),
    Zstd(zstd::stream::write::Encoder<'static, Counting<M>>),
}

/// The writing end of one stored stream: compresses (optionally), counts, and hashes
/// the stream as the engine wrote it.
pub struct StreamWriter<M: Media> {
    enc: Option<Enc<M>>,
    hasher: Option<blake3::Hasher>,
    stream_bytes: u64,
}

impl<M: Media> std::fmt::Debug for StreamWriter<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("stream_bytes", &self.stream_bytes)
            .finish()
    }
}

/// What a finished stream wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Uncompressed bytes.
    pub stream_bytes: u64,
    /// Bytes on the media.
    pub stored_bytes: u64,
    /// blake3 of the uncompressed bytes, hex (empty if the writer did not hash).
    pub blake3: String,
}

impl<M: Media> StreamWriter<M> {
    /// A writer onto `media` that also hashes the stream.
    pub fn new(media: M, compression: Compression) -> io::Result<StreamWriter<M>> {
        let mut w = StreamWriter::new_unhashed(media, compression)?;
        w.hasher = Some(blake3::Hasher::new());
        Ok(w)
    }

    /// A writer onto `media` that leaves hashing to the caller (who may do it on another
    /// thread, while this one stores).
    pub fn new_unhashed(media: M, compression: Compression) -> io::Result<StreamWriter<M>> {
        let c = Counting {
            inner: media,
            count: 0,
        };
        let enc = match compression {
            Compression::None => Enc::Raw(c),
            Compression::Zstd { level } => {
                let mut e = zstd::stream::write::Encoder::new(c, level)?;
                e.include_checksum(true)?;
                let threads = std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1);
                if threads > 1 {
                    // Compression runs on zstd's workers while this thread stores.
                    let _ = e.multithread(threads);
                }
                Enc::Zstd(e)
            }
        };
        Ok(StreamWriter {
            enc: Some(enc),
            hasher: None,
            stream_bytes: 0,
        })
    }

    fn enc(&mut self) -> io::Result<&mut Enc<M>> {
        self.enc
            .as_mut()
            .ok_or_else(|| io::Error::other("the stream is already finished"))
    }

    /// Stores `data` (the next bytes of the stream).
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self.enc()? {
            Enc::Raw(w) => w.write_all(data)?,
            Enc::Zstd(w) => w.write_all(data)?,
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.stream_bytes += data.len() as u64;
        Ok(())
    }

    /// Bytes of the stream so far.
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }

    /// Makes what was written so far durable (`VDC_Flush`).
    pub fn sync(&mut self) -> io::Result<()> {
        match self.enc()? {
            Enc::Raw(w) => {
                w.flush()?;
                w.inner.sync()
            }
            Enc::Zstd(w) => {
                w.flush()?;
                let c = w.get_mut();
                c.flush()?;
                c.inner.sync()
            }
        }
    }

    /// Ends the stream (closing the compressed frame), makes it durable and returns
    /// what was written.
    pub fn finish(&mut self) -> io::Result<Written> {
        let enc = self
            .enc
            .take()
            .ok_or_else(|| io::Error::other("the stream is already finished"))?;
        let mut c = match enc {
            Enc::Raw(w) => w,
            Enc::Zstd(w) => w.finish()?,
        };
        c.flush()?;
        c.inner.sync()?;
        Ok(Written {
            stream_bytes: self.stream_bytes,
            stored_bytes: c.count,
            blake3: self
                .hasher
                .as_ref()
                .map(|h| h.finalize().to_hex().to_string())
                .unwrap_or_default(),
        })
    }
}

enum Dec {
    Raw(Box<dyn Read + Send>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<Box<dyn Read + Send>>>>),
}

/// The reading end of one stored stream: decompresses (if needed) and hashes, so the
/// stream can be served as the plain byte stream the engine wrote.
pub struct StreamReader {
    dec: Dec,
    hasher: Option<blake3::Hasher>,
    stream_bytes: u64,
    eof: bool,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream_bytes", &self.stream_bytes)
            .field("eof", &self.eof)
            .finish()
    }
}

impl StreamReader {
    /// A reader of `media` stored with `compression` that hashes what it reads.
    pub fn new(media: Box<dyn Read + Send>, compression: Compression) -> io::Result<StreamReader> {
        let mut r = StreamReader::new_unhashed(media, compression)?;
        r.hasher = Some(blake3::Hasher::new());
        Ok(r)
    }

    /// A reader that leaves hashing to the caller.
    pub fn new_unhashed(
        media: Box<dyn Read + Send>,
        compression: Compression,
    ) -> io::Result<StreamReader> {
        let dec = match compression {
            Compression::None => Dec::Raw(media),
            Compression::Zstd { .. } => {
                Dec::Zstd(Box::new(zstd::stream::read::Decoder::new(media)?))
            }
        };
        Ok(StreamReader {
            dec,
            hasher: None,
            stream_bytes: 0,
            eof: false,
        })
    }

    /// A reader that finds out by itself whether `media` is zstd-compressed (for a single
    /// stream on standard input).
    pub fn detect(media: Box<dyn Read + Send>) -> io::Result<StreamReader> {
        let (media, c) = detect_compression(media)?;
        StreamReader::new(media, c)
    }

    /// Fills as much of `buf` as the stream has: fewer bytes than asked means the end of
    /// the stream.
    pub fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.dec {
            Dec::Raw(r) => read_full(r, buf)?,
            Dec::Zstd(r) => read_full(r, buf)?,
        };
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.stream_bytes += n as u64;
        if n < buf.len() {
            self.eof = true;
        }
        Ok(n)
    }

    /// Whether the end of the stream was reached.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Bytes served so far.
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }

    /// blake3 of the bytes read so far, hex (empty if the reader does not hash).
    pub fn digest(&self) -> String {
        self.hasher
            .as_ref()
            .map(|h| h.finalize().to_hex().to_string())
            .unwrap_or_default()
    }
}

/// Looks at the first bytes of `media`: zstd-compressed or not. Returns the same bytes
/// (nothing consumed) and the compression.
pub fn detect_compression(
    mut media: Box<dyn Read + Send>,
) -> io::Result<(Box<dyn Read + Send>, Compression)> {
    let mut head = [0u8; 4];
    let n = read_full(&mut media, &mut head)?;
    let chained: Box<dyn Read + Send> = Box::new(io::Cursor::new(head[..n].to_vec()).chain(media));
    let c = if n == 4 && head == ZSTD_MAGIC {
        Compression::Zstd { level: 0 }
    } else {
        Compression::None
    };
    Ok((chained, c))
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The first `n` bytes of `f` (fewer if it is shorter), read without moving its cursor.
fn head(f: &File, n: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut v = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read_at(&mut v[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    v.truncate(got);
    v
}

/// Enough of a stored stream to decode its header: a zstd block is at most 128 KiB.
const HEAD: usize = 256 << 10;

/// The stream header at the start of the stored stream `f`, if it holds one.
fn peek_header(f: &File, compression: Compression) -> Option<StreamHeader> {
    let n = match compression {
        Compression::None => stream::HEADER_FIXED_LEN + stream::MAX_NAME + 4,
        Compression::Zstd { .. } => HEAD,
    };
    let media: Box<dyn Read + Send> = Box::new(io::Cursor::new(head(f, n)));
    let mut r = StreamReader::new_unhashed(media, compression).ok()?;
    let mut buf = vec![0u8; stream::HEADER_FIXED_LEN + stream::MAX_NAME + 4];
    let n = r.read_full(&mut buf).ok()?;
    StreamHeader::peek(&buf[..n])
}

/// Whether the file `f` holds a vdi stream (zstd-compressed if `zst`): it starts with
/// the stream header's magic.
pub fn holds_vdi_stream(f: &File, zst: bool) -> bool {
    let compression = if zst {
        Compression::Zstd { level: 0 }
    } else {
        Compression::None
    };
    let n = if zst { HEAD } else { 8 };
    let media: Box<dyn Read + Send> = Box::new(io::Cursor::new(head(f, n)));
    let mut magic = [0u8; 8];
    StreamReader::new_unhashed(media, compression)
        .and_then(|mut r| r.read_full(&mut magic))
        .is_ok_and(|n| n == 8 && magic == stream::HEADER_MAGIC)
}

/// Opens the stream file of `entry` in backup `dir` (of `manifest`): a regular file,
/// never followed through a link, holding this device's stream of this backup (its
/// header says so, when the manifest records the backup's stream id), of the size the
/// manifest records.
pub fn open_stream_in(
    dir: &BackupDir,
    manifest: &Manifest,
    entry: &StreamEntry,
) -> Result<File, String> {
    let what = format!("stream file {} (device {})", entry.file, entry.device);
    let f = dir
        .open_regular(&entry.file, None)
        .map_err(|e| format!("{what} {e}"))?;
    if let Some(id) = &manifest.stream_id
        && let Some(h) = peek_header(&f, manifest.compression)
    {
        if stream::hex_id(&h.stream_id) != *id {
            return Err(format!(
                "{what} belongs to another backup (stream id {}), not to this one ({id}): it was replaced after the backup",
                stream::hex_id(&h.stream_id)
            ));
        }
        if h.device != entry.device {
            let theirs = manifest
                .streams
                .get(h.device as usize)
                .map(|e| format!(", which the manifest calls {}", e.file))
                .unwrap_or_default();
            return Err(format!(
                "{what} holds the stream of device {}{theirs}: the stream files were swapped or renamed",
                h.device
            ));
        }
    }
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read {what}: {e}"))?
        .len();
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
    Ok(f)
}

/// A stored backup, opened: the directory, its manifest, and each stream file (or why it
/// cannot be used), all opened together.
#[derive(Debug)]
pub struct OpenedBackup {
    /// The directory.
    pub dir: BackupDir,
    /// The manifest, checked.
    pub manifest: Manifest,
    /// Each device's stream file, or what is wrong with it.
    pub streams: Vec<Result<File, String>>,
}

/// Opens the backup in directory `path`: its manifest and every stream file it lists.
/// If the backup was replaced while it was being opened (`vdi backup --force` swapped a
/// new one in), it is opened again, so what is returned is one backup, whole.
pub fn open_backup(path: &Path) -> Result<OpenedBackup, BackupError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let dir = open_dir(path)?;
        let manifest = read_manifest_in(&dir);
        if manifest.is_err() && tries < 3 && !dir.still_at_path() {
            continue;
        }
        let manifest = manifest?;
        let streams: Vec<Result<File, String>> = manifest
            .streams
            .iter()
            .map(|e| open_stream_in(&dir, &manifest, e))
            .collect();
        if tries < 3 && !dir.still_at_path() {
            continue;
        }
        return Ok(OpenedBackup {
            dir,
            manifest,
            streams,
        });
    }
}

/// The outcome of [`verify_dir`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// The manifest, if it could be read.
    pub manifest: Option<Manifest>,
    /// Everything found wrong, one sentence each.
    pub problems: Vec<String>,
    /// Source bytes in the backup (when every stream decoded).
    pub source_bytes: Option<u64>,
    /// Chunks checked.
    pub chunks: u64,
    /// Stream bytes read.
    pub stream_bytes: u64,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What reading one stored stream through found.
#[derive(Debug)]
pub struct StreamCheck {
    /// The decoded stream, if it decoded without a problem.
    pub stream: Option<DeviceStream>,
    /// The first problem found in the stream's structure or checksums.
    pub problem: Option<String>,
    /// blake3 of the (uncompressed) bytes read.
    pub digest: String,
    /// Stream bytes read.
    pub stream_bytes: u64,
    /// Chunks that matched their checksums.
    pub chunks: u64,
}

/// Reads one stored stream through and checks everything that can be checked of it on
/// its own (structure, every checksum, the trailer); the digest and byte count cover
/// the whole stream even past a problem.
pub fn check_stream(
    media: Box<dyn Read + Send>,
    compression: Option<Compression>,
    device: Option<u32>,
) -> Result<StreamCheck, String> {
    let mut r = match compression {
        Some(c) => StreamReader::new(media, c),
        None => StreamReader::detect(media),
    }
    .map_err(|e| format!("cannot read: {e}"))?;
    let mut dec = Decoder::new(device);
    let mut problem = None;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read_full(&mut buf)
            .map_err(|e| format!("unreadable after {} stream bytes: {e}", r.stream_bytes()))?;
        if problem.is_none()
            && let Err(e) = dec.feed(&buf[..n], &mut NullSink)
        {
            problem = Some(e.to_string());
        }
        if n < buf.len() {
            break;
        }
    }
    let chunks = dec.chunks_decoded();
    let stream = if problem.is_none() {
        match dec.finish() {
            Ok(d) => Some(d),
            Err(e) => {
                problem = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    Ok(StreamCheck {
        stream,
        problem,
        digest: r.digest(),
        stream_bytes: r.stream_bytes(),
        chunks,
    })
}

/// Checks a backup directory without restoring it: the manifest and its completion
/// marker, every stream file present with its recorded size and digest, every chunk's
/// checksum, every trailer, and that the streams together hold the whole source.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, BackupError> {
    let OpenedBackup {
        dir,
        manifest: m,
        streams: files,
    } = open_backup(dir)?;
    let mut report = VerifyReport::default();
    let results: Vec<Result<StreamCheck, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = m
            .streams
            .iter()
            .zip(files)
            .map(|(e, f)| {
                let m = &m;
                s.spawn(move || {
                    let f = f?;
                    let media: Box<dyn Read + Send> = Box::new(f);
                    check_stream(media, Some(m.compression), Some(e.device))
                        .map_err(|p| format!("stream file {} (device {}): {p}", e.file, e.device))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a checking thread panicked".to_owned()))
            })
            .collect()
    });
    let mut decoded = Vec::new();
    for (e, r) in m.streams.iter().zip(results) {
        let c = match r {
            Ok(c) => c,
            Err(p) => {
                report.problems.push(p);
                continue;
            }
        };
        report.stream_bytes += c.stream_bytes;
        report.chunks += c.chunks;
        if let Some(p) = &c.problem {
            report
                .problems
                .push(format!("stream file {} (device {}): {p}", e.file, e.device));
        }
        if c.stream_bytes != e.stream_bytes {
            report.problems.push(format!(
                "stream file {} (device {}): {} stream bytes, the manifest records {}",
                e.file, e.device, c.stream_bytes, e.stream_bytes
            ));
        }
        if c.digest != e.blake3 {
            report.problems.push(format!(
                "stream file {} (device {}): blake3 {} does not match the manifest's {}",
                e.file, e.device, c.digest, e.blake3
            ));
        }
        if let Some(d) = c.stream {
            if let Some(id) = &m.stream_id
                && *id != stream::hex_id(&d.header.stream_id)
            {
                report.problems.push(format!(
                    "stream file {} (device {}) belongs to backup {}, the manifest to {id}",
                    e.file,
                    e.device,
                    stream::hex_id(&d.header.stream_id)
                ));
            }
            decoded.push(d);
        }
    }
    if decoded.len() == m.streams.len() {
        match stream::check_set(&decoded) {
            Ok(sum) => report.source_bytes = Some(sum.total_bytes),
            Err(e) => report
                .problems
                .push(format!("the streams do not fit together: {e}")),
        }
    }
    let listed: Vec<&str> = m.streams.iter().map(|s| s.file.as_str()).collect();
    if let Ok(names) = dir.entries() {
        for name in names {
            if crate::backup_dir::is_stream_file_name(&name) && !listed.contains(&name.as_str()) {
                report.problems.push(format!(
                    "{name} is not part of this backup (the manifest lists {} streams)",
                    m.device_count
                ));
            }
        }
    }
    report.manifest = Some(m);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compression_labels() {
        assert_eq!(Compression::parse("none"), Ok(Compression::None));
        assert_eq!(
            Compression::parse("zstd"),
            Ok(Compression::Zstd { level: 3 })
        );
        assert!(Compression::parse("zstd:0").is_err());
        assert!(Compression::parse("lz4").is_err());
        assert_eq!(Compression::Zstd { level: 7 }.label(), "zstd:7");
    }

    #[test]
    fn writer_and_reader_agree() {
        for c in [Compression::None, Compression::Zstd { level: 3 }] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("s");
            let f = File::create(&p).unwrap();
            let mut w = StreamWriter::new(f, c).unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            for piece in data.chunks(65536) {
                w.write(piece).unwrap();
            }
            w.sync().unwrap();
            let done = w.finish().unwrap();
            assert_eq!(done.stream_bytes, data.len() as u64);
            assert_eq!(done.stored_bytes, std::fs::metadata(&p).unwrap().len());
            assert_eq!(done.blake3, blake3::hash(&data).to_hex().to_string());
            for detect in [false, true] {
                let media: Box<dyn Read + Send> = Box::new(File::open(&p).unwrap());
                let mut r = if detect {
                    StreamReader::detect(media).unwrap()
                } else {
                    StreamReader::new(media, c).unwrap()
                };
                let mut out = vec![0u8; 400_000];
                let n = r.read_full(&mut out).unwrap();
                assert_eq!(&out[..n], &data[..]);
                assert!(r.at_eof());
                assert_eq!(r.digest(), done.blake3);
            }
        }
    }

    #[test]
    fn manifest_round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(BackupError::NoManifest { .. })
        ));
        let mut m = Manifest {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            backup_id: "00".repeat(16),
            stream_id: None,
            set_name: "s".into(),
            tool: "vdi".into(),
            started: 1,
            completed: 2,
            source: SourceInfo {
                kind: "file".into(),
                name: "file:x".into(),
                bytes: Some(0),
                checked: true,
            },
            device_count: 1,
            block_size: 4096,
            max_transfer_size: 1 << 20,
            compression: Compression::Zstd { level: 3 },
            total_stream_bytes: 0,
            total_stored_bytes: 0,
            streams: vec![StreamEntry {
                device: 0,
                file: "device-0.stream.zst".into(),
                stream_bytes: 0,
                stored_bytes: 0,
                blake3: String::new(),
            }],
            complete: true,
        };
        write_manifest(dir.path(), &m).unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap(), m);
        let text = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap();
        assert!(text.trim_end().ends_with("\"complete\": true\n}"), "{text}");
        m.complete = false;
        write_manifest(dir.path(), &m).unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(BackupError::BadManifest { .. })
        ));
        m.complete = true;
        m.streams[0].file = "../etc/passwd".into();
        write_manifest(dir.path(), &m).unwrap();
        assert!(read_manifest(dir.path()).is_err());
    }

    #[test]
    fn disk_full_is_recognised() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(5)));
    }
}
