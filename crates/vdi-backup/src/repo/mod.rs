//! A repository: many backups in one [`Location`], each under a time-ordered id, with a
//! catalog that lists them, and retention ([`Repo::expire`]).
//!
//! A [`Store`] holds one backup; a repository is a layer over a *location* that holds
//! many, one [`Store`] per backup id. The location is the seam a new kind of storage
//! implements (a directory: [`dir::DirLocation`]; memory: [`mem::MemLocation`]; S3:
//! `s3::S3Location`, with the `s3` feature):
//! list the ids it holds, give the store of an id, keep a small catalog object replaced in
//! one step, remove a backup's objects, and make a running backup's id visible with a
//! lease so that an expire never removes it.
//!
//! # Layout (a directory; an object store uses the same names as keys)
//!
//! ```text
//! REPO/
//!   vdi-repository.json          the marker: {"format": "vdi-repository", "version": 1, ...}
//!   catalog.json                 the catalog: one entry per complete backup (a cache of the
//!                                manifests, rebuilt from them whenever it is lost or wrong)
//!   locks/20261207T171500Z-3fa9  the lease of a running backup (held while it runs)
//!   20261207T171500Z-3fa9/       one backup, exactly as `vdi backup DIR` writes it:
//!     manifest.json              written last
//!     device-0.stream[.zst] ...
//! ```
//!
//! # The contract of a [`Location`]
//!
//! `tests/conformance_repos.rs` checks it for every implementation:
//!
//! 1. **Ids.** [`Location::list`] returns the ids of every backup that has anything
//!    stored (complete, running or left by an interrupted one), and nothing else.
//! 2. **Leases first.** A backup takes its id's lease ([`Location::lease`]) before it
//!    stores anything under the id, and holds it until its manifest is committed and the
//!    catalog updated; a lease is exclusive (a second one for the same id is refused, which
//!    is how two backups never share an id). [`Location::leased`] tells whether a live
//!    lease holds an id: a lease whose holder died is not live (a directory's lease is a
//!    `flock`, released by the kernel).
//! 3. **The catalog in one step.** [`Location::write_catalog`] replaces it whole or not
//!    at all; readers never see a mix. It is only a cache: [`Repo::entries`] reconciles it
//!    with [`Location::list`] and the manifests on every read, so a lost update (two
//!    backups at once on a store without a lock) or a lost catalog costs a rebuild, never
//!    a wrong listing.
//! 4. **Removal, manifest first.** [`Location::remove`] removes a backup's manifest
//!    before its streams, so a removal cut short leaves an incomplete backup (listed as
//!    such, removed by the next expire), never a complete-looking one with streams
//!    missing. It never removes a backup that is being written.
//!
//! # Plain backups
//!
//! A directory written by `vdi backup SOURCE DIR` where `DIR` is not a repository is a
//! *plain backup* (its manifest and streams at the top, as before repositories). It keeps
//! working everywhere a backup is named (`vdi restore DIR`, `vdi verify DIR`), and
//! `vdi list` / `vdi info` / `vdi restore DIR:latest` read it as a one-backup repository.
//! It is never expired (nothing to keep or remove) and never turned into a repository:
//! `vdi init REPO` makes one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::{Kind, fail};
use crate::format::manifest::{self, Manifest};
use crate::store::Store;
use crate::util::now_secs;

pub mod dir;
pub mod mem;
#[cfg(feature = "s3")]
pub mod s3;
pub mod time;

pub use time::{BackupIdTime, new_id, parse_id};

/// The marker object's name.
pub const MARKER: &str = "vdi-repository.json";
/// The catalog object's name.
pub const CATALOG: &str = "catalog.json";
/// The value of the marker's and the catalog's `format` field.
pub const FORMAT: &str = "vdi-repository";
/// The repository format this code writes and reads.
pub const VERSION: u32 = 1;

