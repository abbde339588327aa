//! Backup (Write) and restore (Read) of 256 MiB of pseudo-random data between two real
//! processes, through 1, 3 and 8 devices, with several commands outstanding per device and
//! completions in reverse order; every byte is checked on the receiving side.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use vdi::{ClientSet, ServerSet};
use vdi_tests::{Peer, Plan, client_config, run_client, run_server, socket_exists, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
const TOTAL: u64 = 256 << 20;

fn peer_args(mode: &str, plan: &Plan) -> Vec<String> {
    let mut v = vec![mode.to_owned()];
    v.extend(plan.to_args());
    v
}

fn done_bytes(peer: &Peer) -> u64 {
    let line = peer
        .seen
        .iter()
        .find(|l| l.starts_with("DONE"))
        .expect("peer printed DONE");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|b| b.parse().ok())
        .expect("bytes= in DONE")
}

/// The test is the client; the peer process is the engine.
fn client_here(devices: u32, restore: bool, total: u64) {
    let name = unique_name(if restore { "rs" } else { "bk" });
    let mut plan = Plan::new(&name, devices, total);
    plan.restore = restore;
    plan.prefix = 96;
    plan.alignment = 4096;
    let set = ClientSet::create(&name, &client_config(&plan)).unwrap();
    let mut peer = Peer::spawn(PEER, &peer_args("server", &plan), None);
    let all: Vec<u32> = (0..devices).collect();
    let r = run_client(&set, &plan, &all, &|_| {}).unwrap();
    set.close().unwrap();
    assert_eq!(
        peer.wait(Duration::from_secs(300)),
        0,
        "peer: {:?}",
        peer.seen
    );
    assert_eq!(
        r.mismatches, 0,
        "client saw wrong bytes, misaligned buffers or a bad prefix zone"
    );
    assert_eq!(r.errors, 0);
    for i in 0..devices {
        assert_eq!(r.bytes[i as usize], plan.device_bytes(i), "device {i}");
    }
    assert_eq!(done_bytes(&peer), total, "engine's count");
    assert!(!socket_exists(&name), "the set's socket outlived Close");
}

/// The test is the engine; the peer process is the client.
fn server_here(devices: u32, restore: bool, total: u64) {
    let name = unique_name(if restore { "srs" } else { "sbk" });
    let mut plan = Plan::new(&name, devices, total);
    plan.restore = restore;
    plan.transfer = 256 << 10;
    plan.depth = 6;
    let mut peer = Peer::spawn(PEER, &peer_args("client", &plan), None);
    peer.expect_line("CREATED", Duration::from_secs(30));
    let set = ServerSet::open(&name).unwrap();
    let r = run_server(&set, &plan, &|_| {}).unwrap();
    assert_eq!(
        peer.wait(Duration::from_secs(300)),
        0,
        "peer: {:?}",
        peer.seen
    );
    assert_eq!((r.mismatches, r.errors), (0, 0));
    assert_eq!(r.bytes.iter().sum::<u64>(), total);
    assert_eq!(done_bytes(&peer), total, "client's count");
}

#[test]
fn backup_1_device() {
    client_here(1, false, TOTAL);
}

#[test]
fn backup_3_devices_uneven_sizes() {
    client_here(3, false, TOTAL + 12_345);
}

#[test]
fn backup_8_devices() {
    client_here(8, false, TOTAL);
}

#[test]
fn restore_1_device() {
    client_here(1, true, TOTAL);
}

#[test]
fn restore_3_devices_uneven_sizes() {
    client_here(3, true, TOTAL + 777);
}

#[test]
fn restore_8_devices() {
    client_here(8, true, TOTAL);
}

#[test]
fn backup_with_the_client_in_the_peer_process() {
    server_here(3, false, 64 << 20);
}

#[test]
fn restore_with_the_client_in_the_peer_process() {
    server_here(2, true, 64 << 20);
}
