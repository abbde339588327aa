//! libsqlvdi.so as a drop-in for the Linux SDK's library: its exported symbols, its
//! dependencies, the SDK's sizes, and a client in the Linux sample's shape (built with
//! g++ against `include/sqlvdi/vdi.h`, linked with `-lsqlvdi`) backing up and restoring a
//! file and a SQLite database through `vdi engine` in another process, loaded through
//! `LD_LIBRARY_PATH` and through an rpath, its set on the heap and on the stack, once
//! under AddressSanitizer (which would catch a read of a completed `VDC_Command`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vdi-ffi/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The 19 symbols a client binary imports (linux-sdk.md §1.3).
const SDK_SYMBOLS: [&str; 19] = [
    "_ZN22ClientVirtualDeviceSetC1Ev",
    "_ZN22ClientVirtualDeviceSetC2Ev",
    "_ZN22ClientVirtualDeviceSetD1Ev",
    "_ZN22ClientVirtualDeviceSetD2Ev",
    "_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig",
    "_ZN22ClientVirtualDeviceSet16GetConfigurationElP8VDConfig",
    "_ZN22ClientVirtualDeviceSet10OpenDeviceEPcPP19ClientVirtualDevice",
    "_ZN22ClientVirtualDeviceSet5CloseEv",
    "_ZN22ClientVirtualDeviceSet11SignalAbortEv",
    "_ZN22ClientVirtualDeviceSet15OpenInSecondaryEPc",
    "_ZN22ClientVirtualDeviceSet15GetBufferHandleEPhPj",
    "_ZN22ClientVirtualDeviceSet15MapBufferHandleEiPPh",
    "_ZN22ClientVirtualDeviceSet20RegisterDeviceClosedEv",
    "_ZN19ClientVirtualDeviceC1Ev",
    "_ZN19ClientVirtualDeviceC2Ev",
    "_ZN19ClientVirtualDeviceD1Ev",
    "_ZN19ClientVirtualDeviceD2Ev",
    "_ZN19ClientVirtualDevice10GetCommandElPP11VDC_Command",
    "_ZN19ClientVirtualDevice15CompleteCommandEP11VDC_Commandiml",
];

fn libsqlvdi() -> PathBuf {
    artifact("libsqlvdi.so", "cargo build -p vdi-sqlvdi")
}

fn tool_output(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e} (install binutils)"));
    assert!(o.status.success(), "{prog} {args:?} failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn exports_exactly_the_sdk_symbols_and_needs_only_libc() {
    let lib = libsqlvdi();
    let nm = tool_output("nm", &["-D", "--defined-only", &s(&lib)]);
    let exported: Vec<&str> = nm
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    for sym in SDK_SYMBOLS {
        assert!(exported.contains(&sym), "{sym} is not exported:\n{nm}");
    }
    let extra: Vec<&&str> = exported
        .iter()
        .filter(|s| !SDK_SYMBOLS.contains(s))
        .collect();
    assert!(extra.is_empty(), "libsqlvdi.so exports more: {extra:?}");

    // Only libc-level libraries, and no SONAME that would name a file not installed.
    let dynamic = tool_output("readelf", &["-d", &s(&lib)]);
    for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let ok = [
            "libc.so",
            "libgcc_s.so",
            "libm.so",
            "libpthread.so",
            "libdl.so",
            "ld-linux",
        ]
        .iter()
        .any(|n| line.contains(n));
        assert!(ok, "libsqlvdi.so needs more than libc: {line}");
    }
    if let Some(l) = dynamic.lines().find(|l| l.contains("(SONAME)")) {
        assert!(
            l.contains("[libsqlvdi.so]"),
            "a SONAME other than the file name: {l}"
        );
    }
}

#[test]
fn sizes_and_codes_as_a_client_compiles_them() {
    let lib = libsqlvdi();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sizes");
    let inc = include_dir().join("sqlvdi");
    compile(
        &source_here("cpp/sizes.cpp"),
        &exe,
        lib.parent().unwrap(),
        "sqlvdi",
        &["-I", &s(&inc)],
    );
    let r = run(&exe, &[]);
    r.ok();
    assert!(
        r.stdout
            .contains("VDConfig=44 VDC_Command=24 VDS_Command=56 set=8 device=8")
    );
    for code in vdi::ErrorCode::ALL {
        let want = format!("{}={}", code.name(), code.as_hresult());
        assert!(r.stdout.contains(&want), "{want} not in {}", r.stdout);
    }
}

