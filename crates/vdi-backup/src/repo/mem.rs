//! A repository in memory, for tests: the [`Location`] contract without a file system
//! (each backup a [`MemStore`]; a lease ends when it is dropped, as a process's `flock`
//! ends when the process dies).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

use super::{CatalogGuard, Lease, Location, parse_id};
use crate::Result;
use crate::error::{Kind, fail};
use crate::store::Store;
use crate::store::mem::MemStore;

#[derive(Debug, Default)]
struct State {
    marker: Option<Vec<u8>>,
    catalog: Option<Vec<u8>>,
    stores: BTreeMap<String, MemStore>,
    leases: BTreeMap<String, String>,
    catalog_held: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    freed: Condvar,
}

/// A repository in memory. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemLocation(Arc<Shared>);

impl MemLocation {
    /// An empty location (no repository yet).
    pub fn new() -> MemLocation {
        MemLocation::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the catalog (for tests: a lost catalog is rebuilt).
    pub fn lose_catalog(&self) {
        self.lock().catalog = None;
    }

    /// Replaces the catalog's bytes (for tests: a wrong catalog is corrected).
    pub fn tamper_catalog(&self, bytes: Vec<u8>) {
        self.lock().catalog = Some(bytes);
    }

    /// The memory store of backup `id`, if any (for tests).
    pub fn mem_store(&self, id: &str) -> Option<MemStore> {
        self.lock().stores.get(id).cloned()
    }
}

#[derive(Debug)]
struct MemLease {
    loc: MemLocation,
    id: String,
}

impl Lease for MemLease {}

impl Drop for MemLease {
    fn drop(&mut self) {
        self.loc.lock().leases.remove(&self.id);
    }
}

struct MemGuard(MemLocation);
impl CatalogGuard for MemGuard {}
impl Drop for MemGuard {
    fn drop(&mut self) {
        self.0.lock().catalog_held = false;
        self.0.0.freed.notify_all();
    }
}

impl Location for MemLocation {
    fn describe(&self) -> String {
        "memory repository".into()
    }

    fn place(&self, id: &str) -> String {
        format!("mem:{id}")
    }

    fn read_marker(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().marker.clone())
    }

    fn create(&self, marker: &[u8]) -> Result<()> {
        let mut st = self.lock();
        if st.marker.is_some() || !st.stores.is_empty() {
            return Err(fail(
                Kind::TargetExists,
                "the memory repository exists already",
            ));
        }
        st.marker = Some(marker.to_vec());
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>> {
        let st = self.lock();
        let mut ids: BTreeSet<String> = st
            .stores
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        ids.extend(st.leases.keys().cloned());
        Ok(ids.into_iter().collect())
    }

    fn store(&self, id: &str) -> Arc<dyn Store> {
        Arc::new(self.lock().stores.entry(id.to_owned()).or_default().clone())
    }

    fn read_catalog(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().catalog.clone())
    }

    fn write_catalog(&self, bytes: &[u8]) -> Result<()> {
        self.lock().catalog = Some(bytes.to_vec());
        Ok(())
    }

    fn lock_catalog(&self) -> Result<Box<dyn CatalogGuard>> {
        let mut st = self.lock();
        while st.catalog_held {
            st = self.0.freed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.catalog_held = true;
        Ok(Box::new(MemGuard(self.clone())))
    }

    fn lease(&self, id: &str, holder: &str) -> Result<Option<Box<dyn Lease>>> {
        let mut st = self.lock();
        if st.leases.contains_key(id) || st.stores.get(id).is_some_and(|s| !s.is_empty()) {
            return Ok(None);
        }
        st.leases.insert(id.to_owned(), holder.to_owned());
        Ok(Some(Box::new(MemLease {
            loc: self.clone(),
            id: id.to_owned(),
        })))
    }

    fn leased(&self, id: &str) -> Result<Option<String>> {
        Ok(self.lock().leases.get(id).cloned())
    }

    fn remove(&self, id: &str) -> Result<Vec<String>> {
        if parse_id(id).is_none() {
            return Err(fail(Kind::Usage, format!("'{id}' is not a backup id")));
        }
        let mut st = self.lock();
        let Some(s) = st.stores.get(id).cloned() else {
            return Ok(Vec::new());
        };
        if s.is_writing() {
            return Err(fail(
                Kind::SetBusy,
                format!("backup {id} is being written: it is not removed"),
            ));
        }
        let names = s.clear();
        st.stores.remove(id);
        Ok(names)
    }
}
