//! Repositories through the real binary: `vdi init`, `vdi backup SOURCE REPO` (a new
//! backup under a new id each time), `vdi list`, `vdi info`, `vdi restore REPO[:ID]`,
//! `vdi expire`; plain backup directories as one-backup repositories; two backups at once;
//! an expire racing a running backup.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn make_db(path: &Path, rows: u32) {
    let _ = std::fs::remove_file(path);
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!("row {i} {}", "x".repeat(64))],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn rows(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn ids(repo: &str) -> Vec<String> {
    let j = run(&["list", repo, "--json"]).ok().json();
    j["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_daily_cycle_backup_list_restore_latest_expire() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("shop.db");
    let repo = s(&d.path().join("repo"));
    run(&["init", &repo]).ok();
    // Three "days": the database grows between backups.
    for (i, n) in [100u32, 200, 300].iter().enumerate() {
        make_db(&db, *n);
        let src = format!("sqlite:{}", s(&db));
        let mut argv = vec!["backup", src.as_str(), repo.as_str()];
        if i == 1 {
            argv.extend(["--devices", "3", "--compress", "zstd"]);
        }
        let r = run(&argv).ok().stderr.clone();
        assert!(r.contains("to repository"), "{r}");
    }
    let all = ids(&repo);
    assert_eq!(all.len(), 3);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "listed oldest first, ids sort by time");
    // The table.
    let table = run(&["list", &repo]).ok().stdout_str();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    for l in &lines {
        assert!(
            l.chars().count() <= 120,
            "a line of the table is too wide: {l}"
        );
    }
    assert!(
        lines[2].contains("zstd:3") && lines[2].contains(" 3 "),
        "{table}"
    );
    assert!(
        lines.iter().filter(|l| l.ends_with("complete")).count() == 3,
        "{table}"
    );
    assert!(lines[4].starts_with("3 backup(s), 3 complete"), "{table}");
    // JSON: every catalog field.
    let j = run(&["list", &repo, "--json"]).ok().json();
    let b = &j["backups"][1];
    for f in [
        "id",
        "state",
        "source",
        "kind",
        "original_bytes",
        "stored_bytes",
        "devices",
        "compression",
        "started",
        "completed",
        "duration_seconds",
        "host",
        "tool",
    ] {
        assert!(!b[f].is_null(), "{f} missing in {b}");
    }
    assert_eq!(b["kind"], "sqlite");
    assert_eq!(b["devices"], 3);
    assert_eq!(b["state"], "complete");
    // Restore the latest, and an older one by id.
    let copy = d.path().join("copy.db");
    run(&[
        "restore",
        &format!("{repo}:latest"),
        &format!("sqlite:{}", s(&copy)),
    ])
    .ok();
    assert_eq!(rows(&copy), 300);
    run(&["restore", &repo, &format!("sqlite:{}", s(&copy)), "--force"]).ok();
    assert_eq!(rows(&copy), 300, "REPO alone is its latest backup");
    run(&[
        "restore",
        &format!("{repo}:{}", all[0]),
        &format!("sqlite:{}", s(&copy)),
        "--force",
    ])
    .ok();
    assert_eq!(rows(&copy), 100);
    // A backup directory of a repository is a backup like any other.
    run(&["verify", &format!("{repo}/{}", all[1])]).ok();
    run(&["verify", &format!("{repo}:latest")]).ok();
    // info: the repository, one backup three ways.
    let i = run(&["info", &repo]).ok().stdout_str();
    assert!(i.contains("3 (3 complete, 0 running, 0 incomplete)"), "{i}");
    assert!(i.contains(&format!("latest         {}", all[2])), "{i}");
    for name in [format!("{repo}/{}", all[1]), format!("{repo}:{}", all[1])] {
        let i = run(&["info", &name]).ok().stdout_str();
        assert!(i.contains(&format!("id             {}", all[1])), "{i}");
        assert!(i.contains("compression    zstd:3"), "{i}");
        assert!(i.contains("device 2"), "{i}");
    }
    let j = run(&["info", &format!("{repo}:latest"), "--json"])
        .ok()
        .json();
    assert_eq!(j["entry"]["id"], all[2].as_str());
    assert_eq!(j["manifest"]["device_count"], 1);
    // Expire: a dry run says what it would remove and removes nothing.
    let dry = run(&["expire", &repo, "--keep-daily", "7", "--dry-run"])
        .ok()
        .stdout_str();
    assert!(dry.contains(&format!("would remove  {}", all[0])), "{dry}");
    assert!(dry.contains(&format!("keep    {}", all[2])), "{dry}");
    assert!(dry.contains("dry run: nothing was removed"), "{dry}");
    assert_eq!(ids(&repo).len(), 3);
    // Every backup was made today: --keep-daily 7 keeps today's newest.
    let out = run(&["expire", &repo, "--keep-daily", "7"])
        .ok()
        .stdout_str();
    assert!(out.contains("removed 2 backup(s), kept 1"), "{out}");
    assert_eq!(ids(&repo), [all[2].clone()]);
    assert!(
        !d.path().join("repo").join(&all[0]).exists(),
        "its stream files and directory are gone"
    );
    run(&[
        "restore",
        &format!("{repo}:latest"),
        &format!("sqlite:{}", s(&copy)),
        "--force",
    ])
    .ok();
    assert_eq!(rows(&copy), 300);
    // The only complete backup stays unless forced.
    let out = run(&["expire", &repo, "--keep-last", "0"])
        .ok()
        .stdout_str();
    assert!(out.contains("only --force removes it"), "{out}");
    assert_eq!(ids(&repo).len(), 1);
    run(&["expire", &repo, "--keep-last", "0", "--force"]).ok();
    assert!(ids(&repo).is_empty());
    run(&[
        "restore",
        &format!("{repo}:latest"),
        &format!("sqlite:{}", s(&copy)),
        "--force",
    ])
    .fails(3, &["holds no complete backup yet"]);
}

#[test]
fn a_lost_catalog_is_rebuilt_from_the_manifests() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data");
    write_pattern(&f, 1, 300_000);
    let repo = s(&d.path().join("repo"));
    run(&["init", &repo]).ok();
    for _ in 0..2 {
        run(&["backup", &s(&f), &repo]).ok();
    }
    let before = run(&["list", &repo, "--json"]).ok().json()["backups"].clone();
    std::fs::remove_file(d.path().join("repo/catalog.json")).unwrap();
    let r = run(&["list", &repo, "--json"]);
    r.ok();
    assert_eq!(r.json()["catalog_rebuilt"], true);
    assert_eq!(r.json()["backups"], before);
    assert!(d.path().join("repo/catalog.json").exists(), "stored again");
    assert_eq!(
        run(&["list", &repo, "--json"]).ok().json()["catalog_rebuilt"],
        false
    );
    // A backup whose manifest is gone is never listed complete, whatever the catalog says.
    let id = before[0]["id"].as_str().unwrap();
    std::fs::remove_file(d.path().join("repo").join(id).join("manifest.json")).unwrap();
    let j = run(&["list", &repo, "--json"]).ok().json();
    assert_eq!(j["backups"][0]["state"], "incomplete");
    run(&[
        "restore",
        &format!("{repo}:{id}"),
        &s(&d.path().join("out")),
    ])
    .fails(5, &["did not complete"]);
    let out = run(&["expire", &repo, "--keep-last", "5"])
        .ok()
        .stdout_str();
    assert!(out.contains("an incomplete backup"), "{out}");
    assert_eq!(ids(&repo).len(), 1);
}