/// Where a repository's backups are kept (see the module's contract).
pub trait Location: Send + Sync + fmt::Debug {
    /// How messages name it (`repository /backups/shop`).
    fn describe(&self) -> String;
    /// How messages name backup `id` in it (`/backups/shop/20261207T171500Z-3fa9`).
    fn place(&self, id: &str) -> String;
    /// The marker's bytes, `None` if there is none (not a repository).
    fn read_marker(&self) -> Result<Option<Vec<u8>>>;
    /// Makes the repository: stores the marker. Refused (`TargetExists`) where a
    /// repository or anything else already is.
    fn create(&self, marker: &[u8]) -> Result<()>;
    /// The ids of the backups it holds (complete, running or interrupted), any order.
    fn list(&self) -> Result<Vec<String>>;
    /// The store of backup `id` (one backup, with the [`Store`] contract).
    fn store(&self, id: &str) -> Arc<dyn Store>;
    /// The catalog's bytes, `None` if there is none.
    fn read_catalog(&self) -> Result<Option<Vec<u8>>>;
    /// Replaces the catalog in one step.
    fn write_catalog(&self, bytes: &[u8]) -> Result<()>;
    /// Holds off other writers of the catalog until the guard is dropped (a read, a
    /// change and a write of the catalog in between). A location that cannot lock may
    /// return a guard that does nothing: the catalog is reconciled on every read.
    fn lock_catalog(&self) -> Result<Box<dyn CatalogGuard>>;
    /// Takes the lease of `id` for a backup about to be stored under it, naming its
    /// `holder` (host, process); `None` if `id` is leased or used already.
    fn lease(&self, id: &str, holder: &str) -> Result<Option<Box<dyn Lease>>>;
    /// The holder of `id`'s live lease, if a running backup holds it.
    fn leased(&self, id: &str) -> Result<Option<String>>;
    /// Removes backup `id`: its manifest first, then its streams, then the backup
    /// itself; returns the names of the objects removed. Refused for a backup being
    /// written.
    fn remove(&self, id: &str) -> Result<Vec<String>>;
    /// Whether backup `id` has its manifest committed (a catalog entry is trusted only
    /// while it has). The default reads it through the store; an object store may just
    /// ask whether the object exists.
    fn has_manifest(&self, id: &str) -> Result<bool> {
        Ok(self
            .store(id)
            .open()
            .ok()
            .and_then(|r| r.read_manifest().ok().flatten())
            .is_some())
    }
    /// A plain backup read as a one-backup repository (read-only; never expired).
    fn is_plain(&self) -> bool {
        false
    }
}

/// The lease of a running backup's id: held until dropped.
pub trait Lease: Send + fmt::Debug {}

/// A hold on the catalog: released when dropped.
pub trait CatalogGuard: Send {}

/// Whether a backup of the catalog is complete, running or left by an interrupted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its manifest is committed.
    Complete,
    /// A backup holds its lease and is writing it.
    Running,
    /// No manifest and no live lease: a backup that failed or was killed (an expire
    /// removes what it left).
    Incomplete,
}

impl State {
    /// `complete`, `running`, `incomplete`.
    pub fn word(self) -> &'static str {
        match self {
            State::Complete => "complete",
            State::Running => "running",
            State::Incomplete => "incomplete",
        }
    }
}

