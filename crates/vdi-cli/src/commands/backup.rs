//! `vdi backup SOURCE DEST`: the backup application here, the engine in another process.

use serde_json::json;
use vdi_backup::Result;
use vdi_backup::units::{bytes_per_sec, human_bytes, human_rate};

use crate::cli::BackupArgs;
use crate::output::print_json;
use crate::progress::Mode;
use crate::spawn::{self, BackupOutcome};

pub(super) fn run(a: &BackupArgs) -> Result<()> {
    let dest = crate::config::repository(a.dest.as_deref()).ok_or_else(|| {
        vdi_backup::fail(
            vdi_backup::Kind::Usage,
            "name DEST (a repository, a directory or -), or set repository = \"PATH\" in the configuration file (vdi config) or VDI_REPOSITORY",
        )
    })?;
    if dest == "-" {
        crate::output::refuse_binary_on_terminal("vdi backup SOURCE - > FILE")?;
    }
    a.key.refuse_stdin(a.source == "-")?;
    let secret = a.key.for_backup(a.encrypt)?;
    let o = spawn::backup(&spawn::BackupRequest {
        secret,
        source: &a.source,
        dest: &dest,
        devices: a.devices,
        compression: a.compress,
        set: a.set.clone(),
        force: a.force,
        modes: a.mode,
        stall: a.stall.limit(),
        knobs: &a.engine,
        display: std::sync::Arc::new(Mode::pick(a.output.quiet || a.output.json)),
        faults: &a.inject.faults,
    })?;
    report_backup(&o, a.output.json, a.output.quiet);
    Ok(())
}

/// Reports a finished backup.
fn report_backup(o: &BackupOutcome, json: bool, quiet: bool) {
    o.done.report_commit(quiet || json);
    let m = &o.done.manifest;
    let secs = o.total.as_secs_f64();
    let to_stdout = o.dest == "-";
    let dest = &o.dest;
    if json {
        print_json(
            &json!({
                "command": "backup",
                "ok": true,
                "backup_id": m.backup_id,
                "stream_id": m.stream_id,
                "set": m.set_name,
                "source": m.source.name,
                "dest": dest,
                "devices": m.device_count,
                "compression": m.compression.label(),
                "encrypted": m.encryption.is_some(),
                "source_bytes": o.engine.source_bytes,
                "stream_bytes": m.total_stream_bytes,
                "stored_bytes": m.total_stored_bytes,
                "chunks": o.engine.chunks,
                "seconds": secs,
                "transfer_seconds": o.done.elapsed.as_secs_f64(),
                "snapshot_seconds": o.engine.snapshot_seconds,
                "bytes_per_second": bytes_per_sec(o.engine.source_bytes, o.total),
                "engine_pid": o.engine.pid,
                "replaced": o.done.commit.replaced,
                "repository_id": o.repo_id,
                "streams": m.streams,
                "device_metrics": o.done.devices,
            }),
            to_stdout,
        );
    } else if !quiet {
        let dest = match &o.repo_id {
            Some(id) => format!("repository {dest} as {id}"),
            None => dest.clone(),
        };
        tracing::info!(
            "backed up {} ({}) to {dest} through {} in {secs:.2} s ({}); stored {} ({}{}); backup id {}",
            m.source.name,
            human_bytes(o.engine.source_bytes),
            vdi_backup::util::devices(m.device_count),
            human_rate(o.engine.source_bytes, o.total),
            human_bytes(m.total_stored_bytes),
            m.compression.label(),
            if m.encryption.is_some() {
                ", encrypted"
            } else {
                ""
            },
            m.backup_id
        );
    }
}
