//! `vdi check-client` on real client programs: the SDK-shaped C++ client (g++, our header,
//! libsqlvdi.so, our sqlcmd on its PATH) passes every scenario; each deliberately broken
//! build of it (one protocol rule broken each, `-DBREAK_...`) fails exactly the
//! scenarios where its rule comes into play, with that rule named; our own Rust client
//! (`vdi client`, the set served directly) passes too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../vdi-ffi/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn build(dir: &Path, name: &str, define: Option<&str>) -> PathBuf {
    let lib = artifact("libsqlvdi.so", "cargo build -p vdi-sqlvdi");
    let exe = dir.join(name);
    let inc = include_dir().join("sqlvdi");
    let mut extra = vec!["-I".to_owned(), s(&inc)];
    if let Some(d) = define {
        extra.push(format!("-D{d}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cpp/sqlcmd_client.cpp"),
        &exe,
        lib.parent().unwrap(),
        "sqlvdi",
        &extra,
    );
    exe
}

/// Runs check-client with `opts` on `client ARGS`; returns its JSON verdict.
fn check(opts: &[&str], client: &[&str]) -> serde_json::Value {
    let mut args = vec!["check-client", "--json"];
    args.extend(opts);
    args.push("--");
    args.extend(client);
    let r = wait(
        spawn(&vdi_tool(), &args, &[("VDI_CONFIG", "none")]),
        Duration::from_secs(900),
        "vdi check-client",
    );
    let line = r
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON: {}\n{}", r.stdout, r.stderr));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let failed = v["failed"].as_u64().unwrap();
    assert_eq!(r.status.success(), failed == 0, "{}", r.stderr);
    v
}

fn failed(v: &serde_json::Value) -> Vec<(String, String)> {
    v["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["passed"].as_bool().unwrap())
        .map(|s| {
            (
                s["scenario"].as_str().unwrap().to_owned(),
                s["broken"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" | "),
            )
        })
        .collect()
}

const SAMPLE_ARGS: [&str; 5] = ["{OP}", "D", "{db}", "{file}", "{devices}"];

#[test]
fn the_sdk_shaped_client_passes_every_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let good = build(dir.path(), "good", None);
    let g = s(&good);
    let mut client = vec![g.as_str()];
    client.extend(SAMPLE_ARGS);
    let v = check(&["--keep"], &client);
    assert_eq!(failed(&v), vec![], "{v:#}");
    assert_eq!(v["passed"].as_u64().unwrap(), 11);
    assert_eq!(v["engine"], "sqlcmd");
    let scenarios = v["scenarios"].as_array().unwrap();
    let kept = |name: &str| -> PathBuf {
        let sc = scenarios.iter().find(|s| s["scenario"] == name).unwrap();
        let saw = sc["saw"].as_str().unwrap();
        assert!(!sc["skipped"].as_bool().unwrap(), "{saw}");
        PathBuf::from(saw.rsplit("kept in ").next().unwrap())
    };
    // The engine used each mode, as the client's calls show: tape-like rewinds and writes
    // filemarks; disk-like asks for the end and reads out of order.
    let codes = |dir: &Path, op: &str| -> Vec<(String, u32, u64)> {
        std::fs::read_to_string(dir.join(format!("trace-{op}.txt")))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0] == "get" && f[2] == "0").then(|| {
                    (
                        f[1].to_owned(),
                        f[3].parse().unwrap(),
                        f[6].parse().unwrap(),
                    )
                })
            })
            .collect()
    };
    let tape = kept("tape-2");
    let b = codes(&tape, "backup");
    assert!(
        b.iter().any(|c| c.1 == 4) && b.iter().any(|c| c.1 == 5),
        "{b:?}"
    );
    assert!(codes(&tape, "restore").iter().any(|c| c.1 == 4));
    assert!(
        scenarios
            .iter()
            .any(|s| s["saw"].as_str().unwrap().contains("tape-like device"))
    );
    let disk = kept("disk-2");
    let r = codes(&disk, "restore");
    assert!(r.iter().any(|c| c.1 == 10), "no SetPosition: {r:?}");
    let reads: Vec<&(String, u32, u64)> = r.iter().filter(|c| c.1 == 1).collect();
    // Per device (their Reads interleave), a Read before one at a lower position.
    let out_of_order = reads
        .iter()
        .enumerate()
        .any(|(i, a)| reads[i + 1..].iter().any(|b| b.0 == a.0 && b.2 < a.2));
    assert!(
        out_of_order,
        "the disk-like restore read in order: {reads:?}"
    );
    let w: Vec<u64> = codes(&disk, "backup")
        .iter()
        .filter(|c| c.1 == 2)
        .map(|c| c.2)
        .collect();
    assert!(w.iter().any(|&p| p > 0), "no positioned Writes: {w:?}");
    for d in [tape, disk] {
        std::fs::remove_dir_all(d).unwrap();
    }
    for sc in scenarios {
        let saw = sc["saw"].as_str().unwrap();
        if let Some(d) = saw.rsplit_once("kept in ") {
            let _ = std::fs::remove_dir_all(d.1);
        }
    }
}

