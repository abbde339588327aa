//! `vdi`: back up and restore real data through the Virtual Device Interface.
//!
//! One binary, both roles: `vdi backup` / `vdi restore` run the backup application (the
//! client role) here and start the reference engine (the server role) as a separate
//! process (`vdi engine ...`); `vdi client ...` and `vdi engine ...` run one role each,
//! for two processes started by hand. Run `vdi --help` for the commands.

#![forbid(unsafe_code)]

mod app;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = app::cli::Cli::parse();
    app::main(cli)
}
