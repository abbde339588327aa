//! The repository commands: `vdi init REPO`, `vdi list REPO`, `vdi info REPO[/ID]`,
//! `vdi expire REPO --keep-...`.

use std::sync::Arc;

use serde_json::{Value, json};
use vdi_backup::error::{Kind, fail};
use vdi_backup::repo::time::format_utc;
use vdi_backup::repo::{self, Entry, Location, Policy, Repo, State};
use vdi_backup::units::human_bytes;
use vdi_backup::{Result, store};

use crate::cli::{ExpireArgs, InfoArgs, InitArgs, ListArgs};
use crate::config;
use crate::output::print_json;

/// The repository a command names, or the configured one.
fn repo_arg(given: Option<&str>) -> Result<String> {
    config::repository(given).ok_or_else(|| {
        fail(
            Kind::Usage,
            "name the repository (vdi list REPO), or set one: repository = \"PATH\" in the configuration file (vdi config shows where it is read from) or VDI_REPOSITORY",
        )
    })
}

/// Opens `path` as a repository (or a plain backup read as one).
fn open(path: &str) -> Result<Repo> {
    repo::open_path(path, store::dir::Modes::DEFAULT)?.ok_or_else(|| {
        let p = std::path::Path::new(path);
        let why = if path.starts_with("s3://") {
            "it holds no vdi-repository.json".to_owned()
        } else if !p.exists() {
            "it does not exist".to_owned()
        } else if !p.is_dir() {
            "it is not a directory".to_owned()
        } else {
            "it holds neither a repository (vdi-repository.json) nor a backup (manifest.json)"
                .to_owned()
        };
        fail(
            Kind::Input,
            format!("{path} is not a vdi repository: {why}; make one with vdi init {path}"),
        )
    })
}

pub(super) fn init(a: &InitArgs) -> Result<()> {
    let path = repo_arg(a.repo.as_deref())?;
    let loc: Arc<dyn Location> = repo::location(&path, a.mode)?;
    Repo::init(loc)?;
    if a.output.json {
        print_json(
            &json!({"command": "init", "ok": true, "repository": path}),
            false,
        );
    } else if !a.output.quiet {
        tracing::info!(
            "made repository {path}: back up into it with vdi backup SOURCE {path}, see its backups with vdi list {path}"
        );
    }
    Ok(())
}

fn size(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), human_bytes)
}

fn entry_json(e: &Entry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert(
            "started_utc".into(),
            json!(vdi_backup::repo::time::rfc3339(e.started)),
        );
    }
    v
}

/// Cuts `s` to its last `n` characters (with `…` first): the end of a path names it best.
fn cut_left(s: &str, n: usize) -> String {
    let len = s.chars().count();
    if len <= n {
        s.to_owned()
    } else {
        std::iter::once('…')
            .chain(s.chars().skip(len - n + 1))
            .collect()
    }
}

/// Cuts `s` to `n` characters (with `…`).
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub(super) fn list(a: &ListArgs) -> Result<()> {
    let path = repo_arg(a.repo.as_deref())?;
    let r = open(&path)?;
    let l = r.entries()?;
    for n in &l.notes {
        tracing::warn!("{n}");
    }
    if l.rebuilt && !a.output.quiet {
        tracing::info!("the catalog of {path} was missing or damaged: rebuilt from the manifests");
    }
    if a.output.json {
        print_json(
            &json!({
                "command": "list",
                "ok": true,
                "repository": path,
                "plain_backup": r.location().is_plain(),
                "catalog_rebuilt": l.rebuilt,
                "backups": l.entries.iter().map(entry_json).collect::<Vec<_>>(),
            }),
            false,
        );
        return Ok(());
    }
    if l.entries.is_empty() {
        crate::print_line(format_args!(
            "{path} holds no backup yet: vdi backup SOURCE {path}"
        ));
        return Ok(());
    }
    crate::print_line(format_args!(
        "{:<21}  {:<19}  {:<15}  {:>3}  {:>9}  {:>9}  {:<7}  {:<4}  {:>5}  {}",
        "ID",
        "STARTED (UTC)",
        "SOURCE",
        "DEV",
        "ORIGINAL",
        "STORED",
        "COMPR",
        "KEY",
        "TIME",
        "STATE"
    ));
    for e in &l.entries {
        crate::print_line(format_args!(
            "{:<21}  {:<19}  {:<15}  {:>3}  {:>9}  {:>9}  {:<7}  {:<4}  {:>5}  {}",
            e.id,
            format_utc(e.started),
            cut_left(e.source.as_deref().unwrap_or("-"), 15),
            e.devices.map_or_else(|| "-".into(), |d| d.to_string()),
            size(e.original_bytes.or(e.stream_bytes)),
            size(e.stored_bytes),
            cut(e.compression.as_deref().unwrap_or("-"), 7),
            // An encrypted backup: what unlocks it (`file`: --key-file, `pass`: a
            // passphrase).
            match e.encryption.as_deref() {
                Some("key file") => "file",
                Some(_) => "pass",
                None => "-",
            },
            e.duration_seconds
                .map_or_else(|| "-".into(), |s| format!("{s}s")),
            e.state.word(),
        ));
    }
    let complete = l
        .entries
        .iter()
        .filter(|e| e.state == State::Complete)
        .count();
    let stored: u64 = l.entries.iter().filter_map(|e| e.stored_bytes).sum();
    crate::print_line(format_args!(
        "{} backup(s), {complete} complete, {} stored",
        l.entries.len(),
        human_bytes(stored)
    ));
    Ok(())
}

