//! `vdi sql` and the sqlcmd/osql stand-ins, as a user runs them: every statement form
//! against a real client (`vdi client backup|restore --set`, another process) on a real
//! SQLite database, byte-checked; every refused option with SQL Server's message; scripts
//! with comments, `GO` and several statements; sqlcmd's exit codes under `-b`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn sql(args: &[&str]) -> Run {
    let mut c = vdi();
    c.env("VDI_CONFIG", "none")
        .arg("sql")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(120))
}

fn db(path: &Path, rows: u32) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    for i in 0..rows {
        c.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!("row {i} {}", "x".repeat(50))],
        )
        .unwrap();
    }
}

/// The client of a statement, killed if the test fails before it ends.
struct Client(Option<std::process::Child>);

impl Client {
    fn wait(mut self) -> Run {
        wait_output(self.0.take().unwrap(), Duration::from_secs(120))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The client for a statement: `vdi client backup|restore --set SET DIR --devices N`,
/// once its set exists (as SDK clients create the set before they run the statement).
fn client(op: &str, set: &str, dir: &Path, devices: u32) -> Client {
    let mut args: Vec<String> = ["client", op, "--set", set, &s(dir), "-q"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    if op == "backup" {
        args.extend(["--devices".to_owned(), devices.to_string()]);
    }
    let child = vdi()
        .env("VDI_CONFIG", "none")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = Client(Some(child));
    let name = format!("@vdi/1/{set}");
    wait_until(Duration::from_secs(60), "the client's set", || {
        std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| t.contains(&name))
    });
    c
}

fn devices(set: &str, n: u32, verb: &str) -> String {
    (0..n)
        .map(|i| {
            if i == 0 {
                format!("VIRTUAL_DEVICE='{set}'")
            } else {
                format!("VIRTUAL_DEVICE = N'{set}#{i}'")
            }
        })
        .collect::<Vec<_>>()
        .join(&format!(",{verb}"))
}

#[test]
fn backup_then_every_restore_form_round_trips_a_sqlite_database() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("shop.db");
    db(&src, 5000);
    let bk = t.path().join("bk");
    let set = set_name("tsql");
    let c = client("backup", &set, &bk, 4);
    let catalog = format!("shop=sqlite:{}", s(&src));
    let r = sql(&[
        "--database",
        &catalog,
        &format!(
            "-- a comment\n/* and /* a nested */ one */\nBACKUP DATABASE [shop] TO {} WITH FORMAT, INIT, CHECKSUM, COMPRESSION, COPY_ONLY, STATS = 50, BUFFERCOUNT = 8, MAXTRANSFERSIZE = 65536, BLOCKSIZE = 512, NAME = N'nightly';",
            devices(&set, 4, "\n ")
        ),
    ]);
    let out = r.stdout_str();
    assert_eq!(r.code, 0, "{out}{}", r.stderr);
    assert!(
        out.contains("50 percent processed.\n100 percent processed.\n"),
        "{out}"
    );
    assert!(
        out.contains("pages for database 'shop', file 'shop' on file 1."),
        "{out}"
    );
    assert!(
        out.contains("BACKUP DATABASE successfully processed "),
        "{out}"
    );
    assert_eq!(c.wait().code, 0);

    // HEADERONLY, FILELISTONLY, VERIFYONLY read the whole backup and check it.
    for (stmt, want) in [
        ("RESTORE HEADERONLY FROM", "DatabaseName"),
        ("RESTORE FILELISTONLY FROM", "LogicalName"),
        (
            "RESTORE VERIFYONLY FROM",
            "The backup set on file 1 is valid.",
        ),
    ] {
        let set = set_name("tsql");
        let c = client("restore", &set, &bk, 4);
        let r = sql(&[&format!("{stmt} {}", devices(&set, 4, " "))]);
        assert_eq!(r.code, 0, "{stmt}: {}{}", r.stdout_str(), r.stderr);
        assert!(r.stdout_str().contains(want), "{stmt}: {}", r.stdout_str());
        assert_eq!(c.wait().code, 0);
    }

    // RESTORE DATABASE over the source itself: refused without REPLACE (the client's set
    // is aborted, so it does not wait), done with it into another file.
    let set = set_name("tsql");
    let c = client("restore", &set, &bk, 4);
    let r = sql(&[
        "--database",
        &catalog,
        &format!("RESTORE DATABASE shop FROM {}", devices(&set, 4, " ")),
    ]);
    assert_eq!(r.code, 4);
    assert!(
        r.stdout_str()
            .contains("Msg 3159, Level 16, State 1, Line 1")
    );
    assert!(r.stdout_str().contains("WITH REPLACE"));
    assert_ne!(c.wait().code, 0);

    let copy = t.path().join("copy.db");
    std::fs::write(&copy, b"an old copy").unwrap();
    let set = set_name("tsql");
    let c = client("restore", &set, &bk, 4);
    let r = sql(&[
        "-d",
        &format!("Shop=sqlite:{}", s(&copy)),
        &format!(
            "RESTORE DATABASE \"shop\" FROM {} WITH REPLACE, NORECOVERY, CHECKSUM, FILE = 1, STATS",
            devices(&set, 4, " ")
        ),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout_str(), r.stderr);
    assert!(
        r.stdout_str()
            .contains("RESTORE DATABASE successfully processed")
    );
    assert!(r.stdout_str().contains("10 percent processed."));
    assert_eq!(c.wait().code, 0);
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&copy).unwrap());
}

