//! Stored streams: a device's stream as it is written to and read from a store,
//! compressed or not, with its blake3 digest and byte counts ([`StreamWriter`],
//! [`StreamReader`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};

use crate::format::manifest::{Compression, ZSTD_MAGIC};
use crate::format::stream;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
