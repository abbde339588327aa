//! Byte-exact round trips of `file:` sources through `vdi backup`, `vdi verify` and
//! `vdi restore` (the engine in its own process each time): empty, one byte, sizes around
//! the block and chunk sizes, several MiB and a few hundred MiB, through 1, 2 and 5
//! devices, with and without zstd, and restores with other transfer and block sizes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;

/// Backs `src` up with `extra` options, verifies, restores, and compares.
fn round_trip(dir: &Path, src: &Path, devices: u32, compress: &str, restore_extra: &[&str]) {
    let tag = format!("{devices}-{}", compress.replace(':', "_"));
    let bk = dir.join(format!("bk-{tag}"));
    let out = dir.join(format!("out-{tag}"));
    let n = devices.to_string();
    let r = run(&[
        "backup",
        &format!("file:{}", s(src)),
        &s(&bk),
        "--devices",
        &n,
        "--compress",
        compress,
        "--json",
    ]);
    r.ok();
    let j = r.json();
    let len = std::fs::metadata(src).unwrap().len();
    assert_eq!(j["ok"], true);
    assert_eq!(j["source_bytes"], len);
    assert_eq!(j["devices"], devices);
    assert!(claims_completion(&bk));
    let files: Vec<_> = files_with(&bk, "device-");
    assert_eq!(files.len(), devices as usize, "one stream file per device");
    if compress != "none" {
        assert!(files.iter().all(|f| f.to_string_lossy().ends_with(".zst")));
    }
    let v = run(&["verify", &s(&bk), "--json"]);
    v.ok();
    assert_eq!(v.json()["source_bytes"], len);
    let mut args = vec!["restore", &s(&bk)]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.push(format!("file:{}", s(&out)));
    args.extend(restore_extra.iter().map(|x| x.to_string()));
    args.push("--json".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&argv);
    r.ok();
    assert_eq!(r.json()["bytes"], len);
    assert_eq!(digest(src), digest(&out), "restored bytes differ ({tag})");
    assert!(files_with(dir, ".vdi-partial").is_empty());
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(&bk).unwrap();
}

fn sizes_through(devices: u32) {
    let dir = tempfile::tempdir().unwrap();
    // 4096 is the default block size; 1 MiB - 32 is the payload of a full 1 MiB chunk.
    for (i, len) in [
        0u64,
        1,
        4095,
        4097,
        (1 << 20) - 32,
        (1 << 20) - 31,
        (3 << 20) + 5,
    ]
    .into_iter()
    .enumerate()
    {
        let src = dir.path().join(format!("src-{i}"));
        write_pattern(&src, 100 + i as u64, len);
        for c in ["none", "zstd"] {
            round_trip(dir.path(), &src, devices, c, &[]);
        }
    }
}

#[test]
fn sizes_through_one_device() {
    sizes_through(1);
}

#[test]
fn sizes_through_two_devices() {
    sizes_through(2);
}

#[test]
fn sizes_through_five_devices() {
    sizes_through(5);
}

#[test]
fn restore_with_other_transfer_and_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 7, (9 << 20) + 12345);
    let bk = dir.path().join("bk");
    run(&[
        "backup",
        &format!("file:{}", s(&src)),
        &s(&bk),
        "--devices",
        "3",
        "--max-transfer-size",
        "4M",
        "--block-size",
        "512",
        "--buffer-count",
        "5",
    ])
    .ok();
    for (t, b) in [("64K", "64K"), ("192K", "4K"), ("4M", "512"), ("1M", "32K")] {
        let out = dir.path().join(format!("out-{t}-{b}"));
        run(&[
            "restore",
            &s(&bk),
            &format!("file:{}", s(&out)),
            "--max-transfer-size",
            t,
            "--block-size",
            b,
        ])
        .ok();
        assert_eq!(digest(&src), digest(&out), "transfer {t} block {b}");
    }
}

#[test]
fn standard_input_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 9, (5 << 20) + 3);
    for c in ["none", "zstd:1"] {
        // A source on stdin, a backup on stdout.
        let stream = dir.path().join(format!("stream-{c}"));
        run_in(
            &["backup", "-", "-", "--compress", c],
            Some(&src),
            Some(&stream),
        )
        .ok();
        run_in(&["verify", "-"], Some(&stream), None).ok();
        let out = dir.path().join(format!("out-{c}"));
        run_in(
            &["restore", "-", &format!("file:{}", s(&out))],
            Some(&stream),
            None,
        )
        .ok();
        assert_eq!(digest(&src), digest(&out));
        // A target on stdout, from a directory backup through 3 devices.
        let bk = dir.path().join(format!("bk-{c}"));
        run_in(
            &["backup", "-", &s(&bk), "--devices", "3", "--compress", c],
            Some(&src),
            None,
        )
        .ok();
        let out2 = dir.path().join(format!("out2-{c}"));
        run_in(
            &["restore", &s(&bk), "-", "--max-transfer-size", "128K"],
            None,
            Some(&out2),
        )
        .ok();
        assert_eq!(digest(&src), digest(&out2));
    }
}

#[test]
fn a_few_hundred_mib() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    write_pattern(&src, 42, (300 << 20) + 777);
    round_trip(dir.path(), &src, 2, "none", &["--max-transfer-size", "4M"]);
    round_trip(dir.path(), &src, 5, "zstd:1", &[]);
}

#[test]
fn force_replaces_an_existing_backup_and_target() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write_pattern(&a, 1, 300_000);
    write_pattern(&b, 2, 200_000);
    let bk = dir.path().join("bk");
    run(&["backup", &s(&a), &s(&bk), "--devices", "3"]).ok();
    // Fewer devices this time: the old third stream must not stay behind.
    run(&[
        "backup",
        &s(&b),
        &s(&bk),
        "--force",
        "--devices",
        "2",
        "--compress",
        "zstd",
    ])
    .ok();
    assert_eq!(files_with(&bk, "device-").len(), 2);
    run(&["verify", &s(&bk)]).ok();
    let out = dir.path().join("out");
    std::fs::write(&out, b"old").unwrap();
    run(&["restore", &s(&bk), &s(&out), "--force"]).ok();
    assert_eq!(digest(&b), digest(&out));
}