/// One backup of a repository, as `vdi list` shows it and the catalog keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The backup's id in the repository (`20261207T171500Z-3fa9`).
    pub id: String,
    /// Complete, running or incomplete (only complete entries are stored in the catalog).
    pub state: State,
    /// The manifest's backup id (32 hex digits).
    #[serde(default)]
    pub backup_id: Option<String>,
    /// The source as named (`sqlite:shop.db`).
    #[serde(default)]
    pub source: Option<String>,
    /// Its kind (`sqlite`, `file`, `stdin`, ...).
    #[serde(default)]
    pub kind: Option<String>,
    /// Bytes of the source (the original), if known.
    #[serde(default)]
    pub original_bytes: Option<u64>,
    /// Bytes the engine streamed.
    #[serde(default)]
    pub stream_bytes: Option<u64>,
    /// Bytes stored.
    #[serde(default)]
    pub stored_bytes: Option<u64>,
    /// Devices (= stream objects).
    #[serde(default)]
    pub devices: Option<u32>,
    /// `none`, `zstd:LEVEL` or `lz4`.
    #[serde(default)]
    pub compression: Option<String>,
    /// Where an encrypted backup's key comes from (`key file`, `passphrase`); absent for
    /// a backup that is not encrypted (and in catalogs written before encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// When it started, seconds since the Unix epoch (from the id for a backup without
    /// a manifest).
    pub started: u64,
    /// When it completed.
    #[serde(default)]
    pub completed: Option<u64>,
    /// Seconds from start to completion.
    #[serde(default)]
    pub duration_seconds: Option<u64>,
    /// The machine that made it.
    #[serde(default)]
    pub host: Option<String>,
    /// The tool that made it (`vdi 0.1.0`).
    #[serde(default)]
    pub tool: Option<String>,
    /// Whether the source could tell it ended normally (false: standard input).
    #[serde(default)]
    pub source_checked: Option<bool>,
    /// For a running backup: who holds its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl Entry {
    /// The entry of a complete backup `id` with `m`.
    pub fn of_manifest(id: &str, m: &Manifest) -> Entry {
        Entry {
            id: id.to_owned(),
            state: State::Complete,
            backup_id: Some(m.backup_id.clone()),
            source: Some(m.source.name.clone()),
            kind: Some(m.source.kind.clone()),
            original_bytes: m.source.bytes,
            stream_bytes: Some(m.total_stream_bytes),
            stored_bytes: Some(m.total_stored_bytes),
            devices: Some(m.device_count),
            compression: Some(m.compression.label()),
            encryption: m.encryption.as_ref().map(|e| e.key.kind().to_owned()),
            started: m.started,
            completed: Some(m.completed),
            duration_seconds: Some(m.completed.saturating_sub(m.started)),
            host: m.host.clone(),
            tool: Some(m.tool.clone()),
            source_checked: Some(m.source.checked),
            holder: None,
        }
    }

    /// The entry of a backup `id` without a manifest.
    fn without_manifest(id: &str, state: State, holder: Option<String>) -> Entry {
        Entry {
            id: id.to_owned(),
            state,
            backup_id: None,
            source: None,
            kind: None,
            original_bytes: None,
            stream_bytes: None,
            stored_bytes: None,
            devices: None,
            compression: None,
            encryption: None,
            started: parse_id(id).map_or(0, |t| t.secs),
            completed: None,
            duration_seconds: None,
            host: None,
            tool: None,
            source_checked: None,
            holder,
        }
    }
}

/// The catalog object.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Catalog {
    format: String,
    version: u32,
    /// Complete backups, by id.
    backups: Vec<Entry>,
}

impl Catalog {
    fn parse(bytes: &[u8]) -> Option<Catalog> {
        let c: Catalog = serde_json::from_slice(bytes).ok()?;
        (c.format == FORMAT && c.version == VERSION).then_some(c)
    }

    fn bytes(entries: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
        let c = Catalog {
            format: FORMAT.into(),
            version: VERSION,
            backups: entries.values().cloned().collect(),
        };
        let mut v = serde_json::to_vec_pretty(&c)?;
        v.push(b'\n');
        Ok(v)
    }
}

/// The marker object.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    tool: String,
}

/// A repository, opened.
#[derive(Clone, Debug)]
pub struct Repo {
    loc: Arc<dyn Location>,
}

/// What a listing found besides the entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Every backup, oldest first (ids sort by time).
    pub entries: Vec<Entry>,
    /// The catalog was missing or wrong, and was rebuilt from the manifests.
    pub rebuilt: bool,
    /// What could not be read (a backup whose manifest is unreadable is listed as
    /// incomplete, and said here).
    pub notes: Vec<String>,
}

impl Listing {
    /// The newest complete backup.
    pub fn latest(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.state == State::Complete)
    }
}

/// Who holds a lease: this host and process.
pub fn holder_here() -> String {
    format!(
        "host {}, process {} ({})",
        crate::util::host_name(),
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )
}

impl Repo {
    /// Makes a new repository in `loc`.
    pub fn init(loc: Arc<dyn Location>) -> Result<Repo> {
        let m = Marker {
            format: FORMAT.into(),
            version: VERSION,
            created: now_secs(),
            tool: format!("vdi {}", env!("CARGO_PKG_VERSION")),
        };
        let mut bytes = serde_json::to_vec_pretty(&m)?;
        bytes.push(b'\n');
        loc.create(&bytes)?;
        let repo = Repo { loc };
        repo.loc.write_catalog(&Catalog::bytes(&BTreeMap::new())?)?;
        Ok(repo)
    }

