//! Configuration: `BeginConfiguration`, `RequestBuffers`, `QueryAvailableBuffers`,
//! `EndConfiguration`, and the buffer areas they create and hand to the client.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::alloc::AreaAlloc;
use super::{DevLocal, DeviceLocal, ServerInner, ServerSet, ServerState};
use crate::config::{MAX_ALIGNMENT, MAX_BLOCK_SIZE, MAX_TRANSFER_SIZE, MIN_BLOCK_SIZE, VdConfig};
use crate::consts::{Features, features};
use crate::error::{ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{self, MAX_AREAS, QueueGeometry, QueueSegment, phase};
use crate::protocol::msg::{Msg, SegmentKind};
use crate::protocol::ring::{Consumer, Producer};
use crate::shared::lock;
use crate::sys::shm::SharedMemory;

pub(super) fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What the server chooses at `BeginConfiguration`, typed: the direction, the block
/// size, the alignment and the largest transfer. [`ServerSet::configure`] takes it where
/// [`ServerSet::begin_configuration`] takes VDI's five integers.
///
/// ```no_run
/// use vdi::{ServerConfig, ServerSet};
/// # fn main() -> Result<(), vdi::VdError> {
/// let set = ServerSet::open("my-backup-set")?;
/// set.configure(&ServerConfig::backup(1 << 20).block_size(4096).complete_enabled(true))?;
/// set.request_buffers(1 << 20, 0, 4)?;
/// set.end_configuration()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `WRITE_MEDIA` (backup) or `READ_MEDIA` (restore), plus `COMPLETE_ENABLED` if
    /// chosen.
    pub features: Features,
    /// blockSize: a power of two from 512 to 65536.
    pub block_size: u32,
    /// Alignment of every buffer's data: 0 (= the block size) or a power of two from the
    /// block size to 65536.
    pub alignment: u32,
    /// maxTransferSize: a multiple of 64 KiB up to 4 MiB.
    pub max_transfer_size: u32,
}

impl ServerConfig {
    /// A backup (the server writes the media) with transfers of up to
    /// `max_transfer_size` bytes, blocks of 512 bytes.
    pub fn backup(max_transfer_size: u32) -> ServerConfig {
        ServerConfig {
            features: Features::WRITE_MEDIA,
            block_size: MIN_BLOCK_SIZE,
            alignment: 0,
            max_transfer_size,
        }
    }

    /// A restore (the server reads the media).
    pub fn restore(max_transfer_size: u32) -> ServerConfig {
        ServerConfig {
            features: Features::READ_MEDIA,
            ..ServerConfig::backup(max_transfer_size)
        }
    }

    /// Sets the block size.
    pub fn block_size(mut self, block_size: u32) -> ServerConfig {
        self.block_size = block_size;
        self
    }

    /// Sets the alignment.
    pub fn alignment(mut self, alignment: u32) -> ServerConfig {
        self.alignment = alignment;
        self
    }

    /// Sends `VDC_Complete` at the end (only if the client asked for
    /// `VDF_RequestComplete`).
    pub fn complete_enabled(mut self, on: bool) -> ServerConfig {
        if on {
            self.features |= Features::COMPLETE_ENABLED;
        } else {
            self.features = self.features & !Features::COMPLETE_ENABLED;
        }
        self
    }
}

impl ServerSet {
    /// `BeginConfiguration` with a typed [`ServerConfig`].
    pub fn configure(&self, config: &ServerConfig) -> Result<()> {
        self.begin_configuration(
            config.features,
            config.block_size,
            config.alignment,
            config.max_transfer_size,
            0,
        )
    }

