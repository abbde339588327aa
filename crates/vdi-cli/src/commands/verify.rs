//! `vdi verify`: checks a backup without restoring it.

use serde_json::json;
use vdi_backup::error::{Kind, fail};
use vdi_backup::format::manifest::BackupError;
use vdi_backup::units::human_bytes;
use vdi_backup::{Result, cancel, source, verify};

use crate::cli::{KeyArgs, OutputArgs};
use crate::output;

/// Verifies the backup `target` (a directory, or `-` for a stream on standard input).
pub(super) fn run(target: &str, key: &KeyArgs, out: OutputArgs) -> Result<()> {
    key.refuse_stdin(target == "-")?;
    let secret = key.secret()?;
    // Nothing to clean up: the first signal stops a verify at once.
    let _stop = cancel::on_interrupt(|| {
        crate::eprint_line(format_args!(
            "error: {}: verify stopped before the end",
            cancel::what()
        ));
        std::process::exit(i32::from(Kind::Interrupted.exit_code()));
    });
    let report = if target == "-" {
        let media: Box<dyn std::io::Read + Send> = Box::new(
            source::PolledStdin::open().map_err(|e| fail(Kind::Usage, format!("backup -: {e}")))?,
        );
        let mut r = verify::VerifyReport::default();
        match verify::check_stream(media, None, None) {
            Ok(c) => {
                r.stream_bytes = c.stream_bytes;
                r.chunks = c.chunks;
                if let Some(p) = c.problem {
                    r.problems.push(format!("standard input: {p}"));
                }
                if let Some(d) = c.stream {
                    match vdi_backup::format::stream::check_set(std::slice::from_ref(&d)) {
                        Ok(s) => r.source_bytes = Some(s.total_bytes),
                        Err(e) => r
                            .problems
                            .push(format!("the stream is not a whole backup: {e}")),
                    }
                }
            }
            Err(p) => r.problems.push(format!("standard input: {p}")),
        }
        r
    } else {
        // A backup directory, a repository (its latest backup) or REPO:ID.
        let located = vdi_backup::repo::locate_backup(target)?;
        verify::verify_with(located.store.as_ref(), secret.as_deref()).map_err(|e| match &e {
            BackupError::Unreadable { .. } => fail(Kind::Input, e.to_string()),
            BackupError::Key(_) => fail(Kind::Usage, e.to_string()),
            _ => fail(
                Kind::Damaged,
                format!("backup {target} is not complete: {e}"),
            ),
        })?
    };
    if out.json {
        output::print_json(
            &json!({
                "command": "verify",
                "ok": report.ok(),
                "backup": target,
                "backup_id": report.manifest.as_ref().map(|m| m.backup_id.clone()),
                "devices": report.manifest.as_ref().map_or(1, |m| m.device_count),
                "source_bytes": report.source_bytes,
                "stream_bytes": report.stream_bytes,
                "chunks": report.chunks,
                "source_checked": report.manifest.as_ref().map(|m| m.source.checked),
                "problems": report.problems,
            }),
            false,
        );
    }
    if !report.ok() {
        let list: Vec<String> = report.problems.iter().map(|p| format!("  - {p}")).collect();
        return Err(fail(
            Kind::Damaged,
            format!("backup {target} is damaged:\n{}", list.join("\n")),
        ));
    }
    if !out.json && !out.quiet {
        let (devices, id) = report.manifest.as_ref().map_or((1, String::new()), |m| {
            (m.device_count, format!(" (backup id {})", m.backup_id))
        });
        tracing::info!(
            "backup {target} is complete and intact: {devices} stream(s), {} of source in {} chunks; every chunk checksum{} matches{id}",
            human_bytes(report.source_bytes.unwrap_or(0)),
            report.chunks,
            if report.manifest.is_some() {
                ", stream digest and size"
            } else {
                ""
            }
        );
        if report.manifest.as_ref().is_some_and(|m| !m.source.checked) {
            tracing::warn!(
                "its source ({}) was an unchecked stream: the backup holds everything that arrived, which is all that was sent only if the program writing it finished (vdi could not tell)",
                report
                    .manifest
                    .as_ref()
                    .map_or("-", |m| m.source.name.as_str())
            );
        }
    }
    Ok(())
}
