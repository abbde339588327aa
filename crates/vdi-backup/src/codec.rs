//! Stored streams: a device's stream as it is written to and read from a store,
//! compressed (zstd or lz4) or not, encrypted ([`crate::seal`]) or not, with its blake3
//! digest and byte counts ([`StreamWriter`], [`StreamReader`]). Compression comes
//! first, then encryption: `engine bytes -> compressor -> sealed chunks -> media`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::format::manifest::{Compression, LZ4_MAGIC, ZSTD_MAGIC};
use crate::format::stream;
use crate::seal::{Keys, SealReader, SealWriter};

/// How one device's stored stream is encrypted: the backup's keys and the device.
#[derive(Clone, Debug)]
pub struct Sealing {
    /// The backup's keys.
    pub keys: Arc<Keys>,
    /// The device whose stream it is (bound into every chunk).
    pub device: u32,
}

/// A hasher for a stream's digest: keyed with the backup's digest key when it is
/// encrypted, plain blake3 otherwise.
pub fn stream_hasher(seal: Option<&Keys>) -> blake3::Hasher {
    seal.map_or_else(blake3::Hasher::new, Keys::hasher)
}

/// What compressed bytes go into: the counted media, directly or through the sealer.
enum Out<M: Media> {
    Plain(Counting<M>),
    Sealed(Box<SealWriter<Counting<M>>>),
}

impl<M: Media> Write for Out<M> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Plain(c) => c.write(buf),
            Out::Sealed(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Plain(c) => c.flush(),
            Out::Sealed(s) => s.flush(),
        }
    }
}

impl<M: Media> Out<M> {
    fn counting(&mut self) -> &mut Counting<M> {
        match self {
            Out::Plain(c) => c,
            Out::Sealed(s) => s.get_mut(),
        }
    }
    fn finish(self) -> io::Result<Counting<M>> {
        match self {
            Out::Plain(c) => Ok(c),
            Out::Sealed(s) => s.finish(),
        }
    }
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

/// Media a stream can be stored on: a file, standard output or a store's object, which
/// can be made durable.
pub trait Media: Write + Send {
    /// Makes everything written so far durable (fsync where that means something).
    fn sync(&mut self) -> io::Result<()>;
    /// The stream is complete: durable, and nothing more will be written.
    fn finish(&mut self) -> io::Result<()> {
        self.sync()
    }
}

impl Media for Box<dyn crate::store::ObjectWriter> {
    fn sync(&mut self) -> io::Result<()> {
        crate::store::ObjectWriter::sync(self.as_mut())
    }
    fn finish(&mut self) -> io::Result<()> {
        crate::store::ObjectWriter::finish(self.as_mut())
    }
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
    Raw(Out<M>),
    Zstd(zstd::stream::write::Encoder<'static, Out<M>>),
    Lz4(Box<crate::ordered::Ordered<Out<M>>>),
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
        StreamWriter::sealed(media, compression, None, true)
    }

    /// A writer onto `media` that leaves hashing to the caller (who may do it on another
    /// thread, while this one stores).
    pub fn new_unhashed(media: M, compression: Compression) -> io::Result<StreamWriter<M>> {
        StreamWriter::sealed(media, compression, None, false)
    }

    /// A writer onto `media`, compressed with `compression`, then encrypted if `seal`
    /// says so; hashing (keyed, when encrypted) if `hashed`.
    pub fn sealed(
        media: M,
        compression: Compression,
        seal: Option<Sealing>,
        hashed: bool,
    ) -> io::Result<StreamWriter<M>> {
        let c = Counting {
            inner: media,
            count: 0,
        };
        let hasher = hashed.then(|| stream_hasher(seal.as_ref().map(|s| &*s.keys)));
        let c = match seal {
            None => Out::Plain(c),
            Some(s) => Out::Sealed(Box::new(SealWriter::new(c, s.keys, s.device)?)),
        };
        let enc = match compression {
            Compression::None => Enc::Raw(c),
            Compression::Lz4 => Enc::Lz4(Box::new(par_lz4(c))),
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
            hasher,
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
            Enc::Lz4(w) => w.write_all(data)?,
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
                w.counting().inner.sync()
            }
            Enc::Zstd(w) => {
                w.flush()?;
                let c = w.get_mut();
                c.flush()?;
                c.counting().inner.sync()
            }
            Enc::Lz4(w) => {
                w.flush()?;
                let c = w.get_mut();
                c.flush()?;
                c.counting().inner.sync()
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
        let out = match enc {
            Enc::Raw(w) => w,
            Enc::Zstd(w) => w.finish()?,
            Enc::Lz4(w) => w.finish()?,
        };
        let mut c = out.finish()?;
        c.flush()?;
        c.inner.finish()?;
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

/// lz4 frames as vdi writes them: 4 MiB blocks, with the frame's content checksum.
fn lz4_frame_info() -> lz4_flex::frame::FrameInfo {
    lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max4MB)
        .content_checksum(true)
}

/// Reads concatenated lz4 frames as one stream (lz4_flex's decoder ends its reads at
/// the end of each frame, then goes on with the next): the end is a frame's end with
/// nothing after it.
struct Lz4Frames<R: Read>(lz4_flex::frame::FrameDecoder<R>);

impl<R: Read> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // A frame's end, then either the next frame's bytes or the end of the input.
        for _ in 0..2 {
            let n = self.0.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
        Ok(0)
    }
}

/// Bytes of the stream in one lz4 frame.
const LZ4_PIECE: usize = 4 << 20;

/// lz4 on every core: the stream cut in pieces of 4 MiB, each compressed as a frame of
/// its own on the worker pool of an [`Ordered`](crate::ordered::Ordered) writer, written
/// in order (an lz4 reader reads the concatenated frames as one stream). Each worker
/// keeps one encoder (its tables and buffers) for all its frames.
fn par_lz4<W: Write>(out: W) -> crate::ordered::Ordered<W> {
    let make: crate::ordered::MakeWork = Arc::new(|| {
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(lz4_frame_info(), Vec::new());
        Box::new(
            move |_k: u64, piece: &[u8], _last: bool, out: &mut Vec<u8>| {
                *enc.get_mut() = std::mem::take(out);
                enc.write_all(piece)?;
                enc.try_finish().map_err(io::Error::from)?;
                *out = std::mem::take(enc.get_mut());
                Ok(())
            },
        ) as crate::ordered::Work
    });
    crate::ordered::Ordered::new(out, LZ4_PIECE, crate::ordered::workers(), false, make)
}

enum Dec {
    Raw(Box<dyn Read + Send>),
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
        StreamReader::sealed(media, compression, None, true)
    }

