//! A store that fails on purpose, for tests (the shape of redb's crash-consistency
//! backend): it wraps any store and, at the Nth write into an object, fails it with
//! "no space left on device" or writes only part of the data and then fails; or it fails
//! the commit. The client is tested against it: an interrupted write never leaves a
//! manifest, and the store's old backup stays whole.
//!
//! ```
//! use std::io::Write;
//! use vdi_backup::store::{Store, faulty::{Fault, FaultyStore}, mem::MemStore};
//! let store = FaultyStore::new(MemStore::new(), Fault::FailWrite(2));
//! let mut w = store.begin(false).unwrap();
//! let mut o = w.create("device-0.stream").unwrap();
//! o.write_all(b"first").unwrap();
//! assert!(o.write_all(b"second").is_err());
//! ```

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Commit, ObjectWriter, Properties, Store, StoreReader, StoreWriter};
use crate::Result;
use crate::error::{Kind, fail};

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The Nth write (counted over every object, from 1) fails with ENOSPC.
    FailWrite(u64),
    /// The Nth write stores only half its bytes, then fails with ENOSPC.
    CutWrite(u64),
    /// The Nth sync fails with EIO.
    FailSync(u64),
    /// The commit fails (before the manifest is stored).
    FailCommit,
}

/// Any store, with one fault.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    fault: Fault,
    writes: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
}

impl<S: Store> FaultyStore<S> {
    /// `inner`, failing as `fault` says.
    pub fn new(inner: S, fault: Fault) -> FaultyStore<S> {
        FaultyStore {
            inner,
            fault,
            writes: Arc::new(AtomicU64::new(0)),
            syncs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn describe(&self) -> String {
        format!(
            "{} (failing on purpose: {:?})",
            self.inner.describe(),
            self.fault
        )
    }
    fn properties(&self) -> Properties {
        self.inner.properties()
    }
    fn begin(&self, force: bool) -> Result<Box<dyn StoreWriter>> {
        Ok(Box::new(FaultyWriter {
            inner: self.inner.begin(force)?,
            fault: self.fault,
            writes: self.writes.clone(),
            syncs: self.syncs.clone(),
        }))
    }
    fn open(&self) -> Result<Box<dyn StoreReader>, crate::format::manifest::BackupError> {
        self.inner.open()
    }
}

#[derive(Debug)]
struct FaultyWriter {
    inner: Box<dyn StoreWriter>,
    fault: Fault,
    writes: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
}

impl StoreWriter for FaultyWriter {
    fn where_(&self, name: &str) -> String {
        self.inner.where_(name)
    }

    fn create(&mut self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(FaultyObject {
            inner: self.inner.create(name)?,
            fault: self.fault,
            writes: self.writes.clone(),
            syncs: self.syncs.clone(),
        }))
    }
    fn commit(self: Box<Self>, manifest: &[u8]) -> Result<Commit> {
        if self.fault == Fault::FailCommit {
            return Err(fail(
                Kind::Other,
                "the store failed the commit (on purpose)",
            ));
        }
        self.inner.commit(manifest)
    }
}

#[derive(Debug)]
struct FaultyObject {
    inner: Box<dyn ObjectWriter>,
    fault: Fault,
    writes: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
}

fn full() -> io::Error {
    io::Error::from_raw_os_error(28)
}

impl Write for FaultyObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.writes.fetch_add(1, Ordering::AcqRel) + 1;
        match self.fault {
            Fault::FailWrite(k) if k == n => Err(full()),
            Fault::CutWrite(k) if k == n => {
                self.inner.write_all(&buf[..buf.len() / 2])?;
                Err(full())
            }
            _ => self.inner.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for FaultyObject {
    fn sync(&mut self) -> io::Result<()> {
        let n = self.syncs.fetch_add(1, Ordering::AcqRel) + 1;
        match self.fault {
            Fault::FailSync(k) if k == n => Err(io::Error::from_raw_os_error(5)),
            _ => self.inner.sync(),
        }
    }
    fn finish(&mut self) -> io::Result<()> {
        self.inner.finish()
    }
}
