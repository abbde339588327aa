//! `vdi`: back up and restore real data through the Virtual Device Interface.
//!
//! One binary, both roles: `vdi backup` / `vdi restore` run the backup application (the
//! client role) here and start the reference engine (the server role) as a separate
//! process (`vdi engine ...`); `vdi client ...` and `vdi engine ...` run one role each,
//! for two processes started by hand. Run `vdi --help` for the commands.
//!
//! This binary is the front end: arguments ([`cli`]), what is printed ([`output`],
//! [`progress`]), signals ([`interrupt`]), starting the engine ([`spawn`]) and one file
//! per command ([`commands`]). What it runs is the `vdi-backup` library.

#![forbid(unsafe_code)]

mod cli;
mod commands;
mod config;
mod interrupt;
mod output;
mod progress;
mod spawn;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

pub use output::{eprint_line, print_line};

/// `vdi --version`: the version and the build id (commit and date).
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VDI_BUILD_ID"), ")");

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Run as sqlcmd or osql (a link so named): their command line, not vdi's.
    if let Some(dialect) = args.first().and_then(|a| commands::sql::dialect_of(a)) {
        if let Err(e) = config::load(&[]) {
            println!("error: {e} (fix it, or set VDI_CONFIG=none)");
            return ExitCode::from(1);
        }
        let rest: Vec<String> = args[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return commands::sql::argv0_main(dialect, &rest);
    }
    // The configuration file gives defaults: read before the command line is parsed.
    if let Err(e) = config::load(&args) {
        eprint_line(format_args!(
            "error: {e} (fix it, or name another with --config FILE; --config none reads none)"
        ));
        return ExitCode::from(vdi_backup::Kind::Usage.exit_code());
    }
    let matches = config::apply_defaults(cli::Cli::command()).get_matches_from(args);
    match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => commands::main(c),
        Err(e) => e.exit(),
    }
}
