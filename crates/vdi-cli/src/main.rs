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
mod interrupt;
mod output;
mod progress;
mod spawn;

use std::process::ExitCode;

use clap::Parser;

pub use output::{eprint_line, print_line};

fn main() -> ExitCode {
    commands::main(cli::Cli::parse())
}