    /// Opens the repository in `loc`; `None` if `loc` holds none (no marker).
    pub fn open(loc: Arc<dyn Location>) -> Result<Option<Repo>> {
        let Some(bytes) = loc.read_marker()? else {
            return Ok(None);
        };
        let m: Marker = serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                Kind::Damaged,
                format!(
                    "{} has a {MARKER} that cannot be read ({e}): it is not a vdi repository, or its marker was damaged",
                    loc.describe()
                ),
            )
        })?;
        if m.format != FORMAT {
            return Err(fail(
                Kind::Damaged,
                format!(
                    "{}: {MARKER} says format '{}', not '{FORMAT}'",
                    loc.describe(),
                    m.format
                ),
            ));
        }
        if m.version != VERSION {
            return Err(fail(
                Kind::Damaged,
                format!(
                    "{} is a version {} repository; this vdi reads version {VERSION}",
                    loc.describe(),
                    m.version
                ),
            ));
        }
        Ok(Some(Repo { loc }))
    }

    /// The location.
    pub fn location(&self) -> &Arc<dyn Location> {
        &self.loc
    }

    /// How messages name it.
    pub fn describe(&self) -> String {
        self.loc.describe()
    }

    /// Starts a new backup now: a new id, leased (see [`Repo::begin_at`]).
    pub fn begin(&self) -> Result<RepoBackup> {
        self.begin_at(now_secs())
    }

    /// Starts a new backup whose id says `secs` (seconds since the Unix epoch; tests and
    /// imports): picks an id not in use and takes its lease before anything is stored.
    pub fn begin_at(&self, secs: u64) -> Result<RepoBackup> {
        let holder = holder_here();
        // Backups started one after the other within a second still sort in order: the
        // suffix is drawn above the largest one of that second.
        let existing = self.loc.list().unwrap_or_default();
        for _ in 0..32 {
            let id = time::new_id_after(secs, &existing);
            if let Some(lease) = self.loc.lease(&id, &holder)? {
                return Ok(RepoBackup {
                    store: self.loc.store(&id),
                    id,
                    lease: Some(lease),
                    repo: self.clone(),
                });
            }
        }
        Err(fail(
            Kind::SetBusy,
            format!(
                "{}: no free backup id could be found (every one tried is leased); try again",
                self.describe()
            ),
        ))
    }

    /// Reads the catalog and reconciles it with the ids the location holds: a backup not
    /// in the catalog is looked up (running if leased, complete if its manifest is
    /// committed, else incomplete); an entry whose backup is gone is dropped. A catalog
    /// that is missing or wrong is rebuilt from the manifests and stored again (where
    /// the location can be written).
    pub fn entries(&self) -> Result<Listing> {
        let _guard = self.loc.lock_catalog().ok();
        let mut ids = self.loc.list()?;
        ids.sort();
        let stored = self.loc.read_catalog()?;
        let parsed = stored.as_deref().and_then(Catalog::parse);
        let mut listing = Listing {
            rebuilt: parsed.is_none() && !self.loc.is_plain(),
            ..Listing::default()
        };
        let mut catalog: BTreeMap<String, Entry> = parsed
            .map(|c| {
                c.backups
                    .into_iter()
                    .filter(|e| e.state == State::Complete)
                    .map(|e| (e.id.clone(), e))
                    .collect()
            })
            .unwrap_or_default();
        let before = catalog.clone();
        // An entry stays only while its backup is there, complete.
        catalog.retain(|id, _| {
            ids.binary_search(id).is_ok() && self.loc.has_manifest(id).unwrap_or(false)
        });
        for id in &ids {
            if let Some(e) = catalog.get(id) {
                listing.entries.push(e.clone());
                continue;
            }
            let e = self.look_up(id, &mut listing.notes)?;
            if e.state == State::Complete {
                catalog.insert(id.clone(), e.clone());
            }
            listing.entries.push(e);
        }
        if (catalog != before || listing.rebuilt)
            && let Ok(b) = Catalog::bytes(&catalog)
        {
            // Best effort: a read-only repository is still listed.
            let _ = self.loc.write_catalog(&b);
        }
        Ok(listing)
    }

    /// What backup `id` is, from its lease and its manifest.
    fn look_up(&self, id: &str, notes: &mut Vec<String>) -> Result<Entry> {
        if let Some(h) = self.loc.leased(id)? {
            return Ok(Entry::without_manifest(id, State::Running, Some(h)));
        }
        let store = self.loc.store(id);
        match crate::store::open_backup(store.as_ref()) {
            Ok(o) => Ok(Entry::of_manifest(id, &o.manifest)),
            Err(manifest::BackupError::NoManifest { .. }) => {
                Ok(Entry::without_manifest(id, State::Incomplete, None))
            }
            Err(e) => {
                notes.push(format!("{}: {e}", self.loc.place(id)));
                Ok(Entry::without_manifest(id, State::Incomplete, None))
            }
        }
    }

    /// The backup `selector` names: `latest` (the newest complete one), a whole id, or
    /// the start of exactly one id.
    pub fn resolve(&self, selector: &str) -> Result<Entry> {
        let listing = self.entries()?;
        if selector == "latest" {
            return listing.latest().cloned().ok_or_else(|| {
                fail(
                    Kind::Input,
                    format!(
                        "{} holds no complete backup yet{}: make one with vdi backup SOURCE {}",
                        self.describe(),
                        if listing.entries.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} incomplete or running)", listing.entries.len())
                        },
                        self.loc.place("").trim_end_matches('/')
                    ),
                )
            });
        }
        let hits: Vec<&Entry> = listing
            .entries
            .iter()
            .filter(|e| e.id == selector || e.id.starts_with(selector))
            .collect();
        let exact = hits.iter().find(|e| e.id == selector);
        let e = match (exact, hits.as_slice()) {
            (Some(e), _) => *e,
            (None, [e]) => *e,
            (None, []) => {
                return Err(fail(
                    Kind::Input,
                    format!(
                        "{} holds no backup {selector}: vdi list {} shows the ids (or use :latest)",
                        self.describe(),
                        self.loc.place("").trim_end_matches('/')
                    ),
                ));
            }
            (None, many) => {
                return Err(fail(
                    Kind::Usage,
                    format!(
                        "{selector} is the start of {} backup ids ({}): give more of it",
                        many.len(),
                        many.iter()
                            .map(|e| e.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        match e.state {
            State::Complete => Ok(e.clone()),
            State::Running => Err(fail(
                Kind::Damaged,
                format!(
                    "backup {} is still being written ({}): wait for it to complete",
                    e.id,
                    e.holder.as_deref().unwrap_or("another process")
                ),
            )),
            State::Incomplete => Err(fail(
                Kind::Damaged,
                format!(
                    "backup {} did not complete (no manifest): it cannot be restored; vdi expire removes what it left",
                    e.id
                ),
            )),
        }
    }

    /// The store of backup `id`.
    pub fn store(&self, id: &str) -> Arc<dyn Store> {
        self.loc.store(id)
    }

    /// Plans (and unless `dry_run`, carries out) the removal of the backups `policy`
    /// does not keep, and of what interrupted backups left; a running backup is never
    /// touched. Without `force`, the newest complete backup is always kept.
    pub fn expire(&self, policy: &Policy, dry_run: bool, force: bool) -> Result<Expired> {
        if policy.is_empty() {
            return Err(fail(
                Kind::Usage,
                "say what to keep: --keep-last N, --keep-daily N and/or --keep-within DURATION (a backup kept by any of them stays)",
            ));
        }
        if self.loc.is_plain() {
            return Err(fail(
                Kind::Usage,
                format!(
                    "{} is a plain backup: vdi expire removes backups of a repository only (make one with vdi init REPO)",
                    self.loc.place("")
                ),
            ));
        }
        let listing = self.entries()?;
        let mut plan = policy.apply(&listing.entries, force);
        for d in &mut plan {
            if d.keep || dry_run {
                continue;
            }
            // Looked at again just before: a backup that started since is not in the
            // listing, and a lease taken since the listing is seen here.
            if let Some(h) = self.loc.leased(&d.entry.id)? {
                d.keep = true;
                d.reasons = vec![format!("running ({h})")];
                continue;
            }
            {
                let _g = self.loc.lock_catalog()?;
                let mut catalog = self.catalog_map();
                if catalog.remove(&d.entry.id).is_some() {
                    self.loc.write_catalog(&Catalog::bytes(&catalog)?)?;
                }
            }
            match self.loc.remove(&d.entry.id) {
                Ok(objects) => d.removed = objects,
                Err(e) => d.error = Some(e.to_string()),
            }
        }
        Ok(Expired {
            decisions: plan,
            dry_run,
        })
    }

    fn catalog_map(&self) -> BTreeMap<String, Entry> {
        self.loc
            .read_catalog()
            .ok()
            .flatten()
            .as_deref()
            .and_then(Catalog::parse)
            .map(|c| c.backups.into_iter().map(|e| (e.id.clone(), e)).collect())
            .unwrap_or_default()
    }
}

/// A backup being stored in a repository: its id, its store and its lease. Commit the
/// store's writer first, then [`RepoBackup::record`] it; dropped without a record, the
/// lease ends and the store's own rules remove what it wrote.
#[derive(Debug)]
pub struct RepoBackup {
    /// The backup's id.
    pub id: String,
    /// Where it is stored.
    pub store: Arc<dyn Store>,
    lease: Option<Box<dyn Lease>>,
    repo: Repo,
}

impl RepoBackup {
    /// How messages name the backup (`REPO/ID`).
    pub fn place(&self) -> String {
        self.repo.loc.place(&self.id)
    }

    /// Adds the committed backup to the catalog, then gives up the lease.
    pub fn record(mut self, m: &Manifest) -> Result<Entry> {
        let e = Entry::of_manifest(&self.id, m);
        {
            let _g = self.repo.loc.lock_catalog()?;
            let mut catalog = self.repo.catalog_map();
            catalog.insert(self.id.clone(), e.clone());
            // A catalog that cannot be written is rebuilt from the manifest later: the
            // backup is complete either way.
            if let Err(err) = Catalog::bytes(&catalog).and_then(|b| self.repo.loc.write_catalog(&b))
            {
                tracing::warn!(
                    "backup {} is complete, but the catalog of {} could not be updated ({err}); vdi list rebuilds it",
                    self.id,
                    self.repo.describe()
                );
            }
        }
        self.lease.take();
        Ok(e)
    }
}

/// What to keep (restic's names; a backup kept by any rule stays).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The newest N complete backups.
    pub keep_last: Option<u32>,
    /// The newest complete backup of each of the last N days (UTC) that have one.
    pub keep_daily: Option<u32>,
    /// Every complete backup started within this many seconds of the newest one.
    pub keep_within: Option<u64>,
}

impl Policy {
    /// No rule given.
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none() && self.keep_daily.is_none() && self.keep_within.is_none()
    }

    /// Decides for every backup of `entries` (oldest first): running ones are kept;
    /// incomplete ones removed; complete ones kept if a rule keeps them; and, unless
    /// `force`, the newest complete one is kept in any case.
    pub fn apply(&self, entries: &[Entry], force: bool) -> Vec<Decision> {
        let mut out: Vec<Decision> = entries
            .iter()
            .map(|e| Decision {
                entry: e.clone(),
                keep: false,
                reasons: Vec::new(),
                removed: Vec::new(),
                error: None,
            })
            .collect();
        // Newest first, complete only.
        let complete: Vec<usize> = (0..out.len())
            .rev()
            .filter(|&i| out[i].entry.state == State::Complete)
            .collect();
        if let Some(n) = self.keep_last {
            for &i in complete.iter().take(n as usize) {
                out[i].reasons.push("last".into());
            }
        }
        if let Some(n) = self.keep_daily {
            let mut days: Vec<u64> = Vec::new();
            for &i in &complete {
                let day = out[i].entry.started / 86_400;
                if days.contains(&day) {
                    continue;
                }
                if days.len() >= n as usize {
                    break;
                }
                days.push(day);
                out[i].reasons.push("daily".into());
            }
        }
        if let (Some(w), Some(&newest)) = (self.keep_within, complete.first()) {
            let from = out[newest].entry.started.saturating_sub(w);
            for &i in &complete {
                if out[i].entry.started >= from {
                    out[i].reasons.push("within".into());
                }
            }
        }
        for d in &mut out {
            match d.entry.state {
                State::Running => d.reasons.push("running".into()),
                State::Incomplete => {}
                State::Complete => {}
            }
            d.keep = !d.reasons.is_empty();
        }
        if !force
            && let Some(&newest) = complete.first()
            && !out[newest].keep
        {
            out[newest].keep = true;
            out[newest]
                .reasons
                .push("the newest complete backup (only --force removes it)".into());
        }
        out
    }
}

/// What expire decided for one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The backup.
    pub entry: Entry,
    /// Kept.
    pub keep: bool,
    /// Why it is kept (`last`, `daily`, `within`, `running`, ...).
    pub reasons: Vec<String>,
    /// The objects removed (empty for a dry run or a kept backup).
    pub removed: Vec<String>,
    /// Why it could not be removed.
    pub error: Option<String>,
}

/// What an expire did.
#[derive(Clone, Debug)]
pub struct Expired {
    /// One per backup, oldest first.
    pub decisions: Vec<Decision>,
    /// Nothing was removed.
    pub dry_run: bool,
}

// ---------------------------------------------------------------------------------------
// Naming a backup or a destination on the command line.

/// What a backup name on the command line (`vdi restore BACKUP`, `vdi verify BACKUP`)
/// means, once looked at.
#[derive(Debug)]
pub struct Located {
    /// The store of the one backup named.
    pub store: Arc<dyn Store>,
    /// How messages name it.
    pub label: String,
    /// Its repository and its entry there, if it is in one.
    pub in_repo: Option<(Repo, Entry)>,
}

/// Splits `REPO:SELECTOR` where `REPO` names a repository (or a plain backup, for
/// `:latest` or its own id); `None` if `name` has no such form.
fn split_selector(name: &str) -> Option<(&str, &str)> {
    let (p, sel) = name.rsplit_once(':')?;
    (!p.is_empty() && !sel.is_empty() && !sel.contains('/')).then_some((p, sel))
}

/// The location a repository name means: `s3://BUCKET/REPO` (with the `s3` feature) or a
/// directory, made with `modes`.
pub fn location(path: &str, modes: crate::store::dir::Modes) -> Result<Arc<dyn Location>> {
    if path.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Arc::new(s3::S3Location::new(path)?));
        #[cfg(not(feature = "s3"))]
        return Err(fail(
            Kind::Usage,
            format!("{path}: this vdi was built without S3 support (the s3 feature)"),
        ));
    }
    Ok(Arc::new(dir::DirLocation::new(path, modes)))
}

