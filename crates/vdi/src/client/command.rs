//! Fetched commands: [`Command`] (borrows its device) and [`OwnedCommand`] (holds its
//! device by `Arc`, so it can be moved into a task or another thread). Each lends the
//! command's buffer as a slice until it is completed.
//!
//! Both are thin wrappers of one private core (`Lease`): the lent slices, completion and
//! the abort on drop have one implementation, whoever holds the device.

#![allow(unsafe_code)] // the lent buffer as slices, and Sync; each justified

use std::ops::Deref;
use std::sync::Arc;

use super::ClientDevice;
use super::handles::encode_handle;
use crate::consts::{CommandCode, CompletionCode, completion};
use crate::error::Result;

/// A command fetched by [`ClientDevice::get_command`]. It lends the command's buffer
/// until it is completed; dropping it without completing completes it with
/// `ERROR_OPERATION_ABORTED` (which puts the device in IO-ERROR).
///
/// It borrows its device; [`OwnedCommand`] is the same command holding its device by
/// `Arc` (`Send + 'static`), for a task or thread that outlives the borrow.
pub struct Command<'d> {
    lease: Lease<&'d ClientDevice>,
}

/// A command fetched by [`ClientDevice::get_owned_command`] or by the async client's
/// `AsyncClientDevice::get_command` (feature `tokio`, module `vdi::async_client`): a [`Command`] that holds its device by `Arc` instead of borrowing
/// it, so it is `Send + 'static` and can be moved into a spawned task or another thread
/// and completed there.
///
/// The semantics are [`Command`]'s: it lends the command's buffer (`&[u8]` for a Write,
/// `&mut [u8]` for a Read) until it is completed; completing consumes it; dropping it
/// without completing completes it with `ERROR_OPERATION_ABORTED` (which puts the device
/// in IO-ERROR). Commands of one device may be completed in any order, from any thread.
pub struct OwnedCommand {
    lease: Lease<Arc<ClientDevice>>,
}

/// A fetched command's fields, without the borrow of its device.
#[derive(Debug)]
pub(crate) struct RawCommand {
    pub slot: u32,
    pub code: CommandCode,
    pub size: u32,
    pub position: u64,
    pub buffer: Option<*mut u8>,
    pub lent: Option<(u32, u64)>,
}

// SAFETY: a raw command is the fields of a command fetched from this process's device:
// its buffer pointer is an address into a mapping of that device's set (which stays
// mapped, shared or released, while the device lives) and the protocol lends those bytes
// to this one command until it is completed; moving it to another thread moves that
// exclusive use with it. (The object layer keeps raw commands in a table behind a mutex.)
unsafe impl Send for RawCommand {}

/// The one implementation of a fetched command: its device `D` (a borrow or an `Arc`,
/// which keeps the device, and so the mapping its buffer lies in, alive), its fields, and
/// whether it has been completed. Until it is, the protocol lends it the buffer.
struct Lease<D: Deref<Target = ClientDevice>> {
    dev: D,
    raw: RawCommand,
    done: bool,
}

// Send: automatic (the device handle `D` and `RawCommand` are Send).
// SAFETY: `&Lease` only gives shared (read) access to the buffer (`buffer`); the `&mut`
// accessors need `&mut Lease`. The device handle is shared only if `D` is Sync.
unsafe impl<D: Deref<Target = ClientDevice> + Sync> Sync for Lease<D> {}

impl<D: Deref<Target = ClientDevice>> Lease<D> {
    fn new(dev: D, raw: RawCommand) -> Self {
        Lease {
            dev,
            raw,
            done: false,
        }
    }

    fn buffer(&self) -> Option<&[u8]> {
        // SAFETY: `deliver` checked `size` bytes at `p` lie inside a mapped area, which
        // stays mapped while the device `dev` lives; the protocol lends them to this
        // command until completion (the server does not touch a buffer while its command
        // is outstanding), completion consumes the lease, and `&self` prevents a
        // concurrent `&mut` from `buffer_mut`.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts(p, self.raw.size as usize) })
    }

