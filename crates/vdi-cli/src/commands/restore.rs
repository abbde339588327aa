//! `vdi restore BACKUP TARGET`: the backup application serves the backup here, the
//! engine restores it in another process.

use serde_json::json;
use vdi_backup::Result;
use vdi_backup::units::{bytes_per_sec, human_bytes, human_rate};

use crate::cli::RestoreArgs;
use crate::output::print_json;
use crate::progress::Mode;
use crate::spawn::{self, RestoreOutcome};

pub(super) fn run(a: &RestoreArgs) -> Result<()> {
    if a.target == "-" {
        crate::output::refuse_binary_on_terminal("vdi restore BACKUP - > FILE")?;
    }
    a.key.refuse_stdin(a.backup == "-")?;
    let secret = a.key.secret()?;
    let o = spawn::restore(&spawn::RestoreRequest {
        secret,
        backup: &a.backup,
        target: &a.target,
        devices: a.devices,
        set: a.set.clone(),
        force: a.force,
        integrity_check: a.integrity_check,
        stall: a.stall.limit(),
        knobs: &a.engine,
        display: std::sync::Arc::new(Mode::pick(a.output.quiet || a.output.json)),
        faults: &a.inject.faults,
    })?;
    report_restore(&o, a.output.json, a.output.quiet);
    Ok(())
}

/// Reports a finished restore.
fn report_restore(o: &RestoreOutcome, json: bool, quiet: bool) {
    let secs = o.total.as_secs_f64();
    let to_stdout = o.target == "-";
    if json {
        print_json(
            &json!({
                "command": "restore",
                "ok": true,
                "backup_id": o.served.manifest.as_ref().map(|m| m.backup_id.clone()),
                "stream_id": o.engine.stream_id,
                "target": o.target,
                "devices": o.engine.devices,
                "bytes": o.engine.source_bytes,
                "stream_bytes": o.served.stream_bytes.iter().sum::<u64>(),
                "chunks": o.engine.chunks,
                "integrity_check": o.engine.integrity_check,
                "seconds": secs,
                "transfer_seconds": o.served.elapsed.as_secs_f64(),
                "bytes_per_second": bytes_per_sec(o.engine.source_bytes, o.total),
                "engine_pid": o.engine.pid,
                "device_metrics": o.served.devices,
            }),
            to_stdout,
        );
    } else if !quiet {
        let check = o
            .engine
            .integrity_check
            .as_ref()
            // A database's PRAGMA says "ok"; another check names itself (pg_verifybackup).
            .map(|v| {
                if v == "ok" {
                    format!("; PRAGMA integrity_check: {v}")
                } else {
                    format!("; {v}")
                }
            })
            .unwrap_or_default();
        tracing::info!(
            "restored {} ({}) through {} in {secs:.2} s ({}){check}",
            o.target,
            human_bytes(o.engine.source_bytes),
            vdi_backup::util::devices(o.engine.devices),
            human_rate(o.engine.source_bytes, o.total),
        );
    }
}
