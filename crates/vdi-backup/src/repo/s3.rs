//! A repository in S3-compatible object storage ([`S3Location`], `s3://BUCKET/REPO`): the
//! layout of a directory repository, as keys.
//!
//! ```text
//! s3://BUCKET/REPO/
//!   vdi-repository.json      the marker
//!   catalog.json             the catalog, replaced by one PUT (atomic in S3)
//!   locks/ID                 the lease of a running backup: {"host", "pid", "started", "holder"}
//!   ID/                      one backup, as `vdi backup SOURCE s3://BUCKET/PREFIX` writes it
//! ```
//!
//! Object storage has no `flock`: a lease is an object, live while its holder runs. A lease
//! of this host whose process is gone is stale (taken for dead, as the kernel would
//! release a `flock`); one of another host is live until it is removed, since vdi cannot
//! tell. The catalog is not locked (contract 3 allows it): two backups recording at once
//! may lose an entry, which the next listing rebuilds from the manifests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::{CATALOG, CatalogGuard, Lease, Location, MARKER, parse_id};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::manifest::MANIFEST;
use crate::store::Store;
use crate::store::s3::{LockInfo, S3Store};

const LOCKS: &str = "locks";

/// The ids this process holds leases of, per repository.
static LEASED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn leased_here() -> std::sync::MutexGuard<'static, Option<HashSet<String>>> {
    LEASED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A repository at `s3://BUCKET/REPO`.
#[derive(Debug)]
pub struct S3Location {
    url: String,
    root: S3Store,
}

impl S3Location {
    /// The repository at `url` (`s3://BUCKET/REPO`), with the options configured for S3
    /// stores; nothing is asked of the server yet.
    pub fn new(url: &str) -> Result<S3Location> {
        let root = S3Store::new(url)?;
        Ok(S3Location {
            url: root.url(),
            root,
        })
    }

    /// With explicit options (tests, library users).
    pub fn with_options(url: &str, opts: crate::store::s3::S3Options) -> Result<S3Location> {
        let root = S3Store::with_options(url, opts.clone())?;
        Ok(S3Location {
            url: root.url(),
            root,
        })
    }

    fn lock_name(id: &str) -> String {
        format!("{LOCKS}/{id}")
    }

    fn lease_info(&self, id: &str) -> Result<Option<LockInfo>> {
        let b = self.root.bucket()?;
        Ok(self
            .root
            .get_small(b, &Self::lock_name(id), 1 << 16)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).unwrap_or(LockInfo {
                    host: String::new(),
                    pid: 0,
                    started: 0,
                    holder: "another process (its lease cannot be read)".into(),
                })
            }))
    }
}

#[derive(Debug)]
struct S3Lease {
    root: S3Store,
    key: String,
    tag: String,
}

impl Lease for S3Lease {}

impl Drop for S3Lease {
    fn drop(&mut self) {
        if let Ok(b) = self.root.bucket()
            && let Err(e) = self.root.delete_keys(b, vec![self.key.clone()])
        {
            tracing::warn!("cannot remove the lease {}: {e}", self.key);
        }
        if let Some(s) = leased_here().as_mut() {
            s.remove(&self.tag);
        }
    }
}

struct NoGuard;
impl CatalogGuard for NoGuard {}

impl Location for S3Location {
    fn describe(&self) -> String {
        format!("repository {}", self.url)
    }

