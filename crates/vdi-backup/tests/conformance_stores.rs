//! The store contract (`vdi_backup::store`, "The contract"), checked for every store
//! implementation with the same tests (as restic's backend test suite and iceoryx2's
//! conformance tests do): a directory, memory, a fault-injecting store whose fault
//! never fires (it must be a faithful wrapper), and (with the `s3` feature) S3 on a real
//! server, `s3s-fs` (skipped when it is not installed, unless `VDI_REQUIRE_S3=1`). A new
//! store adds one `Harness` here.
//!
//! Standard output/input (`store::stdio`) holds one bare stream and no manifest: it is
//! exempt from the backup-level rules (there is nothing to lock or replace) and its
//! behaviour is tested through the `vdi` binary (`crates/vdi-cli/tests`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::sync::Arc;

use vdi_backup::Kind;
use vdi_backup::store::dir::{DirStore, Modes};
use vdi_backup::store::faulty::{Fault, FaultyStore};
use vdi_backup::store::mem::MemStore;
use vdi_backup::store::{MAX_MANIFEST_BYTES, Store, StoreWriter};

/// One store to check, and how to plant things in it behind its back.
trait Harness {
    fn store(&self) -> Arc<dyn Store>;
    /// Puts `bytes` at `name` in the committed backup, bypassing the store.
    fn plant(&self, name: &str, bytes: &[u8]);
}

struct Dir {
    _tmp: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bk");
        Dir { _tmp: tmp, path }
    }
}

impl Harness for Dir {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(DirStore::new(&self.path, Modes::DEFAULT))
    }
    fn plant(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path.join(name), bytes).unwrap();
    }
}

struct Mem(MemStore);

impl Harness for Mem {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.0.clone())
    }
    fn plant(&self, name: &str, bytes: &[u8]) {
        self.0.tamper(name, bytes.to_vec());
    }
}

struct NeverFaulty(FaultyStore<MemStore>);

impl Harness for NeverFaulty {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.0.clone())
    }
    fn plant(&self, name: &str, bytes: &[u8]) {
        self.0.inner().tamper(name, bytes.to_vec());
    }
}

#[cfg(feature = "s3")]
#[path = "common/s3_server.rs"]
mod s3_server;

/// A backup at `s3://vdi-test/bk` of a real server; planting writes the server's files.
#[cfg(feature = "s3")]
struct S3 {
    server: s3_server::S3Server,
}

#[cfg(feature = "s3")]
impl Harness for S3 {
    fn store(&self) -> Arc<dyn Store> {
        use vdi_backup::store::s3::{S3Options, S3Store, StaticCredentials};
        let o = S3Options {
            credentials: Some(StaticCredentials::new(s3_server::KEY_ID, s3_server::SECRET)),
            endpoint: Some(self.server.endpoint()),
            retries: 1,
            ..S3Options::default()
        };
        Arc::new(S3Store::with_options(&format!("s3://{}/bk", s3_server::BUCKET), o).unwrap())
    }
    fn plant(&self, name: &str, bytes: &[u8]) {
        // The manifest beside the generations; a stream in the committed generation.
        let path = if name == "manifest.json" {
            self.server.object_file("bk/manifest.json")
        } else {
            let generation = self
                .server
                .keys("bk")
                .into_iter()
                .find_map(|k| {
                    k.strip_prefix("bk/")
                        .and_then(|r| r.split_once('/'))
                        .map(|(g, _)| g.to_owned())
                })
                .unwrap();
            self.server.object_file(&format!("bk/{generation}/{name}"))
        };
        std::fs::write(path, bytes).unwrap();
    }
}

fn harnesses() -> Vec<(&'static str, Box<dyn Harness>)> {
    #[cfg_attr(not(feature = "s3"), allow(unused_mut))]
    let mut v = harnesses_local();
    #[cfg(feature = "s3")]
    if let Some(server) = s3_server::S3Server::start("the S3 store's conformance") {
        v.push(("s3", Box::new(S3 { server })));
    }
    v
}

