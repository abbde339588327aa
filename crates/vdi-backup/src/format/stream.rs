//! The engine's stream format: what the reference engine writes through each virtual
//! device of a backup, and reads back in a restore (specified byte by byte in
//! `docs/stream-format.md`).
//!
//! Each device carries one self-describing stream: a **header frame**, any number of
//! **chunks** (a 32-byte chunk header with the chunk's global sequence number, its offset
//! in the source, its length and a crc32c of the payload, then the payload, then zero
//! padding to the block size), and a **trailer frame** with this device's counts and the
//! whole backup's totals. The engine hands out chunks to whichever device has a free
//! buffer (dynamic distribution), so the chunks of one source are spread over the devices
//! in no fixed pattern; the sequence numbers and offsets put them back together, and the
//! totals in every trailer prove that no chunk and no device is missing.
//!
//! The format never depends on how the stream is cut into transfers: a [`Decoder`] is a
//! push parser that takes bytes in pieces of any size, so a restore may read with another
//! transfer size than the backup wrote with.
//!
//! ```
//! use vdi_backup::format::stream::{self, ChunkHeader, Decoder, NullSink, SourceKind, StreamHeader, Trailer};
//! let block = 512;
//! let header = stream::HeaderFields {
//!     stream_id: [7; 16],
//!     devices: 1,
//!     block_size: block,
//!     max_transfer: 65536,
//!     source_kind: SourceKind::File,
//!     source_size: 3,
//!     source_name: "file:x",
//! }
//! .device(0);
//! let mut bytes = vec![0u8; block as usize];
//! header.encode(&mut bytes).unwrap();
//! let mut chunk = vec![0u8; 65536];
//! chunk[32..35].copy_from_slice(b"abc");
//! let n = stream::seal_chunk(&mut chunk, 0, 0, 3, block);
//! bytes.extend_from_slice(&chunk[..n]);
//! let mut frame = vec![0u8; block as usize];
//! Trailer { device: 0, devices: 1, stream_id: [7; 16], chunks: 1, bytes: 3, total_chunks: 1, total_bytes: 3 }
//!     .encode(&mut frame).unwrap();
//! bytes.extend_from_slice(&frame);
//! // Any cut of the stream decodes the same.
//! let mut d = Decoder::new(Some(0));
//! for piece in bytes.chunks(100) {
//!     d.feed(piece, &mut NullSink).unwrap();
//! }
//! let dev = d.finish().unwrap();
//! assert_eq!(stream::check_set(&[dev]).unwrap().total_bytes, 3);
//! ```

use std::fmt;

/// The header frame's magic.
pub const HEADER_MAGIC: [u8; 8] = *b"VDI-STRM";
/// A chunk header's magic.
pub const CHUNK_MAGIC: [u8; 4] = *b"VDCK";
/// The trailer frame's magic.
pub const TRAILER_MAGIC: [u8; 8] = *b"VDI-TRLR";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of a chunk header.
pub const CHUNK_HEADER_LEN: usize = 32;
/// Bytes of the header before the source name.
pub const HEADER_FIXED_LEN: usize = 74;
/// Longest source name kept in the header (longer names are cut at a character boundary).
pub const MAX_NAME: usize = 255;
/// Bytes of the trailer before its padding.
pub const TRAILER_LEN: usize = 68;
/// `source_size` when the size was not known in advance (a pipe).
pub const UNKNOWN_SIZE: u64 = u64::MAX;
/// Smallest and largest block size (the VDI limits).
pub const MIN_BLOCK: u32 = 512;
/// Largest block size.
pub const MAX_BLOCK: u32 = 65536;
/// Most devices a set may have.
pub const MAX_DEVICES: u32 = 64;

/// What the engine read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A plain file.
    File,
    /// A consistent snapshot of a live SQLite database.
    Sqlite,
    /// Standard input (size unknown in advance).
    Stdin,
    /// What a program wrote on its standard output (`cmd:`).
    Command,
    /// A directory, as a tar stream (`dir:`).
    Directory,
    /// A PostgreSQL base backup, as `pg_basebackup`'s tar stream (`postgres:`).
    Postgres,
}

impl SourceKind {
    fn code(self) -> u32 {
        match self {
            SourceKind::File => 1,
            SourceKind::Sqlite => 2,
            SourceKind::Stdin => 3,
            SourceKind::Command => 4,
            SourceKind::Directory => 5,
            SourceKind::Postgres => 6,
        }
    }

    fn from_code(c: u32) -> Option<SourceKind> {
        Some(match c {
            1 => SourceKind::File,
            2 => SourceKind::Sqlite,
            3 => SourceKind::Stdin,
            4 => SourceKind::Command,
            5 => SourceKind::Directory,
            6 => SourceKind::Postgres,
            _ => return None,
        })
    }