#[test]
fn a_plain_backup_directory_is_a_one_backup_repository() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data");
    write_pattern(&f, 2, 100_000);
    let plain = s(&d.path().join("plain"));
    run(&["backup", &s(&f), &plain]).ok();
    assert!(
        d.path().join("plain/manifest.json").exists(),
        "as before repositories"
    );
    let j = run(&["list", &plain, "--json"]).ok().json();
    assert_eq!(j["plain_backup"], true);
    assert_eq!(j["backups"].as_array().unwrap().len(), 1);
    assert_eq!(j["catalog_rebuilt"], false);
    let out = d.path().join("out");
    run(&["restore", &format!("{plain}:latest"), &s(&out)]).ok();
    assert_eq!(digest(&out), digest(&f));
    let i = run(&["info", &plain]).ok().stdout_str();
    assert!(i.contains("state          complete"), "{i}");
    run(&["expire", &plain, "--keep-last", "1"]).fails(2, &["plain backup"]);
    // A second backup into it is still refused, and says what to do.
    run(&["backup", &s(&f), &plain]).fails(4, &["--force", "vdi init"]);
    run(&["init", &plain]).fails(4, &["plain backup"]);
    // Not a repository at all.
    run(&["list", &s(&d.path().join("nothing"))]).fails(3, &["vdi init"]);
}

