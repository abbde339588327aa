//! Encryption at rest and the stored-stream codecs, through the real `vdi` binary: byte-
//! checked round trips of every compression (none, zstd, zstd's fast levels, lz4),
//! encrypted or not, through 1, 3 and 8 devices; tampering (a flipped byte, two chunks
//! swapped, two devices' streams swapped, a truncated stream, a stream of another backup
//! made with the same key) found by `verify` (exit 5) and `restore`, with and without
//! encryption; a missing key, a wrong key, the other kind of key, a passphrase from an
//! environment variable and from a file descriptor; the layout of an unencrypted backup
//! unchanged (manifest version 1).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const PASS: &str = "correct horse battery staple";

fn key_file(dir: &Path) -> PathBuf {
    let k = dir.join("key");
    if !k.exists() {
        std::fs::write(&k, format!("{KEY_HEX}\n")).unwrap();
    }
    k
}

fn manifest(bk: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bk.join("manifest.json")).unwrap()).unwrap()
}

fn stream_files(bk: &Path) -> Vec<String> {
    let mut v: Vec<String> = names_in(bk)
        .into_iter()
        .filter(|n| n.starts_with("device-"))
        .collect();
    v.sort();
    v
}

/// Backs `src` up into `bk` with `compress` (encrypted with the key file if `key`),
/// verifies and restores it, and checks the bytes, the file names and the manifest.
fn round_trip(dir: &Path, src: &Path, devices: u32, compress: &str, key: bool) {
    let tag = format!("{devices}-{}-{key}", compress.replace(':', "_"));
    let bk = dir.join(format!("bk-{tag}"));
    let out = dir.join(format!("out-{tag}"));
    let kf = key_file(dir);
    let n = devices.to_string();
    let mut args = vec![
        "backup".to_string(),
        format!("file:{}", s(src)),
        s(&bk),
        "--devices".into(),
        n,
        "--compress".into(),
        compress.into(),
        "--json".into(),
    ];
    let key_args = vec!["--key-file".to_string(), s(&kf)];
    if key {
        args.push("--encrypt".into());
        args.extend(key_args.clone());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&argv);
    r.ok();
    let j = r.json();
    assert_eq!(j["encrypted"], key);
    assert!(!r.stdout_str().contains(KEY_HEX));
    let m = manifest(&bk);
    let text = std::fs::read_to_string(bk.join("manifest.json")).unwrap();
    assert!(!text.contains(KEY_HEX), "the key is never stored");
    let lz4 = compress == "lz4";
    assert_eq!(m["version"], if key || lz4 { 2 } else { 1 }, "{tag}");
    assert_eq!(m["encryption"].is_null(), !key);
    let ext = match compress {
        "none" => "",
        "lz4" => ".lz4",
        _ => ".zst",
    };
    let want: Vec<String> = (0..devices)
        .map(|i| format!("device-{i}.stream{ext}{}", if key { ".enc" } else { "" }))
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(stream_files(&bk), want, "{tag}");
    let mut v = vec!["verify".to_string(), s(&bk), "--json".into()];
    if key {
        v.extend(key_args.clone());
    }
    let argv: Vec<&str> = v.iter().map(String::as_str).collect();
    let vr = run(&argv);
    vr.ok();
    let len = std::fs::metadata(src).unwrap().len();
    assert_eq!(vr.json()["source_bytes"], len);
    let mut rs = vec![
        "restore".to_string(),
        s(&bk),
        format!("file:{}", s(&out)),
        "--quiet".into(),
    ];
    if key {
        rs.extend(key_args);
    }
    let argv: Vec<&str> = rs.iter().map(String::as_str).collect();
    run(&argv).ok();
    assert_eq!(digest(src), digest(&out), "restored bytes differ ({tag})");
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(&bk).unwrap();
}

fn every_codec_through(devices: u32) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 17 + u64::from(devices), (5 << 20) + 4321);
    for c in ["none", "zstd:1", "zstd:-5", "lz4"] {
        for key in [false, true] {
            round_trip(dir.path(), &src, devices, c, key);
        }
    }
}

