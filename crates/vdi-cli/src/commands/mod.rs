//! The commands, one file each, and what they share: running one, turning its failure
//! into a message and an exit code.

mod backup;
mod client;
pub mod demo;
mod engine;
mod restore;
mod sets;
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
        Cmd::Completions(_) | Cmd::Man(_) => OutputArgs {
            json: false,
            quiet: false,
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
    match run(cli) {
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
    }
}
