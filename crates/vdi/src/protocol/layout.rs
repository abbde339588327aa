//! The shared layout: every structure that lives in shared memory, byte for byte.
//!
//! `docs/shm-layout.md` is the prose version of this file. Every field is an atomic
//! (the peer may write any byte at any time; atomics make that a wrong value, never a
//! data race), every structure is `#[repr(C)]` with its size and alignment asserted at
//! compile time, and nothing holds a pointer: buffers are named by (area, offset).
//!
//! Two segments carry the protocol:
//! - the **control segment** (created by the client at `CreateEx`): a [`SetHeader`];
//! - the **queue segment** (created by the server at `EndConfiguration`, when the number
//!   of buffers and so the queue depth is known): one [`DeviceBlock`] per device, each
//!   followed by its submission ring, its completion ring and its command slots.
//!
//! Buffer areas are further segments created by the server; the header lists their sizes.

#![allow(unsafe_code)] // a mapped segment viewed as its #[repr(C)] structures; each block justified

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::VdConfig;

/// `"VDISET"` + format 1, as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VDISET\x00\x01");
/// The layout version; both sides must agree.
pub const VERSION: u32 = 1;
/// The most buffer areas a set may have (`EndConfiguration` makes the first).
pub const MAX_AREAS: usize = 64;
/// The fewest slots a device queue has.
pub const MIN_QUEUE: u32 = 16;
/// The most slots a device queue has.
pub const MAX_QUEUE: u32 = 4096;
/// Longest device name (bytes, UTF-8).
pub const MAX_NAME: usize = 120;

/// Set phases, as the server advances them in [`SetHeader::phase`].
pub mod phase {
    /// The client created the set; no server yet.
    pub const CREATED: u32 = 1;
    /// A server opened the set.
    pub const CONNECTED: u32 = 2;
    /// The server called `BeginConfiguration`.
    pub const CONFIGURING: u32 = 3;
    /// The server called `EndConfiguration`: buffers and queues exist.
    pub const CONFIGURED: u32 = 4;
}

/// Bits of [`DeviceBlock::state`].
pub mod dev {
    /// The server opened the device (its name is published).
    pub const SERVER_OPEN: u32 = 1;
    /// The server closed the device (`CloseDevice`).
    pub const SERVER_CLOSED: u32 = 2;
    /// A client process opened the device.
    pub const CLIENT_OPEN: u32 = 4;
    /// The device is in IO-ERROR (set by the client on an error completion).
    pub const IO_ERROR: u32 = 8;
    /// The client saw `VD_E_CLOSE` (device normally terminated on the client side).
    pub const CLIENT_DONE: u32 = 16;
}

/// The control segment's header: identity, configuration, set state (832 bytes).
#[repr(C, align(64))]
pub struct SetHeader {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU32,
    /// `size_of::<SetHeader>()`.
    pub header_size: AtomicU32,
    /// The client's process id.
    pub client_pid: AtomicU32,
    /// The client's user id.
    pub client_uid: AtomicU32,
    /// `CLOCK_MONOTONIC` nanoseconds when the client created the set (statistics).
    pub created_ns: AtomicU64,
    /// Reserved.
    pub _reserved0: [AtomicU32; 8],
    /// The configuration the client asked for (written once, before anyone attaches).
    pub client_config: [AtomicU32; 11],
    /// Reserved.
    pub _reserved1: [AtomicU32; 5],
    /// The final configuration (written by the server before `phase` = CONFIGURED).
    pub final_config: [AtomicU32; 11],
    /// Reserved.
    pub _reserved2: [AtomicU32; 5],
    /// [`phase`]: advanced by the server (release), read by the client (acquire).
    pub phase: AtomicU32,
    /// 0, or the [`AbortCause`](crate::AbortCause) of the abort. Set once (CAS from 0).
    pub abort: AtomicU32,
    /// Event count for set-level changes (phase, device names, abort); the client waits.
    pub set_event: AtomicU32,
    /// Number of buffer areas published (`area_sizes[..area_count]` are valid).
    pub area_count: AtomicU32,
    /// The server's process id.
    pub server_pid: AtomicU32,
    /// Slots per device queue (power of two), written with the queue segment.
    pub queue_capacity: AtomicU32,
    /// Reserved.
    pub _reserved3: [AtomicU32; 10],
    /// Event count for completions (the server's completion agent waits on it).
    pub completion_event: AtomicU32,
    /// Reserved.
    pub _reserved4: [AtomicU32; 15],
    /// Size in bytes of each buffer area.
    pub area_sizes: [AtomicU64; MAX_AREAS],
}

