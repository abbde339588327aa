//! The raw ring: a minimal single-producer single-consumer ring of fixed-size slots in
//! one shared-memory segment, the ceiling the VDI protocol is compared with.
//!
//! No commands, no slot table, no callbacks, no validation beyond what keeps this
//! process in bounds: the producer fills slot `tail % slots` in place and publishes the
//! new tail (release); the consumer reads the slot in place and publishes the new head
//! (release). Each side waits with [`wait`](mod@crate::wait) (spin, then the shared futex)
//! and wakes the other only when it sleeps.
//!
//! Layout (all offsets from the start of the segment):
//!
//! | offset | what |
//! |---|---|
//! | 0 | `tail` (u32, producer position), own cache line |
//! | 64 | `head` (u32, consumer position), own cache line |
//! | 128 | `data_event` (u32, the consumer sleeps here) |
//! | 192 | `space_event` (u32, the producer sleeps here) |
//! | 256 | `lens[MAX_SLOTS]` (u32, bytes in each slot) |
//! | 65536 | the slots, `slot_size` bytes each |
//!
//! ```
//! use vdi::sys::shm::SharedMemory;
//! use vdi_bench::raw_ring::{RawRing, segment_size};
//! let mem = SharedMemory::create("ring-doc", segment_size(4, 4096)).unwrap();
//! let (mut p, mut c) = RawRing::new(&mem, 4, 4096).unwrap().split();
//! p.send(100, |b| b.fill(7)).unwrap();
//! assert_eq!(c.recv(|b| b.len()).unwrap(), 100);
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use vdi::sys::shm::SharedMemory;

use crate::wait;

/// Most slots a ring may have.
pub const MAX_SLOTS: u32 = 4096;

/// Where the slots start in the segment.
pub const SLOTS_OFFSET: usize = 64 * 1024;

/// A `u32` alone on its cache line.
#[repr(C, align(64))]
struct Line {
    v: AtomicU32,
}

/// The shared header: positions, wait words and slot lengths. Atomics only.
#[repr(C)]
struct Header {
    tail: Line,
    head: Line,
    data_event: Line,
    space_event: Line,
    lens: [AtomicU32; MAX_SLOTS as usize],
}

const _: () = assert!(std::mem::size_of::<Header>() <= SLOTS_OFFSET);
const _: () = assert!(std::mem::align_of::<Header>() == 64);

/// Bytes of segment a ring of `slots` slots of `slot_size` bytes needs.
pub fn segment_size(slots: u32, slot_size: usize) -> usize {
    SLOTS_OFFSET + slots as usize * slot_size
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The segment is too small for the geometry, or the geometry is out of range.
    BadGeometry,
    /// A chunk longer than a slot.
    TooLong,
    /// The peer published an impossible position or length.
    Corrupt,
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingError::BadGeometry => "the segment does not fit the ring's geometry",
            RingError::TooLong => "a chunk is longer than a slot",
            RingError::Corrupt => "the peer published an impossible ring position or length",
        })
    }
}

impl std::error::Error for RingError {}

/// A ring laid over a mapped segment; [`split`](RawRing::split) gives its two ends.
pub struct RawRing<'a> {
    hdr: &'a Header,
    slots_base: *mut u8,
    slots: u32,
    slot_size: usize,
}

impl<'a> RawRing<'a> {
    /// Views `mem` as a ring of `slots` slots of `slot_size` bytes.
    pub fn new(
        mem: &'a SharedMemory,
        slots: u32,
        slot_size: usize,
    ) -> Result<RawRing<'a>, RingError> {
        if slots == 0 || slots > MAX_SLOTS || slot_size == 0 {
            return Err(RingError::BadGeometry);
        }
        let need = (slots as usize)
            .checked_mul(slot_size)
            .and_then(|n| n.checked_add(SLOTS_OFFSET))
            .ok_or(RingError::BadGeometry)?;
        if mem.len() < need {
            return Err(RingError::BadGeometry);
        }
        let base = mem.as_ptr();
        // SAFETY: the mapping is at least `SLOTS_OFFSET` bytes, starts 64 KiB-aligned (so
        // aligned for `Header`), and lives as long as `'a`. `Header` holds only atomics,
        // valid for every bit pattern, and all access goes through them.
        let hdr = unsafe { &*base.cast::<Header>() };
        // SAFETY: `SLOTS_OFFSET <= need <= mem.len()`, so the offset stays in the mapping.
        let slots_base = unsafe { base.add(SLOTS_OFFSET) };
        Ok(RawRing {
            hdr,
            slots_base,
            slots,
            slot_size,
        })
    }

    /// The ring's two ends: the producer starts at the published tail, the consumer at
    /// the published head. A segment has one producer and one consumer, in whichever
    /// processes they live; each process views the segment once and keeps the end it
    /// needs.
    pub fn split(self) -> (RingProducer<'a>, RingConsumer<'a>) {
        let tail = self.hdr.tail.v.load(Ordering::Relaxed);
        let head = self.hdr.head.v.load(Ordering::Relaxed);
        (
            RingProducer {
                ring: self.view(),
                tail,
            },
            RingConsumer { ring: self, head },
        )
    }

    fn view(&self) -> RawRing<'a> {
        RawRing {
            hdr: self.hdr,
            slots_base: self.slots_base,
            slots: self.slots,
            slot_size: self.slot_size,
        }
    }

    fn slot_ptr(&self, pos: u32) -> *mut u8 {
        let i = (pos % self.slots) as usize;
        // SAFETY: `i < slots` and `new` checked `slots * slot_size` bytes follow
        // `slots_base` inside the mapping.
        unsafe { self.slots_base.add(i * self.slot_size) }
    }
}

