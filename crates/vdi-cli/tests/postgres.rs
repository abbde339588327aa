//! PostgreSQL through VDI, against real servers: Debian's PostgreSQL, `initdb` into a
//! temporary directory and started as an unprivileged user (`nobody` when the tests run
//! as root: PostgreSQL refuses to run as root), listening on a Unix socket in that
//! directory and on 127.0.0.1 on a free port, `pgbench -i -s 10` for data; stopped
//! (`pg_ctl stop -m immediate`, then SIGKILL for whatever is left) and removed when the
//! test ends, however it ends.
//!
//! - a base backup through 1 and through 4 devices while `pgbench` writes; each restored
//!   with `postgres-data:`, which runs `pg_verifybackup`; a server started on the
//!   restored directory answers, and `pgbench_accounts` holds scale × 100000 rows;
//! - the engine SIGKILLed in the middle of a backup leaves no `pg_basebackup` process
//!   and no completed backup;
//! - a wrong port, or a role without replication rights, fails at once with
//!   PostgreSQL's own message and what to do.
//!
//! PostgreSQL missing: the tests fail saying how to install it, except for a developer
//! who is not root, for whom they print SKIPPED and pass (`.ci/run`, as root, installs
//! it and fails if any is skipped).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SCALE: u64 = 10;

/// The directory of PostgreSQL's programs (`initdb`, `pg_ctl`, `postgres`, `psql`,
/// `pgbench`): where the `initdb` in `$PATH` is, else the newest
/// `/usr/lib/postgresql/*/bin`. None when PostgreSQL is not installed.
fn pg_bin() -> Option<PathBuf> {
    let whole = |d: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql", "pgbench"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            // Where `initdb` really is (a link in /usr/local/bin points into Debian's
            // directory, which holds the rest).
            let Some(real) = std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            else {
                continue;
            };
            if whole(&real) {
                return Some(real);
            }
        }
    }
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let b = e.path().join("bin");
            whole(&b).then_some((n, b))
        })
        .collect();
    v.sort();
    v.pop().map(|(_, b)| b)
}

/// `Some(bin)`, or None after printing SKIPPED (a developer who is not root, without
/// PostgreSQL); panics saying what to install otherwise.
fn postgres_or_skip(test: &str) -> Option<PathBuf> {
    match pg_bin() {
        Some(b) => Some(b),
        None if !is_root() && std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED {test}: PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)"
            );
            None
        }
        None => panic!(
            "PostgreSQL is not installed: its server programs (initdb, pg_ctl) are neither in PATH nor in /usr/lib/postgresql/*/bin; install it (apt-get install -y postgresql), as .ci/run does"
        ),
    }
}

/// The uid and gid the servers run as: `nobody` when this process is root, else this
/// process's own.
fn server_user() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("a user named nobody to run PostgreSQL as");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL server of this test: stopped and removed when dropped.
struct Server {
    bin: PathBuf,
    /// The temporary directory: the data directory, the socket, the log.
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    running: bool,
}

impl Server {
    /// A command run as the server's user.
    fn as_user(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some((u, g)) = self.user {
            c.uid(u).gid(g);
        }
        c.env("LC_ALL", "C").current_dir(self.dir.path());
        c
    }

