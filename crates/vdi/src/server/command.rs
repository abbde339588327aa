//! Commands as the server sends them ([`ServerCommand`]) and as their callbacks receive
//! them back ([`Completion`]).

use super::ServerBuffer;
use crate::consts::{CommandCode, CompletionCode, completion};

/// The outcome of a command, given to its callback with the buffer it carried.
#[derive(Debug)]
pub struct Completion {
    /// The device the command was sent to.
    pub device: u32,
    /// The command code.
    pub code: CommandCode,
    /// The size the command asked for.
    pub size: u32,
    /// The position the command carried.
    pub position: u64,
    /// The Win32 completion code (`ERROR_SUCCESS`, `ERROR_OPERATION_ABORTED`, ...).
    pub completion_code: u32,
    /// Bytes transferred (Read/Write).
    pub bytes_transferred: u32,
    /// The position reported (GetPosition/SetPosition).
    pub out_position: u64,
    /// The buffer the command carried, back in the server's hands.
    pub buffer: Option<ServerBuffer>,
}

impl Completion {
    /// Whether the command completed with `ERROR_SUCCESS`.
    pub fn is_success(&self) -> bool {
        self.completion_code == completion::ERROR_SUCCESS
    }

    /// The completion code, typed (it prints its name).
    pub fn completion(&self) -> CompletionCode {
        CompletionCode::from(self.completion_code)
    }
}

/// A command to send ([`ServerDevice::send_command`]).
#[derive(Debug)]
pub struct ServerCommand {
    pub(super) code: CommandCode,
    pub(super) size: u32,
    pub(super) position: u64,
    pub(super) buffer: Option<ServerBuffer>,
}

impl ServerCommand {
    /// A command without a buffer (Flush, ClearError, GetPosition, ...).
    pub fn new(code: CommandCode) -> ServerCommand {
        ServerCommand {
            code,
            size: 0,
            position: 0,
            buffer: None,
        }
    }

    /// `VDC_Write` of the first `len` bytes of `buffer`.
    pub fn write(buffer: ServerBuffer, len: u32) -> ServerCommand {
        ServerCommand {
            code: CommandCode::WRITE,
            size: len,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// `VDC_Read` into the first `len` bytes of `buffer`.
    pub fn read(buffer: ServerBuffer, len: u32) -> ServerCommand {
        ServerCommand {
            code: CommandCode::READ,
            size: len,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// Any code with a buffer.
    pub fn with_buffer(code: CommandCode, buffer: ServerBuffer, len: u32) -> ServerCommand {
        ServerCommand {
            code,
            size: len,
            position: 0,
            buffer: Some(buffer),
        }
    }

    /// Sets `size` (the count of SkipMarks/SkipBlocks/Load, the whence of SetPosition).
    pub fn with_size(mut self, size: u32) -> ServerCommand {
        self.size = size;
        self
    }

    /// Sets the position (random-access Read/Write, SetPosition).
    pub fn with_position(mut self, position: u64) -> ServerCommand {
        self.position = position;
        self
    }

    /// The code.
    pub fn code(&self) -> CommandCode {
        self.code
    }

    pub(super) fn into_completion(self, device: u32, completion_code: u32) -> Completion {
        Completion {
            device,
            code: self.code,
            size: self.size,
            position: self.position,
            completion_code,
            bytes_transferred: 0,
            out_position: 0,
            buffer: self.buffer,
        }
    }
}