#[test]
fn two_backups_into_one_repository_at_once_both_complete() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data");
    write_pattern(&f, 3, 8 << 20);
    let repo = s(&d.path().join("repo"));
    run(&["init", &repo]).ok();
    let (sa, sb) = (s(&f), repo.clone());
    let a = spawn(&["backup", &sa, &sb, "--devices", "2", "--quiet"]);
    let b = spawn(&["backup", &sa, &sb, "--devices", "3", "--quiet"]);
    let (ra, rb) = (
        wait_output(a, Duration::from_secs(120)),
        wait_output(b, Duration::from_secs(120)),
    );
    ra.ok();
    rb.ok();
    let j = run(&["list", &repo, "--json"]).ok().json();
    let bs = j["backups"].as_array().unwrap();
    assert_eq!(bs.len(), 2);
    assert!(bs.iter().all(|b| b["state"] == "complete"));
    let mut devs: Vec<u64> = bs.iter().map(|b| b["devices"].as_u64().unwrap()).collect();
    devs.sort();
    assert_eq!(devs, [2, 3]);
    assert!(!j["catalog_rebuilt"].as_bool().unwrap());
    for b in bs {
        run(&["verify", &format!("{repo}:{}", b["id"].as_str().unwrap())]).ok();
    }
}

#[test]
fn an_expire_racing_a_running_backup_never_removes_it() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data");
    write_pattern(&f, 4, 4 << 20);
    let repo = s(&d.path().join("repo"));
    run(&["init", &repo]).ok();
    run(&["backup", &s(&f), &repo]).ok();
    let old = ids(&repo);
    // The backup application stalls on its 3rd command long enough to expire meanwhile.
    let slow = spawn(&[
        "backup",
        &s(&f),
        &repo,
        "--max-transfer-size",
        "64K",
        "--inject",
        "client:delay@3=4s",
        "--json",
    ]);
    let locks = d.path().join("repo/locks");
    wait_until(
        Duration::from_secs(60),
        "the running backup's lease",
        || names_in(&locks).iter().any(|n| !n.starts_with('.')),
    );
    let listed = run(&["list", &repo, "--json"]).ok().json();
    let running: Vec<&serde_json::Value> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "running")
        .collect();
    assert_eq!(running.len(), 1, "{listed}");
    assert!(running[0]["holder"].as_str().unwrap().contains("process"));
    let x = run(&["expire", &repo, "--keep-last", "0", "--force", "--json"])
        .ok()
        .json();
    let kept: Vec<&str> = x["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [running[0]["id"].as_str().unwrap()], "{x}");
    let r = wait_output(slow, Duration::from_secs(120));
    r.ok();
    let id = r.json()["repository_id"].as_str().unwrap().to_owned();
    assert_eq!(id, running[0]["id"].as_str().unwrap());
    let now = ids(&repo);
    assert_eq!(
        now,
        std::slice::from_ref(&id),
        "the old one was expired, the running one kept"
    );
    assert_ne!(now, old);
    run(&["verify", &format!("{repo}:{id}")]).ok();
    assert!(
        names_in(&locks).is_empty(),
        "the lease is gone with the backup"
    );
}

#[test]
fn repository_commands_refuse_what_they_cannot_do() {
    let d = tempfile::tempdir().unwrap();
    let repo = s(&d.path().join("repo"));
    run(&["init", &repo]).ok();
    run(&["init", &repo]).fails(4, &["is a repository already"]);
    let full = d.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    run(&["init", &s(&full)]).fails(4, &["not empty"]);
    run(&[
        "restore",
        &format!("{repo}:20991231"),
        &s(&d.path().join("o")),
    ])
    .fails(3, &["holds no backup 20991231", "vdi list"]);
    run(&["expire", &repo]).fails(2, &["--keep-last"]);
    run(&["list", &repo]).ok();
    let j = run(&["info", &repo, "--json"]).ok().json();
    assert_eq!(j["backups"], 0);
}

#[test]
fn the_single_role_commands_use_a_repository_too() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data");
    write_pattern(&f, 5, 1 << 20);
    let repo = s(&d.path().join("repo"));
    run(&["init", &repo]).ok();
    let name = set_name("repo-client");
    let client = spawn(&[
        "client",
        "backup",
        "--set",
        &name,
        &repo,
        "--devices",
        "2",
        "--wait",
        "60",
        "--json",
    ]);
    run(&["engine", "backup", "--set", &name, &s(&f)]).ok();
    let c = wait_output(client, Duration::from_secs(60));
    c.ok();
    let id = c.json()["repository_id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&repo), std::slice::from_ref(&id));
    let name = set_name("repo-client-r");
    let out = d.path().join("out");
    let client = spawn(&[
        "client",
        "restore",
        "--set",
        &name,
        &format!("{repo}:{id}"),
        "--wait",
        "60",
    ]);
    run(&["engine", "restore", "--set", &name, &s(&out)]).ok();
    wait_output(client, Duration::from_secs(60)).ok();
    assert_eq!(digest(&out), digest(&f));
}