    fn must(c: &mut Command, what: &str) -> String {
        let out = c
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run {c:?}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new cluster in a new temporary directory, started.
    fn new(bin: &Path) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("vdi-pg-")
            .tempdir()
            .unwrap();
        let user = server_user();
        if let Some((u, g)) = user {
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g)).unwrap();
        }
        let data = dir.path().join("data");
        let mut s = Server {
            bin: bin.to_owned(),
            data: data.clone(),
            dir,
            port: free_port(),
            user,
            running: false,
        };
        Self::must(
            s.as_user(&bin.join("initdb")).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        );
        s.start();
        s
    }

    /// Starts the server on `self.data` (a new port each time).
    fn start(&mut self) {
        self.port = free_port();
        // Dynamic shared memory in the data directory (mmap), not in /dev/shm: a server
        // killed by a test leaves nothing outside its temporary directory.
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}' -c fsync=off -c dynamic_shared_memory_type=mmap",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let mut c = self.as_user(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "-t", "120", "start"]);
        self.running = true;
        let out = c.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}; log: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (at once) and kills whatever of it is left.
    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = self
            .as_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Whatever did not stop: the postmaster of postmaster.pid, and its children.
        if let Ok(t) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            && let Some(pid) = t.lines().next().and_then(|l| l.trim().parse::<u32>().ok())
        {
            for c in children_of(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &c.to_string()])
                    .status();
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// The conninfo of a connection through the Unix socket, as `user`.
    fn socket(&self, user: &str) -> String {
        format!(
            "host={} port={} user={user} dbname=postgres",
            self.dir.path().display(),
            self.port
        )
    }

    /// The conninfo of a connection over TCP on 127.0.0.1, as `user`.
    fn tcp(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres",
            self.port
        )
    }

    /// Runs SQL through psql; its output.
    fn sql(&self, q: &str) -> String {
        Self::must(
            Command::new(self.bin.join("psql")).args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.socket("postgres"),
                "-c",
                q,
            ]),
            "psql",
        )
        .trim()
        .to_owned()
    }

    fn pgbench_init(&self) {
        Self::must(
            Command::new(self.bin.join("pgbench")).args([
                "-i",
                "-s",
                &SCALE.to_string(),
                "-q",
                "-d",
                &self.socket("postgres"),
            ]),
            "pgbench -i",
        );
    }

    /// `pgbench` writing until it is stopped (killed when the returned guard drops).
    fn pgbench_load(&self) -> Load {
        let c = Command::new(self.bin.join("pgbench"))
            .args([
                "-c",
                "2",
                "-j",
                "1",
                "-T",
                "600",
                "-n",
                "-d",
                &self.socket("postgres"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Load(c)
    }

    /// Transactions pgbench has committed so far.
    fn commits(&self) -> u64 {
        self.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'")
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(p) = self.dir.path().to_str() {
            // The directory is nobody's: removed as root (tempfile does it too).
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

struct Load(std::process::Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes whose program is `name`, that are not zombies.
fn processes_named(name: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name && alive(pid) {
            v.push(pid);
        }
    }
    v
}

/// Restores `bk` into a new data directory beside the server's, starts a server on it,
/// and checks its rows; the JSON of the restore.
fn restore_and_check(server: &mut Server, bk: &Path, devices_note: &str) -> serde_json::Value {
    let restored = server.dir.path().join(format!("restored-{devices_note}"));
    let r = run(&[
        "restore",
        &s(bk),
        &format!("postgres-data:{}", s(&restored)),
        "--json",
    ]);
    r.ok();
    let j = r.json();
    assert!(
        j["integrity_check"]
            .as_str()
            .unwrap_or_default()
            .contains("successfully verified"),
        "pg_verifybackup ran and passed: {j}"
    );
    // A server on the restored directory answers with all the rows.
    server.stop();
    let original = std::mem::replace(&mut server.data, restored.clone());
    server.start();
    let rows: u64 = server
        .sql("SELECT count(*) FROM pgbench_accounts")
        .parse()
        .unwrap();
    assert_eq!(rows, SCALE * 100_000, "restored from {devices_note}");
    server.stop();
    server.data = original;
    server.start();
    j
}

#[test]
fn base_backups_through_one_and_four_devices_while_pgbench_writes_restore_and_verify() {
    let Some(bin) = postgres_or_skip("base_backups_through_one_and_four_devices") else {
        return;
    };
    let mut server = Server::new(&bin);
    server.pgbench_init();
    let work = tempfile::tempdir().unwrap();
    let bk1 = work.path().join("bk1");
    let bk4 = work.path().join("bk4");
    {
        let mut load = server.pgbench_load();
        let before = server.commits();
        wait_until(Duration::from_secs(60), "pgbench to write", || {
            server.commits() > before + 50
        });
        // Through the socket, one device; over TCP, four devices, compressed.
        run(&[
            "backup",
            &format!("postgres:{}", server.socket("postgres")),
            &s(&bk1),
        ])
        .ok();
        run(&[
            "backup",
            &format!("postgres:{}", server.tcp("postgres")),
            &s(&bk4),
            "--devices",
            "4",
            "--compress",
            "zstd:1",
        ])
        .ok();
        // pgbench (600 s of transactions) was still at work: it wrote all along.
        assert!(
            load.0.try_wait().unwrap().is_none(),
            "pgbench ran while the backups ran"
        );
    }
    for bk in [&bk1, &bk4] {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(bk.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["source"]["kind"], "postgres");
        assert_eq!(m["source"]["checked"], true);
        run(&["verify", &s(bk)]).ok();
    }
    restore_and_check(&mut server, &bk1, "1");
    restore_and_check(&mut server, &bk4, "4");
    // Restoring over a directory a server runs on is refused, even with --force.
    let data = server.data.clone();
    run(&[
        "restore",
        &s(&bk1),
        &format!("postgres-data:{}", s(&data)),
        "--force",
    ])
    .fails(4, &["postmaster.pid", "stop it"]);
}

#[test]
fn a_killed_engine_leaves_no_pg_basebackup_and_no_completed_backup() {
    let Some(bin) = postgres_or_skip("a_killed_engine_leaves_no_pg_basebackup") else {
        return;
    };
    let server = Server::new(&bin);
    server.pgbench_init();
    let work = tempfile::tempdir().unwrap();
    let bk = work.path().join("bk");
    // The backup application stalls at its 5th command: the backup is in the middle,
    // pg_basebackup blocked writing into the engine.
    let child = spawn(&[
        "backup",
        &format!("postgres:{}", server.socket("postgres")),
        &s(&bk),
        "--devices",
        "2",
        "--inject",
        "client:delay@5=8s",
    ]);
    let vdi_pid = child.id();
    let guard = KillOnDrop(child);
    let mut engine = 0;
    let mut basebackup = 0;
    wait_until(
        Duration::from_secs(60),
        "pg_basebackup to run under the engine",
        || {
            for e in children_of(vdi_pid) {
                if let Some(b) = children_of(e)
                    .into_iter()
                    .find(|p| processes_named("pg_basebackup").contains(p))
                {
                    engine = e;
                    basebackup = b;
                    return true;
                }
            }
            false
        },
    );
    signal(engine, "KILL");
    wait_until(Duration::from_secs(60), "vdi backup to fail", || {
        !alive(vdi_pid)
    });
    drop(guard);
    wait_until(Duration::from_secs(30), "pg_basebackup to be gone", || {
        !alive(basebackup)
    });
    assert!(!claims_completion(&bk), "no completed backup");
    // And the server stopped sending: no WAL sender is left for the backup.
    wait_until(
        Duration::from_secs(30),
        "the server's WAL sender to end",
        || server.sql("SELECT count(*) FROM pg_stat_replication") == "0",
    );
}

#[test]
fn a_wrong_port_or_a_role_without_replication_fails_at_once_saying_what_to_do() {
    let Some(bin) = postgres_or_skip("a_wrong_port_or_a_role_without_replication") else {
        return;
    };
    let server = Server::new(&bin);
    server.sql("CREATE ROLE reader LOGIN");
    let work = tempfile::tempdir().unwrap();
    let bk = work.path().join("bk");
    let wrong = format!("postgres:host=127.0.0.1 port={} user=postgres", free_port());
    run(&["backup", &wrong, &s(&bk)]).fails(3, &["Connection refused", "check the host and port"]);
    assert!(!claims_completion(&bk));
    run(&[
        "backup",
        &format!("postgres:{}", server.socket("reader")),
        &s(&bk),
    ])
    .fails(3, &["must be superuser or replication role", "ALTER ROLE"]);
    assert!(!claims_completion(&bk));
    // A password in the conninfo is refused before anything runs.
    run(&["backup", "postgres:host=127.0.0.1 password=secret", &s(&bk)]).fails(2, &[".pgpass"]);
    // A data directory is a target, not a source.
    run(&[
        "backup",
        &format!("postgres-data:{}", s(&server.data)),
        &s(&bk),
    ])
    .fails(2, &["postgres:CONNINFO"]);
}