    /// `file`, `sqlite`, `stdin`, `cmd`, `dir` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Sqlite => "sqlite",
            SourceKind::Stdin => "stdin",
            SourceKind::Command => "cmd",
            SourceKind::Directory => "dir",
            SourceKind::Postgres => "postgres",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What can be wrong with a stream (or a set of streams).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The first bytes are not a stream header of this format.
    #[error("not a vdi stream: {0}")]
    NotAStream(String),
    /// A structure is damaged or inconsistent at a stream position.
    #[error("damaged at stream byte {at}: {what}")]
    Corrupt {
        /// Stream position of the damaged structure.
        at: u64,
        /// What is wrong.
        what: String,
    },
    /// A chunk's payload does not match its checksum.
    #[error(
        "chunk {seq} (source bytes {offset}..{end}) at stream byte {at} fails its crc32c check (stored {stored:08x}, computed {computed:08x})",
        end = offset + u64::from(*len)
    )]
    Checksum {
        /// The chunk's sequence number.
        seq: u64,
        /// Its offset in the source.
        offset: u64,
        /// Its payload length.
        len: u32,
        /// Stream position of its header.
        at: u64,
        /// The crc32c recorded in the chunk header.
        stored: u32,
        /// The crc32c of the payload read.
        computed: u32,
    },
    /// The stream ended early.
    #[error("truncated: the stream ends at byte {at}, inside {expecting}")]
    Truncated {
        /// Bytes read.
        at: u64,
        /// What was being read.
        expecting: String,
    },
    /// The streams of a set do not fit together (ids, device numbers, totals, missing chunks).
    #[error("{0}")]
    Mismatch(String),
    /// The sink (where decoded data goes) failed.
    #[error("writing the restored data failed: {0}")]
    Sink(#[from] std::io::Error),
}

impl StreamError {
    /// Whether the error is damage in the data (as opposed to a failing sink).
    pub fn is_damage(&self) -> bool {
        !matches!(self, StreamError::Sink(_))
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Hex of a 16-byte id.
pub fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The id from 32 hex digits.
pub fn parse_hex_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// `len` rounded up to a multiple of `block`.
pub fn padded(len: usize, block: u32) -> usize {
    let b = block.max(1) as usize;
    len.div_ceil(b) * b
}

/// Largest payload of a chunk sent in one transfer of `max_transfer` bytes.
pub fn max_payload(max_transfer: u32) -> u32 {
    max_transfer.saturating_sub(CHUNK_HEADER_LEN as u32)
}

/// The stream header (the first frame of every device's stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// The backup's id, the same on every device.
    pub stream_id: [u8; 16],
    /// This device's index.
    pub device: u32,
    /// Devices in the backup.
    pub devices: u32,
    /// The block size: every frame and chunk is padded to a multiple of it.
    pub block_size: u32,
    /// The largest transfer the backup used (the largest chunk).
    pub max_transfer: u32,
    /// What was backed up.
    pub source_kind: SourceKind,
    /// Reserved, 0.
    pub flags: u32,
    /// The source's size if known in advance, else [`UNKNOWN_SIZE`].
    pub source_size: u64,
    /// When the backup started, seconds since the Unix epoch.
    pub created: u64,
    /// The source as the user named it (for people; at most [`MAX_NAME`] bytes).
    pub source_name: String,
}

/// What every device's stream header of one backup says, by name: the header of device
/// `d` is [`HeaderFields::device`]`(d)`, created now.
///
/// ```
/// use vdi_backup::format::stream::{HeaderFields, SourceKind};
/// let fields = HeaderFields {
///     stream_id: [7; 16],
///     devices: 2,
///     block_size: 512,
///     max_transfer: 65536,
///     source_kind: SourceKind::File,
///     source_size: 3,
///     source_name: "file:x",
/// };
/// let h = fields.device(1);
/// assert_eq!((h.device, h.devices, h.source_name.as_str()), (1, 2, "file:x"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HeaderFields<'a> {
    /// The backup's id, the same on every device.
    pub stream_id: [u8; 16],
    /// Devices in the backup.
    pub devices: u32,
    /// The block size.
    pub block_size: u32,
    /// The largest transfer.
    pub max_transfer: u32,
    /// What was backed up.
    pub source_kind: SourceKind,
    /// The source's size if known in advance, else [`UNKNOWN_SIZE`].
    pub source_size: u64,
    /// The source as the user named it (cut to [`MAX_NAME`] bytes).
    pub source_name: &'a str,
}

impl HeaderFields<'_> {
    /// The header of device `device`, created now.
    pub fn device(&self, device: u32) -> StreamHeader {
        let mut name = self.source_name;
        while name.len() > MAX_NAME {
            let mut cut = MAX_NAME;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name = &name[..cut];
        }
        StreamHeader {
            stream_id: self.stream_id,
            device,
            devices: self.devices,
            block_size: self.block_size,
            max_transfer: self.max_transfer,
            source_kind: self.source_kind,
            flags: 0,
            source_size: self.source_size,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            source_name: name.to_owned(),
        }
    }
}

