//! PostgreSQL: `postgres:CONNINFO` backs up a running server (a consistent base backup
//! by `pg_basebackup`, as one tar stream striped over the devices, with the WAL that
//! makes it consistent and its `backup_manifest`), and `postgres-data:DIR` restores one
//! into a new data directory, checked by `pg_verifybackup` before it is put in place.
//!
//! `pg_basebackup` writes a tar to standard output only for a cluster with one
//! tablespace and with `-X fetch` (the WAL is fetched at the end of the backup and put
//! in the same tar, `pg_wal/`, and the manifest after it): vdi runs it so, and a cluster
//! with more tablespaces is refused with what to do. `docs/postgres.md` says why
//! (one stream, no scratch copy) and what each limit asks of the server.
//!
//! ```
//! use vdi_backup::source::Spec;
//! let s = Spec::parse("postgres:host=/var/run/postgresql port=5432 user=backup").unwrap();
//! assert_eq!(s.kind().name(), "postgres");
//! assert!(s.path().is_none());
//! // A password in the conninfo would be recorded in the backup and seen by `ps`.
//! let s = Spec::parse("postgres:host=db password=secret").unwrap();
//! assert!(s.probe().unwrap_err().to_string().contains(".pgpass"));
//! assert!(Spec::parse("postgres-data:/srv/pg/restored").unwrap().path().is_some());
//! ```

use std::path::{Path, PathBuf};

use super::cmd::ProgramSource;
use super::dir::{TreeCheck, TreeTarget, check_tree_target};
use super::program::{describe_status, find_program};
use super::{Scheme, Source, Target, TargetOptions, untar};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::SourceKind;

/// A running PostgreSQL server, as a source.
#[derive(Debug)]
pub struct Postgres;

/// A PostgreSQL data directory, as a target.
#[derive(Debug)]
pub struct PostgresData;

/// Where a PostgreSQL program is: in `$PATH`, else in the newest of Debian's
/// `/usr/lib/postgresql/VERSION/bin` (or that of `version`, when given and there).
pub fn find_pg_program(name: &str, version: Option<&str>) -> Result<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    if let Some(v) = version.and_then(|v| v.trim().parse::<u32>().ok())
        && let Some((_, d)) = dirs.iter().find(|(n, _)| *n == v)
        && d.join(name).is_file()
    {
        return Ok(d.join(name));
    }
    if let Ok(p) = find_program(name) {
        return Ok(p);
    }
    dirs.iter()
        .rev()
        .map(|(_, d)| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            fail(
                Kind::Input,
                format!(
                    "{name} was not found in PATH nor in /usr/lib/postgresql/*/bin: install PostgreSQL's programs (Debian: apt-get install postgresql-client; pg_verifybackup comes with postgresql)"
                ),
            )
        })
}

/// Refuses a conninfo that holds a password (it would be recorded in the backup's
/// manifest and stream headers, and be seen in the process list).
fn check_conninfo(conninfo: &str) -> Result<()> {
    let lower = conninfo.to_ascii_lowercase();
    let uri_password = (lower.starts_with("postgres://") || lower.starts_with("postgresql://"))
        && conninfo
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?']).next())
            .and_then(|auth| auth.rsplit_once('@'))
            .is_some_and(|(user, _)| user.contains(':'));
    // A `password` keyword: at the start or after a space, then `=` (spaces allowed).
    let kv_password = lower.match_indices("password").any(|(i, _)| {
        let before = lower[..i].chars().next_back();
        let after = lower[i + "password".len()..].trim_start();
        before.is_none_or(char::is_whitespace) && after.starts_with('=')
    });
    if uri_password || kv_password {
        return Err(fail(
            Kind::Usage,
            "the conninfo holds a password, which would be recorded in the backup's manifest and seen by anyone who lists processes: put it in ~/.pgpass (or the file PGPASSFILE names), or in PGPASSWORD, and leave it out of the conninfo",
        ));
    }
    Ok(())
}