pub(super) fn info(a: &InfoArgs) -> Result<()> {
    let name = repo_arg(a.what.as_deref())?;
    // REPO, REPO:ID, REPO/ID (a backup directory in a repository) or a plain backup.
    let p = std::path::Path::new(&name);
    let in_parent = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.display().to_string())
        .filter(|d| repo::is_repository(d))
        .zip(p.file_name().map(|f| f.to_string_lossy().into_owned()));
    if repo::is_repository(&name) && !name.contains(':') {
        return repo_info(&name, a);
    }
    let (r, e) = if let Some((dir, id)) = in_parent {
        let r = open(&dir)?;
        let e = r.resolve(&id)?;
        (r, e)
    } else {
        let located = repo::locate_backup(&name)?;
        match located.in_repo {
            Some(x) => x,
            None => {
                let r = open(&name)?;
                let e = r.resolve("latest")?;
                (r, e)
            }
        }
    };
    let opened = store::open_backup(r.store(&e.id).as_ref())
        .map_err(|err| fail(Kind::Damaged, format!("cannot read backup {}: {err}", e.id)))?;
    let m = &opened.manifest;
    if a.output.json {
        print_json(
            &json!({
                "command": "info",
                "ok": true,
                "backup": r.location().place(&e.id),
                "entry": entry_json(&e),
                "manifest": m,
            }),
            false,
        );
        return Ok(());
    }
    let line = |k: &str, v: String| crate::print_line(format_args!("{k:<14} {v}"));
    line("backup", r.location().place(&e.id));
    line("id", e.id.clone());
    line("backup id", m.backup_id.clone());
    line("state", e.state.word().into());
    line(
        "source",
        format!(
            "{} ({}{})",
            m.source.name,
            m.source.kind,
            if m.source.checked {
                ""
            } else {
                ", unchecked stream"
            }
        ),
    );
    line("original", size(m.source.bytes));
    line("streamed", human_bytes(m.total_stream_bytes));
    line("stored", human_bytes(m.total_stored_bytes));
    line("compression", m.compression.label());
    line(
        "encryption",
        m.encryption.as_ref().map_or_else(
            || "none".to_owned(),
            |e| format!("{} (key: {})", e.algorithm, e.key.kind()),
        ),
    );
    line(
        "devices",
        format!(
            "{} (block size {}, max transfer {})",
            m.device_count,
            m.block_size,
            human_bytes(u64::from(m.max_transfer_size))
        ),
    );
    line("started", format!("{} UTC", format_utc(m.started)));
    line(
        "completed",
        format!(
            "{} UTC ({} s)",
            format_utc(m.completed),
            m.completed.saturating_sub(m.started)
        ),
    );
    line("host", m.host.clone().unwrap_or_else(|| "-".into()));
    line("tool", m.tool.clone());
    line("set", m.set_name.clone());
    for s in &m.streams {
        line(
            &format!("device {}", s.device),
            format!(
                "{} ({} streamed, {} stored, blake3 {})",
                s.file,
                human_bytes(s.stream_bytes),
                human_bytes(s.stored_bytes),
                cut(&s.blake3, 16)
            ),
        );
    }
    Ok(())
}

