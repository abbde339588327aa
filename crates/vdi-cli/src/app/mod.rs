//! The commands.

pub mod cli;
pub mod client;
pub mod demo;
pub mod engine;
pub mod fail;
pub mod inject;
pub mod interrupt;
pub mod progress;
pub mod run;
pub mod soak;
pub mod source;
pub mod vdiutil;
pub mod watchdog;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use vdi_cli::backup::{self, SourceInfo};
use vdi_cli::units::human_bytes;

use cli::{Cli, ClientCmd, Cmd, EngineCmd, EngineKnobs, EngineSession, OutputArgs};
use client::{BackupPlan, BackupSrc, Dest};
use engine::{EngineCfg, REPORT_PREFIX};
use fail::{Kind, fail, kind_of};
use inject::{Injector, Role, only_role};
use progress::Mode;
use source::Spec;

/// Log lines as `vdi: message` (`vdi: warning: ...` for warnings).
struct LineFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        write!(writer, "vdi: ")?;
        if level == tracing::Level::WARN {
            write!(writer, "warning: ")?;
        } else if level == tracing::Level::ERROR {
            write!(writer, "error: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Writes a line on standard error, and never panics doing it (unlike `eprintln!`): an
/// engine's standard error is a pipe to the `vdi backup`/`vdi restore` that started it,
/// and once that process is killed every write fails with EPIPE (Rust programs ignore
/// SIGPIPE). A last word nobody can read is dropped; the exit code still tells the outcome.
pub fn eprint_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Writes a line on standard output, and never panics doing it (a reader that went away,
/// as in `vdi backup --json ... | true`).
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

fn init_logging(quiet: bool) {
    let level = if quiet {
        tracing::Level::ERROR
    } else {
        tracing::Level::INFO
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        // A failed write (a standard error nobody reads any more) is dropped; the
        // default reports it with `eprintln!`, which panics on the same broken pipe.
        .log_internal_errors(false)
        .event_format(LineFormat)
        .try_init();
}

fn output_of(cmd: &Cmd) -> OutputArgs {
    match cmd {
        Cmd::Backup(a) => a.output,
        Cmd::Restore(a) => a.output,
        Cmd::Verify(a) => a.output,
        Cmd::Client(ClientCmd::Backup(a)) => a.output,
        Cmd::Client(ClientCmd::Restore(a)) => a.output,
        Cmd::Engine(EngineCmd::Backup(a)) => a.output,
        Cmd::Engine(EngineCmd::Restore(a)) => a.output,
        Cmd::Demo(a) => a.output,
        Cmd::Soak(a) => a.output,
    }
}

/// Runs a command; prints its error and returns its exit code.
pub fn main(cli: Cli) -> ExitCode {
    source::note_closed_standard_streams();
    let out = output_of(&cli.cmd);
    init_logging(out.quiet);
    interrupt::install();
    let name = match &cli.cmd {
        Cmd::Backup(_) => "backup",
        Cmd::Restore(_) => "restore",
        Cmd::Verify(_) => "verify",
        Cmd::Client(ClientCmd::Backup(_)) => "client backup",
        Cmd::Client(ClientCmd::Restore(_)) => "client restore",
        Cmd::Engine(EngineCmd::Backup(_)) => "engine backup",
        Cmd::Engine(EngineCmd::Restore(_)) => "engine restore",
        Cmd::Demo(_) => "demo",
        Cmd::Soak(_) => "soak",
    };
    let data_on_stdout = match &cli.cmd {
        Cmd::Backup(a) => a.dest == "-",
        Cmd::Restore(a) => a.target == "-",
        Cmd::Client(ClientCmd::Backup(a)) => a.dest == "-",
        Cmd::Engine(EngineCmd::Restore(a)) => a.target == "-",
        _ => false,
    };
    let session = match &cli.cmd {
        Cmd::Engine(EngineCmd::Backup(a)) => Some(&a.session),
        Cmd::Engine(EngineCmd::Restore(a)) => Some(&a.session),
        _ => None,
    };
    let engine_report = session.is_some_and(|s| s.report);
    let parent = session.and_then(|s| s.parent_pid);
    // An engine started by `vdi backup`/`vdi restore` removes the scratch directory it
    // was given whenever it ends (its parent removes it too, if the engine is the one
    // killed): whichever survives cleans up.
    let _scratch = parent.and_then(|_| source::EngineScratch::from_env());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = kind_of(&e);
            if engine_report {
                let r = engine::failed_report(name.trim_start_matches("engine "), &e);
                eprint_line(format_args!(
                    "{REPORT_PREFIX}{}",
                    serde_json::to_string(&r).unwrap_or_default()
                ));
            } else {
                eprint_line(format_args!("error: {e:#}"));
                if out.json {
                    run::print_json(
                        &json!({
                            "command": name,
                            "ok": false,
                            "error": format!("{e:#}"),
                            "kind": kind.name(),
                            "exit_code": kind.exit_code(),
                        }),
                        data_on_stdout,
                    );
                }
            }
            ExitCode::from(kind.exit_code())
        }
    }
}

fn engine_cfg(s: &EngineSession, k: &EngineKnobs) -> EngineCfg {
    EngineCfg {
        parent: s.parent_pid,
        faults: s.inject.faults.clone(),
        set: s.set.clone(),
        buffer_count: k.buffer_count,
        max_transfer: k.max_transfer_size,
        block_size: k.block_size,
        wait: Duration::from_secs(s.wait),
        trust_owner: s.trust_owner,
        stall: s.stall.limit(),
    }
}

fn wait_opt(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Backup(a) => {
            let o = run::backup(&run::BackupRequest {
                source: &a.source,
                dest: &a.dest,
                devices: a.devices,
                compression: a.compress,
                set: a.set.clone(),
                force: a.force,
                modes: a.mode,
                stall: a.stall.limit(),
                knobs: &a.engine,
                mode: Mode::pick(a.output.quiet || a.output.json),
                faults: &a.inject.faults,
            })?;
            run::report_backup(&o, a.output.json, a.output.quiet);
            Ok(())
        }
        Cmd::Restore(a) => {
            let o = run::restore(&run::RestoreRequest {
                backup: &a.backup,
                target: &a.target,
                devices: a.devices,
                set: a.set.clone(),
                force: a.force,
                integrity_check: a.integrity_check,
                stall: a.stall.limit(),
                knobs: &a.engine,
                mode: Mode::pick(a.output.quiet || a.output.json),
                faults: &a.inject.faults,
            })?;
            run::report_restore(&o, a.output.json, a.output.quiet);
            Ok(())
        }
        Cmd::Verify(a) => verify(&a.backup, a.output),
        Cmd::Client(ClientCmd::Backup(a)) => {
            only_role(&a.inject.faults, Role::Client, "client backup")?;
            let inject = std::sync::Arc::new(Injector::new(Role::Client, &a.inject.faults));
            let plan = BackupPlan {
                inject: inject.clone(),
                set: a.set.clone(),
                devices: a.devices,
                compression: a.compress,
                dest: Dest::parse(&a.dest),
                force: a.force,
                source: SourceInfo {
                    kind: "unknown".into(),
                    name: format!("an engine on set {}", a.set),
                    bytes: None,
                    checked: false,
                },
                mode: Mode::pick(a.output.quiet || a.output.json),
                wait: wait_opt(a.wait),
                hint: Some(format!(
                    "start it with: vdi engine backup --set {} SOURCE",
                    a.set
                )),
                allow_group: a.allow_group,
                modes: a.mode,
                stall: a.stall.limit(),
            };
            let prep = client::prepare_backup(plan)?;
            let served =
                client::serve_backup(prep, &|| Ok(()), None).map_err(|e| e.into_error())?;
            let done = client::commit_backup(served)?;
            inject.warn_unfired();
            done.report_commit(a.output.quiet || a.output.json);
            let m = &done.manifest;
            if a.output.json {
                run::print_json(
                    &json!({
                        "command": "client backup",
                        "ok": true,
                        "backup_id": m.backup_id,
                        "stream_id": m.stream_id,
                        "set": m.set_name,
                        "dest": a.dest,
                        "devices": m.device_count,
                        "compression": m.compression.label(),
                        "stream_bytes": m.total_stream_bytes,
                        "stored_bytes": m.total_stored_bytes,
                        "seconds": done.elapsed.as_secs_f64(),
                        "streams": m.streams,
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
        Cmd::Client(ClientCmd::Restore(a)) => {
            only_role(&a.inject.faults, Role::Client, "client restore")?;
            let inject = std::sync::Arc::new(Injector::new(Role::Client, &a.inject.faults));
            let src = BackupSrc::parse(&a.backup);
            let opened = client::open_backup(&src, a.devices)?;
            let label = format!("serve {} through {} device(s)", a.backup, opened.devices());
            let prep = client::prepare_restore(
                client::RestorePlan {
                    set: a.set.clone(),
                    mode: Mode::pick(a.output.quiet || a.output.json),
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
            let served =
                client::serve_restore(prep, &|| Ok(()), None).map_err(|e| e.into_error())?;
            inject.warn_unfired();
            let bytes: u64 = served.stream_bytes.iter().sum();
            if a.output.json {
                run::print_json(
                    &json!({
                        "command": "client restore",
                        "ok": true,
                        "set": a.set,
                        "backup": a.backup,
                        "devices": served.stream_bytes.len(),
                        "stream_bytes": bytes,
                        "seconds": served.elapsed.as_secs_f64(),
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
        Cmd::Engine(EngineCmd::Backup(a)) => {
            only_role(&a.session.inject.faults, Role::Engine, "engine backup")?;
            let spec = Spec::parse(&a.source)?;
            let r = engine::backup(&engine_cfg(&a.session, &a.engine), &spec)?;
            engine_done(&r, a.session.report, a.output, false);
            Ok(())
        }
        Cmd::Engine(EngineCmd::Restore(a)) => {
            only_role(&a.session.inject.faults, Role::Engine, "engine restore")?;
            let spec = Spec::parse(&a.target)?;
            let r = engine::restore(
                &engine_cfg(&a.session, &a.engine),
                &spec,
                a.force,
                a.integrity_check,
            )?;
            engine_done(&r, a.session.report, a.output, a.target == "-");
            Ok(())
        }
        Cmd::Demo(a) => demo::run(&a),
        Cmd::Soak(a) => soak::run(&a),
    }
}

fn engine_done(r: &engine::EngineReport, report: bool, out: OutputArgs, data_on_stdout: bool) {
    if report {
        eprint_line(format_args!(
            "{REPORT_PREFIX}{}",
            serde_json::to_string(r).unwrap_or_default()
        ));
    } else if out.json {
        run::print_json(&serde_json::to_value(r).unwrap_or_default(), data_on_stdout);
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

fn verify(target: &str, out: OutputArgs) -> Result<()> {
    // Nothing to clean up: the first signal stops a verify at once.
    let _stop = interrupt::on_interrupt(|| {
        eprint_line(format_args!(
            "error: {}: verify stopped before the end",
            interrupt::what()
        ));
        std::process::exit(i32::from(Kind::Interrupted.exit_code()));
    });
    let report = if target == "-" {
        let media: Box<dyn std::io::Read + Send> = Box::new(
            source::PolledStdin::open().map_err(|e| fail(Kind::Usage, format!("backup -: {e}")))?,
        );
        let mut r = backup::VerifyReport::default();
        match backup::check_stream(media, None, None) {
            Ok(c) => {
                r.stream_bytes = c.stream_bytes;
                r.chunks = c.chunks;
                if let Some(p) = c.problem {
                    r.problems.push(format!("standard input: {p}"));
                }
                if let Some(d) = c.stream {
                    match vdi_cli::stream::check_set(std::slice::from_ref(&d)) {
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
        let dir = std::path::Path::new(target);
        backup::verify_dir(dir).map_err(|e| match &e {
            backup::BackupError::Unreadable { .. } => fail(Kind::Input, e.to_string()),
            _ => fail(
                Kind::Damaged,
                format!("backup {target} is not complete: {e}"),
            ),
        })?
    };
    if out.json {
        run::print_json(
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
        let (devices, id) = report.manifest.as_ref().map_or((1, "-".to_owned()), |m| {
            (m.device_count, m.backup_id.clone())
        });
        tracing::info!(
            "backup {target} is complete and intact: {devices} stream(s), {} of source in {} chunks; every chunk checksum{} matches (backup id {id})",
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
