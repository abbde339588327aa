//! Where backups are kept.

pub mod dir;