fn harnesses_local() -> Vec<(&'static str, Box<dyn Harness>)> {
    vec![
        ("directory", Box::new(Dir::new())),
        ("memory", Box::new(Mem(MemStore::new()))),
        (
            "faulty (never)",
            Box::new(NeverFaulty(FaultyStore::new(
                MemStore::new(),
                Fault::FailWrite(u64::MAX),
            ))),
        ),
    ]
}

/// A manifest the readers accept, naming `objects` (of `sizes`).
fn manifest(id: &str, objects: &[(&str, usize)]) -> Vec<u8> {
    let streams: Vec<serde_json::Value> = objects
        .iter()
        .enumerate()
        .map(|(i, (n, len))| {
            serde_json::json!({"device": i, "file": n, "stream_bytes": len, "stored_bytes": len, "blake3": ""})
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "format": "vdi-backup", "version": 1, "backup_id": id, "stream_id": null,
        "set_name": "s", "tool": "test", "started": 1, "completed": 2,
        "source": {"kind": "file", "name": "file:x", "bytes": 0, "checked": true},
        "device_count": objects.len(), "block_size": 512, "max_transfer_size": 65536,
        "compression": {"algorithm": "none"}, "total_stream_bytes": 0, "total_stored_bytes": 0,
        "streams": streams, "complete": true
    }))
    .unwrap()
}

/// Writes a backup of `objects` (name, bytes) and commits it.
fn write_backup(store: &dyn Store, force: bool, id: &str, objects: &[(&str, &[u8])]) {
    let mut w = store.begin(force).unwrap();
    put_objects(w.as_mut(), objects);
    let sizes: Vec<(&str, usize)> = objects.iter().map(|(n, b)| (*n, b.len())).collect();
    w.commit(&manifest(id, &sizes)).unwrap();
}

fn put_objects(w: &mut dyn StoreWriter, objects: &[(&str, &[u8])]) {
    for (name, bytes) in objects {
        let mut o = w.create(name).unwrap();
        o.write_all(bytes).unwrap();
        o.sync().unwrap();
        o.finish().unwrap();
    }
}

fn read_object(store: &dyn Store, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    let o = store.open().unwrap().open(name).unwrap();
    let len = o.len;
    let mut r = o.reader;
    r.read_to_end(&mut v).unwrap();
    if let Some(n) = len {
        assert_eq!(n, v.len() as u64, "the length the store reports");
    }
    v
}

fn manifest_of(store: &dyn Store) -> Option<Vec<u8>> {
    store.open().unwrap().read_manifest().unwrap()
}

/// Whether the store holds no backup: no manifest, or (a directory) no such place yet,
/// because a backup that never committed removes the directory it made.
fn holds_no_backup(store: &dyn Store) -> bool {
    match store.open() {
        Ok(r) => r.read_manifest().unwrap().is_none(),
        Err(e) => e.to_string().contains("No such file"),
    }
}

/// An S3 store's own guarantees: a writer that never commits leaves no object but the
/// old backup's, and no upload open, even for a stream of many parts.
#[cfg(feature = "s3")]
#[test]
fn an_s3_writer_dropped_mid_stream_aborts_its_upload() {
    let Some(server) =
        s3_server::S3Server::start("an_s3_writer_dropped_mid_stream_aborts_its_upload")
    else {
        return;
    };
    let h = S3 { server };
    let store = h.store();
    let mut w = store.begin(false).unwrap();
    let mut o = w.create("device-0.stream").unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..20 {
        o.write_all(&chunk).unwrap();
    }
    o.sync().unwrap();
    assert!(
        !h.server.open_uploads().is_empty(),
        "a multipart upload is under way"
    );
    drop(o);
    drop(w);
    assert_eq!(h.server.open_uploads(), Vec::<String>::new());
    assert!(holds_no_backup(store.as_ref()));
    // And a stream of several parts, finished, reads back whole.
    let mut w = store.begin(false).unwrap();
    let mut o = w.create("device-0.stream").unwrap();
    let mut all = Vec::new();
    for i in 0..23u8 {
        let c = vec![i; 1 << 20];
        o.write_all(&c).unwrap();
        all.extend_from_slice(&c);
    }
    o.finish().unwrap();
    drop(o);
    w.commit(&manifest("big", &[("device-0.stream", all.len())]))
        .unwrap();
    assert_eq!(read_object(store.as_ref(), "device-0.stream"), all);
    assert_eq!(h.server.open_uploads(), Vec::<String>::new());
}

