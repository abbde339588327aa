//! Shell completions and the manual page made from the command line's definition, and
//! the configuration file (`--config`, `VDI_CONFIG`, `~/.config/vdi/config.toml`) with
//! its environment overrides.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Runs `vdi args` with `HOME` (and no XDG_CONFIG_HOME) set to `home`, plus `env`.
fn run_home(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = vdi();
    c.args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("VDI_CONFIG")
        .env_remove("VDI_REPOSITORY")
        .env_remove("VDI_STORE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    wait_output(c.spawn().unwrap(), Duration::from_secs(120))
}

#[test]
fn completions_for_bash_zsh_and_fish_know_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F _vdi"),
        ("zsh", "#compdef vdi"),
        ("fish", "complete -c vdi"),
    ] {
        let out = run(&["completions", shell]).ok().stdout_str();
        assert!(out.contains(marker), "{shell}: {out:.300}");
        for cmd in ["backup", "restore", "list", "expire", "sets", "keep-daily"] {
            assert!(out.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    run(&["completions", "tcsh"]).fails(2, &["bash"]);
    // bash accepts what it was given.
    if std::process::Command::new("bash")
        .arg("--version")
        .output()
        .is_ok()
    {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("vdi.bash");
        std::fs::write(&f, run(&["completions", "bash"]).ok().stdout.clone()).unwrap();
        let st = std::process::Command::new("bash")
            .args(["-c", &format!("source {} && complete -p vdi", s(&f))])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

#[test]
fn the_manual_page_covers_every_command() {
    let page = run(&["man"]).ok().stdout_str();
    assert!(
        page.starts_with(".ie") || page.contains(".TH vdi"),
        "{page:.200}"
    );
    for cmd in [
        "backup",
        "restore",
        "init",
        "list",
        "info",
        "expire",
        "completions",
        "man",
    ] {
        assert!(page.contains(cmd), "the page lacks {cmd}");
    }
    assert!(
        page.contains("Exit codes"),
        "the exit-code table is on the page"
    );
    let sub = run(&["man", "expire"]).ok().stdout_str();
    assert!(
        sub.contains("vdi\\-expire") || sub.contains("vdi-expire"),
        "{sub:.300}"
    );
    assert!(sub.contains("keep\\-daily") || sub.contains("keep-daily"));
    run(&["man", "nosuch"]).fails(2, &["no command nosuch"]);
}

#[test]
fn the_configuration_file_gives_the_repository_and_defaults() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let repo = d.path().join("repo");
    let src = d.path().join("src");
    write_pattern(&src, 1, 500_000);
    // No file: nothing configured, and commands that need a repository say so.
    let c = run_home(&home, &[], &["config", "--json"]).ok().json();
    assert!(c["file"].is_null(), "{c}");
    run_home(&home, &[], &["list"]).fails(2, &["name the repository", "VDI_REPOSITORY"]);
    // The default file.
    std::fs::create_dir_all(home.join(".config/vdi")).unwrap();
    std::fs::write(
        home.join(".config/vdi/config.toml"),
        format!(
            "repository = \"{}\"\n[store]\nprofile = \"nightly\"\n[backup]\ndevices = 3\ncompress = \"zstd:2\"\n[expire]\nkeep_last = 1\n",
            s(&repo)
        ),
    )
    .unwrap();
    let c = run_home(&home, &[], &["config", "--json"]).ok().json();
    assert_eq!(c["repository"], s(&repo).as_str());
    assert_eq!(c["store_profile"], "nightly");
    run_home(&home, &[], &["init"]).ok();
    // DEST, --devices and --compress from the file.
    let b = run_home(&home, &[], &["backup", &s(&src), "--json"]);
    b.ok();
    let j = b.json();
    assert_eq!(j["devices"], 3, "{j}");
    assert_eq!(j["compression"], "zstd:2");
    assert!(j["repository_id"].is_string());
    // The command line wins over the file.
    let j = run_home(
        &home,
        &[],
        &["backup", &s(&src), "--devices", "1", "--json"],
    )
    .ok()
    .json();
    assert_eq!(j["devices"], 1);
    let l = run_home(&home, &[], &["list", "--json"]).ok().json();
    assert_eq!(l["backups"].as_array().unwrap().len(), 2);
    // expire's rule from the file.
    let x = run_home(&home, &[], &["expire", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(x["removed"].as_array().unwrap().len(), 1, "{x}");
    // The environment wins over the file.
    let other = d.path().join("other");
    let env = [
        ("VDI_REPOSITORY", s(&other)),
        ("VDI_STORE_PROFILE", "p2".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = run_home(&home, &env, &["config", "--json"]).ok().json();
    assert_eq!(c["repository"], s(&other).as_str());
    assert_eq!(c["repository_from"], "VDI_REPOSITORY");
    assert_eq!(c["store_profile"], "p2");
    run_home(&home, &env, &["list"]).fails(3, &[&s(&other)]);
    // --config names another file; VDI_CONFIG=none reads none.
    let alt = d.path().join("alt.toml");
    std::fs::write(&alt, format!("repository = \"{}\"\n", s(&other))).unwrap();
    let c = run_home(&home, &[], &["--config", &s(&alt), "config", "--json"])
        .ok()
        .json();
    assert_eq!(c["file"], s(&alt).as_str());
    let c = run_home(&home, &[("VDI_CONFIG", "none")], &["config", "--json"])
        .ok()
        .json();
    assert!(c["repository"].is_null(), "{c}");
    // A wrong file is refused, naming it and the key.
    std::fs::write(&alt, "repo = \"x\"\n").unwrap();
    run_home(&home, &[], &["--config", &s(&alt), "list"]).fails(2, &["alt.toml", "repo"]);
    std::fs::write(&alt, "[backup]\ncompress = \"lz5\"\n").unwrap();
    run_home(&home, &[], &["--config", &s(&alt), "list"]).fails(2, &["compress"]);
    run_home(
        &home,
        &[],
        &["--config", &s(&d.path().join("missing.toml")), "list"],
    )
    .fails(2, &["missing.toml"]);
}
