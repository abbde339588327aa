//! The formats and storage of the `vdi` tool.
//!
//! The `vdi` binary is two programs in one: a backup application (the VDI **client**
//! role), which stores what an engine writes through each virtual device, and a reference
//! engine (the **server** role), which backs up and restores real data (files, standard
//! input, live SQLite databases). This library holds what both share and what can be
//! tested without processes:
//!
//! - [`stream`]: the engine's stream format (header, checksummed chunks, trailer), which
//!   any number of devices carry and any transfer size can read back;
//! - [`backup`]: the backup application's storage format (one stream file per device, a
//!   manifest written last) and `vdi verify`'s checks;
//! - [`backup_dir`]: a backup directory on disk: no link followed, only regular files
//!   read, one backup at a time (a lock), a backup replaced only by a complete one,
//!   private modes;
//! - [`units`]: byte counts as people type and read them.

#![forbid(unsafe_code)]

pub mod backup;
pub mod backup_dir;
pub mod stream;
pub mod units;
