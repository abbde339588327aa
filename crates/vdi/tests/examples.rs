//! The example pair runs as the README says: the client starts the engine as a separate
//! process and checks every byte it receives.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-HASH -> target/<profile>/examples/NAME
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
        .join(name)
}

#[test]
fn minimal_client_backs_up_from_minimal_server() {
    let client = example("minimal_client");
    assert!(
        client.exists(),
        "{} not built (cargo test builds the examples)",
        client.display()
    );
    assert!(example("minimal_server").exists());
    let out = Command::new(&client).output().expect("run minimal_client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("received 16777216 bytes"), "{stdout}");
    assert!(stdout.contains("data intact; engine succeeded"), "{stdout}");
    assert!(stdout.contains("minimal_server: wrote 16 MiB"), "{stdout}");
    assert!(stdout.contains("minimal_client: ok"), "{stdout}");
}

#[test]
fn minimal_server_without_a_client_explains() {
    let out = Command::new(example("minimal_server"))
        .arg("no-such-set-for-the-example")
        .output()
        .expect("run minimal_server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VD_E_INVALID") && err.contains("must create it first"),
        "{err}"
    );
}