const _: () = assert!(std::mem::size_of::<SetHeader>() == 832);
const _: () = assert!(std::mem::align_of::<SetHeader>() == 64);
const _: () = assert!(std::mem::offset_of!(SetHeader, client_config) == 64);
const _: () = assert!(std::mem::offset_of!(SetHeader, final_config) == 128);
const _: () = assert!(std::mem::offset_of!(SetHeader, phase) == 192);
const _: () = assert!(std::mem::offset_of!(SetHeader, completion_event) == 256);
const _: () = assert!(std::mem::offset_of!(SetHeader, area_sizes) == 320);

/// One ring index on a cache line of its own, with the counters of the side that writes
/// that index (statistics an observer reads; see [`DeviceBlock`] for which is which).
#[repr(C, align(64))]
pub struct RingIndex {
    /// A free-running position.
    pub pos: AtomicU32,
    /// Reserved.
    pub _pad: AtomicU32,
    /// Statistics of the side that writes `pos` ([`stat`] names the indices).
    pub counters: [AtomicU64; 7],
}

const _: () = assert!(std::mem::size_of::<RingIndex>() == 64);
const _: () = assert!(std::mem::offset_of!(RingIndex, counters) == 8);

/// Indices into [`RingIndex::counters`]: statistics for observers (`vdi sets`), never
/// read by the protocol. Each is written only by the side that owns the line; a hostile
/// peer can make them wrong, which only misleads a person looking at them.
pub mod stat {
    /// `comp_tail` (client): bytes the client reported transferred, all completions.
    pub const BYTES: usize = 0;
    /// `comp_tail` (client): commands completed.
    pub const COMMANDS: usize = 1;
    /// `sub_head` (client): nanoseconds the client waited in `GetCommand` for the
    /// server (the server was the bottleneck).
    pub const CLIENT_WAIT_NS: usize = 0;
    /// `comp_head` (server): nanoseconds the server's completion agent waited while
    /// this device had commands outstanding (the client was the bottleneck).
    pub const SERVER_WAIT_NS: usize = 0;
}

/// The head of one device's block in the queue segment (448 bytes).
#[repr(C, align(64))]
pub struct DeviceBlock {
    /// [`dev`] bits.
    pub state: AtomicU32,
    /// 0 = no client process; else the number of the client process that serves it
    /// (1 = the primary, 2.. = secondaries, as given in their Welcome).
    pub owner: AtomicU32,
    /// Event count for the client's `GetCommand` (submissions, close, abort, ClearError).
    pub sub_event: AtomicU32,
    /// Length of `name` in bytes.
    pub name_len: AtomicU32,
    /// Reserved.
    pub _reserved: [AtomicU32; 12],
    /// Submission ring tail (server writes).
    pub sub_tail: RingIndex,
    /// Submission ring head (client writes).
    pub sub_head: RingIndex,
    /// Completion ring tail (client writes).
    pub comp_tail: RingIndex,
    /// Completion ring head (server writes).
    pub comp_head: RingIndex,
    /// The device name (UTF-8, `name_len` bytes), written before `SERVER_OPEN`.
    pub name: [AtomicU64; 16],
}

const _: () = assert!(std::mem::size_of::<DeviceBlock>() == 448);

