//! The repository contract (`vdi_backup::repo`), checked for every `Location`: the
//! directory, memory, and (with the `s3` feature) S3 on a real server, `s3s-fs` (skipped
//! when it is not installed, unless `VDI_REQUIRE_S3=1`).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc;

use vdi_backup::Kind;
use vdi_backup::format::manifest::{self, Compression, Manifest, SourceInfo, StreamEntry};
use vdi_backup::repo::{Location, Policy, Repo, State, mem::MemLocation};
use vdi_backup::store::dir::Modes;

/// How a test gets a fresh location of one kind, and does to it what only that kind's
/// tests can (what a dead process or a person leaves behind).
trait Harness {
    fn name(&self) -> &'static str;
    /// A fresh location (no repository yet) and what keeps it alive.
    fn fresh(&self) -> (Arc<dyn Location>, Box<dyn std::any::Any>);
    /// Leaves under `id` what a backup killed in the middle leaves: a stream object, no
    /// manifest, no live lease.
    fn leave_interrupted(&self, loc: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str);
    /// Removes the catalog object.
    fn lose_catalog(&self, loc: &Arc<dyn Location>, keep: &dyn std::any::Any);
    /// Removes the manifest of backup `id` behind the repository's back.
    fn remove_manifest(&self, loc: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str);
}

struct Dir;
impl Harness for Dir {
    fn name(&self) -> &'static str {
        "dir"
    }
    fn fresh(&self) -> (Arc<dyn Location>, Box<dyn std::any::Any>) {
        let d = tempfile::tempdir().unwrap();
        let loc = vdi_backup::repo::dir::DirLocation::new(d.path().join("repo"), Modes::DEFAULT);
        (Arc::new(loc), Box::new(d))
    }
    fn leave_interrupted(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str) {
        let d = keep.downcast_ref::<tempfile::TempDir>().unwrap();
        let b = d.path().join("repo").join(id);
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("device-0.stream"), b"half").unwrap();
    }
    fn lose_catalog(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any) {
        let d = keep.downcast_ref::<tempfile::TempDir>().unwrap();
        std::fs::remove_file(d.path().join("repo").join("catalog.json")).unwrap();
    }
    fn remove_manifest(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str) {
        let d = keep.downcast_ref::<tempfile::TempDir>().unwrap();
        std::fs::remove_file(d.path().join("repo").join(id).join("manifest.json")).unwrap();
    }
}

struct Mem;
impl Mem {
    fn mem(keep: &dyn std::any::Any) -> &MemLocation {
        keep.downcast_ref::<MemLocation>().unwrap()
    }
}
impl Harness for Mem {
    fn name(&self) -> &'static str {
        "mem"
    }
    fn fresh(&self) -> (Arc<dyn Location>, Box<dyn std::any::Any>) {
        let m = MemLocation::new();
        (Arc::new(m.clone()), Box::new(m))
    }
    fn leave_interrupted(&self, loc: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str) {
        let _ = loc.store(id);
        Mem::mem(keep)
            .mem_store(id)
            .unwrap()
            .tamper("device-0.stream", b"half".to_vec());
    }
    fn lose_catalog(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any) {
        Mem::mem(keep).lose_catalog();
    }
    fn remove_manifest(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str) {
        let s = Mem::mem(keep).mem_store(id).unwrap();
        let objects = s.snapshot();
        s.clear();
        for (k, v) in objects {
            s.tamper(&k, v);
        }
    }
}

#[cfg(feature = "s3")]
#[path = "common/s3_server.rs"]
mod s3_server;

/// A repository at `s3://vdi-test/repo` of a real server (one per fresh location);
/// what a dead process leaves is written into the server's files.
#[cfg(feature = "s3")]
struct S3;

#[cfg(feature = "s3")]
impl S3 {
    fn server(keep: &dyn std::any::Any) -> &s3_server::S3Server {
        keep.downcast_ref::<s3_server::S3Server>().unwrap()
    }
}

