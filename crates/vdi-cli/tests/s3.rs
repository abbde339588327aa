//! `s3://BUCKET/PREFIX` through the `vdi` binary, against a real S3 server that checks
//! signatures (`s3s-fs`, started per test on 127.0.0.1; skipped when it is not installed
//! unless `VDI_REQUIRE_S3=1`): round trips, part growth, the errors a user meets and what
//! a failure leaves (no manifest, no multipart upload open), and the client's peak memory.

#![allow(clippy::unwrap_used)]

mod common;

#[path = "../../vdi-backup/tests/common/s3_server.rs"]
mod s3_server;

use common::*;
use s3_server::{BUCKET, KEY_ID, S3Server, SECRET};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `vdi args` with the server's credentials and endpoint in the environment, as a user
/// of the AWS tools sets them.
fn vdi_s3(server: &S3Server) -> Command {
    let mut c = vdi();
    c.env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env("VDI_CONFIG", "none")
        .env("HOME", std::env::temp_dir());
    c
}

fn run_s3(server: &S3Server, args: &[&str]) -> Run {
    let mut c = vdi_s3(server);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(300))
}

fn spawn_s3(server: &S3Server, args: &[&str]) -> Child {
    vdi_s3(server)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

/// Whether the server holds a manifest at `prefix`.
fn has_manifest(server: &S3Server, prefix: &str) -> bool {
    server
        .object_file(&format!("{prefix}/manifest.json"))
        .exists()
}

/// No credential in what vdi printed.
fn no_secret(r: &Run) {
    assert!(
        !r.stderr.contains(SECRET),
        "the secret in stderr: {}",
        r.stderr
    );
    assert!(!r.stdout_str().contains(SECRET), "the secret in stdout");
}

/// Backs `src` up to `prefix` and restores it, through `devices`, compressed or not;
/// checks the bytes, the verify, and what the store holds.
fn round_trip(
    server: &S3Server,
    dir: &Path,
    src: &Path,
    prefix: &str,
    devices: &str,
    compress: &str,
) {
    let r = run_s3(
        server,
        &[
            "backup",
            &format!("file:{}", s(src)),
            &url(prefix),
            "--devices",
            devices,
            "--compress",
            compress,
            "--json",
        ],
    );
    r.ok();
    no_secret(&r);
    assert_eq!(r.json()["dest"], url(prefix));
    assert!(has_manifest(server, prefix));
    let keys = server.keys(prefix);
    let streams = keys.iter().filter(|k| k.contains("/device-")).count();
    assert_eq!(streams, devices.parse::<usize>().unwrap(), "{keys:?}");
    run_s3(server, &["verify", &url(prefix)]).ok();
    let out = dir.join(format!("{prefix}.out"));
    let r = run_s3(
        server,
        &[
            "restore",
            &url(prefix),
            &format!("file:{}", s(&out)),
            "--json",
        ],
    );
    r.ok();
    no_secret(&r);
    assert_eq!(digest(src), digest(&out), "{prefix}: the restored bytes");
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

#[test]
fn round_trips_through_one_and_four_devices_plain_and_zstd() {
    let Some(server) = S3Server::start("round_trips") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, len, devices, compress) in [
        ("empty", 0u64, "1", "none"),
        ("small", (1 << 20) + 7, "4", "zstd"),
        ("parts", (37 << 20) + 3, "4", "none"),
        ("parts-zstd", 21 << 20, "1", "zstd:1"),
    ] {
        let src = dir.path().join(name);
        write_pattern(&src, len ^ 0x5eed, len);
        round_trip(&server, dir.path(), &src, name, devices, compress);
    }
}

/// Reads the peak resident memory of `pid` (VmHWM) until it exits.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_large_file_through_four_devices_in_bounded_memory() {
    let Some(server) = S3Server::start("a_large_file_through_four_devices_in_bounded_memory")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("large");
    write_pattern(&src, 77, 200 << 20);
    let mut peak = 0;
    for args in [
        vec![
            "backup".to_owned(),
            format!("file:{}", s(&src)),
            url("large"),
            "--devices".into(),
            "4".into(),
        ],
        vec![
            "restore".to_owned(),
            url("large"),
            format!("file:{}", s(&dir.path().join("large.out"))),
        ],
    ] {
        let mut c = vdi_s3(&server);
        c.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let pid = child.id();
        let mut err = child.stderr.take().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut this = 0;
        let status = loop {
            this = this.max(peak_rss_kib(pid));
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stderr = t.join().unwrap();
        assert!(status.success(), "{args:?}: {stderr}");
        peak = peak.max(this);
    }
    assert_eq!(digest(&src), digest(&dir.path().join("large.out")));
    // The default bound: the whole client under 256 MiB at 4 devices.
    assert!(
        peak > 0 && peak < 256 << 10,
        "peak resident memory {peak} KiB"
    );
}

#[test]
fn parts_grow_so_that_a_stream_fits_a_small_part_cap() {
    let Some(server) = S3Server::start("parts_grow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    // More than 20 parts of 5 MiB.
    write_pattern(&src, 3, 130 << 20);
    let r = run_s3(
        &server,
        &[
            "backup",
            &format!("file:{}", s(&src)),
            &url("grow"),
            "--s3-part-cap",
            "20",
            "--s3-part-size",
            "5M",
            "-v",
        ],
    );
    r.ok();
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("device-0.stream (") && l.contains(" parts, the largest "))
        .unwrap_or_else(|| panic!("no part report: {}", r.stderr));
    let num = |after: &str| -> u64 {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let bytes = num("device-0.stream (");
    let parts = num(" in ");
    let largest = num("the largest ");
    assert!(bytes > 20 * (5 << 20), "{line}");
    assert!(parts <= 20, "{line}");
    assert!(largest > 5 << 20, "the parts grew: {line}");
    // The object is the whole stream.
    let key = server
        .keys("grow")
        .into_iter()
        .find(|k| k.ends_with("device-0.stream"))
        .unwrap();
    assert_eq!(
        std::fs::metadata(server.object_file(&key)).unwrap().len(),
        bytes
    );
    let out = dir.path().join("big.out");
    run_s3(
        &server,
        &["restore", &url("grow"), &format!("file:{}", s(&out))],
    )
    .ok();
    assert_eq!(digest(&src), digest(&out));
}

#[test]
fn a_live_sqlite_database() {
    let Some(server) = S3Server::start("a_live_sqlite_database") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
         INSERT INTO t SELECT i, printf('value %d %064d', i, i) FROM n;",
    )
    .unwrap();
    drop(c);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(30)).unwrap();
            c.execute_batch("PRAGMA synchronous = OFF").unwrap();
            let mut i = 50_001;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.execute("INSERT INTO t VALUES (?1, 'later')", [i])
                    .unwrap();
                i += 1;
            }
        })
    };
    let r = run_s3(
        &server,
        &[
            "backup",
            &format!("sqlite:{}", s(&db)),
            &url("db"),
            "--devices",
            "2",
            "--compress",
            "zstd",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    r.ok();
    let out = dir.path().join("restored.db");
    let r = run_s3(
        &server,
        &[
            "restore",
            &url("db"),
            &format!("sqlite:{}", s(&out)),
            "--integrity-check",
            "--json",
        ],
    );
    r.ok();
    assert_eq!(r.json()["integrity_check"], "ok");
    let c = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t WHERE id <= 50000", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50000);
}

#[test]
fn the_split_client_commands_take_an_s3_destination() {
    let Some(server) = S3Server::start("the_split_client_commands") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 9, 9 << 20);
    let set = set_name("s3-split");
    let client = spawn_s3(
        &server,
        &[
            "client",
            "backup",
            "--set",
            &set,
            &url("split"),
            "--devices",
            "2",
        ],
    );
    run(&[
        "engine",
        "backup",
        "--set",
        &set,
        &format!("file:{}", s(&src)),
    ])
    .ok();
    wait_output(client, Duration::from_secs(120)).ok();
    let out = dir.path().join("out");
    let set2 = set_name("s3-split-r");
    let client = spawn_s3(
        &server,
        &["client", "restore", "--set", &set2, &url("split")],
    );
    run(&[
        "engine",
        "restore",
        "--set",
        &set2,
        &format!("file:{}", s(&out)),
    ])
    .ok();
    wait_output(client, Duration::from_secs(120)).ok();
    assert_eq!(digest(&src), digest(&out));
}