/// Opens what `path` holds as a repository: a repository, or a plain backup read as a
/// one-backup repository; `None` if it is neither.
pub fn open_path(path: &str, modes: crate::store::dir::Modes) -> Result<Option<Repo>> {
    let loc = location(path, modes)?;
    if let Some(r) = Repo::open(loc)? {
        return Ok(Some(r));
    }
    if path.starts_with("s3://") {
        return Ok(None);
    }
    Ok(dir::PlainLocation::open(path).map(|p| Repo {
        loc: Arc::new(p) as Arc<dyn Location>,
    }))
}

/// Whether `path` is a repository (it holds the marker). An S3 location that cannot be
/// read is not one here: reading it as a backup then says why.
pub fn is_repository(path: &str) -> bool {
    location(path, crate::store::dir::Modes::DEFAULT)
        .ok()
        .is_some_and(|l| l.read_marker().is_ok_and(|m| m.is_some()))
}

/// What `name` names as a backup to read: `-` (standard input), `REPO` (its newest
/// complete backup), `REPO:latest`, `REPO:ID` (or the start of an ID), a plain backup
/// directory (also `DIR:latest`), or any other directory (read as a plain backup, with
/// the messages that gives).
pub fn locate_backup(name: &str) -> Result<Located> {
    let modes = crate::store::dir::Modes::DEFAULT;
    if name != "-" {
        if is_repository(name) {
            return in_repo(name, "latest");
        }
        if let Some((p, sel)) = split_selector(name)
            && (p.starts_with("s3://") || std::path::Path::new(p).is_dir())
            && open_path(p, modes)?.is_some()
        {
            return in_repo(p, sel);
        }
    }
    Ok(Located {
        store: crate::store::locate(name, modes)?,
        label: name.to_owned(),
        in_repo: None,
    })
}