const A: &[u8] = b"the first stream";
const B: &[u8] = b"the second stream, a little longer";

#[test]
fn a_committed_backup_reads_back_whole() {
    for (what, h) in harnesses() {
        let store = h.store();
        assert!(holds_no_backup(store.as_ref()), "{what}: empty at first");
        write_backup(
            store.as_ref(),
            false,
            "one",
            &[("device-0.stream", A), ("device-1.stream", B)],
        );
        let m = manifest_of(store.as_ref()).unwrap();
        assert_eq!(
            m,
            manifest(
                "one",
                &[("device-0.stream", A.len()), ("device-1.stream", B.len())]
            ),
            "{what}"
        );
        assert_eq!(read_object(store.as_ref(), "device-0.stream"), A, "{what}");
        assert_eq!(read_object(store.as_ref(), "device-1.stream"), B, "{what}");
        let names = store.open().unwrap().list().unwrap();
        for n in ["device-0.stream", "device-1.stream"] {
            assert!(names.iter().any(|x| x == n), "{what}: {names:?}");
        }
        let opened = vdi_backup::store::open_backup(store.as_ref()).unwrap();
        assert_eq!(opened.manifest.device_count, 2, "{what}");
        assert!(opened.streams.iter().all(|s| s.is_ok()), "{what}");
    }
}

#[test]
fn one_writer_at_a_time() {
    for (what, h) in harnesses() {
        let store = h.store();
        let first = store.begin(false).unwrap();
        let e = store.begin(true).unwrap_err();
        assert_eq!(e.kind(), Kind::SetBusy, "{what}: {e}");
        drop(first);
        let again = store.begin(false);
        assert!(again.is_ok(), "{what}: the hold ends with its writer");
    }
}

#[test]
fn nothing_is_replaced_without_force() {
    for (what, h) in harnesses() {
        let store = h.store();
        write_backup(store.as_ref(), false, "one", &[("device-0.stream", A)]);
        let e = store.begin(false).unwrap_err();
        assert_eq!(e.kind(), Kind::TargetExists, "{what}: {e}");
        assert!(e.to_string().contains("--force"), "{what}: {e}");
        write_backup(store.as_ref(), true, "two", &[("device-0.stream", B)]);
        assert_eq!(read_object(store.as_ref(), "device-0.stream"), B, "{what}");
    }
}

#[test]
fn the_manifest_is_refused_while_a_stream_is_unfinished() {
    for (what, h) in harnesses() {
        let store = h.store();
        let mut w = store.begin(false).unwrap();
        let mut o = w.create("device-0.stream").unwrap();
        o.write_all(A).unwrap();
        // Not finished: the commit must refuse, and leave no manifest.
        let e = w.commit(&manifest("one", &[("device-0.stream", A.len())]));
        assert!(e.is_err(), "{what}: committed with a stream unfinished");
        drop(o);
        assert!(holds_no_backup(store.as_ref()), "{what}");
        // A stream dropped unfinished is refused the same way.
        let mut w = store.begin(false).unwrap();
        let o = w.create("device-0.stream").unwrap();
        drop(o);
        assert!(
            w.commit(b"{}").is_err(),
            "{what}: committed an abandoned stream"
        );
        assert!(holds_no_backup(store.as_ref()), "{what}");
    }
}