#[test]
fn wrong_credentials_a_missing_bucket_and_an_unreachable_endpoint() {
    let Some(server) = S3Server::start("errors") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 1, 1 << 20);
    let file = format!("file:{}", s(&src));
    // A wrong secret: the server refuses the signature.
    let mut c = vdi_s3(&server);
    c.env("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
        .args(["backup", &file, &url("x")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(120));
    r.fails(3, &["AWS_SECRET_ACCESS_KEY", "signature"]);
    assert!(!r.stderr.contains("not-the-secret-at-all"), "{}", r.stderr);
    // An unknown access key.
    let mut c = vdi_s3(&server);
    c.env("AWS_ACCESS_KEY_ID", "AKIDNOBODY")
        .args(["verify", &url("x")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(120));
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains(SECRET));
    // A bucket that does not exist.
    let r = run_s3(&server, &["backup", &file, "s3://no-such-bucket/x"]);
    r.fails(3, &["bucket no-such-bucket does not exist", "aws s3 mb"]);
    let r = run_s3(
        &server,
        &["restore", "s3://no-such-bucket/x", "file:/dev/null/x"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no-such-bucket"), "{}", r.stderr);
    // No credentials at all.
    let mut c = vdi_s3(&server);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .args(["backup", &file, &url("x")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(60));
    r.fails(3, &["no S3 credentials", "AWS_ACCESS_KEY_ID"]);
    // A profile of the shared credentials file works as the variables do.
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = nobody\n\n[vdi]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let mut c = vdi_s3(&server);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_PROFILE", "vdi")
        .args(["backup", &file, &url("profile"), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(120));
    r.ok();
    no_secret(&r);
    // Nothing is listening there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run_s3(
        &server,
        &[
            "backup",
            &file,
            &url("x"),
            "--s3-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--s3-retries",
            "1",
            "--s3-retry-timeout",
            "2s",
        ],
    );
    r.fails(3, &["cannot reach the S3 endpoint", "--s3-endpoint"]);
    // A storage class the server does not offer, and a CA file that is none: before the
    // engine starts.
    run_s3(
        &server,
        &[
            "backup",
            &file,
            &url("x"),
            "--s3-storage-class",
            "NO_SUCH_CLASS",
        ],
    )
    .fails(2, &["storage class NO_SUCH_CLASS", "--s3-storage-class"]);
    run_s3(
        &server,
        &["backup", &file, &url("x"), "--s3-ca-file", &s(&src)],
    )
    .fails(2, &["--s3-ca-file", "no PEM certificate"]);
    // A backup is not replaced without --force.
    run_s3(&server, &["backup", &file, &url("once")]).ok();
    run_s3(&server, &["backup", &file, &url("once")]).fails(4, &["--force"]);
    assert!(!has_manifest(&server, "x"));
    assert_eq!(server.open_uploads(), Vec::<String>::new());
}

/// A backup from standard input, fed `first` bytes and waiting for more, with a
/// multipart upload open on the server.
fn backup_under_way(
    server: &S3Server,
    prefix: &str,
    first: usize,
) -> (Child, std::process::ChildStdin) {
    let mut child = spawn_s3(
        server,
        &[
            "backup",
            "-",
            &url(prefix),
            "--s3-part-size",
            "5M",
            "--s3-retries",
            "1",
            "--s3-retry-timeout",
            "2s",
        ],
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pattern(5, first)).unwrap();
    stdin.flush().unwrap();
    wait_until(Duration::from_secs(60), "a multipart upload open", || {
        !server.open_uploads().is_empty()
    });
    (child, stdin)
}

#[test]
fn the_engine_killed_mid_upload_leaves_no_upload_and_no_manifest() {
    let Some(server) = S3Server::start("engine killed") else {
        return;
    };
    let (child, stdin) = backup_under_way(&server, "killed", 12 << 20);
    let engines = children_of(child.id());
    assert_eq!(engines.len(), 1, "{engines:?}");
    signal(engines[0], "KILL");
    let r = wait_output(child, Duration::from_secs(120));
    drop(stdin);
    r.fails(8, &["engine process", "SIGKILL"]);
    assert!(!has_manifest(&server, "killed"));
    assert_eq!(
        server.open_uploads(),
        Vec::<String>::new(),
        "every upload aborted"
    );
    assert_eq!(
        server.keys("killed"),
        Vec::<String>::new(),
        "nothing left: {}",
        r.stderr
    );
}

#[test]
fn an_interrupt_mid_upload_leaves_no_upload_and_no_manifest() {
    let Some(server) = S3Server::start("interrupted") else {
        return;
    };
    let (child, stdin) = backup_under_way(&server, "int", 12 << 20);
    signal(child.id(), "INT");
    let r = wait_output(child, Duration::from_secs(120));
    drop(stdin);
    r.fails(130, &["SIGINT"]);
    assert!(!has_manifest(&server, "int"));
    assert_eq!(
        server.open_uploads(),
        Vec::<String>::new(),
        "every upload aborted"
    );
}

#[test]
fn the_server_killed_mid_upload_fails_loudly_and_commits_nothing() {
    let Some(mut server) = S3Server::start("server killed mid-upload") else {
        return;
    };
    let (child, mut stdin) = backup_under_way(&server, "srv", 12 << 20);
    server.kill();
    // More parts, which cannot be stored, and the end of the stream.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&pattern(6, 12 << 20));
    });
    let r = wait_output(child, Duration::from_secs(120));
    feeder.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot reach the S3 endpoint"),
        "{}",
        r.stderr
    );
    // The upload could not be aborted on a dead server: the message says so, and how to
    // remove it.
    assert!(r.stderr.contains("could not abort"), "{}", r.stderr);
    assert!(
        r.stderr.contains("AbortIncompleteMultipartUpload"),
        "{}",
        r.stderr
    );
    server.restart();
    assert!(!has_manifest(&server, "srv"));
    assert!(
        !server.keys("srv").iter().any(|k| k.contains("device-")),
        "no stream object: {:?}",
        server.keys("srv")
    );
    let r = run_s3(&server, &["verify", &url("srv")]);
    assert_ne!(r.code, 0);
}

#[test]
fn the_server_killed_mid_restore_fails_loudly() {
    let Some(mut server) = S3Server::start("server killed mid-restore") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_pattern(&src, 12, 80 << 20);
    run_s3(
        &server,
        &["backup", &format!("file:{}", s(&src)), &url("r")],
    )
    .ok();
    // A restore to a pipe read slowly: it stops when the read-ahead is full.
    let mut child = spawn_s3(
        &server,
        &[
            "restore",
            &url("r"),
            "-",
            "--s3-retries",
            "1",
            "--s3-retry-timeout",
            "2s",
        ],
    );
    let mut out = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    out.read_exact(&mut first).unwrap();
    server.kill();
    let drain = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v.len() + (1 << 20)
    });
    let r = wait_output(child, Duration::from_secs(120));
    let got = drain.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(got < 80 << 20, "the restore did not get everything");
    assert!(
        r.stderr.contains("cannot reach the S3 endpoint") || r.stderr.contains("cannot read"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_repository_in_s3_init_backup_list_restore_latest_expire() {
    let Some(server) = S3Server::start("a repository in S3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let repo = url("repo");
    run_s3(&server, &["init", &repo]).ok();
    run_s3(&server, &["init", &repo]).fails(4, &["repository already"]);
    for seed in [1u64, 2] {
        write_pattern(&src, seed, 3 << 20);
        run_s3(
            &server,
            &[
                "backup",
                &format!("file:{}", s(&src)),
                &repo,
                "--devices",
                "2",
            ],
        )
        .ok();
    }
    let l = run_s3(&server, &["list", &repo, "--json"]);
    l.ok();
    let backups = l.json()["backups"].as_array().unwrap().clone();
    assert_eq!(backups.len(), 2);
    assert!(backups.iter().all(|b| b["state"] == "complete"));
    let out = dir.path().join("out");
    run_s3(
        &server,
        &[
            "restore",
            &format!("{repo}:latest"),
            &format!("file:{}", s(&out)),
        ],
    )
    .ok();
    assert_eq!(
        digest(&src),
        digest(&out),
        "the latest is the second backup"
    );
    run_s3(&server, &["verify", &repo]).ok();
    run_s3(&server, &["expire", &repo, "--keep-last", "1"]).ok();
    let l = run_s3(&server, &["list", &repo, "--json"]);
    assert_eq!(l.json()["backups"].as_array().unwrap().len(), 1);
    let first = backups[0]["id"].as_str().unwrap();
    assert!(
        !server.keys("repo").iter().any(|k| k.contains(first)),
        "the expired backup's objects are gone"
    );
}

#[test]
fn a_second_interrupt_exits_at_once_and_still_leaves_nothing() {
    let Some(server) = S3Server::start("two interrupts") else {
        return;
    };
    let (child, stdin) = backup_under_way(&server, "int2", 12 << 20);
    signal(child.id(), "INT");
    // The second one (if the process is still there to get it) exits at once, without
    // destructors: the exit hooks abort the upload and remove what was stored.
    std::thread::sleep(Duration::from_millis(20));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let r = wait_output(child, Duration::from_secs(120));
    eprintln!("{}", r.stderr);
    drop(stdin);
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert!(!has_manifest(&server, "int2"));
    assert_eq!(server.open_uploads(), Vec::<String>::new(), "{}", r.stderr);
    assert!(
        !server
            .keys("int2")
            .iter()
            .any(|k| k.contains("device-") || k.ends_with(".vdi-lock")),
        "{:?}",
        server.keys("int2")
    );
}
