//! Single-producer single-consumer rings of slot indices in shared memory.
//!
//! Each side keeps its own position locally and only *publishes* it in shared memory;
//! it never trusts the peer's copy of its own index. The peer's index is read with
//! acquire ordering and checked: a distance larger than the capacity means the peer
//! wrote garbage, reported as [`RingError::Corrupt`]. Entries are plain `u32` slot
//! indices; the caller validates each one before use.
//!
//! The ring is generic over its words ([`AtomicWord`], default `std`'s `AtomicU32`, the
//! type in the shared layout), so that the same code runs under loom: with
//! `RUSTFLAGS="--cfg loom"`, `crates/vdi/tests/loom.rs` checks FIFO order, `Full`, and
//! that what the producer wrote before a push is visible after the pop (the
//! release/acquire hand-off), over loom's atomics and cells.
//!
//! ```
//! use std::sync::atomic::AtomicU32;
//! use vdi::protocol::ring::{Ring, Producer, Consumer};
//! let (tail, head) = (AtomicU32::new(0), AtomicU32::new(0));
//! let entries: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
//! let ring = Ring { tail: &tail, head: &head, entries: &entries };
//! let (mut p, mut c) = (Producer::attach(&ring), Consumer::attach(&ring));
//! p.push(&ring, 7).unwrap();
//! assert_eq!(c.pop(&ring).unwrap(), Some(7));
//! assert_eq!(c.pop(&ring).unwrap(), None);
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use crate::protocol::sync::AtomicWord;

/// A ring's shared parts: both positions and the entries (capacity a power of two).
pub struct Ring<'a, W = AtomicU32> {
    /// Producer position (written by the producer only).
    pub tail: &'a W,
    /// Consumer position (written by the consumer only).
    pub head: &'a W,
    /// The entries.
    pub entries: &'a [W],
}

// By hand: a derive would require `W: Copy`, and atomics are not.
impl<W> Clone for Ring<'_, W> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}

impl<W> Copy for Ring<'_, W> {}

/// What went wrong with a ring operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// No room (push only).
    Full,
    /// The peer's published position is impossible.
    Corrupt,
}

impl<W> Ring<'_, W> {
    #[inline]
    fn mask(&self) -> u32 {
        self.entries.len() as u32 - 1
    }

    #[inline]
    fn capacity(&self) -> u32 {
        self.entries.len() as u32
    }
}

/// The producer's private state.
#[derive(Debug, Default)]
pub struct Producer {
    tail: u32,
}

impl Producer {
    /// Starts producing at the currently published tail.
    #[inline]
    pub fn attach<W: AtomicWord>(ring: &Ring<'_, W>) -> Producer {
        Producer {
            tail: ring.tail.load(Ordering::Relaxed),
        }
    }

    /// Appends `value`; publishes it with release ordering, so everything written before
    /// (the slot's fields) is visible to a consumer that acquires the new tail.
    #[inline]
    pub fn push<W: AtomicWord>(&mut self, ring: &Ring<'_, W>, value: u32) -> Result<(), RingError> {
        let head = ring.head.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > ring.capacity() {
            return Err(RingError::Corrupt);
        }
        if used == ring.capacity() {
            return Err(RingError::Full);
        }
        ring.entries[(self.tail & ring.mask()) as usize].store(value, Ordering::Relaxed);
        self.tail = self.tail.wrapping_add(1);
        // Hand-off: release publishes the entry and the slot contents written before.
        ring.tail.store(self.tail, Ordering::Release);
        Ok(())
    }
}

/// The consumer's private state.
#[derive(Debug, Default)]
pub struct Consumer {
    head: u32,
}

impl Consumer {
    /// Starts consuming at the currently published head.
    #[inline]
    pub fn attach<W: AtomicWord>(ring: &Ring<'_, W>) -> Consumer {
        Consumer {
            head: ring.head.load(Ordering::Relaxed),
        }
    }

    /// The consumer's position (entries taken so far, wrapping).
    #[inline]
    pub fn position(&self) -> u32 {
        self.head
    }

    /// Whether an entry is waiting (or the peer's tail is corrupt: the next `pop` says).
    #[inline]
    pub fn has_next<W: AtomicWord>(&self, ring: &Ring<'_, W>) -> bool {
        ring.tail.load(Ordering::Acquire) != self.head
    }

    /// Takes the next entry, if any.
    #[inline]
    pub fn pop<W: AtomicWord>(&mut self, ring: &Ring<'_, W>) -> Result<Option<u32>, RingError> {
        // Hand-off: acquire pairs with the producer's release of the tail.
        let tail = ring.tail.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(self.head);
        if avail == 0 {
            return Ok(None);
        }
        if avail > ring.capacity() {
            return Err(RingError::Corrupt);
        }
        let v = ring.entries[(self.head & ring.mask()) as usize].load(Ordering::Relaxed);
        self.head = self.head.wrapping_add(1);
        // Release: the producer may reuse the entry only after we have read it.
        ring.head.store(self.head, Ordering::Release);
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(cap: usize) -> (AtomicU32, AtomicU32, Vec<AtomicU32>) {
        (
            AtomicU32::new(0),
            AtomicU32::new(0),
            (0..cap).map(|_| AtomicU32::new(0)).collect(),
        )
    }

    #[test]
    fn fill_drain_wrap() {
        let (t, h, e) = make(4);
        let r = Ring {
            tail: &t,
            head: &h,
            entries: &e,
        };
        let (mut p, mut c) = (Producer::attach(&r), Consumer::attach(&r));
        for round in 0..10u32 {
            for i in 0..4 {
                p.push(&r, round * 10 + i).unwrap();
            }
            assert_eq!(p.push(&r, 99), Err(RingError::Full));
            for i in 0..4 {
                assert_eq!(c.pop(&r).unwrap(), Some(round * 10 + i));
            }
            assert_eq!(c.pop(&r).unwrap(), None);
        }
    }

    #[test]
    fn corrupt_positions_are_reported() {
        let (t, h, e) = make(4);
        let r = Ring {
            tail: &t,
            head: &h,
            entries: &e,
        };
        let (mut p, mut c) = (Producer::attach(&r), Consumer::attach(&r));
        t.store(1000, Ordering::Relaxed);
        assert_eq!(c.pop(&r), Err(RingError::Corrupt));
        h.store(12345, Ordering::Relaxed);
        assert_eq!(p.push(&r, 1), Err(RingError::Corrupt));
    }

    #[test]
    fn two_threads_keep_order() {
        let (t, h, e) = make(8);
        let r = Ring {
            tail: &t,
            head: &h,
            entries: &e,
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut p = Producer::attach(&r);
                let mut i = 0;
                while i < 100_000 {
                    if p.push(&r, i).is_ok() {
                        i += 1;
                    }
                }
            });
            let mut c = Consumer::attach(&r);
            let mut want = 0;
            while want < 100_000 {
                if let Some(v) = c.pop(&r).unwrap() {
                    assert_eq!(v, want);
                    want += 1;
                }
            }
        });
    }
}