#[cfg(feature = "s3")]
impl Harness for S3 {
    fn name(&self) -> &'static str {
        "s3"
    }
    fn fresh(&self) -> (Arc<dyn Location>, Box<dyn std::any::Any>) {
        use vdi_backup::store::s3::{S3Options, StaticCredentials};
        let server = s3_server::S3Server::start("s3 location").unwrap();
        let o = S3Options {
            credentials: Some(StaticCredentials::new(s3_server::KEY_ID, s3_server::SECRET)),
            endpoint: Some(server.endpoint()),
            retries: 1,
            ..S3Options::default()
        };
        let loc = vdi_backup::repo::s3::S3Location::with_options(
            &format!("s3://{}/repo", s3_server::BUCKET),
            o,
        )
        .unwrap();
        (Arc::new(loc), Box::new(server))
    }
    fn leave_interrupted(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str) {
        let f = S3::server(keep).object_file(&format!("repo/{id}/g-000000000000/device-0.stream"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b"half").unwrap();
    }
    fn lose_catalog(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any) {
        std::fs::remove_file(S3::server(keep).object_file("repo/catalog.json")).unwrap();
    }
    fn remove_manifest(&self, _: &Arc<dyn Location>, keep: &dyn std::any::Any, id: &str) {
        std::fs::remove_file(S3::server(keep).object_file(&format!("repo/{id}/manifest.json")))
            .unwrap();
    }
}

fn harnesses() -> Vec<Box<dyn Harness>> {
    #[cfg_attr(not(feature = "s3"), allow(unused_mut))]
    let mut v = harnesses_local();
    #[cfg(feature = "s3")]
    if s3_server::s3s_fs().is_some() {
        v.push(Box::new(S3));
    } else {
        assert!(
            !s3_server::required(),
            "VDI_REQUIRE_S3=1 but s3s-fs is not installed"
        );
        eprintln!("SKIPPED: the S3 location's conformance: s3s-fs is not installed");
    }
    v
}

fn harnesses_local() -> Vec<Box<dyn Harness>> {
    vec![Box::new(Dir), Box::new(Mem)]
}

const DAY: u64 = 86_400;
/// 2026-12-01 00:00:00 UTC.
const T0: u64 = 1_796_083_200;

fn manifest_of(secs: u64, data: &[u8]) -> Manifest {
    Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::FORMAT_VERSION,
        backup_id: format!("{:032x}", fastrand::u128(..)),
        stream_id: None,
        set_name: "test".into(),
        tool: "vdi test".into(),
        host: Some("testhost".into()),
        started: secs,
        completed: secs + 3,
        source: SourceInfo {
            kind: "file".into(),
            name: "file:data".into(),
            bytes: Some(data.len() as u64),
            checked: true,
            mode: None,
        },
        device_count: 1,
        block_size: 4096,
        max_transfer_size: 65536,
        compression: Compression::None,
        encryption: None,
        total_stream_bytes: data.len() as u64,
        total_stored_bytes: data.len() as u64,
        streams: vec![StreamEntry {
            device: 0,
            file: "device-0.stream".into(),
            stream_bytes: data.len() as u64,
            stored_bytes: data.len() as u64,
            blake3: blake3::hash(data).to_hex().to_string(),
        }],
        complete: true,
    }
}

/// Stores a complete backup started at `secs`; returns its id.
fn put(repo: &Repo, secs: u64) -> String {
    let rb = repo.begin_at(secs).unwrap();
    let mut w = rb.store.begin(false).unwrap();
    let mut o = w.create("device-0.stream").unwrap();
    o.write_all(b"data").unwrap();
    o.finish().unwrap();
    drop(o);
    let m = manifest_of(secs, b"data");
    w.commit(&manifest::manifest_bytes(&m).unwrap()).unwrap();
    let id = rb.id.clone();
    rb.record(&m).unwrap();
    id
}

fn states(repo: &Repo) -> Vec<(String, State)> {
    repo.entries()
        .unwrap()
        .entries
        .into_iter()
        .map(|e| (e.id, e.state))
        .collect()
}

