//! The two formats: what the engine writes through the devices ([`stream`],
//! `docs/stream-format.md`) and how the backup application records a stored backup
//! ([`manifest`], `docs/backup-format.md`).

pub mod manifest;
pub mod stream;
