//! Who may attach: another user is refused with `VD_E_SECURITY` and a message that says
//! what to change; a group the creator names is admitted. The peer runs as `nobody`, so
//! these tests need to run as root (as CI does); as another user they say so and stop.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vdi::{ClientOptions, ClientSet, Timeout, VdConfig};
use vdi_tests::{NobodyExe, Peer, exe_for_nobody, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
const NOBODY: u32 = 65534;

/// Copying an executable while another thread forks makes exec fail with ETXTBSY (the
/// child briefly holds the copy's write descriptor): these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn peer_for_nobody(tag: &str) -> Option<NobodyExe> {
    let np = exe_for_nobody(PEER, tag);
    if np.is_none() {
        eprintln!("SKIPPED: switching to user nobody needs root; run the tests as root (CI does)");
    }
    np
}

#[test]
fn another_user_is_refused_as_server_and_as_secondary() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(np) = peer_for_nobody("refused") else {
        return;
    };
    let exe = &np.exe;
    let name = unique_name("acc");
    let set = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    for mode in ["open-server", "open-secondary"] {
        let mut p = Peer::spawn(exe, &[mode.into(), format!("set={name}")], Some(NOBODY));
        assert_eq!(p.wait(Duration::from_secs(30)), 3, "{mode}: {:?}", p.seen);
        let line = p
            .seen
            .iter()
            .find(|l| l.starts_with("REFUSED"))
            .cloned()
            .unwrap_or_default();
        assert!(line.starts_with("REFUSED VD_E_SECURITY"), "{mode}: {line}");
        assert!(line.contains("runs as user 65534"), "says who: {line}");
        assert!(
            line.contains("run it as user 0") && line.contains("allow_group"),
            "says what to change: {line}"
        );
    }
    // The refused attempts did not disturb the set.
    assert!(set.abort_cause().is_none());
    assert_eq!(
        set.get_configuration(Timeout::POLL).unwrap_err().code(),
        vdi::ErrorCode::Timeout
    );
    set.close().unwrap();
}

#[test]
fn a_named_group_is_admitted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(np) = peer_for_nobody("group") else {
        return;
    };
    let exe = &np.exe;
    let name = unique_name("grp");
    let set = ClientSet::create_with(
        &name,
        &VdConfig::with_devices(1),
        ClientOptions::default().allow_group(NOBODY),
    )
    .unwrap();
    let mut p = Peer::spawn(
        exe,
        &["open-server".into(), format!("set={name}")],
        Some(NOBODY),
    );
    assert_eq!(p.wait(Duration::from_secs(30)), 0, "{:?}", p.seen);
    assert!(p.seen.iter().any(|l| l == "OPENED"));
    // The engine attached and then went away without configuring: the set is aborted.
    assert_eq!(
        set.get_configuration(Timeout::from_millis(10_000))
            .unwrap_err()
            .code(),
        vdi::ErrorCode::Abort
    );
    set.close().unwrap();
}

/// Another user binds a set name first (a squatter posing as the backup application):
/// the engine and a secondary refuse to attach before any message or memory moves, and
/// the real backup application is told who holds the name.
#[test]
fn a_squatted_name_is_refused_by_both_sides_and_named() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(np) = peer_for_nobody("squat") else {
        return;
    };
    let name = unique_name("squat");
    let mut args = vec!["client".to_owned()];
    args.extend(vdi_tests::Plan::new(&name, 1, 1 << 20).to_args());
    let mut squatter = Peer::spawn(&np.exe, &args, Some(NOBODY));
    squatter.expect_line("CREATED", Duration::from_secs(30));
    let memfds = vdi_tests::open_vdi_memfds();

    let Err(e) = vdi::ServerSet::open(&name) else {
        panic!("engine must refuse");
    };
    assert_eq!(e.code(), vdi::ErrorCode::Security, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("created by user 65534"), "says who: {msg}");
    assert!(msg.contains("trust_owner"), "says what to change: {msg}");

    let Err(e) = ClientSet::open_in_secondary(&name) else {
        panic!("secondary must refuse");
    };
    assert_eq!(e.code(), vdi::ErrorCode::Security, "{e}");

    // Neither attempt received (or kept) any of the squatter's memory.
    assert_eq!(vdi_tests::open_vdi_memfds(), memfds);

    // The real backup application cannot take the name, and learns who holds it.
    let Err(e) = ClientSet::create(&name, &VdConfig::with_devices(1)) else {
        panic!("name is taken");
    };
    assert_eq!(e.code(), vdi::ErrorCode::Busy, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("user 65534, not this user (0)") && msg.contains("choose another name"),
        "{msg}"
    );

    // The squatter saw no engine: it is still waiting, undisturbed.
    assert!(vdi_tests::socket_exists(&name));
    squatter.kill();
}

/// The set's memory cannot be read by another user through /proc (the only place a
/// memfd can be reached by a path), and its mode is owner-only.
#[test]
fn shared_memory_is_not_readable_by_another_user() {
    use std::os::unix::process::CommandExt;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("SKIPPED: switching to user nobody needs root; run the tests as root (CI does)");
        return;
    }
    let name = unique_name("shmro");
    let set = ClientSet::create(&name, &VdConfig::with_devices(1)).unwrap();
    let server = vdi::ServerSet::open(&name).unwrap();
    server
        .begin_configuration(vdi::features::WRITE_MEDIA, 512, 0, 64 * 1024, 10_000)
        .unwrap();
    server.request_buffers(64 * 1024, 0, 2).unwrap();
    server.end_configuration().unwrap();
    set.get_configuration(Timeout::from_millis(10_000)).unwrap();

    let me = std::process::id();
    let mut links = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target.to_string_lossy().contains("memfd:vdi-") {
            let fd = e.file_name().to_string_lossy().into_owned();
            let mode = std::fs::metadata(e.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "memfd {target:?} has mode {mode:o}");
            links.push(format!("/proc/{me}/fd/{fd}"));
        }
    }
    assert!(
        links.len() >= 2,
        "control segment and buffer area: {links:?}"
    );
    links.push(format!("/proc/{me}/mem"));
    for path in &links {
        let out = std::process::Command::new("head")
            .args(["-c", "16", path])
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "user nobody read {path}: {:?}",
            out.stdout
        );
        assert!(err.contains("Permission denied"), "{path}: {err}");
    }
    server.close().unwrap();
    set.close().unwrap();
}

/// Set names live in the abstract socket namespace and in memfd names only: a name that
/// looks like a path is refused before anything is created, so nothing can land in (or
/// escape into) the file system.
#[test]
fn names_cannot_escape() {
    let before = vdi_tests::dev_shm_entries();
    for bad in [
        "../etc/passwd",
        "a/b",
        "/abs",
        "back\\slash",
        "nul\0byte",
        "",
        &"x".repeat(200),
        "with space",
        "new\nline",
        "tab\there",
        "bell\x07",
        "caf\u{e9}",
        "semi;colon",
    ] {
        let e = ClientSet::create(bad, &VdConfig::with_devices(1))
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(e.code(), vdi::ErrorCode::Invalid, "{bad:?}: {e}");
        assert!(e.to_string().contains("name"), "{bad:?}: {e}");
        let Err(e) = vdi::ServerSet::open(bad) else {
            panic!("refused");
        };
        assert_eq!(e.code(), vdi::ErrorCode::Invalid, "{bad:?}: {e}");
    }
    assert_eq!(vdi_tests::dev_shm_entries(), before);
}
