//! A striped backup restored to standard output, read through a pipe: the engine puts
//! the chunks of every device back in source order (at most 64 MiB ahead in memory).
//! 1 GiB through 2, 4 and 64 devices: the sizes at which this used to fail with "the
//! streams hold no chunk for source byte N" on sound backups (a device that filled one
//! gap and met the next gave up while the devices it had just woken could go on).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const GIB: u64 = 1 << 30;

/// `vdi restore BK -` into a pipe this test reads (and hashes) as it comes.
fn restore_through_a_pipe(bk: &Path) -> (Run, String, u64) {
    let mut child = vdi()
        .args(["restore", &s(bk), "-", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        // Small reads: a consumer slower than the engine, as a real pipe has.
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let k = out.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        (h.finalize().to_hex().to_string(), n)
    });
    let r = wait_output(child, Duration::from_secs(600));
    let (digest, n) = reader.join().unwrap();
    (r, digest, n)
}

fn through(devices: u32) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 1000 + u64::from(devices), GIB + 12345);
    let want = digest(&src);
    let bk = dir.path().join("bk");
    run(&[
        "backup",
        &format!("file:{}", s(&src)),
        &s(&bk),
        "--devices",
        &devices.to_string(),
        "--quiet",
    ])
    .ok();
    std::fs::remove_file(&src).unwrap();
    for round in 0..2 {
        let (r, got, n) = restore_through_a_pipe(&bk);
        r.ok();
        assert_eq!(n, GIB + 12345, "round {round}: bytes on standard output");
        assert_eq!(got, want, "round {round}: restored bytes differ");
    }
}

#[test]
fn one_gib_through_two_devices() {
    through(2);
}

#[test]
fn one_gib_through_four_devices() {
    through(4);
}

#[test]
fn one_gib_through_sixty_four_devices() {
    through(64);
}