impl StreamHeader {
    /// Encoded length before padding.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_LEN + self.source_name.len() + 4
    }

    /// Writes the header frame into `frame` (exactly one block: `block_size` bytes,
    /// zero padded).
    pub fn encode(&self, frame: &mut [u8]) -> Result<(), StreamError> {
        let n = self.encoded_len();
        if frame.len() != self.block_size as usize || n > frame.len() {
            return Err(StreamError::Mismatch(format!(
                "a header frame must be one block of {} bytes",
                self.block_size
            )));
        }
        frame.fill(0);
        frame[0..8].copy_from_slice(&HEADER_MAGIC);
        put32(frame, 8, VERSION);
        put32(frame, 12, self.block_size);
        frame[16..32].copy_from_slice(&self.stream_id);
        put32(frame, 32, self.device);
        put32(frame, 36, self.devices);
        put32(frame, 40, self.block_size);
        put32(frame, 44, self.max_transfer);
        put32(frame, 48, self.source_kind.code());
        put32(frame, 52, self.flags);
        put64(frame, 56, self.source_size);
        put64(frame, 64, self.created);
        frame[72..74].copy_from_slice(&(self.source_name.len() as u16).to_le_bytes());
        frame[74..74 + self.source_name.len()].copy_from_slice(self.source_name.as_bytes());
        let crc = crc32c::crc32c(&frame[..n - 4]);
        put32(frame, n - 4, crc);
        Ok(())
    }

    /// Parses a complete encoded header (`b` holds at least [`encoded_len`] bytes).
    fn decode(b: &[u8]) -> Result<StreamHeader, StreamError> {
        let name_len = usize::from(u16::from_le_bytes([b[72], b[73]]));
        let n = HEADER_FIXED_LEN + name_len + 4;
        let stored = le32(b, n - 4);
        let computed = crc32c::crc32c(&b[..n - 4]);
        if stored != computed {
            return Err(StreamError::Corrupt {
                at: 0,
                what: format!(
                    "the stream header fails its crc32c check (stored {stored:08x}, computed {computed:08x})"
                ),
            });
        }
        let bad = |what: String| StreamError::Corrupt { at: 0, what };
        let frame = le32(b, 12);
        let block = le32(b, 40);
        if frame != block || !block.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
            return Err(bad(format!("the header names block size {block}")));
        }
        if n > block as usize {
            return Err(bad("the header is longer than its frame".into()));
        }
        let max_transfer = le32(b, 44);
        if max_transfer < block || !max_transfer.is_multiple_of(block) {
            return Err(bad(format!(
                "the header names max transfer size {max_transfer}"
            )));
        }
        let devices = le32(b, 36);
        let device = le32(b, 32);
        if devices == 0 || devices > MAX_DEVICES || device >= devices {
            return Err(bad(format!(
                "the header names device {device} of {devices}"
            )));
        }
        let kind = SourceKind::from_code(le32(b, 48))
            .ok_or_else(|| bad(format!("unknown source kind {}", le32(b, 48))))?;
        let mut stream_id = [0u8; 16];
        stream_id.copy_from_slice(&b[16..32]);
        Ok(StreamHeader {
            stream_id,
            device,
            devices,
            block_size: block,
            max_transfer,
            source_kind: kind,
            flags: le32(b, 52),
            source_size: le64(b, 56),
            created: le64(b, 64),
            source_name: String::from_utf8_lossy(&b[74..74 + name_len]).into_owned(),
        })
    }

    /// Parses the header at the start of `bytes`, if they hold one (for tools that peek
    /// at a stream, such as the backup application recording the stream's id).
    pub fn peek(bytes: &[u8]) -> Option<StreamHeader> {
        if bytes.len() < HEADER_FIXED_LEN || bytes[..8] != HEADER_MAGIC {
            return None;
        }
        let name_len = usize::from(u16::from_le_bytes([bytes[72], bytes[73]]));
        if bytes.len() < HEADER_FIXED_LEN + name_len + 4 {
            return None;
        }
        StreamHeader::decode(bytes).ok()
    }
}

/// A chunk header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Payload bytes.
    pub len: u32,
    /// Global sequence number (0, 1, 2, ... over all devices).
    pub seq: u64,
    /// Offset of the payload in the source.
    pub offset: u64,
    /// crc32c of the payload.
    pub crc: u32,
}

impl ChunkHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        put32(&mut b, 4, self.len);
        put64(&mut b, 8, self.seq);
        put64(&mut b, 16, self.offset);
        put32(&mut b, 24, self.crc);
        let hcrc = crc32c::crc32c(&b[..28]);
        put32(&mut b, 28, hcrc);
        b
    }

    fn decode(b: &[u8], at: u64) -> Result<ChunkHeader, StreamError> {
        let stored = le32(b, 28);
        let computed = crc32c::crc32c(&b[..28]);
        if stored != computed {
            return Err(StreamError::Corrupt {
                at,
                what: format!(
                    "a chunk header fails its crc32c check (stored {stored:08x}, computed {computed:08x})"
                ),
            });
        }
        Ok(ChunkHeader {
            len: le32(b, 4),
            seq: le64(b, 8),
            offset: le64(b, 16),
            crc: le32(b, 24),
        })
    }
}