#[test]
fn every_codec_encrypted_or_not_through_1_device() {
    every_codec_through(1);
}

#[test]
fn every_codec_encrypted_or_not_through_3_devices() {
    every_codec_through(3);
}

#[test]
fn every_codec_encrypted_or_not_through_8_devices() {
    every_codec_through(8);
}

#[test]
fn an_unencrypted_backup_keeps_the_version_1_layout() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 3, 1 << 20);
    for (c, file) in [
        ("none", "device-0.stream"),
        ("zstd:3", "device-0.stream.zst"),
        ("zstd:-3", "device-0.stream.zst"),
    ] {
        let bk = dir.path().join(format!("bk-{}", c.replace(':', "_")));
        run(&["backup", &s(&src), &s(&bk), "--compress", c]).ok();
        let text = std::fs::read_to_string(bk.join("manifest.json")).unwrap();
        let m = manifest(&bk);
        assert_eq!(m["version"], 1);
        assert!(!text.contains("encryption"), "{text}");
        assert_eq!(stream_files(&bk), vec![file.to_string()]);
        let head = std::fs::read(bk.join(file)).unwrap();
        if c == "none" {
            // The engine's stream as it wrote it, nothing around it.
            assert_eq!(&head[..8], b"VDI-STRM");
        } else {
            assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        }
        // The fields a version-1 reader knows, and no other.
        let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        for k in &keys {
            assert!(
                [
                    "format",
                    "version",
                    "backup_id",
                    "stream_id",
                    "set_name",
                    "tool",
                    "host",
                    "started",
                    "completed",
                    "source",
                    "device_count",
                    "block_size",
                    "max_transfer_size",
                    "compression",
                    "total_stream_bytes",
                    "total_stored_bytes",
                    "streams",
                    "complete"
                ]
                .contains(k),
                "{k}"
            );
        }
    }
}

/// Makes a backup of `src` in `bk` through 2 devices, encrypted or not.
fn backup(dir: &Path, src: &Path, bk: &Path, compress: &str, key: bool) {
    let kf = s(&key_file(dir));
    let srcs = format!("file:{}", s(src));
    let bks = s(bk);
    let mut a = vec![
        "backup",
        &srcs,
        &bks,
        "--devices",
        "2",
        "--compress",
        compress,
        "--quiet",
    ];
    if key {
        a.extend(["--encrypt", "--key-file", &kf]);
    }
    run(&a).ok();
}

/// `verify` and `restore` of `bk` both fail with exit `code`; `verify` names every one
/// of `words`; no target appears.
fn both_refuse(dir: &Path, bk: &Path, key: bool, code: i32, words: &[&str]) {
    let kf = s(&key_file(dir));
    let t = dir.join("target");
    let bks = s(bk);
    let ts = format!("file:{}", s(&t));
    let mut v = vec!["verify", &bks];
    let mut r = vec!["restore", &bks, &ts];
    if key {
        v.extend(["--key-file", &kf]);
        r.extend(["--key-file", &kf]);
    }
    run(&v).fails(code, words);
    run(&r).fails(code, &[]);
    assert!(!t.exists());
}

/// The records of an encrypted stream file: (offset, length) after its 40-byte header.
fn sealed_records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = 40;
    while at + 4 <= bytes.len() {
        let w = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = 4 + (w & 0x7fff_ffff) as usize + 16;
        v.push((at, len));
        at += len;
    }
    v
}

