//! The commands, one file each, and what they share: running one, turning its failure
//! into a message and an exit code.

mod backup;
pub mod check;
mod client;
pub mod demo;
mod engine;
mod restore;
mod sets;
pub mod sql;
// -- repositories, completions, manual, configuration (issue 15)
mod extras;
mod repo;
pub mod soak;
mod verify;

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use vdi_backup::Result;
use vdi_backup::engine::{EngineCfg, REPORT_PREFIX};
use vdi_backup::error::kind_of;

use crate::cli::{Cli, ClientCmd, Cmd, EngineCmd, EngineKnobs, EngineSession, OutputArgs};
use crate::{interrupt, output};

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
        Cmd::Sets(a) => a.output,
        Cmd::Init(a) => a.output,
        Cmd::List(a) => a.output,
        Cmd::Info(a) => a.output,
        Cmd::Expire(a) => a.output,
        Cmd::Config(a) => a.output,
        Cmd::Sql(a) => a.output,
        Cmd::CheckClient(a) => a.output,
        Cmd::Completions(_) | Cmd::Man(_) => OutputArgs {
            json: false,
            quiet: false,
        },
        Cmd::Sqlcmd(_) | Cmd::Osql(_) => OutputArgs {
            json: false,
            quiet: true,
        },
    }
}