    /// `BeginConfiguration(features, blockSize, alignment, maxTransferSize, timeout)`
    /// (the header's order). `features` must name `WRITE_MEDIA` and/or `READ_MEDIA`
    /// (plus `COMPLETE_ENABLED` if the client asked for `REQUEST_COMPLETE`); the client's
    /// own feature bits are kept.
    ///
    /// Errors: `VD_E_PROTOCOL` (not Connected), `VD_E_INVALID` (a parameter; the message
    /// names it).
    ///
    /// [`configure`](ServerSet::configure) is the same call with a typed
    /// [`ServerConfig`].
    pub fn begin_configuration(
        &self,
        features: impl Into<Features>,
        block_size: u32,
        alignment: u32,
        max_transfer_size: u32,
        timeout_ms: u32,
    ) -> Result<()> {
        let _ = timeout_ms; // Client-provided buffer areas are not part of this protocol.
        let features = features.into().bits();
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if st != ServerState::Connected {
            return Err(inner.state_error("BeginConfiguration", st));
        }
        let asked = inner.client_config;
        if features & !(features::SERVER_MASK | features::CLIENT_MASK) != 0 {
            return Err(VdError::invalid(format!(
                "features 0x{features:08X} has unknown bits"
            )));
        }
        if features & (features::WRITE_MEDIA | features::READ_MEDIA) == 0 {
            return Err(VdError::invalid(
                "features must include VDF_WriteMedia (backup) or VDF_ReadMedia (restore)",
            ));
        }
        if features & features::COMPLETE_ENABLED != 0
            && asked.features & features::REQUEST_COMPLETE == 0
        {
            return Err(VdError::invalid(
                "VDF_CompleteEnabled requires the client to request VDF_RequestComplete",
            ));
        }
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(VdError::invalid(format!(
                "blockSize {block_size} must be a power of two from 512 to 65536"
            )));
        }
        let align = if alignment == 0 {
            block_size
        } else {
            alignment
        };
        if !align.is_power_of_two() || align < block_size || align > MAX_ALIGNMENT {
            return Err(VdError::invalid(format!(
                "alignment {alignment} must be 0 or a power of two from blockSize ({block_size}) to 65536"
            )));
        }
        if max_transfer_size == 0
            || !max_transfer_size.is_multiple_of(65536)
            || max_transfer_size > MAX_TRANSFER_SIZE
        {
            return Err(VdError::invalid(format!(
                "maxTransferSize {max_transfer_size} must be a multiple of 65536 from 64 KiB to 4 MiB"
            )));
        }
        let mut cfg = asked;
        cfg.features = asked.features | (features & features::SERVER_MASK);
        cfg.block_size = block_size;
        cfg.alignment = align.max(asked.alignment);
        cfg.max_transfer_size = max_transfer_size;
        cfg.max_io_depth = crate::config::MAX_IO_DEPTH;
        l.config = cfg;
        l.state = ServerState::Configurable;
        inner
            .shared
            .header()
            .phase
            .store(phase::CONFIGURING, Ordering::Release);
        event::notify(&inner.shared.header().set_event);
        Ok(())
    }

    /// `RequestBuffers`: declares `count` buffers of `size` data bytes. During
    /// configuration requests are summed; afterwards each call adds a buffer area at once.
    ///
    /// Errors: `VD_E_PROTOCOL` (wrong state), `VD_E_INVALID`, `VD_E_MEMORY`.
    pub fn request_buffers(&self, size: u32, alignment: u32, count: u32) -> Result<()> {
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if !matches!(
            st,
            ServerState::Configurable | ServerState::Initializing | ServerState::Active
        ) {
            return Err(inner.state_error("RequestBuffers", st));
        }
        if size == 0 || size > MAX_TRANSFER_SIZE {
            return Err(VdError::invalid(format!(
                "buffer size {size} must be 1 to {MAX_TRANSFER_SIZE}"
            )));
        }
        if count == 0 || count > 1 << 16 {
            return Err(VdError::invalid(format!(
                "buffer count {count} must be 1 to 65536"
            )));
        }
        let align = inner.effective_alignment(&l.config, alignment)?;
        let req = (u64::from(size), align, u64::from(count));
        if st == ServerState::Configurable {
            l.requests.push(req);
            return Ok(());
        }
        let area_size = AreaAlloc::size_for(inner.pool.prefix, &[req]);
        inner.add_area(area_size)?;
        l.config.buffer_area_size = inner.total_area_bytes();
        Ok(())
    }

    /// `QueryAvailableBuffers`: how many buffers of this shape can still be allocated
    /// (during configuration: in the area that `EndConfiguration` would create).
    pub fn query_available_buffers(&self, size: u32, alignment: u32) -> Result<u32> {
        let inner = &self.inner;
        let l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if size == 0 {
            return Err(VdError::invalid("buffer size 0"));
        }
        let align = inner.effective_alignment(&l.config, alignment)?;
        let prefix = inner.pool.prefix;
        let n = match st {
            ServerState::Configurable => AreaAlloc::new(AreaAlloc::size_for(prefix, &l.requests))
                .count_fit(prefix, u64::from(size), align),
            ServerState::Initializing | ServerState::Active => lock(&inner.pool.areas)
                .iter()
                .map(|a| a.count_fit(prefix, u64::from(size), align))
                .sum(),
            _ => return Err(inner.state_error("QueryAvailableBuffers", st)),
        };
        Ok(n.min(u64::from(u32::MAX)) as u32)
    }

    /// `EndConfiguration`: allocates the buffer area and the device queues and releases
    /// the client's `GetConfiguration`.
    ///
    /// Errors: `VD_E_PROTOCOL` (not Configurable), `VD_E_ABORT`, `VD_E_MEMORY` (the area
    /// could not be had; the set stays Configurable so the request can shrink).
    pub fn end_configuration(&self) -> Result<()> {
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if st == ServerState::AbnormallyTerminated {
            return Err(inner.abort_error());
        }
        if st != ServerState::Configurable {
            return Err(inner.state_error("EndConfiguration", st));
        }
        let total_buffers: u64 = l.requests.iter().map(|r| r.2).sum();
        let geo = QueueGeometry::for_buffers(l.config.device_count, total_buffers);
        let area_size = AreaAlloc::size_for(inner.pool.prefix, &l.requests);
        if let Some(avail) = mem_available()
            && area_size > avail
        {
            return Err(VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!(
                    "the requested buffers need {area_size} bytes but only {avail} bytes of memory are available; request fewer or smaller buffers"
                )),
            ));
        }
        let qmem = SharedMemory::create("vdi-queues", geo.segment_size()).map_err(|e| {
            VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("device queues: {e}")),
            )
        })?;
        let qfd = qmem
            .dup_fd()
            .ok_or_else(|| VdError::new(ErrorCode::Memory, Reason::OutOfMemory("dup".into())))?;
        let queues =
            QueueSegment::new(qmem, geo).ok_or_else(|| VdError::violation("queue segment"))?;
        let area0 = if area_size > 0 {
            Some(inner.create_area(0, area_size)?)
        } else {
            None
        };
        {
            let conn = lock(&inner.conn);
            let c = conn
                .as_ref()
                .ok_or_else(|| VdError::protocol("EndConfiguration", "closed"))?;
            c.send(
                &Msg::Segment {
                    kind: SegmentKind::Queues,
                    index: geo.capacity,
                    size: geo.segment_size() as u64,
                }
                .encode(),
                &[std::os::fd::AsFd::as_fd(&qfd)],
            )
            .map_err(|_| inner.client_gone())?;
            if area_size > 0 {
                let areas = &inner.shared.areas;
                let fd = areas[0]
                    .get()
                    .and_then(SharedMemory::dup_fd)
                    .ok_or_else(|| VdError::protocol("EndConfiguration", "closed"))?;
                c.send(
                    &Msg::Segment {
                        kind: SegmentKind::Area,
                        index: 0,
                        size: area_size,
                    }
                    .encode(),
                    &[std::os::fd::AsFd::as_fd(&fd)],
                )
                .map_err(|_| inner.client_gone())?;
            }
        }
        let cap = geo.capacity as usize;
        let devices: Box<[DeviceLocal]> = (0..geo.device_count)
            .map(|i| {
                let d = queues.device(i);
                let (producer, consumer) = match d {
                    Some(d) => (
                        Producer::attach(&d.sub_ring()),
                        Consumer::attach(&d.comp_ring()),
                    ),
                    None => (Producer::default(), Consumer::default()),
                };
                DeviceLocal {
                    local: Mutex::new(DevLocal {
                        producer,
                        free: (0..cap as u32).rev().collect(),
                        records: (0..cap).map(|_| None).collect(),
                        seq: 0,
                    }),
                    consumer: Mutex::new(consumer),
                    comp_head: AtomicU32::new(0),
                    open: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                }
            })
            .collect();
        inner
            .shared
            .install_queues(queues)
            .map_err(|why| VdError::protocol("EndConfiguration", why))?;
        let _ = inner.devices.set(devices);
        l.config.buffer_area_size = area_size.min(u64::from(u32::MAX)) as u32;
        let h = inner.shared.header();
        h.queue_capacity.store(geo.capacity, Ordering::Relaxed);
        inner
            .max_transfer
            .store(l.config.max_transfer_size, Ordering::Release);
        h.area_count
            .store(u32::from(area_size > 0), Ordering::Release);
        layout::store_config(&h.final_config, &l.config);
        h.phase.store(phase::CONFIGURED, Ordering::Release);
        event::notify(&h.set_event);
        if let Some(real) = area0 {
            inner.enable_area(0, real);
        }
        l.state = ServerState::Initializing;
        Ok(())
    }
}