#[test]
fn a_repository_is_made_once_and_opened() {
    for h in harnesses() {
        let (loc, _k) = h.fresh();
        assert!(Repo::open(loc.clone()).unwrap().is_none(), "{}", h.name());
        Repo::init(loc.clone()).unwrap();
        assert!(Repo::open(loc.clone()).unwrap().is_some());
        let e = Repo::init(loc.clone()).unwrap_err();
        assert_eq!(e.kind(), Kind::TargetExists, "{}: {e}", h.name());
        assert!(loc.list().unwrap().is_empty());
    }
}

#[test]
fn backups_are_listed_in_time_order_with_their_catalog_entry() {
    for h in harnesses() {
        let (loc, _k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        let ids: Vec<String> = [T0 + 2 * DAY, T0, T0 + DAY]
            .iter()
            .map(|&t| put(&repo, t))
            .collect();
        let l = repo.entries().unwrap();
        assert!(!l.rebuilt);
        let got: Vec<&str> = l.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            got,
            [ids[1].as_str(), ids[2].as_str(), ids[0].as_str()],
            "{}",
            h.name()
        );
        assert!(ids[1].starts_with("20261201T000000Z-"), "{}", ids[1]);
        let e = &l.entries[0];
        assert_eq!(e.state, State::Complete);
        assert_eq!(e.source.as_deref(), Some("file:data"));
        assert_eq!(e.kind.as_deref(), Some("file"));
        assert_eq!(
            (e.stored_bytes, e.original_bytes, e.devices),
            (Some(4), Some(4), Some(1))
        );
        assert_eq!(e.compression.as_deref(), Some("none"));
        assert_eq!(
            (e.started, e.completed, e.duration_seconds),
            (T0, Some(T0 + 3), Some(3))
        );
        assert_eq!(e.host.as_deref(), Some("testhost"));
        assert_eq!(e.tool.as_deref(), Some("vdi test"));
        // latest, a whole id, the start of one; each opens as a whole backup.
        assert_eq!(repo.resolve("latest").unwrap().id, ids[0]);
        assert_eq!(repo.resolve(&ids[2]).unwrap().id, ids[2]);
        assert_eq!(repo.resolve("20261202").unwrap().id, ids[2]);
        assert_eq!(repo.resolve("2026120").unwrap_err().kind(), Kind::Usage);
        assert_eq!(repo.resolve("19990101").unwrap_err().kind(), Kind::Input);
        let o = vdi_backup::store::open_backup(repo.store(&ids[2]).as_ref()).unwrap();
        assert_eq!(o.manifest.started, T0 + DAY);
    }
}

