//! A fetched command ([`Command`]): it lends its buffer as a slice until it is completed.

#![allow(unsafe_code)] // the lent buffer as slices, and Send/Sync; each justified

use super::ClientDevice;
use super::handles::encode_handle;
use crate::consts::{CommandCode, CompletionCode, completion};
use crate::error::Result;

/// A command fetched by [`ClientDevice::get_command`]. It lends the command's buffer
/// until it is completed; dropping it without completing completes it with
/// `ERROR_OPERATION_ABORTED` (which puts the device in IO-ERROR).
pub struct Command<'d> {
    pub(super) dev: &'d ClientDevice,
    pub(super) raw: RawCommand,
    pub(super) done: bool,
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

// SAFETY: the buffer pointer is into a mapping kept alive by `dev` (which is Sync); the
// protocol gives this command exclusive use of the buffer until it is completed, so
// moving the command to another thread moves that exclusive use with it.
unsafe impl Send for Command<'_> {}

// SAFETY: `&Command` only gives shared (read) access to the buffer.
unsafe impl Sync for Command<'_> {}

// SAFETY: a raw command is the fields of a command fetched from this process's device:
// its buffer pointer is an address into a mapping of that device's set (which stays
// mapped, shared or released, while the device lives) and the protocol lends those bytes
// to this one command until it is completed; moving it to another thread moves that
// exclusive use with it. (The object layer keeps raw commands in a table behind a mutex.)
unsafe impl Send for RawCommand {}

impl std::fmt::Debug for Command<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("code", &self.raw.code)
            .field("size", &self.raw.size)
            .field("position", &self.raw.position)
            .field("has_buffer", &self.raw.buffer.is_some())
            .finish()
    }
}

impl Command<'_> {
    /// The command code.
    pub fn code(&self) -> CommandCode {
        self.raw.code
    }

    /// Bytes to transfer (Read/Write), or the command's parameter (SkipMarks count,
    /// SetPosition whence, ...).
    pub fn size(&self) -> u32 {
        self.raw.size
    }

    /// The position (random access Read/Write, SetPosition).
    pub fn position(&self) -> u64 {
        self.raw.position
    }

    /// The device that delivered the command.
    pub fn device(&self) -> &ClientDevice {
        self.dev
    }

    /// The buffer's `size` data bytes (a Write's data to store), if the command has one.
    pub fn buffer(&self) -> Option<&[u8]> {
        // SAFETY: `deliver` checked `size` bytes at `p` lie inside a mapped area; the
        // protocol lends them to this command until completion (the server does not touch
        // a buffer while its command is outstanding), and `&self` prevents a concurrent
        // `&mut` from `buffer_mut`.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts(p, self.raw.size as usize) })
    }

    /// The buffer's `size` data bytes, writable (to fill for a Read).
    pub fn buffer_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: as in `buffer`, and `&mut self` makes this the only reference.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p, self.raw.size as usize) })
    }

    /// The client's prefix zone in front of the buffer (`prefixZoneSize` bytes).
    pub fn prefix_mut(&mut self) -> Option<&mut [u8]> {
        let n = self.dev.prefix as usize;
        // SAFETY: `deliver` checked that the `prefix` bytes before the data start lie in
        // the same area; they belong to the client while the command is outstanding.
        self.raw
            .buffer
            .map(|p| unsafe { std::slice::from_raw_parts_mut(p.sub(n), n) })
    }

    /// The buffer's handle, for [`ClientSet::map_buffer_handle`] in another process.
    pub fn buffer_handle(&self) -> Option<u32> {
        let p = self.raw.buffer?;
        let (area, offset) = self.dev.set.shared.locate(p)?;
        encode_handle(area, offset)
    }

    /// `CompleteCommand`: reports the outcome. `bytes_transferred` is for Read and Write,
    /// `position` for GetPosition and SetPosition. Any code other than `ERROR_SUCCESS`
    /// puts the device in IO-ERROR.
    ///
    /// Errors: `VD_E_INVALID` (more bytes than the command asked for; the command is then
    /// completed with `ERROR_INVALID_DATA`), `VD_E_ABORT`, `VD_E_PROTOCOL`.
    /// `completion_code` is a [`CompletionCode`] or its number.
    pub fn complete(
        mut self,
        completion_code: impl Into<CompletionCode>,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        self.done = true;
        self.dev.complete_raw(
            &self.raw,
            completion_code.into().value(),
            bytes_transferred,
            position,
        )
    }

    /// Completes with `ERROR_SUCCESS`, the full size for Read/Write, position 0.
    pub fn complete_ok(self) -> Result<()> {
        let n = if self.raw.code.carries_data() {
            self.raw.size
        } else {
            0
        };
        self.complete(completion::ERROR_SUCCESS, n, 0)
    }
}

impl Drop for Command<'_> {
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