fn in_repo(path: &str, sel: &str) -> Result<Located> {
    let modes = crate::store::dir::Modes::DEFAULT;
    let repo = open_path(path, modes)?
        .ok_or_else(|| fail(Kind::Input, format!("{path} is not a repository")))?;
    let e = repo.resolve(sel)?;
    Ok(Located {
        store: repo.store(&e.id),
        label: repo.location().place(&e.id),
        in_repo: Some((repo, e)),
    })
}

/// Where `vdi backup SOURCE DEST` stores: `-` (standard output), a repository (a new
/// backup in it), or a directory (a plain backup, as before repositories).
#[derive(Debug)]
pub enum Dest {
    /// One backup, in a store of its own.
    Plain(Arc<dyn Store>),
    /// A new backup in a repository.
    Repo(RepoBackup),
}

impl Dest {
    /// Looks at `name` (see [`Dest`]).
    pub fn locate(name: &str, modes: crate::store::dir::Modes) -> Result<Dest> {
        if name != "-" && is_repository(name) {
            let loc = location(name, modes)?;
            let repo = Repo::open(loc)?
                .ok_or_else(|| fail(Kind::Input, format!("{name} is not a repository")))?;
            return Ok(Dest::Repo(repo.begin()?));
        }
        Ok(Dest::Plain(crate::store::locate(name, modes)?))
    }