/// The producer's end of a [`RawRing`].
pub struct RingProducer<'a> {
    ring: RawRing<'a>,
    tail: u32,
}

impl RingProducer<'_> {
    /// Waits for a free slot, lets `fill` write the first `len` bytes of it in place,
    /// and publishes it.
    pub fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), RingError> {
        let r = &self.ring;
        if len > r.slot_size {
            return Err(RingError::TooLong);
        }
        let h = r.hdr;
        let tail = self.tail;
        let mut used = 0;
        wait::wait_until(&h.space_event.v, || {
            used = tail.wrapping_sub(h.head.v.load(Ordering::Acquire));
            used != r.slots
        });
        if used > r.slots {
            return Err(RingError::Corrupt);
        }
        // SAFETY: the slot at `tail` is ours: the consumer released it (its head store,
        // acquired above, is past it) and will not read it before our tail store below.
        // It lies inside the mapping (`slot_ptr`), and `len <= slot_size`.
        let buf = unsafe { std::slice::from_raw_parts_mut(r.slot_ptr(tail), len) };
        fill(buf);
        h.lens[(tail % r.slots) as usize].store(len as u32, Ordering::Relaxed);
        self.tail = tail.wrapping_add(1);
        // Hand-off: release publishes the slot's bytes and its length.
        h.tail.v.store(self.tail, Ordering::Release);
        wait::notify(&h.data_event.v);
        Ok(())
    }
}

/// The consumer's end of a [`RawRing`].
pub struct RingConsumer<'a> {
    ring: RawRing<'a>,
    head: u32,
}

impl RingConsumer<'_> {
    /// Waits for a filled slot, lets `read` look at its bytes in place, and releases it.
    pub fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Result<R, RingError> {
        let r = &self.ring;
        let h = r.hdr;
        let head = self.head;
        let mut avail = 0;
        wait::wait_until(&h.data_event.v, || {
            avail = h.tail.v.load(Ordering::Acquire).wrapping_sub(head);
            avail != 0
        });
        if avail > r.slots {
            return Err(RingError::Corrupt);
        }
        let len = h.lens[(head % r.slots) as usize].load(Ordering::Relaxed) as usize;
        if len > r.slot_size {
            return Err(RingError::Corrupt);
        }
        // SAFETY: the slot at `head` is ours: the producer published it (its tail store,
        // acquired above) and will not write it again before our head store below. It
        // lies inside the mapping and `len <= slot_size`.
        let buf = unsafe { std::slice::from_raw_parts(r.slot_ptr(head), len) };
        let out = read(buf);
        self.head = head.wrapping_add(1);
        // Hand-off: release gives the slot back only after we have read it.
        h.head.v.store(self.head, Ordering::Release);
        wait::notify(&h.space_event.v);
        Ok(out)
    }
}

// SAFETY: the ring is a view of a shared mapping kept alive by the borrowed
// `SharedMemory`; each end touches a slot only while the ring's hand-off makes it that
// end's, so an end may move to another thread.
unsafe impl Send for RingProducer<'_> {}
// SAFETY: as for `RingProducer`.
unsafe impl Send for RingConsumer<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work;

    #[test]
    fn two_threads_move_every_chunk_in_order() {
        let mem = SharedMemory::create("ring-test", segment_size(4, 8192)).unwrap();
        let (mut p, mut c) = RawRing::new(&mem, 4, 8192).unwrap().split();
        std::thread::scope(|s| {
            s.spawn(move || {
                for k in 0..1000u64 {
                    let len = 1 + (k as usize * 37) % 8192;
                    p.send(len, |b| work::fill(b, work::pattern(0, k))).unwrap();
                }
            });
            for k in 0..1000u64 {
                let len = 1 + (k as usize * 37) % 8192;
                let sum = c.recv(|b| (b.len(), work::checksum(b))).unwrap();
                assert_eq!(
                    sum,
                    (len, work::expected_checksum(len, work::pattern(0, k)))
                );
            }
        });
    }

    #[test]
    fn refuses_bad_geometry_and_corrupt_positions() {
        let mem = SharedMemory::create("ring-test", segment_size(2, 4096)).unwrap();
        assert_eq!(
            RawRing::new(&mem, 3, 4096).err(),
            Some(RingError::BadGeometry)
        );
        let ring = RawRing::new(&mem, 2, 4096).unwrap();
        let hdr = ring.hdr;
        let (mut p, mut c) = ring.split();
        assert_eq!(p.send(5000, |_| {}), Err(RingError::TooLong));
        hdr.tail.v.store(100, Ordering::Release);
        assert_eq!(c.recv(|_| ()), Err(RingError::Corrupt));
    }
}