/// Completes a chunk in `buf`, whose payload the caller has put at
/// `buf[32..32 + len]`: writes the chunk header, zeroes the padding, and returns the
/// chunk's length (a multiple of `block`), which is what to send.
///
/// # Panics
/// If `buf` is shorter than the padded chunk (a caller bug, not reachable from input).
pub fn seal_chunk(buf: &mut [u8], seq: u64, offset: u64, len: u32, block: u32) -> usize {
    let end = CHUNK_HEADER_LEN + len as usize;
    let total = padded(end, block);
    let crc = crc32c::crc32c(&buf[CHUNK_HEADER_LEN..end]);
    let h = ChunkHeader {
        len,
        seq,
        offset,
        crc,
    };
    buf[..CHUNK_HEADER_LEN].copy_from_slice(&h.encode());
    buf[end..total].fill(0);
    total
}

/// The trailer (the last frame of every device's stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// This device's index.
    pub device: u32,
    /// Devices in the backup.
    pub devices: u32,
    /// The backup's id.
    pub stream_id: [u8; 16],
    /// Chunks on this device.
    pub chunks: u64,
    /// Payload bytes on this device.
    pub bytes: u64,
    /// Chunks of the whole backup (all devices).
    pub total_chunks: u64,
    /// Bytes of the whole source.
    pub total_bytes: u64,
}

impl Trailer {
    /// Writes the trailer frame into `frame` (one block, zero padded).
    pub fn encode(&self, frame: &mut [u8]) -> Result<(), StreamError> {
        if frame.len() < TRAILER_LEN {
            return Err(StreamError::Mismatch(
                "a trailer frame needs at least 68 bytes".into(),
            ));
        }
        frame.fill(0);
        frame[0..8].copy_from_slice(&TRAILER_MAGIC);
        put32(frame, 8, self.device);
        put32(frame, 12, self.devices);
        frame[16..32].copy_from_slice(&self.stream_id);
        put64(frame, 32, self.chunks);
        put64(frame, 40, self.bytes);
        put64(frame, 48, self.total_chunks);
        put64(frame, 56, self.total_bytes);
        let crc = crc32c::crc32c(&frame[..64]);
        put32(frame, 64, crc);
        Ok(())
    }

    fn decode(b: &[u8], at: u64) -> Result<Trailer, StreamError> {
        let stored = le32(b, 64);
        let computed = crc32c::crc32c(&b[..64]);
        if stored != computed {
            return Err(StreamError::Corrupt {
                at,
                what: format!(
                    "the trailer fails its crc32c check (stored {stored:08x}, computed {computed:08x})"
                ),
            });
        }
        let mut stream_id = [0u8; 16];
        stream_id.copy_from_slice(&b[16..32]);
        Ok(Trailer {
            device: le32(b, 8),
            devices: le32(b, 12),
            stream_id,
            chunks: le64(b, 32),
            bytes: le64(b, 40),
            total_chunks: le64(b, 48),
            total_bytes: le64(b, 56),
        })
    }
}

/// Where a [`Decoder`] puts the payload it decodes.
pub trait Sink {
    /// `data` is the payload of `chunk` from byte `at` of that payload on. It has not been
    /// checked yet: [`chunk_end`](Sink::chunk_end) follows once the whole payload matched
    /// its checksum.
    fn payload(&mut self, chunk: &ChunkHeader, at: u32, data: &[u8]) -> std::io::Result<()>;
    /// The whole payload of `chunk` has been given and matched its checksum.
    fn chunk_end(&mut self, chunk: &ChunkHeader) -> std::io::Result<()>;
}

