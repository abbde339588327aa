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
//! Calls, state machines, codes and command semantics follow Microsoft's VDI (its names
//! and values, as `include/vdi/vdi_com.h` declares them); the shared layout is in
//! `docs/shm-layout.md`, the reliability rules in `docs/reliability.md`.
//!
//! A backup of one device, both roles in one process (in real use each is its own
//! process): the server writes 64 KiB through the device, the client receives it and
//! completes the command, and the server's completion agent calls it back.
//!
//! ```
//! use std::sync::mpsc;
//! use vdi::{ClientSet, CommandCode, ErrorCode, ServerCommand, ServerSet, Timeout, VdConfig, features};
//! # fn main() -> Result<(), vdi::VdError> {
//! let name = format!("doc-{}", std::process::id());
//! // The backup application (client) creates the set and waits for the engine.
//! let client = ClientSet::create(&name, &VdConfig::with_devices(1))?;
//! let engine = std::thread::spawn({
//!     let name = name.clone();
//!     move || -> Result<u32, vdi::VdError> {
//!         // The engine (server) opens it, configures it and asks for a buffer.
//!         let server = ServerSet::open(&name)?;
//!         server.begin_configuration(features::WRITE_MEDIA, 512, 0, 64 * 1024, 1000)?;
//!         server.request_buffers(64 * 1024, 0, 1)?;
//!         server.end_configuration()?;
//!         let (tx, rx) = mpsc::channel();
//!         std::thread::scope(|s| -> Result<(), vdi::VdError> {
//!             let agent = s.spawn(|| server.execute_completion_agent());
//!             let dev = server.open_device(&name)?;
//!             let mut buf = server.allocate_buffer(64 * 1024, 0)?;
//!             buf.as_mut_slice().fill(b'x');
//!             // Send a Write; the callback runs on the completion agent.
//!             dev.send_command(ServerCommand::write(buf, 64 * 1024), move |c| {
//!                 let _ = tx.send((c.is_success(), c.bytes_transferred));
//!             })?;
//!             while server.outstanding() > 0 {
//!                 std::thread::yield_now();
//!             }
//!             dev.close_device()?;
//!             let _ = agent.join();
//!             Ok(())
//!         })?;
//!         server.close()?;
//!         let (ok, n) = rx.recv().unwrap_or((false, 0));
//!         assert!(ok);
//!         Ok(n)
//!     }
//! });
//! let cfg = client.get_configuration(Timeout::from_millis(10_000))?;
//! assert!(cfg.features & features::WRITE_MEDIA != 0);
//! let dev = client.open_device(&name)?;
//! let mut received = 0;
//! loop {
//!     match dev.get_command(Timeout::Infinite) {
//!         Ok(cmd) => {
//!             if cmd.code() == CommandCode::WRITE {
//!                 // The engine's bytes, in shared memory: store them, then complete.
//!                 received += cmd.buffer().map_or(0, |b| b.len());
//!             }
//!             cmd.complete_ok()?;
//!         }
//!         Err(e) if e.code() == ErrorCode::Close => break, // the engine closed the device
//!         Err(e) => return Err(e),
//!     }
//! }
//! client.close()?;
//! assert_eq!(received, 64 * 1024);
//! assert_eq!(engine.join().expect("the engine thread")?, 64 * 1024);
//! # Ok(()) }
//! ```
//!
//! Layers: [`sys`] (system calls only), [`protocol`] (shared layout, rings, event
//! counts, socket messages), the role APIs ([`ClientSet`], [`ServerSet`]), and
//! [`object`], VDI's objects with their states (what the C library, `crates/vdi-ffi`,
//! wraps); [`observe`] looks at live sets without disturbing them.
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
