//! # vdi-backup — the reusable half of the `vdi` tool
//!
//! Everything the `vdi` binary does that another program could reuse: the formats, where
//! backups are stored, what is backed up, and both VDI roles over them. No command-line,
//! terminal or signal handling here (that is the binary's); one error type ([`Error`]:
//! a kind, which a front end maps to an exit code, and a message a person can act on).
//!
//! - [`format`]: the engine's stream format ([`format::stream`]) and the backup
//!   application's manifest ([`format::manifest`]); [`codec`] reads and writes stored
//!   streams (compression, digests); [`verify`] checks a stored backup.
//! - [`store`]: where a backup is kept ([`store::Store`]): a directory, standard
//!   output/input, memory (tests).
//! - [`source`]: what is backed up and restored ([`source::Source`], [`source::Target`]):
//!   a file, standard input/output, a live SQLite database (read page by page, no
//!   scratch copy), a program's output (`cmd:`), a directory as a tar stream (`dir:`),
//!   a PostgreSQL base backup (`postgres:`, `postgres-data:`).
//! - [`engine`]: the server role (the reference engine) over a source or a target;
//!   [`client`]: the client role (the backup application) over a store.
//! - [`fault`] (injected faults), [`watchdog`] (a stalled peer), [`cancel`] (signals,
//!   as the front end reports them), [`meter`] (progress counters), [`units`].

#![forbid(unsafe_code)]

pub mod cancel;
pub mod client;
pub mod codec;
pub mod engine;
pub mod error;
pub mod fault;
pub mod format;
pub mod meter;
pub mod ordered;
pub mod repo;
pub mod seal;
pub mod source;
pub mod store;
pub mod tsql;
pub mod units;
pub mod util;
pub mod verify;
pub mod watchdog;

pub use error::{Context, Error, Kind, Result, fail};