#[test]
fn a_script_with_go_log_backups_and_sqlcmd_and_osql_command_lines() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("a.db");
    db(&src, 200);
    let (bk1, bk2) = (t.path().join("bk1"), t.path().join("bk2"));
    let (s1, s2) = (set_name("go"), set_name("go"));
    let c1 = client("backup", &s1, &bk1, 1);
    let c2 = client("backup", &s2, &bk2, 1);
    let script = t.path().join("nightly.sql");
    std::fs::write(
        &script,
        format!(
            "BACKUP DATABASE a TO VIRTUAL_DEVICE='{s1}'\nGO\n-- the log\nBACKUP LOG a TO VIRTUAL_DEVICE='{s2}' WITH NORECOVERY\ngo\n"
        ),
    )
    .unwrap();
    let mut c = vdi();
    c.env("VDI_CONFIG", "none")
        .env("VDI_DATABASES", format!("a=sqlite:{}", s(&src)))
        .args([
            "sqlcmd",
            "-S",
            "tcp:db1,1433",
            "-E",
            "-b",
            "-i",
            &s(&script),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(120));
    assert_eq!(r.code, 0, "{}{}", r.stdout_str(), r.stderr);
    assert!(
        r.stdout_str()
            .contains("BACKUP DATABASE successfully processed")
    );
    assert!(r.stdout_str().contains("BACKUP LOG successfully processed"));
    assert_eq!(c1.wait().code, 0);
    assert_eq!(c2.wait().code, 0);

    // RESTORE LOG (through osql's command line) brings the log backup's bytes back.
    let s3 = set_name("go");
    let c3 = client("restore", &s3, &bk2, 1);
    let back = t.path().join("from-log.db");
    let mut c = vdi();
    c.env("VDI_CONFIG", "none")
        .env("VDI_DATABASES", format!("a=sqlite:{}", s(&back)))
        .args(["osql", "-E", "-b", "-Q"])
        .arg(format!(
            "RESTORE LOG a FROM VIRTUAL_DEVICE='{s3}' WITH NORECOVERY"
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = wait_output(c.spawn().unwrap(), Duration::from_secs(120));
    assert_eq!(r.code, 0, "{}{}", r.stdout_str(), r.stderr);
    assert!(
        r.stdout_str()
            .contains("RESTORE LOG successfully processed")
    );
    assert_eq!(c3.wait().code, 0);
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap());

    // sqlcmd and osql: errors carry the server; -b makes an error exit 1, without -b 0;
    // -V 17 does not count a level-16 error.
    for (tool, b, v, code) in [
        ("sqlcmd", true, None, 1),
        ("sqlcmd", false, None, 0),
        ("sqlcmd", true, Some("17"), 0),
        ("osql", true, None, 1),
    ] {
        let mut c = vdi();
        c.env("VDI_CONFIG", "none").args([tool, "-S", "db1", "-Q"]);
        c.arg("BACKUP DATABASE nosuch TO VIRTUAL_DEVICE='x'");
        if b {
            c.arg("-b");
        }
        if let Some(v) = v {
            c.args(["-V", v]);
        }
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let r = wait_output(c.spawn().unwrap(), Duration::from_secs(60));
        assert_eq!(r.code, code, "{tool} -b={b} -V={v:?}: {}", r.stdout_str());
        assert!(
            r.stdout_str()
                .contains("Msg 911, Level 16, State 1, Server db1, Line 1"),
            "{}",
            r.stdout_str()
        );
    }
    let r = run(&["sqlcmd", "-Z"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout_str().contains("'-Z': Unknown Option"));
}

#[test]
fn refused_statements_say_why_in_sql_servers_shape() {
    let b = "BACKUP DATABASE shop TO VIRTUAL_DEVICE='nobody-made-this-set'";
    let r = "RESTORE DATABASE shop FROM VIRTUAL_DEVICE='nobody-made-this-set'";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{b} WITH DIFFERENTIAL"),
            "Msg 3035, Level 16",
            "full backups only",
        ),
        (
            format!("{r} WITH STOPAT = '2026-12-01T00:00:00'"),
            "Msg 4338, Level 16",
            "point in time",
        ),
        (
            format!("{b} WITH REPLACE"),
            "Msg 3032, Level 16",
            "(REPLACE)",
        ),
        (format!("{r} WITH FORMAT"), "Msg 3032, Level 16", "(FORMAT)"),
        (
            format!("{b} WITH NORECOVERY"),
            "Msg 3032, Level 16",
            "(NORECOVERY)",
        ),
        (
            format!("{b} WITH MAXTRANSFERSIZE = 1000"),
            "Msg 3250, Level 16",
            "multiple of 65536",
        ),
        (
            format!("{b} WITH BLOCKSIZE = 1000"),
            "Msg 3250, Level 16",
            "power of two",
        ),
        (
            format!("{b} WITH BUFFERCOUNT = 0"),
            "Msg 3250, Level 16",
            "1 to 4096",
        ),
        (
            format!("{b} WITH STATS = 101"),
            "Msg 3250, Level 16",
            "1 to 100",
        ),
        (
            format!("{b} WITH WHATEVER"),
            "Msg 155, Level 15",
            "'WHATEVER' is not a recognized BACKUP option",
        ),
        (
            "BACKUP DATABASE shop TO DISK = '/tmp/shop.bak'".into(),
            "Msg 3201, Level 16",
            "VIRTUAL_DEVICE only",
        ),
        (
            "BACKUP DATABASE nosuch TO VIRTUAL_DEVICE='v'".into(),
            "Msg 911, Level 16",
            "Database 'nosuch' does not exist",
        ),
        (b.to_owned(), "Msg 3201, Level 16", "0x80770004"),
        (
            "BACKUP DATABASE shop\nTO VIRTUAL_DEVICE 'x'".into(),
            "Msg 102, Level 15, State 1, Line 2",
            "line 2, column 19",
        ),
        (
            "BACKUP DATABASE shop TO VIRTUAL_DEVICE='x".into(),
            "Msg 105, Level 15",
            "Unclosed string",
        ),
        ("SELECT 1".into(), "Msg 102, Level 15", "BACKUP or RESTORE"),
    ];
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("shop.db");
    db(&src, 10);
    let catalog = format!("shop=sqlite:{}", s(&src));
    for (stmt, msg, text) in &cases {
        let r = sql(&["--database", &catalog, "--wait", "0", stmt]);
        let out = r.stdout_str();
        assert_ne!(r.code, 0, "{stmt}");
        assert!(out.contains(msg), "{stmt}: {out}");
        assert!(out.contains(text), "{stmt}: {out}");
        if !msg.contains("Level 15") || msg.contains("155") {
            assert!(out.contains("Msg 3013, Level 16, State 1"), "{stmt}: {out}");
        }
        assert!(r.stderr.contains("the Msg lines above say why"), "{stmt}");
    }
    // A device mode the client does not offer: refused, saying what the client must set.
    let bk = t.path().join("bk");
    let set = set_name("tsql");
    let c = client("backup", &set, &bk, 1);
    let r = sql(&[
        "--database",
        &catalog,
        "--mode",
        "tape",
        &format!("BACKUP DATABASE shop TO VIRTUAL_DEVICE='{set}'"),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout_str().contains("VDF_LikeTape"),
        "{}",
        r.stdout_str()
    );
    assert!(r.stdout_str().contains("Msg 3013"), "{}", r.stdout_str());
    assert_ne!(c.wait().code, 0);
    // 64 devices are allowed, 65 are not.
    let many = (0..65)
        .map(|i| format!("VIRTUAL_DEVICE='d{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let r = sql(&[
        "--database",
        &catalog,
        &format!("BACKUP DATABASE shop TO {many}"),
    ]);
    assert!(
        r.stdout_str().contains("Msg 3205, Level 16"),
        "{}",
        r.stdout_str()
    );
    assert!(r.stdout_str().contains("only 64 are allowed"));
}
