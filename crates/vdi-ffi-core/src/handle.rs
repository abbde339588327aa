//! Handles: what a C caller holds instead of a pointer to our objects.
//!
//! A handle is an opaque pointer-sized value that the library never dereferences: a slot
//! index in the low 32 bits and the slot's generation in the high 32. Every call looks
//! the value up in a fixed table of slots, so a null, foreign, freed or twice-freed
//! handle is simply not found (`VD_E_INVALID`), never read as memory; a slot's
//! generation changes each time it is reused, so a stale handle does not reach the
//! object that now lives in its slot.
//!
//! The table is fixed (no reallocation, so no global lock on the hot path): each slot has
//! its own lock, held only to clone the object's `Arc`, never during the call itself, so
//! a call that blocks (`GetCommand`, `ExecuteCompletionAgent`) never holds up another
//! call on the same handle, and freeing a handle while another thread is inside a call
//! on it only drops the table's reference: the object lives until that call returns.
//!
//! ```
//! use std::sync::Arc;
//! use vdi_ffi_core::handle::{self, Entry};
//! use vdi_ffi_core::server::ServerSetObj;
//! let h = handle::insert(Entry::ServerSet(Arc::new(ServerSetObj::default()))).unwrap();
//! assert!(handle::server_set(h).is_ok());
//! assert!(handle::client_set(h).is_err()); // the wrong kind
//! assert!(handle::remove(h).is_some());
//! assert!(handle::server_set(h).is_err()); // freed
//! assert!(handle::remove(h).is_none()); // freed twice
//! assert!(handle::server_set(0).is_err()); // NULL
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use crate::client::{ClientDevObj, ClientSetObj};
use crate::fence::CError;
use crate::server::{ServerDevObj, ServerSetObj};

/// What a slot holds.
#[derive(Clone)]
pub enum Entry {
    /// A client set object (`ClientVirtualDeviceSet`).
    ClientSet(Arc<ClientSetObj>),
    /// A client device.
    ClientDevice(Arc<ClientDevObj>),
    /// A server set object.
    ServerSet(Arc<ServerSetObj>),
    /// A server device.
    ServerDevice(Arc<ServerDevObj>),
}

/// Slots in the table: the most handles (sets and devices) alive at once in a process.
pub const CAPACITY: usize = 16384;

struct Slot {
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    generation: u32,
    entry: Option<Entry>,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            inner: Mutex::new(SlotInner {
                generation: 0,
                entry: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        // A panic while a slot was locked cannot leave it half-written (each update is
        // one assignment), so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static SLOTS: [Slot; CAPACITY] = [const { Slot::new() }; CAPACITY];
/// Where the search for a free slot starts: slots are reused round-robin, so a freed
/// slot is taken again only after every other free slot has been.
static CURSOR: Mutex<usize> = Mutex::new(0);

fn split(h: u64) -> Option<(usize, u32)> {
    let index = (h & 0xFFFF_FFFF) as usize;
    let generation = (h >> 32) as u32;
    (index < CAPACITY && generation != 0).then_some((index, generation))
}

/// Stores `entry`; `None` when every slot is taken.
pub fn insert(entry: Entry) -> Option<u64> {
    let mut cursor = CURSOR.lock().unwrap_or_else(|e| e.into_inner());
    for step in 0..CAPACITY {
        let index = (*cursor + step) % CAPACITY;
        let mut s = SLOTS[index].lock();
        if s.entry.is_none() {
            // Generation 0 never names a live slot, so no handle is 0 (NULL).
            s.generation = s.generation.checked_add(1).unwrap_or(1);
            s.entry = Some(entry);
            *cursor = (index + 1) % CAPACITY;
            return Some((u64::from(s.generation) << 32) | index as u64);
        }
    }
    None
}

/// The entry behind `h`, if `h` is a live handle.
pub fn get(h: u64) -> Option<Entry> {
    let (index, generation) = split(h)?;
    let s = SLOTS[index].lock();
    if s.generation != generation {
        return None;
    }
    s.entry.clone()
}

/// Frees `h`: returns its entry, or `None` if `h` is not a live handle (NULL, foreign,
/// already freed).
pub fn remove(h: u64) -> Option<Entry> {
    let (index, generation) = split(h)?;
    let mut s = SLOTS[index].lock();
    if s.generation != generation {
        return None;
    }
    s.entry.take()
}

fn not_a(what: &str, h: u64) -> CError {
    if h == 0 {
        CError::invalid(format!("the {what} handle is NULL"))
    } else {
        CError::invalid(format!(
            "0x{h:x} is not a live {what} handle (freed, or not one this library handed out)"
        ))
    }
}

/// The client set behind `h`.
pub fn client_set(h: u64) -> Result<Arc<ClientSetObj>, CError> {
    match get(h) {
        Some(Entry::ClientSet(s)) => Ok(s),
        _ => Err(not_a("client set", h)),
    }
}

/// The client device behind `h`.
pub fn client_device(h: u64) -> Result<Arc<ClientDevObj>, CError> {
    match get(h) {
        Some(Entry::ClientDevice(d)) => Ok(d),
        _ => Err(not_a("client device", h)),
    }
}

/// The server set behind `h`.
pub fn server_set(h: u64) -> Result<Arc<ServerSetObj>, CError> {
    match get(h) {
        Some(Entry::ServerSet(s)) => Ok(s),
        _ => Err(not_a("server set", h)),
    }
}

/// The server device behind `h`.
pub fn server_device(h: u64) -> Result<Arc<ServerDevObj>, CError> {
    match get(h) {
        Some(Entry::ServerDevice(d)) => Ok(d),
        _ => Err(not_a("server device", h)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_miss_the_reused_slot() {
        let a = insert(Entry::ServerSet(Arc::default())).unwrap();
        assert!(remove(a).is_some());
        // Take every slot once more: one of them is a's, with a new generation.
        let all: Vec<u64> = (0..CAPACITY)
            .map_while(|_| insert(Entry::ServerSet(Arc::default())))
            .collect();
        assert!(
            all.iter()
                .any(|&h| split(h).unwrap().0 == split(a).unwrap().0)
        );
        assert!(get(a).is_none());
        assert!(insert(Entry::ServerSet(Arc::default())).is_none(), "full");
        for h in all {
            assert!(remove(h).is_some());
        }
    }

    #[test]
    fn foreign_values() {
        for h in [0, 1 << 40, u64::MAX, 0x7fff_dead_beef] {
            assert!(get(h).is_none());
            assert!(remove(h).is_none());
        }
    }
}