#[test]
fn a_running_backup_is_never_listed_complete_nor_expired() {
    for h in harnesses() {
        let (loc, _k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        let old = put(&repo, T0);
        let rb = repo.begin_at(T0 + DAY).unwrap();
        let mut w = rb.store.begin(false).unwrap();
        let mut o = w.create("device-0.stream").unwrap();
        o.write_all(b"data").unwrap();
        o.finish().unwrap();
        drop(o);
        let l = repo.entries().unwrap();
        let running = l.entries.iter().find(|e| e.id == rb.id).unwrap();
        assert_eq!(running.state, State::Running, "{}", h.name());
        assert!(running.holder.as_deref().unwrap().contains("process"));
        assert_eq!(l.latest().unwrap().id, old);
        assert_eq!(repo.resolve(&rb.id).unwrap_err().kind(), Kind::Damaged);
        // Even forced, with nothing to keep: the running one stays.
        let x = repo
            .expire(
                &Policy {
                    keep_last: Some(0),
                    ..Policy::default()
                },
                false,
                true,
            )
            .unwrap();
        let d = x.decisions.iter().find(|d| d.entry.id == rb.id).unwrap();
        assert!(d.keep && d.removed.is_empty(), "{}: {d:?}", h.name());
        assert!(
            loc.remove(&rb.id).is_err(),
            "{}: a backup being written is never removed",
            h.name()
        );
        let m = manifest_of(T0 + DAY, b"data");
        w.commit(&manifest::manifest_bytes(&m).unwrap()).unwrap();
        let id = rb.id.clone();
        rb.record(&m).unwrap();
        assert_eq!(states(&repo), [(id, State::Complete)], "{}", h.name());
    }
}

#[test]
fn two_backups_at_once_get_their_own_ids_and_both_are_listed() {
    for h in harnesses() {
        let (loc, _k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        // Same second: the leases keep the ids apart.
        let a = repo.begin_at(T0).unwrap();
        let b = repo.begin_at(T0).unwrap();
        assert_ne!(a.id, b.id);
        let mut wa = a.store.begin(false).unwrap();
        let mut wb = b.store.begin(false).unwrap();
        for w in [&mut wa, &mut wb] {
            let mut o = w.create("device-0.stream").unwrap();
            o.write_all(b"data").unwrap();
            o.finish().unwrap();
        }
        let (ma, mb) = (manifest_of(T0, b"data"), manifest_of(T0, b"data"));
        wb.commit(&manifest::manifest_bytes(&mb).unwrap()).unwrap();
        wa.commit(&manifest::manifest_bytes(&ma).unwrap()).unwrap();
        let (ia, ib) = (a.id.clone(), b.id.clone());
        b.record(&mb).unwrap();
        a.record(&ma).unwrap();
        let mut want = vec![(ia, State::Complete), (ib, State::Complete)];
        want.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(states(&repo), want, "{}", h.name());
        assert!(!repo.entries().unwrap().rebuilt);
    }
}

#[test]
fn the_catalog_is_rebuilt_and_never_lists_an_incomplete_backup_as_complete() {
    for h in harnesses() {
        let (loc, k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        let ids = [
            put(&repo, T0),
            put(&repo, T0 + DAY),
            put(&repo, T0 + 2 * DAY),
        ];
        let before = repo.entries().unwrap().entries;
        h.lose_catalog(&loc, k.as_ref());
        let l = repo.entries().unwrap();
        assert!(l.rebuilt, "{}", h.name());
        assert_eq!(l.entries, before, "{}", h.name());
        // Stored again: the next listing needs no rebuild.
        assert!(!repo.entries().unwrap().rebuilt);
        // A manifest removed behind its back: no longer complete, whatever the catalog says.
        h.remove_manifest(&loc, k.as_ref(), &ids[1]);
        let s = states(&repo);
        assert_eq!(s[1], (ids[1].clone(), State::Incomplete), "{}", h.name());
        // A catalog naming a backup that is not there: not listed.
        let mut ghost = before[0].clone();
        ghost.id = "20261130T000000Z-0000".into();
        let text = format!(
            "{{\"format\": \"vdi-repository\", \"version\": 1, \"backups\": [{}]}}",
            serde_json::to_string(&ghost).unwrap()
        );
        loc.write_catalog(text.as_bytes()).unwrap();
        let s = states(&repo);
        assert_eq!(s.len(), 3, "{}: {s:?}", h.name());
        assert!(s.iter().all(|(id, _)| *id != ghost.id));
        // Garbage in the catalog: rebuilt.
        loc.write_catalog(b"not json").unwrap();
        assert!(repo.entries().unwrap().rebuilt);
        assert_eq!(states(&repo).len(), 3);
    }
}

#[test]
fn an_interrupted_backup_is_incomplete_and_expire_removes_it() {
    for h in harnesses() {
        let (loc, k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        let good = put(&repo, T0);
        let bad = "20261202T000000Z-dead".to_owned();
        h.leave_interrupted(&loc, k.as_ref(), &bad);
        assert_eq!(
            states(&repo),
            [
                (good.clone(), State::Complete),
                (bad.clone(), State::Incomplete)
            ],
            "{}",
            h.name()
        );
        assert_eq!(
            repo.resolve("latest").unwrap().id,
            good,
            "incomplete is never latest"
        );
        assert_eq!(repo.resolve(&bad).unwrap_err().kind(), Kind::Damaged);
        let x = repo
            .expire(
                &Policy {
                    keep_last: Some(5),
                    ..Policy::default()
                },
                false,
                false,
            )
            .unwrap();
        let d = x.decisions.iter().find(|d| d.entry.id == bad).unwrap();
        assert!(!d.keep && d.error.is_none(), "{}: {d:?}", h.name());
        assert_eq!(d.removed, ["device-0.stream"]);
        assert_eq!(states(&repo), [(good, State::Complete)]);
        assert!(!loc.list().unwrap().contains(&bad));
    }
}

#[test]
fn expire_keeps_what_each_policy_says_and_a_dry_run_removes_nothing() {
    for h in harnesses() {
        let (loc, _k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        // Two backups a day for five days.
        let ids: Vec<String> = (0..10)
            .map(|i| put(&repo, T0 + (i / 2) * DAY + (i % 2) * 3600))
            .collect();
        let daily = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        let dry = repo.expire(&daily, true, false).unwrap();
        let kept: Vec<&str> = dry
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.entry.id.as_str())
            .collect();
        assert_eq!(
            kept,
            [ids[5].as_str(), ids[7].as_str(), ids[9].as_str()],
            "{}",
            h.name()
        );
        assert!(dry.decisions.iter().all(|d| d.removed.is_empty()));
        assert_eq!(states(&repo).len(), 10, "a dry run removes nothing");
        let x = repo.expire(&daily, false, false).unwrap();
        assert!(
            x.decisions
                .iter()
                .filter(|d| !d.keep)
                .all(|d| d.removed.first().map(String::as_str) == Some("manifest.json"))
        );
        let left: Vec<String> = states(&repo).into_iter().map(|(id, _)| id).collect();
        assert_eq!(
            left,
            [ids[5].clone(), ids[7].clone(), ids[9].clone()],
            "{}",
            h.name()
        );
        for id in &ids[..5] {
            assert!(vdi_backup::store::open_backup(repo.store(id).as_ref()).is_err());
        }
        // keep-within is counted back from the newest backup; keep-last the newest N.
        let within = Policy {
            keep_within: Some(DAY),
            ..Policy::default()
        };
        repo.expire(&within, false, false).unwrap();
        assert_eq!(states(&repo).len(), 2, "{}", h.name());
        let last = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        repo.expire(&last, false, false).unwrap();
        assert_eq!(states(&repo), [(ids[9].clone(), State::Complete)]);
        // The only complete backup stays unless forced.
        let none = Policy {
            keep_last: Some(0),
            ..Policy::default()
        };
        let x = repo.expire(&none, false, false).unwrap();
        assert!(x.decisions[0].keep);
        assert_eq!(states(&repo).len(), 1);
        repo.expire(&none, false, true).unwrap();
        assert!(states(&repo).is_empty(), "{}", h.name());
        assert!(
            repo.expire(&Policy::default(), true, false).is_err(),
            "no policy: refused"
        );
    }
}

#[test]
fn an_expire_racing_a_backup_never_removes_it() {
    for h in harnesses() {
        let (loc, _k) = h.fresh();
        let repo = Repo::init(loc.clone()).unwrap();
        put(&repo, T0);
        let (began, go) = (mpsc::channel(), mpsc::channel::<()>());
        let r2 = repo.clone();
        let t = std::thread::spawn(move || {
            let rb = r2.begin().unwrap();
            let mut w = rb.store.begin(false).unwrap();
            let mut o = w.create("device-0.stream").unwrap();
            o.write_all(b"da").unwrap();
            began.0.send(rb.id.clone()).unwrap();
            go.1.recv().unwrap();
            o.write_all(b"ta").unwrap();
            o.finish().unwrap();
            drop(o);
            let m = manifest_of(vdi_backup::util::now_secs(), b"data");
            w.commit(&manifest::manifest_bytes(&m).unwrap()).unwrap();
            rb.record(&m).unwrap();
        });
        let id = began.1.recv().unwrap();
        for _ in 0..3 {
            repo.expire(
                &Policy {
                    keep_last: Some(0),
                    ..Policy::default()
                },
                false,
                true,
            )
            .unwrap();
        }
        go.0.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(
            states(&repo),
            [(id.clone(), State::Complete)],
            "{}",
            h.name()
        );
        vdi_backup::store::open_backup(repo.store(&id).as_ref()).unwrap();
    }
}
