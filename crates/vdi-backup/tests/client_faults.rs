//! Both roles of the library (the reference engine and the backup application, over a
//! real virtual device set, here on two threads) against a store that fails on purpose
//! (`store::faulty`): a write cut short, a full disk, a failed sync, a failed commit.
//! Whatever fails, the backup is not recorded as complete (no manifest), the error says
//! what happened, and a backup the store held before stays whole. Then a backup into a
//! healthy store restores byte for byte.
//!
//! The roles keep process-wide state (the watchdog, cancellation), so these tests run
//! one at a time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vdi_backup::client::{self, BackupPlan, RestorePlan};
use vdi_backup::engine::{self, EngineCfg};
use vdi_backup::fault::{Injector, Role};
use vdi_backup::format::manifest::{Compression, SourceInfo};
use vdi_backup::meter::Hidden;
use vdi_backup::source::Spec;
use vdi_backup::store::Store;
use vdi_backup::store::faulty::{Fault, FaultyStore};
use vdi_backup::store::mem::MemStore;
use vdi_backup::{Kind, Result};

fn serial() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "faults-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn engine_cfg(set: &str) -> EngineCfg {
    EngineCfg {
        set: set.to_owned(),
        buffer_count: None,
        max_transfer: 64 << 10,
        block_size: 512,
        wait: Duration::from_secs(30),
        trust_owner: None,
        faults: Vec::new(),
        parent: None,
        stall: None,
        device_names: Vec::new(),
        mode: Default::default(),
        probe: None,
    }
}

/// Backs the file `src` up through `devices` devices into `store`: the engine on a thread
/// of its own, the backup application here.
fn backup(src: &std::path::Path, store: Arc<dyn Store>, devices: u32, force: bool) -> Result<()> {
    let set = set_name();
    let spec = Spec::parse(&format!("file:{}", src.display()))?;
    let plan = BackupPlan {
        secret: None,
        set: set.clone(),
        devices,
        compression: Compression::None,
        store,
        force,
        source: SourceInfo {
            kind: "file".into(),
            name: spec.label(),
            bytes: spec.probe()?,
            checked: true,
            mode: None,
        },
        display: Arc::new(Hidden),
        wait: Some(Duration::from_secs(30)),
        hint: None,
        allow_group: None,
        inject: Arc::new(Injector::new(Role::Client, &[])),
        stall: None,
    };
    let prep = client::prepare_backup(plan)?;
    let cfg = engine_cfg(&set);
    let engine = std::thread::spawn(move || engine::backup(&cfg, &spec));
    let served = client::serve_backup(prep, &|| Ok(()), None).map_err(|e| e.into_error());
    let engine = engine.join().unwrap();
    let served = served?;
    engine?;
    client::commit_backup(served)?;
    Ok(())
}

fn source(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let p = dir.join("src.bin");
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn manifest_of(store: &MemStore) -> Option<Vec<u8>> {
    store.open().unwrap().read_manifest().unwrap()
}

#[test]
fn a_failing_store_never_gets_a_manifest() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source(dir.path());
    for fault in [
        Fault::CutWrite(5),
        Fault::FailWrite(1),
        Fault::FailWrite(30),
        Fault::FailSync(1),
        Fault::FailCommit,
    ] {
        let mem = MemStore::new();
        let store = Arc::new(FaultyStore::new(mem.clone(), fault));
        let e = backup(&src, store, 2, false).unwrap_err();
        assert_eq!(manifest_of(&mem), None, "{fault:?}: recorded as complete");
        match fault {
            Fault::CutWrite(_) | Fault::FailWrite(_) => {
                assert_eq!(e.kind(), Kind::DiskFull, "{fault:?}: {e}");
                assert!(e.to_string().contains("disk full"), "{fault:?}: {e}");
            }
            _ => assert!(!e.to_string().is_empty()),
        }
        // The store is free again for the next backup.
        assert!(
            mem.begin(false).is_ok(),
            "{fault:?}: the failed backup still holds the store"
        );
    }
}

#[test]
fn a_failed_replacement_keeps_the_old_backup_whole() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source(dir.path());
    let mem = MemStore::new();
    backup(&src, Arc::new(mem.clone()), 3, false).unwrap();
    let before = (manifest_of(&mem), mem.snapshot());
    let store = Arc::new(FaultyStore::new(mem.clone(), Fault::CutWrite(10)));
    backup(&src, store, 1, true).unwrap_err();
    assert_eq!((manifest_of(&mem), mem.snapshot()), before);
    let report = vdi_backup::verify::verify(&mem).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn a_backup_into_memory_restores_byte_for_byte() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = source(dir.path());
    let mem = MemStore::new();
    backup(&src, Arc::new(mem.clone()), 3, false).unwrap();
    let report = vdi_backup::verify::verify(&mem).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.source_bytes, Some(data.len() as u64));
    // Restore it into a file, through the same three devices.
    let set = set_name();
    let opened = client::open_backup(&mem, None).unwrap();
    let prep = client::prepare_restore(
        RestorePlan {
            set: set.clone(),
            display: Arc::new(Hidden),
            wait: Some(Duration::from_secs(30)),
            hint: None,
            label: "restore".into(),
            allow_group: None,
            inject: Arc::new(Injector::new(Role::Client, &[])),
            stall: None,
        },
        opened,
    )
    .unwrap();
    let target = dir.path().join("restored.bin");
    let spec = Spec::parse(&format!("file:{}", target.display())).unwrap();
    let cfg = engine_cfg(&set);
    let engine = std::thread::spawn(move || engine::restore(&cfg, &spec, false, false));
    let served = client::serve_restore(prep, &|| Ok(()), None).map_err(|e| e.into_error());
    engine.join().unwrap().unwrap();
    served.unwrap();
    assert!(
        std::fs::read(&target).unwrap() == data,
        "restored bytes differ"
    );
    // A tampered stream is refused, and nothing is restored.
    let name = mem.open().unwrap().list().unwrap()[0].clone();
    let mut bytes = mem.snapshot()[&name].clone();
    let last = bytes.len() - 1;
    bytes[last / 2] ^= 1;
    mem.tamper(&name, bytes);
    let report = vdi_backup::verify::verify(&mem).unwrap();
    assert!(!report.ok(), "a flipped byte went unnoticed");
}