/// One command in flight (64 bytes). The server fills the input fields before pushing
/// the slot index on the submission ring; the client fills the output fields before
/// pushing it on the completion ring.
#[repr(C, align(64))]
pub struct CommandSlot {
    /// `VDC_*` code.
    pub code: AtomicU32,
    /// Bytes to transfer, or the command's overloaded parameter.
    pub size: AtomicU32,
    /// Input position.
    pub position: AtomicU64,
    /// Buffer area index, or `NO_BUFFER`.
    pub area: AtomicU32,
    /// Command sequence number (diagnostics).
    pub seq: AtomicU32,
    /// Offset of the buffer's data start within the area.
    pub offset: AtomicU64,
    /// Output: Win32 completion code.
    pub completion_code: AtomicU32,
    /// Output: bytes transferred.
    pub bytes_transferred: AtomicU32,
    /// Output: position.
    pub out_position: AtomicU64,
    /// Reserved.
    pub _reserved: [AtomicU32; 4],
}

const _: () = assert!(std::mem::size_of::<CommandSlot>() == 64);

/// `CommandSlot::area` of a command without a buffer.
pub const NO_BUFFER: u32 = u32::MAX;

/// The shape of the queue segment, computed from the device count and queue depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueGeometry {
    /// Devices in the set.
    pub device_count: u32,
    /// Slots per device (power of two).
    pub capacity: u32,
}

impl QueueGeometry {
    /// The depth for `buffers` requested buffers: at least that many plus room for
    /// data-less commands, a power of two, 16 to 4096.
    pub fn for_buffers(device_count: u32, buffers: u64) -> QueueGeometry {
        let want = buffers
            .saturating_add(8)
            .clamp(MIN_QUEUE as u64, MAX_QUEUE as u64) as u32;
        QueueGeometry {
            device_count,
            capacity: want.next_power_of_two(),
        }
    }

    /// Whether the values are ones a peer may legitimately publish.
    pub fn is_valid(&self) -> bool {
        (1..=crate::config::MAX_DEVICES).contains(&self.device_count)
            && self.capacity.is_power_of_two()
            && (MIN_QUEUE..=MAX_QUEUE).contains(&self.capacity)
    }

    fn ring_bytes(&self) -> usize {
        (self.capacity as usize * 4).div_ceil(64) * 64
    }

    /// Bytes per device: block, two rings, slots.
    pub fn stride(&self) -> usize {
        std::mem::size_of::<DeviceBlock>()
            + 2 * self.ring_bytes()
            + self.capacity as usize * std::mem::size_of::<CommandSlot>()
    }

    /// Total bytes of the queue segment.
    pub fn segment_size(&self) -> usize {
        self.stride() * self.device_count as usize
    }
}

/// One device's part of the queue segment.
#[derive(Clone, Copy)]
pub struct DeviceView<'a> {
    /// Shared state.
    pub block: &'a DeviceBlock,
    /// Submission ring entries (slot indices).
    pub sub: &'a [AtomicU32],
    /// Completion ring entries (slot indices).
    pub comp: &'a [AtomicU32],
    /// Command slots.
    pub slots: &'a [CommandSlot],
}

impl<'a> DeviceView<'a> {
    /// The submission ring (server produces, client consumes).
    pub fn sub_ring(&self) -> crate::protocol::ring::Ring<'a> {
        crate::protocol::ring::Ring {
            tail: &self.block.sub_tail.pos,
            head: &self.block.sub_head.pos,
            entries: self.sub,
        }
    }

    /// The completion ring (client produces, server consumes).
    pub fn comp_ring(&self) -> crate::protocol::ring::Ring<'a> {
        crate::protocol::ring::Ring {
            tail: &self.block.comp_tail.pos,
            head: &self.block.comp_head.pos,
            entries: self.comp,
        }
    }
}

/// Views of a mapped queue segment.
pub struct QueueSegment {
    mem: crate::sys::shm::SharedMemory,
    geo: QueueGeometry,
}

impl QueueSegment {
    /// Wraps a mapping whose size has been checked against `geo`.
    pub fn new(mem: crate::sys::shm::SharedMemory, geo: QueueGeometry) -> Option<QueueSegment> {
        (geo.is_valid() && mem.len() >= geo.segment_size()).then_some(QueueSegment { mem, geo })
    }