/// Sets stream `device`'s `stored_bytes` in the manifest (to hide a truncation from the
/// size check, so the stream's own structure must find it).
fn set_stored_bytes(bk: &Path, device: usize, n: u64) {
    let mut m = manifest(bk);
    m["streams"][device]["stored_bytes"] = n.into();
    std::fs::write(
        bk.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn tampering(key: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    write_pattern(&src, 5, (6 << 20) + 77);
    let c = "none";
    let name = |i: u32| format!("device-{i}.stream{}", if key { ".enc" } else { "" });
    let fresh = |tag: &str| {
        let bk = d.join(tag);
        backup(d, &src, &bk, c, key);
        bk
    };

    // A flipped byte in the middle of a stream.
    let bk = fresh("flip");
    let f = bk.join(name(1));
    let mut b = std::fs::read(&f).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&f, &b).unwrap();
    both_refuse(d, &bk, key, 5, &[&name(1)]);

    // Two chunks of a stream swapped (same sizes: the file's size is unchanged).
    let bk = fresh("swap-chunks");
    let f = bk.join(name(0));
    let b = std::fs::read(&f).unwrap();
    let (x, y) = if key {
        let r = sealed_records(&b);
        (r[0], r[1])
    } else {
        // Full engine chunks of 1 MiB after the 4 KiB header frame.
        ((4096, 1 << 20), (4096 + (1 << 20), 1 << 20))
    };
    assert_eq!(x.1, y.1);
    let mut t = b.clone();
    t[x.0..x.0 + x.1].copy_from_slice(&b[y.0..y.0 + y.1]);
    t[y.0..y.0 + y.1].copy_from_slice(&b[x.0..x.0 + x.1]);
    std::fs::write(&f, &t).unwrap();
    both_refuse(d, &bk, key, 5, &[&name(0)]);

    // Two devices' streams swapped.
    let bk = fresh("swap-devices");
    let tmp = bk.join("tmp");
    std::fs::rename(bk.join(name(0)), &tmp).unwrap();
    std::fs::rename(bk.join(name(1)), bk.join(name(0))).unwrap();
    std::fs::rename(&tmp, bk.join(name(1))).unwrap();
    both_refuse(d, &bk, key, 5, &["swapped"]);

    // Truncated: found by the size check, and by the stream itself when the manifest's
    // size is changed to match.
    let bk = fresh("truncate");
    let f = bk.join(name(1));
    let b = std::fs::read(&f).unwrap();
    let cut = if key {
        sealed_records(&b).last().unwrap().0
    } else {
        b.len() - 4096
    };
    std::fs::write(&f, &b[..cut]).unwrap();
    both_refuse(d, &bk, key, 5, &["truncated"]);
    set_stored_bytes(&bk, 1, cut as u64);
    both_refuse(
        d,
        &bk,
        key,
        5,
        &[if key {
            "without its last chunk"
        } else {
            "truncated"
        }],
    );

    // A stream of another backup of the same source (and the same key).
    let bk = fresh("other");
    let other = fresh("other-2");
    std::fs::copy(other.join(name(0)), bk.join(name(0))).unwrap();
    both_refuse(d, &bk, key, 5, &["another backup"]);
    // ... even with the manifest's size and digest made to match it.
    let om = manifest(&other);
    let mut m = manifest(&bk);
    m["streams"][0] = om["streams"][0].clone();
    std::fs::write(
        bk.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    both_refuse(d, &bk, key, 5, &["another backup"]);
}

#[test]
fn tampering_is_found_without_encryption() {
    tampering(false);
}

#[test]
fn tampering_is_found_with_encryption() {
    tampering(true);
}

#[test]
fn an_encrypted_stream_with_its_header_rewritten_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    write_pattern(&src, 6, (3 << 20) + 5);
    let bk = d.join("bk");
    backup(d, &src, &bk, "zstd:1", true);
    // Device 1's stream under device 0's name, with device 0's header: only the
    // authentication of its chunks can tell.
    let a = std::fs::read(bk.join("device-0.stream.zst.enc")).unwrap();
    let mut b = std::fs::read(bk.join("device-1.stream.zst.enc")).unwrap();
    b[..40].copy_from_slice(&a[..40]);
    std::fs::write(bk.join("device-0.stream.zst.enc"), &b).unwrap();
    set_stored_bytes(&bk, 0, b.len() as u64);
    both_refuse(d, &bk, true, 5, &["chunk 0", "fails authentication"]);
}

#[test]
fn missing_wrong_and_other_kinds_of_keys_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    write_pattern(&src, 7, 1 << 20);
    let bk = d.join("bk");
    backup(d, &src, &bk, "zstd:1", true);
    let t = d.join("t");
    let ts = format!("file:{}", s(&t));
    let bks = s(&bk);
    // No key.
    run(&["verify", &bks]).fails(2, &["encrypted", "--key-file"]);
    run(&["restore", &bks, &ts]).fails(2, &["encrypted", "--key-file"]);
    // A wrong key (in the raw 32-byte form).
    let wrong = d.join("wrong");
    std::fs::write(&wrong, [0x5au8; 32]).unwrap();
    run(&["verify", &bks, "--key-file", &s(&wrong)]).fails(2, &["wrong key"]);
    run(&["restore", &bks, &ts, "--key-file", &s(&wrong)]).fails(2, &["wrong key"]);
    // A passphrase for a key-file backup.
    let mut c = vdi();
    c.args(["verify", &bks, "--passphrase-env", "VDI_TEST_PASS"])
        .env("VDI_TEST_PASS", PASS);
    let r = wait_output(
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        std::time::Duration::from_secs(60),
    );
    r.fails(2, &["key file", "--key-file"]);
    assert!(!t.exists());
    // Not a key at all.
    let junk = d.join("junk");
    std::fs::write(&junk, "not a key\n").unwrap();
    run(&["verify", &bks, "--key-file", &s(&junk)]).fails(2, &["holds no key"]);
    // Options that make no sense together, or alone.
    let bk2 = s(&d.join("bk2"));
    let srcs = format!("file:{}", s(&src));
    run(&["backup", &srcs, &bk2, "--encrypt"]).fails(2, &["--encrypt needs a key"]);
    run(&["backup", &srcs, &bk2, "--key-file", &s(&key_file(d))]).fails(2, &["--encrypt"]);
    run_in(
        &[
            "backup",
            &srcs,
            "-",
            "--encrypt",
            "--key-file",
            &s(&key_file(d)),
        ],
        None,
        Some(&d.join("out")),
    )
    .fails(2, &["manifest"]);
    assert!(!d.join("bk2").exists());
}

