//! Reading a backup someone else could have changed: only regular files are read from
//! it (a FIFO never blocks, a device or a link is never read), no link is followed, the
//! manifest is bounded, and every stream must be this backup's stream of its device.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn backup_of(dir: &Path, name: &str, seed: u64, devices: u32) -> (PathBuf, PathBuf) {
    let src = dir.join(format!("src-{name}"));
    write_pattern(&src, seed, (2 << 20) + 4321);
    let bk = dir.join(name);
    run(&[
        "backup",
        &s(&src),
        &s(&bk),
        "--devices",
        &devices.to_string(),
    ])
    .ok();
    (src, bk)
}

/// `verify` and `restore` of `bk` both fail with exit `code`, naming every one of `words`
/// (and no restored target appears).
fn both_refuse(dir: &Path, bk: &Path, code: i32, words: &[&str]) {
    run(&["verify", &s(bk)]).fails(code, words);
    let t = dir.join("target");
    run(&["restore", &s(bk), &s(&t)]).fails(code, words);
    assert!(!t.exists());
}

#[test]
fn a_fifo_in_a_backup_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bk) = backup_of(dir.path(), "bk", 1, 2);
    std::fs::rename(bk.join("manifest.json"), dir.path().join("m")).unwrap();
    mkfifo(&bk.join("manifest.json"));
    both_refuse(dir.path(), &bk, 5, &["manifest.json", "is a FIFO"]);
    std::fs::remove_file(bk.join("manifest.json")).unwrap();
    std::fs::rename(dir.path().join("m"), bk.join("manifest.json")).unwrap();
    std::fs::remove_file(bk.join("device-1.stream")).unwrap();
    mkfifo(&bk.join("device-1.stream"));
    both_refuse(dir.path(), &bk, 5, &["device-1.stream", "is a FIFO"]);
}

#[test]
fn links_in_a_backup_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bk) = backup_of(dir.path(), "bk", 2, 2);
    // A manifest pointing at an endless device: refused at once, nothing read.
    let m = bk.join("manifest.json");
    let saved = std::fs::read(&m).unwrap();
    std::fs::remove_file(&m).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &m).unwrap();
    both_refuse(dir.path(), &bk, 5, &["manifest.json", "symbolic link"]);
    std::fs::remove_file(&m).unwrap();
    std::fs::write(&m, &saved).unwrap();
    // A stream pointing at another file: refused, and nothing of that file is told (its
    // size used to be in the message).
    let secret = dir.path().join("secret");
    std::fs::write(&secret, vec![b'x'; 12345]).unwrap();
    let st = bk.join("device-0.stream");
    std::fs::remove_file(&st).unwrap();
    std::os::unix::fs::symlink(&secret, &st).unwrap();
    both_refuse(dir.path(), &bk, 5, &["device-0.stream", "symbolic link"]);
    let r = run(&["verify", &s(&bk)]);
    assert!(!r.stderr.contains("12345"), "{}", r.stderr);
    // The backup directory itself as a link.
    let (_, bk2) = backup_of(dir.path(), "bk2", 3, 1);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&bk2, &link).unwrap();
    both_refuse(dir.path(), &link, 3, &["is a symbolic link", "bk2"]);
    // Also when named with a trailing slash (which makes the kernel follow a link).
    let slash = std::path::PathBuf::from(format!("{}/", s(&link)));
    both_refuse(dir.path(), &slash, 3, &["is a symbolic link", "bk2"]);
}

#[test]
fn a_huge_manifest_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bk) = backup_of(dir.path(), "bk", 4, 1);
    let m = bk.join("manifest.json");
    let mut text = std::fs::read(&m).unwrap();
    text.extend(std::iter::repeat_n(b' ', 2 << 20));
    std::fs::write(&m, &text).unwrap();
    both_refuse(
        dir.path(),
        &bk,
        5,
        &["manifest.json", "more than the 1048576"],
    );
}

/// Streams renamed into each other's place are called swapped, not "truncated".
#[test]
fn swapped_streams_are_called_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bk) = backup_of(dir.path(), "bk", 5, 3);
    let (a, b) = (bk.join("device-0.stream"), bk.join("device-2.stream"));
    let tmp = bk.join("t");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let r = run(&["verify", &s(&bk)]);
    r.fails(
        5,
        &["device-0.stream", "holds the stream of device 2", "swapped"],
    );
    assert!(!r.stderr.contains("truncated"), "{}", r.stderr);
    let t = dir.path().join("t");
    let r = run(&["restore", &s(&bk), &s(&t)]);
    r.fails(5, &["swapped"]);
    assert!(!r.stderr.contains("truncated"), "{}", r.stderr);
}

/// A stream of another backup, put in place with a manifest edited to match its size and
/// digest: restore checks the manifest's stream id (as verify does) and refuses it,
/// instead of restoring the other backup's data.
#[test]
fn restore_checks_the_stream_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = backup_of(dir.path(), "a", 6, 1);
    let (_, b) = backup_of(dir.path(), "b", 7, 1);
    std::fs::copy(b.join("device-0.stream"), a.join("device-0.stream")).unwrap();
    let ma: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    let mb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("manifest.json")).unwrap()).unwrap();
    let mut m = ma.clone();
    m["streams"] = mb["streams"].clone();
    std::fs::write(
        a.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    both_refuse(
        dir.path(),
        &a,
        5,
        &["device-0.stream", "belongs to another backup"],
    );
}