#[test]
fn an_uncommitted_replacement_leaves_the_old_backup_whole() {
    for (what, h) in harnesses() {
        let store = h.store();
        write_backup(store.as_ref(), false, "old", &[("device-0.stream", A)]);
        let old_manifest = manifest_of(store.as_ref());
        let mut w = store.begin(true).unwrap();
        put_objects(
            w.as_mut(),
            &[("device-0.stream", B), ("device-1.stream", B)],
        );
        // While the new one is written, a reader sees the old one, whole.
        assert_eq!(manifest_of(store.as_ref()), old_manifest, "{what}");
        assert_eq!(read_object(store.as_ref(), "device-0.stream"), A, "{what}");
        drop(w);
        assert_eq!(manifest_of(store.as_ref()), old_manifest, "{what}");
        assert_eq!(read_object(store.as_ref(), "device-0.stream"), A, "{what}");
        let names = store.open().unwrap().list().unwrap();
        assert!(
            !names.iter().any(|n| n == "device-1.stream"),
            "{what}: what the dropped writer wrote is gone: {names:?}"
        );
        // And the store can be written again.
        write_backup(store.as_ref(), true, "new", &[("device-0.stream", B)]);
        assert_eq!(read_object(store.as_ref(), "device-0.stream"), B, "{what}");
    }
}

#[test]
fn a_reader_of_a_replaced_backup_knows_it() {
    for (what, h) in harnesses() {
        let store = h.store();
        write_backup(store.as_ref(), false, "old", &[("device-0.stream", A)]);
        let r = store.open().unwrap();
        assert!(r.still_current(), "{what}");
        write_backup(store.as_ref(), true, "new", &[("device-0.stream", B)]);
        assert!(!r.still_current(), "{what}: the backup was replaced");
    }
}

#[test]
fn reading_is_bounded() {
    for (what, h) in harnesses() {
        let store = h.store();
        write_backup(store.as_ref(), false, "one", &[("device-0.stream", A)]);
        h.plant(
            "manifest.json",
            &vec![b' '; MAX_MANIFEST_BYTES as usize + 1],
        );
        let e = store.open().unwrap().read_manifest().unwrap_err();
        assert!(e.to_string().contains("more than"), "{what}: {e}");
        let e = store.open().unwrap().open("no-such-object").unwrap_err();
        assert!(e.contains("missing"), "{what}: {e}");
    }
}

#[test]
fn a_tampered_stream_is_caught_when_the_backup_is_opened() {
    for (what, h) in harnesses() {
        let store = h.store();
        write_backup(store.as_ref(), false, "one", &[("device-0.stream", A)]);
        h.plant("device-0.stream", b"short");
        let opened = vdi_backup::store::open_backup(store.as_ref()).unwrap();
        let e = opened.streams[0].as_ref().unwrap_err();
        assert!(e.contains("truncated"), "{what}: {e}");
    }
}

/// The directory store's own guarantees, beyond the common contract: private modes, no
/// link followed, nothing it did not write removed.
#[test]
fn a_directory_store_is_private_and_follows_no_link() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new();
    write_backup(d.store().as_ref(), false, "one", &[("device-0.stream", A)]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.path), 0o700);
    assert_eq!(mode(&d.path.join("device-0.stream")), 0o600);
    assert_eq!(mode(&d.path.join("manifest.json")), 0o600);
    // A stream replaced by a link is refused, not followed.
    std::fs::remove_file(d.path.join("device-0.stream")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path.join("device-0.stream")).unwrap();
    let e = d
        .store()
        .open()
        .unwrap()
        .open("device-0.stream")
        .unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
    // A file vdi did not write survives a replacement.
    std::fs::write(d.path.join("notes.txt"), b"mine").unwrap();
    write_backup(d.store().as_ref(), true, "two", &[("device-0.stream", B)]);
    assert_eq!(std::fs::read(d.path.join("notes.txt")).unwrap(), b"mine");
}
