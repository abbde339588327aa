//! Who may attach: another user is refused with `VD_E_SECURITY` and a message that says
//! what to change; a group the creator names is admitted. The peer runs as `nobody`, so
//! these tests need to run as root (as CI does); as another user they say so and stop.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use vdi::{ClientOptions, ClientSet, Timeout, VdConfig};
use vdi_tests::{Peer, unique_name};

const PEER: &str = env!("CARGO_BIN_EXE_vdi-peer");
const NOBODY: u32 = 65534;

/// Copying an executable while another thread forks makes exec fail with ETXTBSY (the
/// child briefly holds the copy's write descriptor): these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A copy of the peer binary that `nobody` can execute, removed on drop.
struct NobodyPeer {
    dir: PathBuf,
    exe: String,
}

impl Drop for NobodyPeer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn peer_for_nobody(tag: &str) -> Option<NobodyPeer> {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("SKIPPED: switching to user nobody needs root; run the tests as root (CI does)");
        return None;
    }
    let dir = PathBuf::from(format!("/tmp/vdi-access-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("vdi-peer");
    std::fs::copy(PEER, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(NobodyPeer {
        exe: exe.to_string_lossy().into_owned(),
        dir,
    })
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