fn source_here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

struct Client {
    _dir: tempfile::TempDir,
    exe: PathBuf,
}

fn pipe_client(rpath: bool, asan: bool) -> Client {
    let lib = libsqlvdi();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("pipe_client");
    let inc = include_dir().join("sqlvdi");
    let mut extra = vec!["-I".to_owned(), s(&inc)];
    if asan {
        extra.extend([
            "-fsanitize=address".into(),
            "-fno-omit-frame-pointer".into(),
        ]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    compile_opts(
        &source_here("cpp/pipe_client.cpp"),
        &exe,
        lib.parent().unwrap(),
        "sqlvdi",
        &extra,
        rpath,
    );
    Client { _dir: dir, exe }
}

/// Runs the client (`B` or `R`) on `file` with `vdi engine` on `what`.
fn pipe(c: &Client, op: &str, file: &Path, what: &str, args: &[&str], ld_path: bool) -> Ran {
    let vdi = vdi_tool();
    let set = set_name("sdk");
    let engine_op = if op == "B" { "backup" } else { "restore" };
    let (file_s, vdi_s) = (s(file), s(&vdi));
    let mut argv = vec![op, &*file_s, &*set];
    argv.extend(args);
    argv.extend(["--", &vdi_s, "engine", engine_op, "--set", &set, what, "-q"]);
    let lib_dir = s(libsqlvdi().parent().unwrap());
    let env: Vec<(&str, &str)> = if ld_path {
        vec![("LD_LIBRARY_PATH", &lib_dir)]
    } else {
        vec![]
    };
    let r = wait(
        spawn(&c.exe, &argv, &env),
        Duration::from_secs(120),
        "pipe_client",
    );
    r.ok();
    assert!(
        r.stdout.contains("ended normally (VD_E_CLOSE)"),
        "{}",
        r.stdout
    );
    r
}

#[test]
fn a_sample_shaped_client_backs_up_and_restores_a_file_loaded_by_ld_library_path() {
    let c = pipe_client(false, false);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 21, (3 << 20) + 777);
    let bk = dir.path().join("bk");
    // Generous time-outs here: a timing must not decide a test (the sample's 90 ms is
    // exercised by the benchmark's gap measurement instead).
    let r = pipe(
        &c,
        "B",
        &bk,
        &format!("file:{}", s(&src)),
        &["--timeout", "-1"],
        true,
    );
    eprintln!(
        "sample-shaped client, backup: {}",
        r.stdout.lines().last().unwrap_or("")
    );
    let out = dir.path().join("out");
    let r = pipe(
        &c,
        "R",
        &bk,
        &format!("file:{}", s(&out)),
        &["--timeout", "-1", "--stack"],
        true,
    );
    eprintln!(
        "sample-shaped client, restore: {}",
        r.stdout.lines().last().unwrap_or("")
    );
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&out).unwrap());
}

#[test]
fn a_sample_shaped_client_backs_up_and_restores_sqlite_with_an_rpath_under_asan() {
    let c = pipe_client(true, true);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    make_db(&db, 20_000);
    let bk = dir.path().join("bk");
    pipe(
        &c,
        "B",
        &bk,
        &format!("sqlite:{}", s(&db)),
        &["--timeout", "-1", "--stack"],
        false,
    );
    let out = dir.path().join("b.db");
    pipe(
        &c,
        "R",
        &bk,
        &format!("sqlite:{}", s(&out)),
        &["--timeout", "-1"],
        false,
    );
    assert_eq!(db_rows(&out), (20_000, "ok".to_owned()));
}

#[test]
fn a_client_without_the_library_on_its_path_fails_to_load() {
    // The negative of the LD_LIBRARY_PATH case: without it (and without an rpath) the
    // loader does not find libsqlvdi.so, so the case above really used the variable.
    let c = pipe_client(false, false);
    let o = Command::new(&c.exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("libsqlvdi.so"));
}