    /// The store the backup goes to.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Dest::Plain(s) => s.clone(),
            Dest::Repo(r) => r.store.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn complete(id_secs: u64) -> Entry {
        let mut e = Entry::without_manifest(&new_id(id_secs), State::Complete, None);
        e.started = id_secs;
        e
    }

    fn kept(p: &Policy, es: &[Entry], force: bool) -> Vec<bool> {
        p.apply(es, force).iter().map(|d| d.keep).collect()
    }

    #[test]
    fn policies() {
        let day = 86_400;
        let t0 = 1_795_000_000 - 1_795_000_000 % day;
        // Two a day for four days.
        let es: Vec<Entry> = (0..8)
            .map(|i| complete(t0 + (i / 2) * day + (i % 2) * 3600))
            .collect();
        let last2 = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        assert_eq!(
            kept(&last2, &es, false),
            [false, false, false, false, false, false, true, true]
        );
        let daily3 = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        assert_eq!(
            kept(&daily3, &es, false),
            [false, false, false, true, false, true, false, true]
        );
        let within = Policy {
            keep_within: Some(day + 3600),
            ..Policy::default()
        };
        assert_eq!(
            kept(&within, &es, false),
            [false, false, false, false, true, true, true, true]
        );
        // The newest is kept unless forced.
        let none = Policy {
            keep_last: Some(0),
            ..Policy::default()
        };
        assert_eq!(kept(&none, &es, false).iter().filter(|k| **k).count(), 1);
        assert!(kept(&none, &es, false)[7]);
        assert!(kept(&none, &es, true).iter().all(|k| !k));
        // Running ones stay, incomplete ones go.
        let mut es2 = es.clone();
        es2.push(Entry::without_manifest(
            &new_id(t0 + 5 * day),
            State::Running,
            None,
        ));
        es2.insert(
            0,
            Entry::without_manifest(&new_id(t0 - day), State::Incomplete, None),
        );
        let k = kept(&none, &es2, true);
        assert!(!k[0]);
        assert!(k[9]);
    }

    #[test]
    fn selectors() {
        assert_eq!(split_selector("bk:latest"), Some(("bk", "latest")));
        assert_eq!(split_selector("/a/b:2026"), Some(("/a/b", "2026")));
        assert_eq!(split_selector("bk"), None);
        assert_eq!(split_selector(":x"), None);
        assert_eq!(split_selector("a:b/c"), None);
    }
}