#[test]
fn each_broken_client_fails_its_scenario_with_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    // (the -D, the scenarios it must fail, words of the rule)
    let cases: [(&str, &[&str], &str); 10] = [
        (
            "BREAK_NEVER_COMPLETE",
            &["pipe-1"],
            "a command never completed: the client took a VDC_Flush",
        ),
        (
            "BREAK_COMPLETE_TWICE",
            &["pipe-1"],
            "a command completed twice",
        ),
        (
            "BREAK_WRONG_BYTES",
            &["pipe-1"],
            "wrong byte count: the backup application stored 4095 of the 4096 bytes",
        ),
        (
            "BREAK_IGNORE_CLEARERROR",
            &["pipe-1"],
            "ClearError not answered",
        ),
        ("BREAK_CLOSE_OPEN", &["pipe-1"], "Close with devices open"),
        (
            "BREAK_SECONDS_TIMEOUT",
            &["engine-pause"],
            "a timeout treated as seconds: GetCommand(90)",
        ),
        (
            "BREAK_LOOP_AFTER_CLOSE",
            &["pipe-1"],
            "GetCommand called after VD_E_CLOSE without end",
        ),
        (
            "BREAK_CLAIMS_SUCCESS",
            &["engine-aborts"],
            "the client reported success (exit 0) for a backup the engine failed",
        ),
        ("BREAK_DATA", &["pipe-1"], "data differs on restore"),
        (
            "BREAK_ACCEPT_UNKNOWN",
            &["unknown-command"],
            "an unsupported command accepted",
        ),
    ];
    for (define, want, words) in cases {
        let exe = build(dir.path(), &define.to_lowercase(), Some(define));
        let e = s(&exe);
        let mut client = vec![e.as_str()];
        client.extend(SAMPLE_ARGS);
        // A client whose GetCommand gives up after 90 ms may fail any scenario on a
        // loaded machine: it runs only the one that pauses on purpose.
        let only = if define == "BREAK_SECONDS_TIMEOUT" {
            "engine-pause"
        } else {
            "pipe-1,unknown-command,engine-pause,engine-aborts"
        };
        // A short wait for the commands the broken clients never complete.
        let v = check(&["--command-timeout", "5s", "--only", only], &client);
        let f = failed(&v);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        // The fixtures that break a rule of every transfer fail pipe-1, unknown-command
        // and engine-pause (transfers like pipe-1's), and engine-aborts when they break
        // it before the engine aborts (which depends on who is first); the others fail
        // their scenario only.
        let (expected, maybe): (Vec<&str>, Vec<&str>) = if want == ["pipe-1"] {
            (
                vec!["pipe-1", "unknown-command", "engine-pause"],
                vec!["engine-aborts"],
            )
        } else {
            (want.to_vec(), vec![])
        };
        let sure: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !maybe.contains(n))
            .collect();
        assert_eq!(sure, expected, "{define}: {f:?}");
        for (_, rules) in &f {
            assert!(rules.contains(words), "{define}: {rules}");
        }
    }
}

#[test]
fn our_rust_client_passes_with_the_set_served_directly() {
    let vdi = s(&vdi_tool());
    let script = format!(
        "if [ \"$VDI_OP\" = backup ]; then exec {vdi} client backup --set \"$VDI_SET\" \"$VDI_FILE\" --devices \"$VDI_DEVICES\" -q; else exec {vdi} client restore --set \"$VDI_SET\" \"$VDI_FILE\" -q; fi"
    );
    let v = check(
        &[
            "--engine",
            "direct",
            "--only",
            "pipe-1,pipe-4,one-buffer,tape-2,engine-pause,engine-fails-write,engine-aborts,unknown-command",
        ],
        &["sh", "-c", &script],
    );
    assert_eq!(failed(&v), vec![], "{v:#}");
    assert_eq!(v["engine"], "direct");
    // vdi client offers pipe-like devices only: the tape-like scenario does not apply.
    let tape = &v["scenarios"].as_array().unwrap()[3];
    assert_eq!(tape["scenario"], "tape-2");
    assert!(tape["skipped"].as_bool().unwrap(), "{tape}");
    assert!(
        tape["saw"].as_str().unwrap().contains("VDF_LikeTape"),
        "{tape}"
    );
}
