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
//! Each thread also keeps the last few handles of each kind it looked up, as weak
//! references checked against the slot's `live` word: a thread calling the same device
//! over and over (the per-command path) then takes no lock. Weak, so a cache never keeps
//! a freed object alive; checked, so it never finds a freed or reused handle.
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

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::LocalKey;

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
    /// The live handle of this slot (0 when free): written under `inner`'s lock, read
    /// without it by the per-thread caches.
    live: AtomicU64,
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
            live: AtomicU64::new(0),
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
            let h = (u64::from(s.generation) << 32) | index as u64;
            SLOTS[index].live.store(h, Ordering::Release);
            return Some(h);
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
    // Before the entry goes: a cache that still sees the handle live can only upgrade
    // its weak reference while some call still holds the object.
    SLOTS[index].live.store(0, Ordering::Release);
    s.entry.take()
}

// ---------------------------------------------------------------------------------------
// Per-thread caches

/// Ways of each per-thread cache (direct-mapped by slot index).
const WAYS: usize = 4;

/// The last handles of one kind this thread looked up, as weak references: a hit costs
/// a load of the slot's `live` word and an upgrade, instead of the slot's lock and an
/// `Arc` clone (the C client's GetCommand and CompleteCommand each look their device up).
/// Weak, so a cache never keeps a freed object alive; checked against `live`, so a freed
/// or reused handle is not found, as in the table.
struct Cache<T> {
    ways: [(u64, Weak<T>); WAYS],
}

impl<T> Cache<T> {
    const fn new() -> Cache<T> {
        Cache {
            ways: [const { (0, Weak::new()) }; WAYS],
        }
    }
}

type LocalCache<T> = LocalKey<RefCell<Cache<T>>>;

thread_local! {
    static CLIENT_SETS: RefCell<Cache<ClientSetObj>> = const { RefCell::new(Cache::new()) };
    static CLIENT_DEVICES: RefCell<Cache<ClientDevObj>> = const { RefCell::new(Cache::new()) };
    static SERVER_SETS: RefCell<Cache<ServerSetObj>> = const { RefCell::new(Cache::new()) };
    static SERVER_DEVICES: RefCell<Cache<ServerDevObj>> = const { RefCell::new(Cache::new()) };
}

fn cached<T>(cache: &'static LocalCache<T>, h: u64) -> Option<Arc<T>> {
    let (index, _) = split(h)?;
    // Acquire: pairs with the Release stores of insert/remove.
    if SLOTS[index].live.load(Ordering::Acquire) != h {
        return None;
    }
    cache
        .try_with(|c| {
            let c = c.try_borrow().ok()?;
            let (k, w) = &c.ways[index % WAYS];
            if *k == h { w.upgrade() } else { None }
        })
        .ok()
        .flatten()
}

fn remember<T>(cache: &'static LocalCache<T>, h: u64, obj: &Arc<T>) {
    if let Some((index, _)) = split(h) {
        // try_with: a call from a thread being torn down just does not cache.
        let _ = cache.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.ways[index % WAYS] = (h, Arc::downgrade(obj));
            }
        });
    }
}

/// A typed look-up: the thread's cache, else the table (and then the cache remembers).
fn lookup<T>(
    cache: &'static LocalCache<T>,
    h: u64,
    what: &str,
    pick: impl FnOnce(Entry) -> Option<Arc<T>>,
) -> Result<Arc<T>, CError> {
    if let Some(obj) = cached(cache, h) {
        return Ok(obj);
    }
    match get(h).and_then(pick) {
        Some(obj) => {
            remember(cache, h, &obj);
            Ok(obj)
        }
        None => Err(not_a(what, h)),
    }
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
    lookup(&CLIENT_SETS, h, "client set", |e| match e {
        Entry::ClientSet(s) => Some(s),
        _ => None,
    })
}

/// The client device behind `h`.
pub fn client_device(h: u64) -> Result<Arc<ClientDevObj>, CError> {
    lookup(&CLIENT_DEVICES, h, "client device", |e| match e {
        Entry::ClientDevice(d) => Some(d),
        _ => None,
    })
}

/// The server set behind `h`.
pub fn server_set(h: u64) -> Result<Arc<ServerSetObj>, CError> {
    lookup(&SERVER_SETS, h, "server set", |e| match e {
        Entry::ServerSet(s) => Some(s),
        _ => None,
    })
}

/// The server device behind `h`.
pub fn server_device(h: u64) -> Result<Arc<ServerDevObj>, CError> {
    lookup(&SERVER_DEVICES, h, "server device", |e| match e {
        Entry::ServerDevice(d) => Some(d),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test at a time uses the (process-wide) table: one of them fills it.
    static TABLE: Mutex<()> = Mutex::new(());

    #[test]
    fn stale_handles_miss_the_reused_slot() {
        let _t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
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
    fn cached_lookups_follow_the_table() {
        let _t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let a = insert(Entry::ServerSet(Arc::default())).unwrap();
        let first = server_set(a).unwrap(); // from the table, now cached
        let again = server_set(a).unwrap(); // from the cache
        assert!(Arc::ptr_eq(&first, &again));
        assert!(client_set(a).is_err(), "the wrong kind, cached or not");
        drop((first, again));
        assert!(remove(a).is_some());
        assert!(server_set(a).is_err(), "freed: the cache does not answer");
        // The slot again, with a new generation: the old handle still misses.
        let b = insert(Entry::ServerSet(Arc::default())).unwrap();
        assert!(server_set(b).is_ok());
        assert!(server_set(a).is_err());
        // Freed while a call holds the object: the cache does not bring it back.
        let held = server_set(b).unwrap();
        assert!(remove(b).is_some());
        assert!(server_set(b).is_err());
        drop(held);
    }

    #[test]
    fn foreign_values() {
        for h in [0, 1 << 40, u64::MAX, 0x7fff_dead_beef] {
            assert!(get(h).is_none());
            assert!(remove(h).is_none());
        }
    }
}
