//! # vdi — the Virtual Device Interface, both roles, in Rust
//!
//! The Virtual Device Interface (VDI) is how a database engine streams BACKUP and RESTORE
//! data to and from backup software on the same machine with zero copies. The engine
//! (the **server** role, [`ServerSet`]) allocates data buffers in shared memory and sends
//! device commands (Read, Write, Flush, ClearError, ...); the backup application (the
//! **client** role, [`ClientSet`]) fetches each command, moves the data to or from its
//! media, and completes it; the server's **completion agent** then calls the command's
//! callback. One operation may stripe over 1 to 64 devices.
//!
//! Calls, state machines, codes and command semantics follow the protocol reference; the
//! shared layout is in `docs/shm-layout.md`.
//!
//! ```no_run
//! use vdi::{ClientSet, ServerSet, VdConfig, Timeout, features, ServerCommand};
//! # fn main() -> Result<(), vdi::VdError> {
//! // Client process:
//! let client = ClientSet::create("set-1", &VdConfig::with_devices(1))?;
//! // Server process (another process in real use):
//! let server = ServerSet::open("set-1")?;
//! server.begin_configuration(features::WRITE_MEDIA, 512, 0, 64 * 1024, 1000)?;
//! server.request_buffers(64 * 1024, 0, 2)?;
//! server.end_configuration()?;
//! let cfg = client.get_configuration(Timeout::from_millis(1000))?;
//! assert!(cfg.features & features::WRITE_MEDIA != 0);
//! # Ok(()) }
//! ```
//!
//! Layers: [`sys`] (system calls only), [`protocol`] (shared layout, rings, event
//! counts, socket messages), the role APIs ([`ClientSet`], [`ServerSet`]), and
//! [`object`], the reference's objects with their states (what the C ABI wraps).
//!
//! Feature `tokio`: `async_client`, the client role for async code (an async
//! `get_command` whose owned commands are completed from any task).

#![deny(unsafe_code)]
// Unsafe code is allowed back only in the files that need it, each saying so at its top:
// `sys/shm.rs` (mmap), `protocol/layout.rs` (a mapped segment viewed as its structures),
// `server/buffer.rs` (a server buffer's bytes as slices), `client/command.rs` (a lent
// buffer as slices) and `client/handles.rs` (a mapped handle's bytes).

#[cfg(feature = "tokio")]
pub mod async_client;
pub mod client;
pub mod config;
pub mod consts;
pub mod error;
pub mod object;
pub mod observe;
pub mod protocol;
pub mod server;
mod shared;
pub mod sys;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClientDevice, AsyncClientSet};
pub use client::{ClientDevice, ClientOptions, ClientSet, Command, MappedBuffer, OwnedCommand};
pub use config::{INFINITE, Timeout, VdConfig};
pub use consts::{CommandCode, CompletionCode, Features, completion, features, whence};
pub use error::{AbortCause, ErrorCode, NOERROR, NameHolder, Reason, Result, VdError};
pub use server::{
    Completion, ServerBuffer, ServerCommand, ServerConfig, ServerDevice, ServerSet, ServerState,
};
pub use shared::{AttachOptions, MAX_SET_NAME, validate_set_name};

/// The README's examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