/// What to do about a failure of `pg_basebackup`, from what it said.
fn advise(said: &str) -> Option<String> {
    let s = said;
    let a = if s.contains("must be superuser or replication role")
        || s.contains("permission denied to start WAL sender")
        || s.contains("must have the REPLICATION attribute")
    {
        "the role has no replication rights: connect as one that has (a superuser can grant them: ALTER ROLE name REPLICATION), see docs/postgres.md"
    } else if s.contains("no pg_hba.conf entry for replication connection") {
        "the server's pg_hba.conf does not let this role make replication connections: add a line such as 'host replication backup 127.0.0.1/32 scram-sha-256' (or 'local replication backup peer'), then SELECT pg_reload_conf()"
    } else if s.contains("Connection refused")
        || s.contains("No such file or directory")
        || s.contains("could not translate host name")
        || s.contains("timeout expired")
    {
        "no server answers there: check the host and port in the conninfo (is the server running? Debian's pg_lsclusters lists its clusters and their ports)"
    } else if s.contains("password authentication failed") || s.contains("no password supplied") {
        "vdi runs pg_basebackup with --no-password (it never prompts): put the password in ~/.pgpass or PGPASSFILE, or set PGPASSWORD"
    } else if s.contains("single tablespace to stdout") {
        "the cluster has tablespaces besides pg_default and pg_global, and pg_basebackup streams only one to its output: vdi backs up single-tablespace clusters (docs/postgres.md says what to do with more)"
    } else if s.contains("has already been removed") {
        "the WAL written during the backup was recycled before pg_basebackup fetched it (-X fetch): raise wal_keep_size (ALTER SYSTEM SET wal_keep_size = '4GB'; SELECT pg_reload_conf();) and back up again"
    } else if s.contains("exceeds max_wal_senders") || s.contains("too many clients") {
        "the server has no free WAL sender for the backup: raise max_wal_senders, or wait for other backups and replicas to disconnect"
    } else if s.contains("incompatible server version") {
        "this pg_basebackup is older than the server: install the client programs of the server's version (they are found in /usr/lib/postgresql/VERSION/bin)"
    } else {
        return None;
    };
    Some(a.to_owned())
}

fn not_a_target() -> crate::Error {
    fail(
        Kind::Usage,
        "postgres: is a source (a running server); restore into a new data directory with postgres-data:DIR",
    )
}

impl Scheme for Postgres {
    fn prefix(&self) -> &'static str {
        "postgres:"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }
    fn path<'a>(&self, _rest: &'a str) -> Option<&'a Path> {
        None
    }
    fn probe(&self, rest: &str) -> Result<Option<u64>> {
        check_conninfo(rest)?;
        find_pg_program("pg_basebackup", None)?;
        Ok(None)
    }
    fn open_source(&self, rest: &str) -> Result<Box<dyn Source>> {
        check_conninfo(rest)?;
        let exe = find_pg_program("pg_basebackup", None)?;
        let argv: Vec<String> = vec![
            exe.display().to_string(),
            "--dbname".into(),
            rest.into(),
            "--pgdata=-".into(),
            "--format=tar".into(),
            "--wal-method=fetch".into(),
            "--checkpoint=fast".into(),
            "--no-password".into(),
            "--label=vdi backup".into(),
        ];
        Ok(Box::new(
            ProgramSource::start(&argv, "pg_basebackup", &[], SourceKind::Postgres)?
                .with_advice(advise),
        ))
    }
    fn check_target(&self, _rest: &str, _force: bool) -> Result<()> {
        Err(not_a_target())
    }
    fn open_target(&self, _rest: &str, _opts: TargetOptions) -> Result<Box<dyn Target>> {
        Err(not_a_target())
    }
}