    /// A reader that leaves hashing to the caller.
    pub fn new_unhashed(
        media: Box<dyn Read + Send>,
        compression: Compression,
    ) -> io::Result<StreamReader> {
        StreamReader::sealed(media, compression, None, false)
    }

    /// A reader of `media` stored with `compression`, encrypted if `seal` says so
    /// (the container header is read and checked here); hashing (keyed, when
    /// encrypted) if `hashed`. Decryption and decompression run on a thread of their
    /// own each (read ahead by a few MiB at most), so that a restore of one device
    /// decrypts, decompresses, hashes and serves the engine on separate cores.
    pub fn sealed(
        media: Box<dyn Read + Send>,
        compression: Compression,
        seal: Option<Sealing>,
        hashed: bool,
    ) -> io::Result<StreamReader> {
        let hasher = hashed.then(|| stream_hasher(seal.as_ref().map(|s| &*s.keys)));
        let media: Box<dyn Read + Send> = match seal {
            None => media,
            Some(s) => Box::new(ReadAhead::new(Box::new(SealReader::new(
                media, s.keys, s.device,
            )?))),
        };
        let dec = match compression {
            Compression::None => Dec::Raw(media),
            Compression::Zstd { .. } => Dec::Raw(Box::new(ReadAhead::new(Box::new(
                zstd::stream::read::Decoder::new(media)?,
            )))),
            Compression::Lz4 => Dec::Raw(Box::new(ReadAhead::new(Box::new(Lz4Frames(
                lz4_flex::frame::FrameDecoder::new(media),
            ))))),
        };
        Ok(StreamReader {
            dec,
            hasher,
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
    } else if n == 4 && head == LZ4_MAGIC {
        Compression::Lz4
    } else {
        Compression::None
    };
    Ok((chained, c))
}

/// Bytes a [`ReadAhead`] holds at most (besides the piece being read and the one being
/// served): 4 pieces of 1 MiB.
pub const READ_AHEAD_PIECES: usize = 4;
const READ_AHEAD_PIECE: usize = 1 << 20;

/// Reads its input on a thread of its own, a few pieces ahead of the consumer, so the
/// work behind the input (decryption, decompression) overlaps with the consumer's.
/// Memory: at most `READ_AHEAD_PIECES + 2` pieces of 1 MiB.
pub struct ReadAhead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    pos: usize,
    done: bool,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("done", &self.done)
            .finish()
    }
}

impl ReadAhead {
    /// Starts reading `inner` ahead (the thread ends at its end, at an error, or when
    /// this reader is dropped).
    pub fn new(mut inner: Box<dyn Read + Send>) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD_PIECES);
        std::thread::spawn(move || {
            loop {
                // What was read before an error is served before it.
                let mut piece = vec![0u8; READ_AHEAD_PIECE];
                let mut n = 0;
                let mut failed = None;
                while n < piece.len() {
                    match inner.read(&mut piece[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                piece.truncate(n);
                let end = n == 0;
                if (n > 0 || failed.is_none()) && tx.send(Ok(piece)).is_err() {
                    return;
                }
                if let Some(e) = failed {
                    let _ = tx.send(Err(e));
                    return;
                }
                if end {
                    return;
                }
            }
        });
        ReadAhead {
            rx,
            piece: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.piece.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(p)) => {
                    self.done = p.is_empty();
                    self.piece = p;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the reading thread stopped"));
                }
            }
        }
        let n = out.len().min(self.piece.len() - self.pos);
        out[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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

/// Whether the file `f`, named `name`, holds a vdi stream: it starts with the stream
/// header's magic (once decompressed, as its name says: `.zst`, `.lz4`), or it is an
/// encrypted stream (`.enc`: the container header's magic).
pub fn holds_vdi_stream(f: &File, name: &str) -> bool {
    if name.ends_with(".enc") {
        return crate::seal::peek_header(&head(f, crate::seal::HEADER_LEN)).is_some();
    }
    let compression = if name.ends_with(".zst") {
        Compression::Zstd { level: 0 }
    } else if name.ends_with(".lz4") {
        Compression::Lz4
    } else {
        Compression::None
    };
    let n = match compression {
        Compression::None => 8,
        Compression::Zstd { .. } => HEAD,
        // A whole first lz4 block.
        Compression::Lz4 => (4 << 20) + 64,
    };
    let media: Box<dyn Read + Send> = Box::new(io::Cursor::new(head(f, n)));
    let mut magic = [0u8; 8];
    StreamReader::new_unhashed(media, compression)
        .and_then(|mut r| r.read_full(&mut magic))
        .is_ok_and(|n| n == 8 && magic == stream::HEADER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_files_with_and_without_sealing() {
        let secret = crate::seal::Secret::key([9u8; 32]);
        let (keys, _) = crate::seal::Keys::create(&secret, [4u8; 16]).unwrap();
        let keys = Arc::new(keys);
        // More than two lz4 frames (4 MiB each), and a sync in the middle of one.
        let data: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Zstd { level: 1 },
            Compression::Zstd { level: -7 },
            Compression::Lz4,
        ] {
            for sealed in [false, true] {
                let seal = sealed.then(|| Sealing {
                    keys: keys.clone(),
                    device: 1,
                });
                let dir = tempfile::tempdir().unwrap();
                let p = dir.path().join("s");
                let mut w =
                    StreamWriter::sealed(File::create(&p).unwrap(), c, seal.clone(), true).unwrap();
                for (i, piece) in data.chunks(700_000).enumerate() {
                    w.write(piece).unwrap();
                    if i == 1 || i == 9 {
                        w.sync().unwrap();
                    }
                }
                let done = w.finish().unwrap();
                assert_eq!(done.stored_bytes, std::fs::metadata(&p).unwrap().len());
                let media: Box<dyn Read + Send> = Box::new(File::open(&p).unwrap());
                let mut r = StreamReader::sealed(media, c, seal.clone(), true).unwrap();
                let mut out = vec![0u8; 12_000_000];
                let n = r.read_full(&mut out).unwrap();
                assert_eq!(n, data.len(), "{c:?} {sealed}");
                assert!(out[..n] == data[..], "{c:?} {sealed}");
                assert_eq!(r.digest(), done.blake3);
                // Sealed: the other device's reader refuses it at once.
                if sealed {
                    let media: Box<dyn Read + Send> = Box::new(File::open(&p).unwrap());
                    let other = Sealing {
                        keys: keys.clone(),
                        device: 0,
                    };
                    assert!(StreamReader::sealed(media, c, Some(other), true).is_err());
                }
            }
        }
    }

    proptest::proptest! {
        /// Whatever a stored stream holds, reading it fails or succeeds, never panics,
        /// for every compression, sealed or not.
        #[test]
        fn garbage_in_a_stored_stream_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            magic in 0usize..4,
        ) {
            let secret = crate::seal::Secret::key([9u8; 32]);
            let (keys, _) = crate::seal::Keys::create(&secret, [4u8; 16]).unwrap();
            let keys = Arc::new(keys);
            let mut input = match magic {
                1 => ZSTD_MAGIC.to_vec(),
                2 => LZ4_MAGIC.to_vec(),
                3 => {
                    let mut w = crate::seal::SealWriter::new(Vec::new(), keys.clone(), 0).unwrap();
                    w.write_all(b"x").unwrap();
                    w.finish().unwrap()[..crate::seal::HEADER_LEN].to_vec()
                }
                _ => Vec::new(),
            };
            input.extend_from_slice(&bytes);
            for c in [Compression::None, Compression::Zstd { level: 1 }, Compression::Lz4] {
                for sealed in [false, true] {
                    let seal = sealed.then(|| Sealing { keys: keys.clone(), device: 0 });
                    let media: Box<dyn Read + Send> = Box::new(io::Cursor::new(input.clone()));
                    if let Ok(mut r) = StreamReader::sealed(media, c, seal, true) {
                        let mut out = vec![0u8; 1 << 16];
                        let _ = r.read_full(&mut out);
                    }
                }
            }
        }
    }

    #[test]
    fn writer_and_reader_agree() {
        for c in [
            Compression::None,
            Compression::Zstd { level: 3 },
            Compression::Lz4,
        ] {
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
}
