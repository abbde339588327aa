//! Both roles in C over libvdi, in real processes over real shared memory: the C client
//! (`tests/c/vdi_client.c`, the Linux sample's shape) against `vdi engine`, the C engine
//! (`tests/c/vdi_engine.c`, completion routines, 4 devices) against `vdi client` and
//! against the C client; aborts from each side and SIGKILL of each peer. The C engine
//! also asks QueryAvailableBuffers in every state it passes through (its report's
//! `query=` field).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

struct Progs {
    dir: tempfile::TempDir,
    client: PathBuf,
    engine: PathBuf,
}

fn build() -> Progs {
    let dir = tempfile::tempdir().unwrap();
    let lib = libvdi_dir();
    let client = dir.path().join("vdi_client");
    let engine = dir.path().join("vdi_engine");
    compile(&source("c/vdi_client.c"), &client, &lib, "vdi", &[]);
    compile(&source("c/vdi_engine.c"), &engine, &lib, "vdi", &[]);
    Progs {
        dir,
        client,
        engine,
    }
}

fn digest(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn c_client_backs_up_and_restores_a_file_through_vdi_engine() {
    let p = build();
    let vdi = vdi_tool();
    let src = p.dir.path().join("src.bin");
    write_pattern(&src, 3, (5 << 20) + 321);
    for devices in [1u32, 3] {
        let bk = p.dir.path().join(format!("bk{devices}"));
        let set = set_name("cfile");
        let r = run(
            &p.client,
            &[
                "backup",
                &set,
                &s(&bk),
                &devices.to_string(),
                "--",
                &s(&vdi),
                "engine",
                "backup",
                "--set",
                &set,
                &format!("file:{}", s(&src)),
                "-q",
            ],
        );
        r.ok();
        assert_eq!(r.field("result"), "VD_E_CLOSE");
        eprintln!(
            "C client, vdi engine backup, {devices} device(s): longest wait between commands {} us",
            r.num("max_gap_us")
        );
        let out = p.dir.path().join(format!("out{devices}"));
        let set = set_name("cfile-r");
        let r = run(
            &p.client,
            &[
                "restore",
                &set,
                &s(&bk),
                &devices.to_string(),
                "--",
                &s(&vdi),
                "engine",
                "restore",
                "--set",
                &set,
                &format!("file:{}", s(&out)),
                "-q",
            ],
        );
        r.ok();
        eprintln!(
            "C client, vdi engine restore, {devices} device(s): longest wait between commands {} us",
            r.num("max_gap_us")
        );
        assert!(digest(&src) == digest(&out), "the restored file differs");
    }
}

#[test]
fn c_client_backs_up_and_restores_a_sqlite_database_through_vdi_engine() {
    let p = build();
    let vdi = vdi_tool();
    let db = p.dir.path().join("shop.db");
    make_db(&db, 30_000);
    let bk = p.dir.path().join("bk");
    let set = set_name("csql");
    p_run_pair(
        &p,
        "backup",
        &set,
        &bk,
        2,
        &format!("sqlite:{}", s(&db)),
        &vdi,
    );
    let out = p.dir.path().join("copy.db");
    let set = set_name("csql-r");
    p_run_pair(
        &p,
        "restore",
        &set,
        &bk,
        2,
        &format!("sqlite:{}", s(&out)),
        &vdi,
    );
    // Byte for byte, but for the three header fields SQLite's backup API rewrites in the
    // snapshot the engine takes (change counter, version-valid-for, library version).
    let (a, b) = (digest(&db), digest(&out));
    assert_eq!(a.len(), b.len(), "the restored database has another size");
    let differs: Vec<usize> = (0..a.len())
        .filter(|&i| a[i] != b[i] && !(24..28).contains(&i) && !(92..100).contains(&i))
        .collect();
    assert!(
        differs.is_empty(),
        "the restored database differs at {differs:?}"
    );
    assert_eq!(db_rows(&out), (30_000, "ok".to_owned()));
}

fn p_run_pair(
    p: &Progs,
    op: &str,
    set: &str,
    bk: &std::path::Path,
    devices: u32,
    what: &str,
    vdi: &std::path::Path,
) {
    let r = run(
        &p.client,
        &[
            op,
            set,
            &s(bk),
            &devices.to_string(),
            "--",
            &s(vdi),
            "engine",
            op,
            "--set",
            set,
            what,
            "-q",
        ],
    );
    r.ok();
    assert_eq!(r.field("result"), "VD_E_CLOSE");
}

#[test]
fn c_engine_stripes_over_4_devices_to_vdi_client_and_to_the_c_client() {
    let p = build();
    let vdi = vdi_tool();
    let src = p.dir.path().join("src.bin");
    write_pattern(&src, 5, (7 << 20) + 4097);

    // To the vdi tool's backup application, and back.
    let repo = p.dir.path().join("repo");
    let set = set_name("ceng");
    let client = spawn(
        &vdi,
        &[
            "client",
            "backup",
            "--set",
            &set,
            &s(&repo),
            "--devices",
            "4",
            "-q",
        ],
        &[],
    );
    let e = run(&p.engine, &["backup", &set, &s(&src), "--depth", "3"]);
    e.ok();
    assert_eq!(e.field("result"), "NOERROR");
    assert_eq!(e.num("bytes"), (7 << 20) + 4097);
    // QueryAvailableBuffers from C, in each state: refused before BeginConfiguration
    // (DNE, Connected) and after the end; the 12 requested buffers (4 devices x depth 3)
    // while Configurable and Initializing; none once all are allocated (Active).
    assert_eq!(
        e.field("query"),
        "VD_E_PROTOCOL,VD_E_PROTOCOL,12,12,0,VD_E_PROTOCOL"
    );
    wait(client, Duration::from_secs(60), "vdi client backup").ok();
    let out = p.dir.path().join("out-tool");
    let set = set_name("ceng-r");
    let client = spawn(
        &vdi,
        &["client", "restore", "--set", &set, &s(&repo), "-q"],
        &[],
    );
    let e = run(&p.engine, &["restore", &set, &s(&out), "--depth", "3"]);
    e.ok();
    assert_eq!(
        e.field("query"),
        "VD_E_PROTOCOL,VD_E_PROTOCOL,12,12,0,VD_E_PROTOCOL"
    );
    wait(client, Duration::from_secs(60), "vdi client restore").ok();
    assert!(
        digest(&src) == digest(&out),
        "restored through vdi client: differs"
    );

    // To the C client, and back.
    let bk = p.dir.path().join("bk");
    let set = set_name("ceng-c");
    let r = run(
        &p.client,
        &[
            "backup",
            &set,
            &s(&bk),
            "4",
            "--request-complete",
            "--",
            &s(&p.engine),
            "backup",
            &set,
            &s(&src),
            "--depth",
            "4",
        ],
    );
    r.ok();
    let out = p.dir.path().join("out-c");
    let set = set_name("ceng-cr");
    let r = run(
        &p.client,
        &[
            "restore",
            &set,
            &s(&bk),
            "4",
            "--",
            &s(&p.engine),
            "restore",
            &set,
            &s(&out),
            "--depth",
            "4",
        ],
    );
    r.ok();
    assert!(
        digest(&src) == digest(&out),
        "restored through the C client: differs"
    );
}

/// The engine's report line, with the C client's as context.
fn engine_line(client: &Ran) -> String {
    client
        .stdout
        .lines()
        .find(|l| l.contains("callbacks="))
        .unwrap_or_else(|| panic!("no engine line in:\n{}\n{}", client.stdout, client.stderr))
        .to_owned()
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// Every command the engine sent was called back exactly once, and the outstanding ones
/// with ERROR_OPERATION_ABORTED.
fn assert_aborted_cleanly(engine: &str) {
    assert_eq!(field(engine, "result"), "VD_E_ABORT", "{engine}");
    assert_eq!(field(engine, "twice"), "0", "a routine ran twice: {engine}");
    assert_eq!(
        field(engine, "in_flight"),
        "0",
        "a routine never ran: {engine}"
    );
    // QueryAvailableBuffers after the abort (Abnormally Terminated) is refused.
    assert!(
        field(engine, "query").ends_with(",VD_E_PROTOCOL"),
        "{engine}"
    );
}

#[test]
fn aborts_from_either_side_reach_the_other_through_the_c_api() {
    let p = build();
    let src = p.dir.path().join("src.bin");
    write_pattern(&src, 7, 6 << 20);
    let bk = p.dir.path().join("bk");

    // The engine aborts after 5 completions: the client sees VD_E_ABORT; the engine's
    // outstanding commands come back once each, with 995.
    let set = set_name("abort-s");
    let r = run(
        &p.client,
        &[
            "backup",
            &set,
            &s(&bk),
            "4",
            "--",
            &s(&p.engine),
            "backup",
            &set,
            &s(&src),
            "--abort-after",
            "5",
        ],
    );
    assert!(!r.status.success());
    assert_eq!(r.field("result"), "VD_E_ABORT");
    let e = engine_line(&r);
    assert_aborted_cleanly(&e);
    assert!(field(&e, "aborted").parse::<u32>().unwrap() > 0, "{e}");

    // The client aborts after 5 commands.
    let set = set_name("abort-c");
    let r = run(
        &p.client,
        &[
            "backup",
            &set,
            &s(&bk),
            "4",
            "--abort-after",
            "5",
            "--",
            &s(&p.engine),
            "backup",
            &set,
            &s(&src),
        ],
    );
    assert!(!r.status.success());
    assert_eq!(r.field("result"), "VD_E_ABORT");
    let e = engine_line(&r);
    assert_aborted_cleanly(&e);
    assert!(field(&e, "aborted").parse::<u32>().unwrap() > 0, "{e}");
}

#[test]
fn sigkill_of_either_peer_is_seen_through_the_c_api() {
    let p = build();
    let src = p.dir.path().join("src.bin");
    write_pattern(&src, 9, 6 << 20);
    let bk = p.dir.path().join("bk");

    // The engine stalls after 6 completions and is killed: the client's blocked
    // GetCommand returns VD_E_ABORT.
    let set = set_name("kill-s");
    let mut engine = spawn(
        &p.engine,
        &["backup", &set, &s(&src), "--stall-after", "6"],
        &[],
    );
    let client = spawn(&p.client, &["backup", &set, &s(&bk), "4"], &[]);
    wait_for_line(&mut engine, "stalled", Duration::from_secs(30));
    engine.kill().unwrap();
    let _ = engine.wait();
    let r = wait(
        client,
        Duration::from_secs(30),
        "the C client after its engine died",
    );
    assert!(!r.status.success());
    assert_eq!(r.field("result"), "VD_E_ABORT", "{}", r.stderr);
    assert!(r.stderr.contains("went away"), "{}", r.stderr);

    // The client holds a command and is killed: the engine's outstanding commands come
    // back once each with 995 and its completion agent returns VD_E_ABORT.
    let set = set_name("kill-c");
    let mut client = spawn(
        &p.client,
        &["backup", &set, &s(&bk), "4", "--stall-after", "6"],
        &[],
    );
    let engine = spawn(&p.engine, &["backup", &set, &s(&src)], &[]);
    wait_for_line(&mut client, "stalled", Duration::from_secs(30));
    client.kill().unwrap();
    let _ = client.wait();
    let e = wait(
        engine,
        Duration::from_secs(30),
        "the C engine after its client died",
    );
    assert!(!e.status.success());
    let line = e.stdout.lines().last().unwrap_or_default().to_owned();
    assert_aborted_cleanly(&line);
    assert!(
        field(&line, "aborted").parse::<u32>().unwrap() > 0,
        "{line}"
    );
}

#[test]
fn a_com_shaped_client_ported_from_simple_cpp_backs_up_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("simple_com");
    compile(
        &source("cpp/simple_com.cpp"),
        &exe,
        &libvdi_dir(),
        "vdi",
        &[],
    );
    let vdi = vdi_tool();
    let src = dir.path().join("src");
    write_pattern(&src, 13, (2 << 20) + 99);
    let bk = dir.path().join("bk");
    for (op, file, engine_op, what) in [
        ("B", &bk, "backup", format!("file:{}", s(&src))),
        (
            "R",
            &bk,
            "restore",
            format!("file:{}", s(&dir.path().join("out"))),
        ),
    ] {
        let set = set_name("com");
        let r = run(
            &exe,
            &[
                op,
                &s(file),
                &set,
                "--",
                &s(&vdi),
                "engine",
                engine_op,
                "--set",
                &set,
                &what,
                "-q",
            ],
        );
        r.ok();
        assert!(
            r.stdout.contains("All data was transferred"),
            "{}",
            r.stdout
        );
    }
    assert!(digest(&src) == digest(&dir.path().join("out")));
}