    fn place(&self, id: &str) -> String {
        if id.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{id}", self.url)
        }
    }

    fn read_marker(&self) -> Result<Option<Vec<u8>>> {
        let b = self.root.bucket()?;
        self.root.get_small(b, MARKER, 1 << 16)
    }

    fn create(&self, marker: &[u8]) -> Result<()> {
        let b = self.root.bucket()?;
        let names = self.root.list_names(b)?;
        if !names.is_empty() {
            let what = if names.iter().any(|(n, _)| n == MARKER) {
                "is a repository already"
            } else if names.iter().any(|(n, _)| n == MANIFEST) {
                "holds a backup"
            } else {
                "holds other objects"
            };
            return Err(fail(
                Kind::TargetExists,
                format!(
                    "{} {what}: make the repository under another prefix",
                    self.url
                ),
            ));
        }
        self.root
            .put_small(b, MARKER, marker.to_vec(), Default::default())
    }

    fn list(&self) -> Result<Vec<String>> {
        let b = self.root.bucket()?;
        let mut ids: Vec<String> = self
            .root
            .list_dirs(b)?
            .into_iter()
            .filter(|d| parse_id(d).is_some())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn store(&self, id: &str) -> Arc<dyn Store> {
        Arc::new(self.root.child(id))
    }

    fn read_catalog(&self) -> Result<Option<Vec<u8>>> {
        let b = self.root.bucket()?;
        self.root.get_small(b, CATALOG, 64 << 20)
    }

    fn write_catalog(&self, bytes: &[u8]) -> Result<()> {
        let b = self.root.bucket()?;
        self.root
            .put_small(b, CATALOG, bytes.to_vec(), Default::default())
    }

    fn lock_catalog(&self) -> Result<Box<dyn CatalogGuard>> {
        Ok(Box::new(NoGuard))
    }

    fn lease(&self, id: &str, holder: &str) -> Result<Option<Box<dyn Lease>>> {
        if parse_id(id).is_none() {
            return Err(fail(Kind::Usage, format!("'{id}' is not a backup id")));
        }
        let tag = format!("{} {id}", self.url);
        {
            let mut g = leased_here();
            if !g.get_or_insert_with(HashSet::new).insert(tag.clone()) {
                return Ok(None);
            }
        }
        let release = || {
            if let Some(s) = leased_here().as_mut() {
                s.remove(&tag);
            }
        };
        let b = match self.root.bucket() {
            Ok(b) => b,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        let used = self
            .lease_info(id)
            .map(|l| l.is_some())
            .and_then(|leased| Ok(leased || self.list().map(|ids| ids.iter().any(|i| i == id))?));
        match used {
            Ok(false) => {}
            Ok(true) => {
                release();
                return Ok(None);
            }
            Err(e) => {
                release();
                return Err(e);
            }
        }
        let mut info = LockInfo::here();
        info.holder = holder.to_owned();
        let put = serde_json::to_vec(&info)
            .map_err(crate::Error::from)
            .and_then(|bytes| {
                self.root
                    .put_small(b, &Self::lock_name(id), bytes, Default::default())
            });
        if let Err(e) = put {
            release();
            return Err(e);
        }
        Ok(Some(Box::new(S3Lease {
            root: self.root.child(""),
            key: self.root.key(&Self::lock_name(id)),
            tag,
        })))
    }

    fn leased(&self, id: &str) -> Result<Option<String>> {
        if leased_here()
            .as_ref()
            .is_some_and(|s| s.contains(&format!("{} {id}", self.url)))
        {
            return Ok(Some(crate::repo::holder_here()));
        }
        match self.lease_info(id)? {
            Some(l) if l.live() => Ok(Some(l.holder)),
            Some(_) => {
                // Its holder is gone (this host, no such process): stale.
                let b = self.root.bucket()?;
                let _ = self
                    .root
                    .delete_keys(b, vec![self.root.key(&Self::lock_name(id))]);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn remove(&self, id: &str) -> Result<Vec<String>> {
        if parse_id(id).is_none() {
            return Err(fail(Kind::Usage, format!("'{id}' is not a backup id")));
        }
        if let Some(h) = self.leased(id)? {
            return Err(fail(
                Kind::SetBusy,
                format!("backup {id} is being written ({h}): it is not removed"),
            ));
        }
        let b = self.root.bucket()?;
        let store = self.root.child(id);
        let sb = store.bucket()?;
        let names = store.list_names(sb)?;
        let mut removed = Vec::new();
        // The manifest first: a removal cut short leaves an incomplete backup.
        if names.iter().any(|(n, _)| n == MANIFEST) {
            store.delete_keys(sb, vec![store.key(MANIFEST)])?;
            removed.push(MANIFEST.to_owned());
        }
        let rest: Vec<String> = names
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n != MANIFEST)
            .collect();
        store.delete_keys(b, rest.iter().map(|n| store.key(n)).collect())?;
        // Named as in a backup directory (a stream without its generation).
        removed.extend(
            rest.iter()
                .map(|n| n.rsplit('/').next().unwrap_or(n).to_owned()),
        );
        Ok(removed)
    }

    fn has_manifest(&self, id: &str) -> Result<bool> {
        let b = self.root.bucket()?;
        self.root.exists(b, &format!("{id}/{MANIFEST}"))
    }
}
