//! A secondary client process in C (`tests/c/secondary.c`): the primary creates the set
//! and serves device 0, a secondary process opens the set with `OpenInSecondary` or
//! `OpenInSecondaryEx` and serves the other devices, and device 0's data cross between the
//! two processes by buffer handle (`GetBufferHandle` in the primary, `MapBufferHandle` in
//! the secondary, which stores or fills the bytes through its own mapping; the primary
//! compares a hash of what each process saw before completing). A backup and its restore
//! must give the file back byte for byte, through the C engine (`tests/c/vdi_engine.c`)
//! and through `vdi engine`. The refusals (before the primary's `GetConfiguration`, a
//! named instance, no such set, an object already opened, a handle that is not the set's,
//! an address inside a buffer) are asserted in the program.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;

/// Backs `src` up through a 3-device set served by the primary and the secondary, then
/// restores it; `engine(op, set, file)` is the engine's command line. Returns the
/// buffers passed by handle in each.
fn backup_and_restore(
    dir: &Path,
    engine: &dyn Fn(&str, &str, &Path) -> Vec<String>,
    ex_for: &str,
) -> [i64; 2] {
    let exe = dir.join("secondary");
    compile(&source("c/secondary.c"), &exe, &libvdi_dir(), "vdi", &[]);
    let src = dir.join("src.bin");
    write_pattern(&src, 21, (16 << 20) + 777);
    let store = dir.join("store");
    std::fs::create_dir(&store).unwrap();
    let out = dir.join("out.bin");
    let mut handles = [0; 2];
    for (i, (op, file)) in [("backup", &src), ("restore", &out)]
        .into_iter()
        .enumerate()
    {
        let set = set_name("sec");
        let mut args: Vec<String> = ["primary", op, &set, &s(&store), "3"]
            .map(String::from)
            .to_vec();
        if op == ex_for {
            args.push("--ex".into());
        }
        args.push("--".into());
        args.extend(engine(op, &set, file));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&exe, &args);
        r.ok();
        assert_eq!(r.field("result"), "VD_E_CLOSE", "{}", r.stderr);
        assert_eq!(r.field("secondary"), "ok", "{}", r.stderr);
        assert_eq!(r.num("failures"), 0, "{}", r.stderr);
        handles[i] = r.num("handles");
        if op == "backup" {
            // Every device carried part of the stream; device 0's bytes only the
            // secondary wrote, through the mapped handles.
            for d in 0..3 {
                let len = std::fs::metadata(store.join(format!("dev.{d}")))
                    .unwrap()
                    .len();
                assert!(len > 0, "device {d}'s stream is empty");
            }
        }
    }
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(&out).unwrap(),
        "the file restored through the primary and the secondary differs"
    );
    handles
}

#[test]
fn a_secondary_in_c_serves_the_c_engine_and_maps_buffers_by_handle() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("vdi_engine");
    compile(
        &source("c/vdi_engine.c"),
        &engine,
        &libvdi_dir(),
        "vdi",
        &[],
    );
    let handles = backup_and_restore(
        dir.path(),
        &|op, set, file| {
            [
                s(&engine),
                op.into(),
                set.into(),
                s(file),
                "--depth".into(),
                "3".into(),
            ]
            .to_vec()
        },
        "restore",
    );
    // The C engine stripes chunk k (256 KiB) to device k % 3: device 0 has 22 of the 65
    // chunks, each a Write (backup) or a Read (restore, one more for the end) by handle.
    assert_eq!(handles[0], 22, "Writes by handle");
    assert!(
        (22..=25).contains(&handles[1]),
        "Reads by handle: {}",
        handles[1]
    );
}

#[test]
fn a_secondary_in_c_serves_vdi_engine_and_maps_buffers_by_handle() {
    let dir = tempfile::tempdir().unwrap();
    let vdi = vdi_tool();
    let handles = backup_and_restore(
        dir.path(),
        &|op, set, file| {
            [
                s(&vdi),
                "engine".into(),
                op.into(),
                "--set".into(),
                set.into(),
                format!("file:{}", s(file)),
                "--max-transfer-size".into(),
                "64K".into(),
                "-q".into(),
            ]
            .to_vec()
        },
        "backup",
    );
    // vdi engine hands work to whichever device asks: device 0, slowed by the handle
    // round trips, carries fewer commands, but some.
    assert!(handles.iter().all(|&h| h >= 1), "by handle: {handles:?}");
}