impl ServerInner {
    pub(super) fn effective_alignment(&self, cfg: &VdConfig, alignment: u32) -> Result<u64> {
        if alignment != 0 && (!alignment.is_power_of_two() || alignment > MAX_ALIGNMENT) {
            return Err(VdError::invalid(format!(
                "alignment {alignment} must be 0 or a power of two up to 65536"
            )));
        }
        Ok(u64::from(alignment.max(cfg.alignment).max(1)))
    }

    pub(super) fn total_area_bytes(&self) -> u32 {
        let n = self.shared.header().area_count.load(Ordering::Acquire) as usize;
        // Client-writable words: summed without overflow (note N20).
        let total: u64 = self.shared.header().area_sizes[..n.min(MAX_AREAS)]
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.load(Ordering::Relaxed)));
        total.min(u64::from(u32::MAX)) as u32
    }

    /// Creates area `index` here (mapped, pre-faulted) and its allocator.
    pub(super) fn create_area(&self, index: usize, size: u64) -> Result<u64> {
        let mem = SharedMemory::create("vdi-buffers", size as usize).map_err(|e| {
            VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("buffer area of {size} bytes: {e}")),
            )
        })?;
        let real = mem.len() as u64;
        self.shared
            .install_area(index, mem)
            .map_err(|why| VdError::protocol("RequestBuffers", why))?;
        self.shared.header().area_sizes[index].store(size, Ordering::Relaxed);
        Ok(real)
    }

    /// Lets AllocateBuffer use area `index` (only once the client has it).
    pub(super) fn enable_area(&self, index: usize, real: u64) {
        let mut areas = lock(&self.pool.areas);
        while areas.len() < index {
            areas.push(AreaAlloc::new(0));
        }
        areas.push(AreaAlloc::new(real));
    }

    /// After configuration: a new area, sent to the client, published, then usable.
    pub(super) fn add_area(&self, size: u64) -> Result<()> {
        let h = self.shared.header();
        let Some(index) = (0..MAX_AREAS).find(|&i| self.shared.areas[i].get().is_none()) else {
            return Err(VdError::new(
                ErrorCode::Memory,
                Reason::OutOfMemory(format!("a set may have at most {MAX_AREAS} buffer areas")),
            ));
        };
        let real = self.create_area(index, size)?;
        let fd = self.shared.areas[index]
            .get()
            .and_then(SharedMemory::dup_fd)
            .ok_or_else(|| VdError::protocol("RequestBuffers", "closed"))?;
        {
            let conn = lock(&self.conn);
            let c = conn
                .as_ref()
                .ok_or_else(|| VdError::protocol("RequestBuffers", "closed"))?;
            c.send(
                &Msg::Segment {
                    kind: SegmentKind::Area,
                    index: index as u32,
                    size,
                }
                .encode(),
                &[std::os::fd::AsFd::as_fd(&fd)],
            )
            .map_err(|_| self.client_gone())?;
        }
        let total: u64 = h.area_sizes[..=index]
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.load(Ordering::Relaxed)));
        h.final_config[10].store(total.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
        h.area_count.store(index as u32 + 1, Ordering::Release);
        event::notify(&h.set_event);
        self.enable_area(index, real);
        Ok(())
    }
}
