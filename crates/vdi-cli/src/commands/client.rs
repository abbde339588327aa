//! `vdi client backup|restore`: the backup application (the client role) alone, for an
//! engine started by hand (possibly by another user).

use serde_json::json;
use vdi_backup::Result;
use vdi_backup::client::{self, BackupPlan};
use vdi_backup::fault::{Injector, Role, only_role};
use vdi_backup::format::manifest::SourceInfo;
use vdi_backup::units::human_bytes;

use super::wait_opt;
use crate::cli::{ClientBackupArgs, ClientRestoreArgs};
use crate::output;
use crate::progress::Mode;

pub(super) fn backup(a: &ClientBackupArgs) -> Result<()> {
    if a.dest == "-" {
        crate::output::refuse_binary_on_terminal("vdi client backup --set NAME - > FILE")?;
    }
    only_role(&a.inject.faults, Role::Client, "client backup")?;
    let inject = std::sync::Arc::new(Injector::new(Role::Client, &a.inject.faults));
    // A repository gets a new backup under a new id; anything else one plain backup.
    let secret = a.key.for_backup(a.encrypt)?;
    let dest = vdi_backup::repo::Dest::locate(&a.dest, a.mode)?;
    let plan = BackupPlan {
        secret,
        inject: inject.clone(),
        set: a.set.clone(),
        devices: a.devices,
        compression: a.compress,
        store: dest.store(),
        force: a.force,
        source: SourceInfo {
            kind: "unknown".into(),
            name: format!("an engine on set {}", a.set),
            bytes: None,
            checked: false,
            mode: None,
        },
        display: std::sync::Arc::new(Mode::pick(a.output.quiet || a.output.json)),
        wait: wait_opt(a.wait),
        hint: Some(format!(
            "start it with: vdi engine backup --set {} SOURCE",
            a.set
        )),
        allow_group: a.allow_group,
        stall: a.stall.limit(),
    };
    let prep = client::prepare_backup(plan)?;
    let served = client::serve_backup(prep, &|| Ok(()), None).map_err(|e| e.into_error())?;
    let done = client::commit_backup(served)?;
    let repo_id = match dest {
        vdi_backup::repo::Dest::Repo(rb) => {
            let id = rb.id.clone();
            rb.record(&done.manifest)?;
            Some(id)
        }
        vdi_backup::repo::Dest::Plain(_) => None,
    };
    inject.warn_unfired();
    done.report_commit(a.output.quiet || a.output.json);
    let m = &done.manifest;
    if a.output.json {
        output::print_json(
            &json!({
                "command": "client backup",
                "ok": true,
                "backup_id": m.backup_id,
                "stream_id": m.stream_id,
                "set": m.set_name,
                "dest": a.dest,
                "devices": m.device_count,
                "compression": m.compression.label(),
                "encrypted": m.encryption.is_some(),
                "stream_bytes": m.total_stream_bytes,
                "stored_bytes": m.total_stored_bytes,
                "seconds": done.elapsed.as_secs_f64(),
                "streams": m.streams,
                "device_metrics": done.devices,
                "repository_id": repo_id,
            }),
            a.dest == "-",
        );
    } else if !a.output.quiet {
        tracing::info!(
            "stored the backup of set '{}' in {}: {} device(s), {} stream bytes, {} stored; completed with VDC_Complete",
            m.set_name,
            a.dest,
            m.device_count,
            human_bytes(m.total_stream_bytes),
            human_bytes(m.total_stored_bytes)
        );
    }
    Ok(())
}

pub(super) fn restore(a: &ClientRestoreArgs) -> Result<()> {
    only_role(&a.inject.faults, Role::Client, "client restore")?;
    let inject = std::sync::Arc::new(Injector::new(Role::Client, &a.inject.faults));
    // BACKUP may name a repository (its latest backup), REPO:ID, or one backup.
    let located = vdi_backup::repo::locate_backup(&a.backup)?;
    let secret = a.key.secret()?;
    let opened = client::open_backup_with(located.store.as_ref(), a.devices, secret.as_deref())?;
    let label = format!(
        "serve {} through {}",
        a.backup,
        vdi_backup::util::devices(opened.devices())
    );
    let prep = client::prepare_restore(
        client::RestorePlan {
            set: a.set.clone(),
            display: std::sync::Arc::new(Mode::pick(a.output.quiet || a.output.json)),
            wait: wait_opt(a.wait),
            hint: Some(format!(
                "start it with: vdi engine restore --set {} TARGET",
                a.set
            )),
            label,
            allow_group: a.allow_group,
            inject: inject.clone(),
            stall: a.stall.limit(),
        },
        opened,
    )?;
    let served = client::serve_restore(prep, &|| Ok(()), None).map_err(|e| e.into_error())?;
    inject.warn_unfired();
    let bytes: u64 = served.stream_bytes.iter().sum();
    if a.output.json {
        output::print_json(
            &json!({
                "command": "client restore",
                "ok": true,
                "set": a.set,
                "backup": a.backup,
                "devices": served.stream_bytes.len(),
                "stream_bytes": bytes,
                "seconds": served.elapsed.as_secs_f64(),
                "device_metrics": served.devices,
            }),
            false,
        );
    } else if !a.output.quiet {
        tracing::info!(
            "served {} ({}) to the engine through {} device(s); every stream matched its digest",
            a.backup,
            human_bytes(bytes),
            served.stream_bytes.len()
        );
    }
    Ok(())
}