    fn buffer_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as in `buffer`, and `&mut self` makes this the only reference.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p, self.raw.size as usize) })
    }

    fn prefix_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.dev.prefix as usize;
        // SAFETY: `deliver` checked that the `prefix` bytes before the data start lie in
        // the same area; they belong to the client while the command is outstanding.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p.sub(n), n) })
    }

    fn buffer_handle(&self) -> Option<u32> {
        let p = self.raw.buffer?;
        let (area, offset) = self.dev.set.shared.locate(p)?;
        encode_handle(area, offset)
    }

    fn complete(
        mut self,
        code: CompletionCode,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        self.done = true;
        self.dev
            .complete_raw(&self.raw, code.value(), bytes_transferred, position)
    }

    fn complete_ok(self) -> Result<()> {
        let n = if self.raw.code.carries_data() {
            self.raw.size
        } else {
            0
        };
        self.complete(completion::ERROR_SUCCESS.into(), n, 0)
    }

    fn fmt(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("code", &self.raw.code)
            .field("size", &self.raw.size)
            .field("position", &self.raw.position)
            .field("has_buffer", &self.raw.buffer.is_some())
            .finish()
    }
}

impl<D: Deref<Target = ClientDevice>> Drop for Lease<D> {
    fn drop(&mut self) {
        if !self.done {
            let r = &self.raw;
            let _ = self.dev.complete_slot(
                r.slot,
                r.code,
                r.lent,
                completion::ERROR_OPERATION_ABORTED,
                0,
                0,
            );
        }
    }
}

/// The accessors and completion calls both command types share, documented once.
macro_rules! command_api {
    () => {
        /// The command code.
        pub fn code(&self) -> CommandCode {
            self.lease.raw.code
        }

        /// Bytes to transfer (Read/Write), or the command's parameter (SkipMarks count,
        /// SetPosition whence, ...).
        pub fn size(&self) -> u32 {
            self.lease.raw.size
        }

        /// The position (random access Read/Write, SetPosition).
        pub fn position(&self) -> u64 {
            self.lease.raw.position
        }

        /// The buffer's `size` data bytes (a Write's data to store), if the command has one.
        pub fn buffer(&self) -> Option<&[u8]> {
            self.lease.buffer()
        }

        /// The buffer's `size` data bytes, writable (to fill for a Read).
        pub fn buffer_mut(&mut self) -> Option<&mut [u8]> {
            self.lease.buffer_mut()
        }

        /// The client's prefix zone in front of the buffer (`prefixZoneSize` bytes).
        pub fn prefix_mut(&mut self) -> Option<&mut [u8]> {
            self.lease.prefix_mut()
        }

        /// The buffer's handle, for [`ClientSet::map_buffer_handle`](crate::ClientSet::map_buffer_handle)
        /// in another process.
        pub fn buffer_handle(&self) -> Option<u32> {
            self.lease.buffer_handle()
        }

        /// `CompleteCommand`: reports the outcome. `bytes_transferred` is for Read and
        /// Write, `position` for GetPosition and SetPosition. Any code other than
        /// `ERROR_SUCCESS` puts the device in IO-ERROR.
        ///
        /// Errors: `VD_E_INVALID` (more bytes than the command asked for; the command is
        /// then completed with `ERROR_INVALID_DATA`), `VD_E_ABORT`, `VD_E_PROTOCOL`.
        /// `completion_code` is a [`CompletionCode`] or its number.
        pub fn complete(
            self,
            completion_code: impl Into<CompletionCode>,
            bytes_transferred: u32,
            position: u64,
        ) -> Result<()> {
            self.lease
                .complete(completion_code.into(), bytes_transferred, position)
        }

        /// Completes with `ERROR_SUCCESS`, the full size for Read/Write, position 0.
        pub fn complete_ok(self) -> Result<()> {
            self.lease.complete_ok()
        }
    };
}

impl<'d> Command<'d> {
    pub(super) fn new(dev: &'d ClientDevice, raw: RawCommand) -> Command<'d> {
        Command {
            lease: Lease::new(dev, raw),
        }
    }

    /// The device that delivered the command.
    pub fn device(&self) -> &ClientDevice {
        self.lease.dev
    }

    command_api!();
}

impl OwnedCommand {
    pub(crate) fn new(dev: Arc<ClientDevice>, raw: RawCommand) -> OwnedCommand {
        OwnedCommand {
            lease: Lease::new(dev, raw),
        }
    }

    /// The device that delivered the command.
    pub fn device(&self) -> &Arc<ClientDevice> {
        &self.lease.dev
    }

    command_api!();
}

impl std::fmt::Debug for Command<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lease.fmt("Command", f)
    }
}

impl std::fmt::Debug for OwnedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lease.fmt("OwnedCommand", f)
    }
}

// Both may be moved to and shared with other threads; an owned command also outlives any
// borrow, so it can go into a spawned task.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn owned<T: Send + Sync + 'static>() {}
    send_sync::<Command<'static>>();
    owned::<OwnedCommand>();
};