/// Refuses a data directory a server may be running on.
fn check_not_running(dir: &Path) -> Result<()> {
    let pid = dir.join("postmaster.pid");
    if std::fs::symlink_metadata(&pid).is_ok() {
        return Err(fail(
            Kind::TargetExists,
            format!(
                "{} exists: a PostgreSQL server may be running on {}; stop it (pg_ctl -D {} stop) before restoring over it, even with --force",
                pid.display(),
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Runs `pg_verifybackup` on a restored data directory (of the version its `PG_VERSION`
/// names, when installed); its verdict.
pub fn verify_data_dir(dir: &Path) -> Result<String> {
    let version = std::fs::read_to_string(dir.join("PG_VERSION")).map_err(|e| {
        fail(
            Kind::Damaged,
            format!("the restored tree is not a PostgreSQL data directory (no PG_VERSION: {e}); restore a backup made with postgres:CONNINFO, or use dir:DIR"),
        )
    })?;
    let exe = find_pg_program("pg_verifybackup", Some(&version))?;
    let out = std::process::Command::new(&exe)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(Kind::Other, format!("running {}: {e}", exe.display())))?;
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if out.status.success() {
        let s = said(&out.stdout);
        return Ok(format!(
            "pg_verifybackup: {}",
            if s.is_empty() { "ok" } else { s.as_str() }
        ));
    }
    let mut words = said(&out.stderr);
    if words.is_empty() {
        words = said(&out.stdout);
    }
    let words: Vec<&str> = words
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(fail(
        Kind::Damaged,
        format!(
            "pg_verifybackup {} on the restored data directory: {}; nothing was put in place",
            describe_status(out.status),
            words.join(" | ")
        ),
    ))
}

fn pg_check() -> TreeCheck {
    Box::new(|dir: &Path, summary: &untar::Summary| {
        // The data directory itself: its owner's (as root, the owner of its files), and
        // private, as the server requires.
        if rustix::process::geteuid().is_root()
            && let Some((uid, gid)) = summary.owner_of
        {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| {
                fail(
                    Kind::Other,
                    format!("giving {} its owner: {e}", dir.display()),
                )
            })?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            fail(
                Kind::Other,
                format!("making {} private: {e}", dir.display()),
            )
        })?;
        verify_data_dir(dir).map(Some)
    })
}

fn not_a_source() -> crate::Error {
    fail(
        Kind::Usage,
        "postgres-data: is a restore target; back up a running server with postgres:CONNINFO (a stopped data directory can be backed up with dir:DIR)",
    )
}

impl Scheme for PostgresData {
    fn prefix(&self) -> &'static str {
        "postgres-data:"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }
    fn probe(&self, _rest: &str) -> Result<Option<u64>> {
        Err(not_a_source())
    }
    fn open_source(&self, _rest: &str) -> Result<Box<dyn Source>> {
        Err(not_a_source())
    }
    fn check_target(&self, rest: &str, force: bool) -> Result<()> {
        let p = Path::new(rest);
        check_not_running(p)?;
        check_tree_target(p, force, "")?;
        find_pg_program("pg_verifybackup", None)?;
        Ok(())
    }
    fn open_target(&self, rest: &str, opts: TargetOptions) -> Result<Box<dyn Target>> {
        self.check_target(rest, opts.force)?;
        Ok(Box::new(TreeTarget::open(
            Path::new(rest),
            opts,
            untar::Options {
                owner_of: Some("PG_VERSION".into()),
            },
            Some(pg_check()),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_the_conninfo() {
        assert!(check_conninfo("host=/run/postgresql user=backup").is_ok());
        assert!(check_conninfo("postgresql://backup@db:5432/postgres").is_ok());
        assert!(check_conninfo("postgresql://backup:secret@db/postgres").is_err());
        assert!(check_conninfo("host=db PASSWORD=secret").is_err());
        assert!(check_conninfo("host=db password = secret").is_err());
    }

    #[test]
    fn advice_follows_what_postgres_said() {
        let a = advise("FATAL:  must be superuser or replication role to start walsender");
        assert!(a.unwrap().contains("ALTER ROLE"));
        assert!(
            advise("connection to server at \"127.0.0.1\", port 1 failed: Connection refused")
                .is_some()
        );
        assert!(advise("something else").is_none());
    }
}
