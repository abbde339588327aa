//! A store in memory, for tests: the same contract as a directory (one writer at a time,
//! nothing replaced without `force`, the manifest last, the old backup kept until the
//! new one is committed, in one step), without a file system.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::sync::{Arc, Mutex};

use super::{Commit, Object, ObjectWriter, Properties, Store, StoreReader, StoreWriter, Tracker};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::manifest::{BackupError, parse_manifest_any};

type Objects = BTreeMap<String, Arc<Mutex<Vec<u8>>>>;

#[derive(Debug, Default)]
struct State {
    /// The committed backup: its manifest and objects.
    manifest: Option<Vec<u8>>,
    objects: Objects,
    /// A writer holds the store.
    writing: bool,
    /// Commits so far (a reader opened before a commit is no longer current after it).
    generation: u64,
}

/// A store in memory. Clones share the same store.
#[derive(Clone, Debug, Default)]
pub struct MemStore(Arc<Mutex<State>>);

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed objects' names and contents (for tests).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let st = self.lock();
        st.objects
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                )
            })
            .collect()
    }

    /// Whether it holds nothing: no backup, no object, no writer.
    pub fn is_empty(&self) -> bool {
        let st = self.lock();
        st.manifest.is_none() && st.objects.is_empty() && !st.writing
    }

    /// Whether a writer holds it.
    pub fn is_writing(&self) -> bool {
        self.lock().writing
    }

    /// Removes the committed backup: its manifest first, then its objects; returns the
    /// names removed.
    pub fn clear(&self) -> Vec<String> {
        let mut st = self.lock();
        let mut names = Vec::new();
        if st.manifest.take().is_some() {
            names.push(crate::format::manifest::MANIFEST.to_owned());
        }
        names.extend(std::mem::take(&mut st.objects).into_keys());
        st.generation += 1;
        names
    }

    /// Replaces committed object `name` (for tests that tamper with a backup).
    pub fn tamper(&self, name: &str, bytes: Vec<u8>) {
        let mut st = self.lock();
        if name == crate::format::manifest::MANIFEST {
            st.manifest = Some(bytes);
        } else {
            st.objects
                .insert(name.to_owned(), Arc::new(Mutex::new(bytes)));
        }
    }
}

impl Store for MemStore {
    fn describe(&self) -> String {
        "memory store".into()
    }

    fn properties(&self) -> Properties {
        Properties {
            atomic_replace: true,
            keeps_manifest: true,
            max_streams: crate::format::stream::MAX_DEVICES,
        }
    }

    fn begin(&self, force: bool) -> Result<Box<dyn StoreWriter>> {
        let mut st = self.lock();
        if st.writing {
            return Err(fail(
                Kind::SetBusy,
                "the memory store is in use by another backup; wait for it to finish",
            ));
        }
        if !force && (st.manifest.is_some() || !st.objects.is_empty()) {
            return Err(fail(
                Kind::TargetExists,
                "the memory store already holds a backup; use --force to replace it",
            ));
        }
        st.writing = true;
        Ok(Box::new(MemWriter {
            store: self.clone(),
            staged: Objects::new(),
            tracker: Tracker::default(),
            committed: false,
        }))
    }

    fn open(&self) -> Result<Box<dyn StoreReader>, BackupError> {
        let st = self.lock();
        Ok(Box::new(MemReader {
            store: self.clone(),
            manifest: st.manifest.clone(),
            objects: st.objects.clone(),
            generation: st.generation,
        }))
    }
}

#[derive(Debug)]
struct MemWriter {
    store: MemStore,
    staged: Objects,
    tracker: Tracker,
    committed: bool,
}

#[derive(Debug)]
struct MemObject(Arc<Mutex<Vec<u8>>>);

impl Write for MemObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemObject {
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StoreWriter for MemWriter {
    fn where_(&self, name: &str) -> String {
        format!("in {name} of the memory store")
    }

    fn create(&mut self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        if self.staged.contains_key(name) {
            return Err(fail(
                Kind::Other,
                format!("object {name} was already created"),
            ));
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        self.staged.insert(name.to_owned(), buf.clone());
        Ok(self.tracker.track(name, MemObject(buf)))
    }

    fn commit(mut self: Box<Self>, manifest: &[u8]) -> Result<Commit> {
        self.tracker.all_finished()?;
        let mut st = self.store.lock();
        let replaced = st
            .manifest
            .as_deref()
            .and_then(|m| parse_manifest_any(m).ok())
            .map(|m| m.backup_id);
        // The new backup and the old one's removal, in one step.
        st.objects = std::mem::take(&mut self.staged);
        st.manifest = Some(manifest.to_vec());
        st.generation += 1;
        st.writing = false;
        self.committed = true;
        Ok(Commit {
            replaced,
            ..Commit::default()
        })
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        if !self.committed {
            // What it wrote is dropped with it; the old backup is untouched.
            self.store.lock().writing = false;
        }
    }
}

#[derive(Debug)]
struct MemReader {
    store: MemStore,
    manifest: Option<Vec<u8>>,
    objects: Objects,
    generation: u64,
}

impl StoreReader for MemReader {
    fn place(&self) -> String {
        "the memory store".into()
    }

    fn place_of(&self, name: &str) -> String {
        format!("{name} in the memory store")
    }

    fn read_manifest(&self) -> Result<Option<Vec<u8>>, BackupError> {
        match &self.manifest {
            Some(m) if m.len() as u64 > super::MAX_MANIFEST_BYTES => {
                Err(BackupError::BadManifest {
                    place: self.place_of(crate::format::manifest::MANIFEST),
                    what: format!(
                        "it has {} bytes, more than the {} a manifest can have",
                        m.len(),
                        super::MAX_MANIFEST_BYTES
                    ),
                })
            }
            m => Ok(m.clone()),
        }
    }

    fn open(&self, name: &str) -> Result<Object, String> {
        let o = self.objects.get(name).ok_or("is missing")?;
        let bytes = o.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Object {
            len: Some(bytes.len() as u64),
            reader: Box::new(Cursor::new(bytes)),
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.objects.keys().cloned().collect())
    }

    fn still_current(&self) -> bool {
        self.store.lock().generation == self.generation
    }
}
