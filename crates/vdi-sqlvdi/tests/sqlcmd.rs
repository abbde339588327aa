//! A client in the shape of Microsoft's Linux sample (create the set, `popen("sqlcmd ...
//! -Q \"BACKUP DATABASE ...\"")`, GetConfiguration, the command loop, Close), built with
//! g++ against our SDK header and linked with `-lsqlvdi`, backs up and restores a real
//! SQLite database with `sqlcmd` on `PATH` being ours (a link to the `vdi` binary): one
//! device as the Linux sample, four in the multi-threaded sample's shape; the restored
//! file is byte-checked. A refused statement reaches the client as sqlcmd's `Msg` lines
//! and exit code under `-b`, and its set is aborted (the client is not left waiting).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vdi-ffi/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct Setup {
    dir: tempfile::TempDir,
    exe: PathBuf,
    path: String,
}

/// Compiles the client and puts a `sqlcmd` link to our `vdi` first on a `PATH`.
fn setup() -> Setup {
    let lib = artifact("libsqlvdi.so", "cargo build -p vdi-sqlvdi");
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sqlcmd_client");
    let inc = include_dir().join("sqlvdi");
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cpp/sqlcmd_client.cpp"),
        &exe,
        lib.parent().unwrap(),
        "sqlvdi",
        &["-I", &s(&inc)],
    );
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(vdi_tool(), bin.join("sqlcmd")).unwrap();
    let path = format!(
        "{}:{}",
        s(&bin),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    Setup { dir, exe, path }
}

/// Runs the client: `op` B or R, `file` its media, `db` mapped to `source`.
fn client(
    st: &Setup,
    op: &str,
    db: &str,
    source: &str,
    file: &Path,
    devices: u32,
    extra: &str,
) -> Ran {
    client_mode(st, op, db, source, file, devices, extra, "")
}

/// As [`client`], the client offering `mode` devices (`VDI_MODE`: tape, disk; the engine
/// run by our sqlcmd is asked for the same mode).
#[allow(clippy::too_many_arguments)]
fn client_mode(
    st: &Setup,
    op: &str,
    db: &str,
    source: &str,
    file: &Path,
    devices: u32,
    extra: &str,
    mode: &str,
) -> Ran {
    let set = set_name("sqlcmd");
    let catalog = if source.contains('=') {
        source.to_owned()
    } else {
        format!("{db}={source}")
    };
    let devs = devices.to_string();
    wait(
        spawn(
            &st.exe,
            &[op, "D", db, &s(file), &devs, extra],
            &[
                ("PATH", &st.path),
                ("VDI_SET", &set),
                ("VDI_DATABASES", &catalog),
                ("VDI_CONFIG", "none"),
                ("VDI_MODE", mode),
            ],
        ),
        Duration::from_secs(180),
        "sqlcmd_client",
    )
}

fn round_trip(devices: u32) {
    round_trip_mode(devices, "");
}

fn round_trip_mode(devices: u32, mode: &str) {
    let st = setup();
    let db = st.dir.path().join("shop.db");
    make_db(&db, 30_000);
    let media = st.dir.path().join("shop.bak");
    let b = client_mode(
        &st,
        "B",
        "shop",
        &format!("sqlite:{}", s(&db)),
        &media,
        devices,
        "",
        mode,
    );
    assert!(b.status.success(), "backup:\n{}{}", b.stdout, b.stderr);
    assert!(
        b.stdout
            .contains("sqlcmd: BACKUP DATABASE successfully processed"),
        "{}",
        b.stdout
    );
    assert!(
        b.stdout.contains("sqlcmd: Processed ")
            && b.stdout
                .contains("pages for database 'shop', file 'shop' on file 1."),
        "{}",
        b.stdout
    );
    for i in 0..devices {
        assert!(
            b.stdout
                .contains(&format!("device {i}: ended normally (VD_E_CLOSE)")),
            "{}",
            b.stdout
        );
    }
    let out = st.dir.path().join("copy.db");
    let r = client_mode(
        &st,
        "R",
        "shop",
        &format!("sqlite:{}", s(&out)),
        &media,
        devices,
        "",
        mode,
    );
    assert!(r.status.success(), "restore:\n{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("sqlcmd: RESTORE DATABASE successfully processed"),
        "{}",
        r.stdout
    );
    assert!(
        std::fs::read(&db).unwrap() == std::fs::read(&out).unwrap(),
        "the restored database differs from the original"
    );
    assert_eq!(db_rows(&out), (30_000, "ok".to_owned()));
}

#[test]
fn the_linux_sample_shape_backs_up_and_restores_sqlite_through_our_sqlcmd() {
    round_trip(1);
}

#[test]
fn the_multithreaded_sample_shape_with_four_devices() {
    round_trip(4);
}

#[test]
fn tape_like_devices_round_trip() {
    round_trip_mode(2, "tape");
}

#[test]
fn disk_like_devices_round_trip_reading_out_of_order() {
    round_trip_mode(3, "disk");
}

#[test]
fn a_refused_statement_reaches_the_client_as_sqlcmd_prints_it() {
    let st = setup();
    let db = st.dir.path().join("shop.db");
    make_db(&db, 100);
    let media = st.dir.path().join("shop.bak");
    let r = client(
        &st,
        "B",
        "shop",
        &format!("sqlite:{}", s(&db)),
        &media,
        1,
        "DIFFERENTIAL",
    );
    assert!(!r.status.success());
    assert!(
        r.stdout
            .contains("sqlcmd: Msg 3035, Level 16, State 1, Server ., Line 1"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("sqlcmd: BACKUP DATABASE is terminating abnormally."),
        "{}",
        r.stdout
    );
    // -b: sqlcmd's exit code is 1; the set was aborted, so GetConfiguration did not wait
    // for its time-out.
    assert!(r.stdout.contains("sqlcmd exit=1"), "{}", r.stdout);
    assert!(
        r.stdout.contains("GetConfiguration fails: x80770004"),
        "{}",
        r.stdout
    );

    // A database the catalog does not know: Msg 911.
    let r = client(
        &st,
        "B",
        "nosuch",
        "other=sqlite:/nonexistent/x.db",
        &media,
        1,
        "",
    );
    assert!(!r.status.success());
    assert!(r.stdout.contains("Msg 911"), "{}", r.stdout);
}
