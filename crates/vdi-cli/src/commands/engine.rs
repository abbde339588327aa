//! `vdi engine backup|restore`: the reference engine (the server role), started by hand
//! or by `vdi backup`/`vdi restore`.

use vdi_backup::Result;
use vdi_backup::engine::{self, REPORT_PREFIX};
use vdi_backup::fault::{Role, only_role};
use vdi_backup::source::Spec;
use vdi_backup::units::human_bytes;

use super::engine_cfg;
use crate::cli::{EngineBackupArgs, EngineRestoreArgs, OutputArgs};
use crate::output;

pub(super) fn backup(a: &EngineBackupArgs) -> Result<()> {
    only_role(&a.session.inject.faults, Role::Engine, "engine backup")?;
    let spec = Spec::parse(&a.source)?;
    let r = engine::backup(&engine_cfg(&a.session, &a.engine), &spec)?;
    engine_done(&r, a.session.report, a.output, false);
    Ok(())
}

pub(super) fn restore(a: &EngineRestoreArgs) -> Result<()> {
    only_role(&a.session.inject.faults, Role::Engine, "engine restore")?;
    let spec = Spec::parse(&a.target)?;
    if a.target == "-" {
        crate::output::refuse_binary_on_terminal("vdi engine restore --set NAME - > FILE")?;
    }
    if a.force && a.session.parent_pid.is_none() {
        crate::spawn::refuse_open_database(&spec)?;
    }
    let r = engine::restore(
        &engine_cfg(&a.session, &a.engine),
        &spec,
        a.force,
        a.integrity_check,
    )?;
    engine_done(&r, a.session.report, a.output, a.target == "-");
    Ok(())
}

fn engine_done(r: &engine::EngineReport, report: bool, out: OutputArgs, data_on_stdout: bool) {
    if report {
        crate::eprint_line(format_args!(
            "{REPORT_PREFIX}{}",
            serde_json::to_string(r).unwrap_or_default()
        ));
    } else if out.json {
        output::print_json(&serde_json::to_value(r).unwrap_or_default(), data_on_stdout);
    } else if !out.quiet {
        for f in &r.unfired {
            tracing::warn!("injected fault {f}");
        }
        tracing::info!(
            "engine {}: {} in {} chunks through {} device(s) in {:.2} s; stream id {}",
            r.op,
            human_bytes(r.source_bytes),
            r.chunks,
            r.devices,
            r.seconds,
            r.stream_id.as_deref().unwrap_or("-")
        );
    }
}