fn vdi_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = vdi();
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    wait_output(c.spawn().unwrap(), std::time::Duration::from_secs(120))
}

#[test]
fn a_passphrase_from_an_environment_variable_or_a_file_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The source is a program that prints its environment: the passphrase must not be
    // there (the engine and the programs it runs never see it).
    let bk = d.join("bk");
    let r = vdi_with_env(
        &[
            "backup",
            "cmd:env",
            &s(&bk),
            "--encrypt",
            "--passphrase-env",
            "VDI_TEST_PASS",
            "--compress",
            "lz4",
            "--json",
        ],
        &[("VDI_TEST_PASS", PASS)],
    );
    r.ok();
    assert!(!r.stdout_str().contains(PASS) && !r.stderr.contains(PASS));
    let text = std::fs::read_to_string(bk.join("manifest.json")).unwrap();
    assert!(text.contains("argon2id") && !text.contains(PASS), "{text}");
    // Restore with the passphrase on standard input (fd 0) ...
    let pass = d.join("pass");
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    let out = d.join("env.txt");
    run_in(
        &[
            "restore",
            &s(&bk),
            &format!("file:{}", s(&out)),
            "--passphrase-fd",
            "0",
        ],
        Some(&pass),
        None,
    )
    .ok();
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(env.contains("PATH="), "the program's output was restored");
    assert!(
        !env.contains(PASS),
        "the engine's programs saw the passphrase"
    );
    // ... and on fd 3, opened by a shell.
    let script = format!(
        "exec \"$VDI\" verify '{}' --passphrase-fd 3 3<'{}'",
        s(&bk),
        s(&pass)
    );
    let mut c = std::process::Command::new("sh");
    c.args(["-c", &script])
        .env("VDI", env!("CARGO_BIN_EXE_vdi"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    wait_output(c.spawn().unwrap(), std::time::Duration::from_secs(60)).ok();
    // A wrong passphrase, an unset variable, a closed descriptor.
    vdi_with_env(
        &["verify", &s(&bk), "--passphrase-env", "VDI_TEST_PASS"],
        &[("VDI_TEST_PASS", "Correct horse battery staple")],
    )
    .fails(2, &["wrong key", "passphrase"]);
    run(&["verify", &s(&bk), "--passphrase-env", "VDI_TEST_UNSET_VAR"])
        .fails(2, &["VDI_TEST_UNSET_VAR", "not set"]);
    run(&["verify", &s(&bk), "--passphrase-fd", "9"]).fails(2, &["file descriptor 9"]);
    run(&[
        "backup",
        "-",
        &s(&d.join("bk2")),
        "--encrypt",
        "--passphrase-fd",
        "0",
    ])
    .fails(2, &["standard input"]);
    run(&["verify", &s(&bk), "--key-file", &s(&key_file(d))])
        .fails(2, &["passphrase", "--passphrase-env"]);
}

#[test]
fn the_split_client_encrypts_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    write_pattern(&src, 8, (2 << 20) + 9);
    let bk = d.join("bk");
    let kf = s(&key_file(d));
    let set = set_name("crypt-split");
    let client = spawn(&[
        "client",
        "backup",
        "--set",
        &set,
        &s(&bk),
        "--devices",
        "2",
        "--compress",
        "zstd:-1",
        "--encrypt",
        "--key-file",
        &kf,
        "--json",
    ]);
    run(&[
        "engine",
        "backup",
        "--set",
        &set,
        &format!("file:{}", s(&src)),
        "--quiet",
    ])
    .ok();
    let c = wait_output(client, std::time::Duration::from_secs(60));
    c.ok();
    assert_eq!(c.json()["encrypted"], true);
    let info = run(&["info", &s(&bk)]);
    info.ok();
    let text = format!("{}{}", info.stdout_str(), info.stderr);
    assert!(text.contains("aes-256-gcm (key: key file)"), "{text}");
    run(&["verify", &s(&bk)]).fails(2, &["encrypted"]);
    run(&["verify", &s(&bk), "--key-file", &kf]).ok();
    let out = d.join("out");
    run(&[
        "restore",
        &s(&bk),
        &format!("file:{}", s(&out)),
        "--key-file",
        &kf,
    ])
    .ok();
    assert_eq!(digest(&src), digest(&out));
}