fn repo_info(path: &str, a: &InfoArgs) -> Result<()> {
    let r = open(path)?;
    let l = r.entries()?;
    let count = |s: State| l.entries.iter().filter(|e| e.state == s).count();
    let stored: u64 = l.entries.iter().filter_map(|e| e.stored_bytes).sum();
    let original: u64 = l.entries.iter().filter_map(|e| e.original_bytes).sum();
    let first = l.entries.iter().find(|e| e.state == State::Complete);
    let latest = l.latest();
    if a.output.json {
        print_json(
            &json!({
                "command": "info",
                "ok": true,
                "repository": path,
                "backups": l.entries.len(),
                "complete": count(State::Complete),
                "running": count(State::Running),
                "incomplete": count(State::Incomplete),
                "stored_bytes": stored,
                "original_bytes": original,
                "oldest": first.map(|e| e.id.clone()),
                "latest": latest.map(|e| e.id.clone()),
                "catalog_rebuilt": l.rebuilt,
            }),
            false,
        );
        return Ok(());
    }
    let line = |k: &str, v: String| crate::print_line(format_args!("{k:<14} {v}"));
    line("repository", path.to_owned());
    line(
        "backups",
        format!(
            "{} ({} complete, {} running, {} incomplete)",
            l.entries.len(),
            count(State::Complete),
            count(State::Running),
            count(State::Incomplete)
        ),
    );
    line(
        "stored",
        format!(
            "{} (of {} original)",
            human_bytes(stored),
            human_bytes(original)
        ),
    );
    let at = |e: Option<&Entry>| {
        e.map_or_else(
            || "-".into(),
            |e| format!("{} ({} UTC)", e.id, format_utc(e.started)),
        )
    };
    line("oldest", at(first));
    line("latest", at(latest));
    Ok(())
}

pub(super) fn expire(a: &ExpireArgs) -> Result<()> {
    let path = repo_arg(a.repo.as_deref())?;
    let r = open(&path)?;
    let policy = Policy {
        keep_last: a.keep_last.or(config::get().expire.keep_last),
        keep_daily: a.keep_daily.or(config::get().expire.keep_daily),
        keep_within: a
            .keep_within
            .or(config::get().expire.keep_within)
            .map(|d| d.as_secs()),
    };
    let x = r.expire(&policy, a.dry_run, a.force)?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    let removed: Vec<&repo::Decision> = x.decisions.iter().filter(|d| !d.keep).collect();
    let failed: Vec<&repo::Decision> = removed
        .iter()
        .copied()
        .filter(|d| d.error.is_some())
        .collect();
    if a.output.json {
        print_json(
            &json!({
                "command": "expire",
                "ok": failed.is_empty(),
                "repository": path,
                "dry_run": a.dry_run,
                "kept": x.decisions.iter().filter(|d| d.keep).map(|d| json!({"id": d.entry.id, "reasons": d.reasons})).collect::<Vec<_>>(),
                "removed": removed.iter().map(|d| json!({"id": d.entry.id, "state": d.entry.state, "objects": d.removed, "error": d.error})).collect::<Vec<_>>(),
            }),
            false,
        );
    } else if !a.output.quiet {
        for d in &x.decisions {
            let what = format!(
                "{} ({}, {} UTC, {})",
                d.entry.id,
                d.entry.source.as_deref().unwrap_or(d.entry.state.word()),
                format_utc(d.entry.started),
                size(d.entry.stored_bytes)
            );
            if d.keep {
                crate::print_line(format_args!("keep    {what}: {}", d.reasons.join(", ")));
            } else if let Some(err) = &d.error {
                crate::print_line(format_args!("FAILED  {what}: {err}"));
            } else {
                let why = if d.entry.state == State::Incomplete {
                    "an incomplete backup"
                } else {
                    "kept by no rule"
                };
                crate::print_line(format_args!(
                    "{}  {what}: {why}{}",
                    if a.dry_run { "would remove" } else { "remove" },
                    if d.removed.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} object(s))", d.removed.len())
                    }
                ));
            }
        }
        let kept = x.decisions.len() - removed.len();
        crate::print_line(format_args!(
            "{verb} {} backup(s), kept {kept}{}",
            removed.len() - failed.len(),
            if a.dry_run {
                " (dry run: nothing was removed)"
            } else {
                ""
            }
        ));
    }
    if let Some(d) = failed.first() {
        return Err(fail(
            Kind::Other,
            format!(
                "{} backup(s) could not be removed; the first, {}: {}",
                failed.len(),
                d.entry.id,
                d.error.as_deref().unwrap_or("")
            ),
        ));
    }
    Ok(())
}