/// Runs a command; prints its error and returns its exit code.
pub fn main(cli: Cli) -> ExitCode {
    vdi_backup::source::note_closed_standard_streams();
    let out = output_of(&cli.cmd);
    output::init_logging(out.quiet, cli.verbose);
    interrupt::install();
    if matches!(cli.cmd, Cmd::Backup(_) | Cmd::Restore(_) | Cmd::Client(_)) {
        interrupt::stop_quickly();
    }
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
        Cmd::Sets(_) => "sets",
        Cmd::Init(_) => "init",
        Cmd::List(_) => "list",
        Cmd::Info(_) => "info",
        Cmd::Expire(_) => "expire",
        Cmd::Completions(_) => "completions",
        Cmd::Man(_) => "man",
        Cmd::Config(_) => "config",
        Cmd::Sql(_) => "sql",
        Cmd::Sqlcmd(_) => "sqlcmd",
        Cmd::Osql(_) => "osql",
        Cmd::CheckClient(_) => "check-client",
    };
    let data_on_stdout = match &cli.cmd {
        Cmd::Backup(a) => a.dest.as_deref() == Some("-"),
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
    let configured = s3_options(&cli.s3);
    match configured.and_then(|()| run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = kind_of(&e);
            if engine_report {
                let r = vdi_backup::engine::failed_report(name.trim_start_matches("engine "), &e);
                crate::eprint_line(format_args!(
                    "{REPORT_PREFIX}{}",
                    serde_json::to_string(&r).unwrap_or_default()
                ));
            } else {
                crate::eprint_line(format_args!("error: {e:#}"));
                // One JSON object per command: a command that printed its own summary
                // (verify of a damaged backup) is not followed by a second one.
                if out.json && !output::json_printed() {
                    output::print_json(
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

/// Sets the options of `s3://` stores: the command line, then the configuration file's
/// `[store]`, then the defaults (and the environment, which the store reads itself).
#[cfg(feature = "s3")]
fn s3_options(a: &crate::cli::S3Args) -> Result<()> {
    use vdi_backup::store::s3::{S3Options, Sse, configure};
    use vdi_backup::{Kind, fail};
    let c = &crate::config::get().store;
    let mut o = S3Options {
        endpoint: a.endpoint.clone().or_else(|| c.endpoint.clone()),
        region: a.region.clone().or_else(|| c.region.clone()),
        profile: a.profile.clone().or_else(|| {
            std::env::var("AWS_PROFILE")
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(crate::config::store_profile)
        }),
        storage_class: a.storage_class.clone().or_else(|| c.storage_class.clone()),
        ca_file: a.ca_file.clone().or_else(|| c.ca_file.clone()),
        checksum: !a.no_checksum,
        ..S3Options::default()
    };
    match a.addressing.as_deref().or(c.addressing.as_deref()) {
        None | Some("path") => {}
        Some("virtual") => o.virtual_hosted = true,
        Some(x) => {
            return Err(fail(
                Kind::Usage,
                format!("addressing '{x}' in the configuration file: write path or virtual"),
            ));
        }
    }
    if let Some(sse) = a.sse.as_deref().or(c.sse.as_deref()) {
        o.sse = Some(match sse {
            "s3" | "AES256" | "aes256" => Sse::S3,
            k if k.starts_with("kms:") && k.len() > 4 => Sse::Kms(k[4..].to_owned()),
            x => {
                return Err(fail(
                    Kind::Usage,
                    format!("--s3-sse {x}: write s3 (SSE-S3) or kms:KEY-ID (SSE-KMS)"),
                ));
            }
        });
    }
    if let Some(n) = a.part_cap.or(c.part_cap) {
        o.part_cap = n;
    }
    if let Some(n) = a.part_size {
        o.part_size = n;
    } else if let Some(t) = &c.part_size {
        o.part_size = vdi_backup::units::parse_size(t).map_err(|e| {
            fail(
                Kind::Usage,
                format!("part_size in the configuration file: {e}"),
            )
        })?;
    }
    if let Some(n) = a.parts_in_flight.or(c.parts_in_flight) {
        o.parts_in_flight = n as usize;
        o.read_ahead = n as usize;
    }
    if let Some(n) = a.retries {
        o.retries = n;
    }
    if let Some(t) = a.retry_timeout {
        o.retry_timeout = t;
    }
    if !(vdi_backup::store::s3::MIN_PART..=vdi_backup::store::s3::MAX_PART).contains(&o.part_size) {
        return Err(fail(
            Kind::Usage,
            format!(
                "--s3-part-size {}: S3 parts are 5 MiB to 5 GiB",
                vdi_backup::units::human_bytes(o.part_size)
            ),
        ));
    }
    configure(o);
    Ok(())
}

#[cfg(not(feature = "s3"))]
fn s3_options(_: &crate::cli::S3Args) -> Result<()> {
    Ok(())
}

pub(crate) fn engine_cfg(s: &EngineSession, k: &EngineKnobs) -> EngineCfg {
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
        device_names: Vec::new(),
        mode: k.device_mode,
        probe: None,
    }
}

pub(crate) fn wait_opt(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Backup(a) => backup::run(&a),
        Cmd::Restore(a) => restore::run(&a),
        Cmd::Verify(a) => verify::run(&a.backup, &a.key, a.output),
        Cmd::Client(ClientCmd::Backup(a)) => client::backup(&a),
        Cmd::Client(ClientCmd::Restore(a)) => client::restore(&a),
        Cmd::Engine(EngineCmd::Backup(a)) => engine::backup(&a),
        Cmd::Engine(EngineCmd::Restore(a)) => engine::restore(&a),
        Cmd::Demo(a) => demo::run(&a),
        Cmd::Soak(a) => soak::run(&a),
        Cmd::Sets(a) => sets::run(&a),
        Cmd::Init(a) => repo::init(&a),
        Cmd::List(a) => repo::list(&a),
        Cmd::Info(a) => repo::info(&a),
        Cmd::Expire(a) => repo::expire(&a),
        Cmd::Completions(a) => extras::completions(a.shell),
        Cmd::Man(a) => extras::man(a.command.as_deref()),
        Cmd::Config(a) => extras::config(&a),
        Cmd::Sql(a) => sql::run(&a),
        Cmd::CheckClient(a) => check::run(&a),
        Cmd::Sqlcmd(a) => sql::exit_with(sql::Dialect::Sqlcmd, &a.args),
        Cmd::Osql(a) => sql::exit_with(sql::Dialect::Osql, &a.args),
    }
}