#[test]
fn a_repository_lists_which_backups_are_encrypted_and_with_what_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.bin");
    std::fs::write(&src, vec![7u8; 300_000]).unwrap();
    let repo = s(&d.join("repo"));
    run(&["init", &repo]).ok();
    let file_src = format!("file:{}", s(&src));
    run(&["backup", &file_src, &repo]).ok();
    let kf = s(&key_file(d));
    run(&["backup", &file_src, &repo, "--encrypt", "--key-file", &kf]).ok();
    vdi_with_env(
        &[
            "backup",
            &file_src,
            &repo,
            "--encrypt",
            "--passphrase-env",
            "VDI_TEST_PASS",
        ],
        &[("VDI_TEST_PASS", PASS)],
    )
    .ok();
    let table = run(&["list", &repo]).ok().stdout_str();
    let lines: Vec<&str> = table.lines().collect();
    let key_col = lines[0].find("KEY").expect("a KEY column");
    let keys: Vec<&str> = lines[1..4]
        .iter()
        .map(|l| l[key_col..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(keys, ["-", "file", "pass"], "{table}");
    let j = run(&["list", &repo, "--json"]).ok().json();
    let enc: Vec<&serde_json::Value> = (0..3).map(|i| &j["backups"][i]["encryption"]).collect();
    assert!(enc[0].is_null(), "{j}");
    assert_eq!(enc[1], "key file");
    assert_eq!(enc[2], "passphrase");
}