/// A sink that drops the data (to check a stream).
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn payload(&mut self, _: &ChunkHeader, _: u32, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn chunk_end(&mut self, _: &ChunkHeader) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where one chunk of a device's stream went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Global sequence number.
    pub seq: u64,
    /// Offset in the source.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// One device's stream, fully decoded and checked on its own.
#[derive(Clone, Debug)]
pub struct DeviceStream {
    /// Its header.
    pub header: StreamHeader,
    /// Its trailer.
    pub trailer: Trailer,
    /// Its chunks, in stream order.
    pub chunks: Vec<ChunkRef>,
    /// Stream bytes, header to trailer padding.
    pub stream_bytes: u64,
}

#[derive(Debug)]
enum State {
    Header,
    Skip {
        left: u64,
        then_end: bool,
    },
    Record,
    Payload {
        hdr: ChunkHeader,
        done: u32,
        crc: u32,
    },
    End,
}

/// A push parser of one device's stream: feed it the bytes in pieces of any size, then
/// [`finish`](Decoder::finish) at the end of the stream.
#[derive(Debug)]
pub struct Decoder {
    expect_device: Option<u32>,
    state: State,
    buf: Vec<u8>,
    pos: u64,
    record_at: u64,
    header: Option<StreamHeader>,
    trailer: Option<Trailer>,
    chunks: Vec<ChunkRef>,
    bytes: u64,
}

impl Decoder {
    /// A decoder for the stream of device `expect_device` (any device if `None`).
    pub fn new(expect_device: Option<u32>) -> Decoder {
        Decoder {
            expect_device,
            state: State::Header,
            buf: Vec::with_capacity(MAX_BLOCK as usize),
            pos: 0,
            record_at: 0,
            header: None,
            trailer: None,
            chunks: Vec::new(),
            bytes: 0,
        }
    }

    /// The header, once decoded.
    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Stream bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Payload bytes decoded so far.
    pub fn payload_bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks decoded (and checked) so far.
    pub fn chunks_decoded(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Whether the trailer (and its padding) has been read.
    pub fn at_end(&self) -> bool {
        matches!(self.state, State::End)
    }

    /// Takes more stream bytes.
    pub fn feed<S: Sink + ?Sized>(
        &mut self,
        mut data: &[u8],
        sink: &mut S,
    ) -> Result<(), StreamError> {
        while !data.is_empty() {
            let used = self.step(data, sink)?;
            self.pos += used as u64;
            data = &data[used..];
        }
        Ok(())
    }

    /// Appends up to `want` bytes to the record buffer; true when it holds `want`.
    fn gather(&mut self, data: &[u8], want: usize, used: &mut usize) -> bool {
        let need = want.saturating_sub(self.buf.len());
        let take = need.min(data.len() - *used);
        self.buf.extend_from_slice(&data[*used..*used + take]);
        *used += take;
        self.buf.len() >= want
    }

    fn step<S: Sink + ?Sized>(&mut self, data: &[u8], sink: &mut S) -> Result<usize, StreamError> {
        let mut used = 0;
        match &mut self.state {
            State::Header => {
                if !self.gather(data, HEADER_FIXED_LEN, &mut used) {
                    return Ok(used);
                }
                if self.buf[..8] != HEADER_MAGIC {
                    return Err(StreamError::NotAStream(format!(
                        "it starts with {:02x?}, not the stream header magic \"VDI-STRM\"",
                        &self.buf[..8]
                    )));
                }
                let version = le32(&self.buf, 8);
                if version != VERSION {
                    return Err(StreamError::NotAStream(format!(
                        "stream format version {version}; this vdi reads version {VERSION}"
                    )));
                }
                let name_len = usize::from(u16::from_le_bytes([self.buf[72], self.buf[73]]));
                if !self.gather(data, HEADER_FIXED_LEN + name_len + 4, &mut used) {
                    return Ok(used);
                }
                let h = StreamHeader::decode(&self.buf)?;
                if let Some(d) = self.expect_device
                    && h.device != d
                {
                    return Err(StreamError::Mismatch(format!(
                        "device {d} carries the stream of device {} (the streams are in the wrong order)",
                        h.device
                    )));
                }
                let left = (h.block_size as usize - self.buf.len()) as u64;
                self.header = Some(h);
                self.buf.clear();
                self.state = State::Skip {
                    left,
                    then_end: false,
                };
            }
            State::Skip { left, then_end } => {
                let take = (*left).min(data.len() as u64) as usize;
                if let Some(i) = data[..take].iter().position(|&b| b != 0) {
                    return Err(StreamError::Corrupt {
                        at: self.pos + i as u64,
                        what: "non-zero bytes in padding".into(),
                    });
                }
                *left -= take as u64;
                used = take;
                if *left == 0 {
                    self.state = if *then_end { State::End } else { State::Record };
                    self.record_at = self.pos + used as u64;
                }
            }
            State::Record => {
                if !self.gather(data, 4, &mut used) {
                    return Ok(used);
                }
                let at = self.record_at;
                let Some((block, max_transfer)) =
                    self.header.as_ref().map(|h| (h.block_size, h.max_transfer))
                else {
                    return Err(StreamError::Corrupt {
                        at,
                        what: "record before the header".into(),
                    });
                };
                if self.buf[..4] == CHUNK_MAGIC {
                    if !self.gather(data, CHUNK_HEADER_LEN, &mut used) {
                        return Ok(used);
                    }
                    let c = ChunkHeader::decode(&self.buf, at)?;
                    let max = max_payload(max_transfer);
                    if c.len == 0 || c.len > max {
                        return Err(StreamError::Corrupt {
                            at,
                            what: format!(
                                "chunk {} claims {} payload bytes (at most {max} allowed)",
                                c.seq, c.len
                            ),
                        });
                    }
                    if let Some(prev) = self.chunks.last()
                        && (c.seq <= prev.seq || c.offset < prev.offset + u64::from(prev.len))
                    {
                        return Err(StreamError::Corrupt {
                            at,
                            what: format!(
                                "chunk {} (source offset {}) follows chunk {} (source offset {}): chunks are out of order",
                                c.seq, c.offset, prev.seq, prev.offset
                            ),
                        });
                    }
                    self.buf.clear();
                    self.state = State::Payload {
                        hdr: c,
                        done: 0,
                        crc: 0,
                    };
                } else if self.buf[..4] == TRAILER_MAGIC[..4] {
                    if !self.gather(data, TRAILER_LEN, &mut used) {
                        return Ok(used);
                    }
                    if self.buf[..8] != TRAILER_MAGIC {
                        return Err(StreamError::Corrupt {
                            at,
                            what: "expected a chunk or the trailer".into(),
                        });
                    }
                    let t = Trailer::decode(&self.buf, at)?;
                    self.check_trailer(&t, at)?;
                    let left = (padded(TRAILER_LEN, block) - TRAILER_LEN) as u64;
                    self.trailer = Some(t);
                    self.buf.clear();
                    self.state = State::Skip {
                        left,
                        then_end: true,
                    };
                } else {
                    return Err(StreamError::Corrupt {
                        at,
                        what: format!(
                            "expected a chunk or the trailer, found bytes {:02x?}",
                            &self.buf[..4]
                        ),
                    });
                }
            }
            State::Payload { hdr, done, crc } => {
                let left = (hdr.len - *done) as usize;
                let take = left.min(data.len());
                let piece = &data[..take];
                *crc = crc32c::crc32c_append(*crc, piece);
                sink.payload(hdr, *done, piece)?;
                *done += take as u32;
                used = take;
                if *done == hdr.len {
                    let hdr = *hdr;
                    if *crc != hdr.crc {
                        return Err(StreamError::Checksum {
                            seq: hdr.seq,
                            offset: hdr.offset,
                            len: hdr.len,
                            at: self.record_at,
                            stored: hdr.crc,
                            computed: *crc,
                        });
                    }
                    sink.chunk_end(&hdr)?;
                    self.chunks.push(ChunkRef {
                        seq: hdr.seq,
                        offset: hdr.offset,
                        len: hdr.len,
                    });
                    self.bytes += u64::from(hdr.len);
                    let block = self.header.as_ref().map_or(MIN_BLOCK, |h| h.block_size);
                    let end = CHUNK_HEADER_LEN + hdr.len as usize;
                    self.state = State::Skip {
                        left: (padded(end, block) - end) as u64,
                        then_end: false,
                    };
                    if padded(end, block) == end {
                        self.state = State::Record;
                        self.record_at = self.pos + used as u64;
                    }
                }
            }
            State::End => {
                return Err(StreamError::Corrupt {
                    at: self.pos,
                    what: format!("{} bytes follow the trailer", data.len()),
                });
            }
        }
        Ok(used)
    }

    fn check_trailer(&self, t: &Trailer, at: u64) -> Result<(), StreamError> {
        let Some(h) = self.header.as_ref() else {
            return Ok(());
        };
        let bad = |what: String| StreamError::Corrupt { at, what };
        if t.device != h.device || t.devices != h.devices || t.stream_id != h.stream_id {
            return Err(bad(
                "the trailer belongs to another stream than the header".into()
            ));
        }
        if t.chunks != self.chunks.len() as u64 || t.bytes != self.bytes {
            return Err(bad(format!(
                "the trailer counts {} chunks of {} bytes, the stream holds {} chunks of {} bytes (chunks are missing)",
                t.chunks,
                t.bytes,
                self.chunks.len(),
                self.bytes
            )));
        }
        if t.total_chunks < t.chunks || t.total_bytes < t.bytes {
            return Err(bad(
                "the trailer's totals are smaller than its counts".into()
            ));
        }
        Ok(())
    }

    /// The end of the stream: it must have ended right after the trailer's padding.
    pub fn finish(self) -> Result<DeviceStream, StreamError> {
        let expecting = match &self.state {
            State::End => None,
            State::Header if self.pos == 0 => {
                Some("the stream header (the stream is empty)".to_owned())
            }
            State::Header => Some("the stream header".to_owned()),
            State::Skip { then_end: true, .. } => Some("the trailer's padding".to_owned()),
            State::Skip { .. } => Some("padding".to_owned()),
            // Named by the last chunk's sequence number, as every other message names
            // chunks (this said the count of chunks: one more than the last one).
            State::Record => Some(match self.chunks.last() {
                Some(c) => format!(
                    "the record after chunk {} (the trailer or another chunk is missing)",
                    c.seq
                ),
                None => "the first record after the header (a chunk or the trailer is missing)"
                    .to_owned(),
            }),
            State::Payload { hdr, done, .. } => Some(format!(
                "the payload of chunk {} ({done} of {} bytes read)",
                hdr.seq, hdr.len
            )),
        };
        if let Some(expecting) = expecting {
            return Err(StreamError::Truncated {
                at: self.pos,
                expecting,
            });
        }
        match (self.header, self.trailer) {
            (Some(header), Some(trailer)) => Ok(DeviceStream {
                header,
                trailer,
                chunks: self.chunks,
                stream_bytes: self.pos,
            }),
            _ => Err(StreamError::Truncated {
                at: self.pos,
                expecting: "the trailer".into(),
            }),
        }
    }
}

/// What a complete, consistent set of streams holds.
#[derive(Clone, Debug)]
pub struct SetSummary {
    /// The backup's id.
    pub stream_id: [u8; 16],
    /// Source bytes.
    pub total_bytes: u64,
    /// Chunks over all devices.
    pub total_chunks: u64,
    /// What was backed up.
    pub source_kind: SourceKind,
    /// The source's name.
    pub source_name: String,
}

/// Checks that the streams of devices `0..n` (in order) form one whole backup: the same
/// id and device count everywhere, the totals of every trailer agree, and the chunks of
/// all devices tile the source from 0 to the total without a gap or an overlap.
pub fn check_set(streams: &[DeviceStream]) -> Result<SetSummary, StreamError> {
    let Some(first) = streams.first() else {
        return Err(StreamError::Mismatch("no streams".into()));
    };
    let n = streams.len() as u32;
    for (i, s) in streams.iter().enumerate() {
        let h = &s.header;
        if h.devices != n {
            return Err(StreamError::Mismatch(format!(
                "mismatched device count: the backup was made with {} devices, {n} streams were given",
                h.devices
            )));
        }
        if h.device != i as u32 {
            return Err(StreamError::Mismatch(format!(
                "stream {i} is the stream of device {} (the streams are in the wrong order)",
                h.device
            )));
        }
        if h.stream_id != first.header.stream_id {
            return Err(StreamError::Mismatch(format!(
                "stream {i} belongs to backup {}, stream 0 to backup {}: streams of different backups were mixed",
                hex_id(&h.stream_id),
                hex_id(&first.header.stream_id)
            )));
        }
        if s.trailer.total_chunks != first.trailer.total_chunks
            || s.trailer.total_bytes != first.trailer.total_bytes
        {
            return Err(StreamError::Mismatch(format!(
                "the trailers of streams 0 and {i} disagree on the backup's totals"
            )));
        }
    }
    let total_chunks = first.trailer.total_chunks;
    let total_bytes = first.trailer.total_bytes;
    let mut all: Vec<ChunkRef> = streams
        .iter()
        .flat_map(|s| s.chunks.iter().copied())
        .collect();
    if all.len() as u64 != total_chunks {
        return Err(StreamError::Mismatch(format!(
            "the backup has {total_chunks} chunks but the streams hold {}",
            all.len()
        )));
    }
    all.sort_unstable_by_key(|c| c.seq);
    let mut next = 0u64;
    for (i, c) in all.iter().enumerate() {
        if c.seq != i as u64 {
            return Err(StreamError::Mismatch(format!(
                "chunk {i} is missing or duplicated (found chunk {} in its place)",
                c.seq
            )));
        }
        if c.offset != next {
            return Err(StreamError::Mismatch(format!(
                "chunk {i} starts at source byte {}, expected {next}",
                c.offset
            )));
        }
        next += u64::from(c.len);
    }
    if next != total_bytes {
        return Err(StreamError::Mismatch(format!(
            "the chunks hold {next} bytes, the trailers say {total_bytes}"
        )));
    }
    Ok(SetSummary {
        stream_id: first.header.stream_id,
        total_bytes,
        total_chunks,
        source_kind: first.header.source_kind,
        source_name: first.header.source_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Encodes `src` over `devices` devices, chunks dealt round-robin.
    fn encode(src: &[u8], devices: u32, block: u32, transfer: u32) -> Vec<Vec<u8>> {
        let id = [9u8; 16];
        let mut out: Vec<Vec<u8>> = (0..devices)
            .map(|d| {
                let h = HeaderFields {
                    stream_id: id,
                    devices,
                    block_size: block,
                    max_transfer: transfer,
                    source_kind: SourceKind::File,
                    source_size: src.len() as u64,
                    source_name: "t",
                }
                .device(d);
                let mut f = vec![0u8; block as usize];
                h.encode(&mut f).unwrap();
                f
            })
            .collect();
        let max = max_payload(transfer) as usize;
        let mut counts = vec![(0u64, 0u64); devices as usize];
        let mut buf = vec![0u8; transfer as usize];
        let mut seq = 0u64;
        for (i, piece) in src.chunks(max).enumerate() {
            let d = i % devices as usize;
            buf[32..32 + piece.len()].copy_from_slice(piece);
            let n = seal_chunk(&mut buf, seq, (i * max) as u64, piece.len() as u32, block);
            out[d].extend_from_slice(&buf[..n]);
            counts[d].0 += 1;
            counts[d].1 += piece.len() as u64;
            seq += 1;
        }
        for d in 0..devices {
            let mut f = vec![0u8; block as usize];
            Trailer {
                device: d,
                devices,
                stream_id: id,
                chunks: counts[d as usize].0,
                bytes: counts[d as usize].1,
                total_chunks: seq,
                total_bytes: src.len() as u64,
            }
            .encode(&mut f)
            .unwrap();
            out[d as usize].extend_from_slice(&f);
        }
        out
    }

    struct Collect(Vec<u8>);
    impl Sink for Collect {
        fn payload(&mut self, c: &ChunkHeader, at: u32, data: &[u8]) -> std::io::Result<()> {
            let start = (c.offset + u64::from(at)) as usize;
            if self.0.len() < start + data.len() {
                self.0.resize(start + data.len(), 0);
            }
            self.0[start..start + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn chunk_end(&mut self, _: &ChunkHeader) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn decode_all(streams: &[Vec<u8>], piece: usize) -> Result<(Vec<u8>, SetSummary), StreamError> {
        let mut sink = Collect(Vec::new());
        let mut devs = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            let mut d = Decoder::new(Some(i as u32));
            for p in s.chunks(piece.max(1)) {
                d.feed(p, &mut sink)?;
            }
            devs.push(d.finish()?);
        }
        let sum = check_set(&devs)?;
        Ok((sink.0, sum))
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    /// A stream cut after a chunk names that chunk (by its sequence number, as every
    /// other message does), not the one after it.
    #[test]
    fn a_cut_after_a_chunk_names_that_chunk() {
        let src = sample(4 * 65504);
        let s = encode(&src, 2, 4096, 65536);
        // Device 0 holds chunks 0 and 2, device 1 chunks 1 and 3 (64 KiB each, after a
        // 4 KiB header): cut each after its last chunk but the trailer.
        let chunk = 65536;
        let mut d = Decoder::new(Some(0));
        d.feed(&s[0][..4096 + chunk], &mut NullSink).unwrap();
        let e = d.finish().unwrap_err().to_string();
        assert!(e.contains("the record after chunk 0 "), "{e}");
        let mut d = Decoder::new(Some(1));
        d.feed(&s[1][..4096 + 2 * chunk], &mut NullSink).unwrap();
        let e = d.finish().unwrap_err().to_string();
        assert!(e.contains("the record after chunk 3 "), "{e}");
        let mut d = Decoder::new(Some(0));
        d.feed(&s[0][..4096], &mut NullSink).unwrap();
        let e = d.finish().unwrap_err().to_string();
        assert!(e.contains("the first record after the header"), "{e}");
    }

    #[test]
    fn round_trips_at_any_cut() {
        for &(n, devices, block) in &[
            (0, 1, 512),
            (1, 1, 512),
            (70_000, 3, 4096),
            (200_000, 5, 65536),
        ] {
            let src = sample(n);
            let s = encode(&src, devices, block, 65536);
            for piece in [1, 7, 512, 4096, 65536, 1 << 20] {
                let (out, sum) = decode_all(&s, piece).unwrap();
                assert_eq!(out, src, "n={n} devices={devices} piece={piece}");
                assert_eq!(sum.total_bytes, n as u64);
            }
            for st in &s {
                assert_eq!(st.len() % block as usize, 0);
            }
        }
    }

    #[test]
    fn a_flipped_payload_bit_is_a_checksum_error() {
        let src = sample(100_000);
        let mut s = encode(&src, 1, 512, 65536);
        s[0][512 + 32 + 10] ^= 0x40;
        let e = decode_all(&s, 4096).unwrap_err();
        assert!(matches!(e, StreamError::Checksum { seq: 0, .. }), "{e}");
    }

    #[test]
    fn damage_anywhere_is_found() {
        let src = sample(150_000);
        let s = encode(&src, 2, 512, 65536);
        // Flip one byte at many positions of stream 1: every flip must be caught.
        let len = s[1].len();
        for at in (0..len).step_by(97) {
            let mut t = s.clone();
            t[1][at] ^= 1;
            assert!(decode_all(&t, 1000).is_err(), "flip at {at} not caught");
        }
    }

    #[test]
    fn truncation_and_missing_streams_are_found() {
        let src = sample(150_000);
        let s = encode(&src, 2, 512, 65536);
        let mut t = s.clone();
        let keep = t[0].len() - 512;
        t[0].truncate(keep);
        assert!(matches!(
            decode_all(&t, 4096).unwrap_err(),
            StreamError::Truncated { .. }
        ));
        let mut t = s.clone();
        t[1].truncate(0);
        assert!(matches!(
            decode_all(&t, 4096).unwrap_err(),
            StreamError::Truncated { .. }
        ));
        let one = vec![s[0].clone()];
        let e = decode_all(&one, 4096).unwrap_err();
        assert!(e.to_string().contains("mismatched device count"), "{e}");
        let swapped = vec![s[1].clone(), s[0].clone()];
        assert!(decode_all(&swapped, 4096).is_err());
        let mut t = s.clone();
        t[0].extend_from_slice(&[0u8; 512]);
        assert!(decode_all(&t, 4096).is_err(), "trailing bytes");
    }

    #[test]
    fn not_a_stream() {
        let mut d = Decoder::new(None);
        let e = d
            .feed(
                &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0].repeat(10),
                &mut NullSink,
            )
            .unwrap_err();
        assert!(matches!(e, StreamError::NotAStream(_)));
    }

    #[test]
    fn header_peek_and_ids() {
        let name = "é".repeat(300);
        let h = HeaderFields {
            stream_id: [1; 16],
            devices: 3,
            block_size: 4096,
            max_transfer: 1 << 20,
            source_kind: SourceKind::Sqlite,
            source_size: 10,
            source_name: &name,
        }
        .device(2);
        assert!(h.source_name.len() <= MAX_NAME);
        let mut f = vec![0u8; 4096];
        h.encode(&mut f).unwrap();
        assert_eq!(StreamHeader::peek(&f), Some(h));
        assert_eq!(parse_hex_id(&hex_id(&[0xab; 16])), Some([0xab; 16]));
        assert_eq!(parse_hex_id("xyz"), None);
    }
}