    /// The geometry.
    pub fn geometry(&self) -> QueueGeometry {
        self.geo
    }

    /// The mapping.
    pub fn memory(&self) -> &crate::sys::shm::SharedMemory {
        &self.mem
    }

    /// The view of device `i` (`None` if out of range).
    pub fn device(&self, i: u32) -> Option<DeviceView<'_>> {
        if i >= self.geo.device_count {
            return None;
        }
        let cap = self.geo.capacity as usize;
        let base = self.geo.stride() * i as usize;
        let ring = self.geo.ring_bytes();
        let blk = base;
        let sub = blk + std::mem::size_of::<DeviceBlock>();
        let comp = sub + ring;
        let slots = comp + ring;
        // SAFETY: `new` checked that the mapping holds `device_count` strides; every
        // offset below is inside stride `i`, suitably aligned (64-byte multiples from a
        // 64 KiB-aligned base), and every type is made of atomics, valid for any bytes
        // and for concurrent access by the peer. The borrows are tied to `&self`, which
        // keeps the mapping alive.
        unsafe {
            let p = self.mem.as_ptr();
            Some(DeviceView {
                block: &*(p.add(blk) as *const DeviceBlock),
                sub: std::slice::from_raw_parts(p.add(sub) as *const AtomicU32, cap),
                comp: std::slice::from_raw_parts(p.add(comp) as *const AtomicU32, cap),
                slots: std::slice::from_raw_parts(p.add(slots) as *const CommandSlot, cap),
            })
        }
    }
}

/// A mapped control segment.
pub struct ControlSegment {
    mem: crate::sys::shm::SharedMemory,
}

impl ControlSegment {
    /// Bytes of the control segment.
    pub const SIZE: usize = std::mem::size_of::<SetHeader>();

    /// Wraps a mapping of at least [`Self::SIZE`] bytes.
    pub fn new(mem: crate::sys::shm::SharedMemory) -> Option<ControlSegment> {
        (mem.len() >= Self::SIZE).then_some(ControlSegment { mem })
    }

    /// The header.
    pub fn header(&self) -> &SetHeader {
        // SAFETY: the mapping is at least SIZE bytes, 64 KiB-aligned, and SetHeader is
        // made of atomics (valid for any bytes, safe under concurrent writes). The borrow
        // is tied to `&self`, which keeps the mapping alive.
        unsafe { &*(self.mem.as_ptr() as *const SetHeader) }
    }

    /// The mapping.
    pub fn memory(&self) -> &crate::sys::shm::SharedMemory {
        &self.mem
    }
}

/// Reads 11 config words.
pub fn load_config(words: &[AtomicU32; 11]) -> VdConfig {
    VdConfig::from_words(std::array::from_fn(|i| words[i].load(Ordering::Relaxed)))
}

/// Writes 11 config words.
pub fn store_config(words: &[AtomicU32; 11], cfg: &VdConfig) {
    for (w, v) in words.iter().zip(cfg.to_words()) {
        w.store(v, Ordering::Relaxed);
    }
}

/// Writes a device name (at most [`MAX_NAME`] bytes; the caller checked).
pub fn store_name(block: &DeviceBlock, name: &str) {
    let b = name.as_bytes();
    for (i, w) in block.name.iter().enumerate() {
        let mut word = [0u8; 8];
        for (j, byte) in word.iter_mut().enumerate() {
            if let Some(&x) = b.get(i * 8 + j) {
                *byte = x;
            }
        }
        w.store(u64::from_le_bytes(word), Ordering::Relaxed);
    }
    block.name_len.store(b.len() as u32, Ordering::Relaxed);
}

/// Reads a device name; `None` if the stored length or bytes are not a valid name.
pub fn load_name(block: &DeviceBlock) -> Option<String> {
    let len = block.name_len.load(Ordering::Relaxed) as usize;
    if len > MAX_NAME {
        return None;
    }
    let mut bytes = Vec::with_capacity(128);
    for w in &block.name {
        bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    bytes.truncate(len);
    String::from_utf8(bytes).ok()
}
