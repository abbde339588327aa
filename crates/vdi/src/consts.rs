//! The protocol's numbers: command codes, feature bits, Win32 completion codes.
//!
//! The values are those of `vdi.h` (reference §4.4, §4.5, §4.7), so that logs and the C
//! ABI show the same numbers as the system we model.
//!
//! ```
//! use vdi::{CommandCode, features, completion};
//! assert_eq!(CommandCode::WRITE.value(), 2);
//! assert_eq!(CommandCode::from(19).name(), Some("VDC_Complete"));
//! assert_eq!(features::LIKE_TAPE, 0x173);
//! assert_eq!(completion::ERROR_IO_DEVICE, 1117);
//! ```

use std::fmt;

/// A command code (`VDC_*`). Unknown values are carried through unchanged: a client
/// that does not know one completes it with [`completion::ERROR_NOT_SUPPORTED`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandCode(u32);

impl CommandCode {
    /// `VDC_Read` (1): read `size` bytes from the media into the buffer.
    pub const READ: CommandCode = CommandCode(1);
    /// `VDC_Write` (2): write `size` bytes from the buffer to the media.
    pub const WRITE: CommandCode = CommandCode(2);
    /// `VDC_ClearError` (3): acknowledge and clear the device's IO-ERROR state.
    pub const CLEAR_ERROR: CommandCode = CommandCode(3);
    /// `VDC_Rewind` (4).
    pub const REWIND: CommandCode = CommandCode(4);
    /// `VDC_WriteMark` (5).
    pub const WRITE_MARK: CommandCode = CommandCode(5);
    /// `VDC_SkipMarks` (6): skip `size` filemarks.
    pub const SKIP_MARKS: CommandCode = CommandCode(6);
    /// `VDC_SkipBlocks` (7): skip `size` blocks.
    pub const SKIP_BLOCKS: CommandCode = CommandCode(7);
    /// `VDC_Load` (8): load the next media.
    pub const LOAD: CommandCode = CommandCode(8);
    /// `VDC_GetPosition` (9): report the position.
    pub const GET_POSITION: CommandCode = CommandCode(9);
    /// `VDC_SetPosition` (10): move to `position` (whence in `size` with RandomAccess).
    pub const SET_POSITION: CommandCode = CommandCode(10);
    /// `VDC_Discard` (11).
    pub const DISCARD: CommandCode = CommandCode(11);
    /// `VDC_Flush` (12): make every completed write durable.
    pub const FLUSH: CommandCode = CommandCode(12);
    /// `VDC_Snapshot` (13).
    pub const SNAPSHOT: CommandCode = CommandCode(13);
    /// `VDC_MountSnapshot` (14).
    pub const MOUNT_SNAPSHOT: CommandCode = CommandCode(14);
    /// `VDC_PrepareToFreeze` (15).
    pub const PREPARE_TO_FREEZE: CommandCode = CommandCode(15);
    /// `VDC_FileInfoBegin` (16), undocumented upstream.
    pub const FILE_INFO_BEGIN: CommandCode = CommandCode(16);
    /// `VDC_FileInfoEnd` (17), undocumented upstream.
    pub const FILE_INFO_END: CommandCode = CommandCode(17);
    /// `VDC_GetError` (18), undocumented upstream.
    pub const GET_ERROR: CommandCode = CommandCode(18);
    /// `VDC_Complete` (19): the server has sent all its data (negotiated).
    pub const COMPLETE: CommandCode = CommandCode(19);

    /// Every documented code, 1 to 19.
    pub const ALL: [CommandCode; 19] = [
        CommandCode::READ,
        CommandCode::WRITE,
        CommandCode::CLEAR_ERROR,
        CommandCode::REWIND,
        CommandCode::WRITE_MARK,
        CommandCode::SKIP_MARKS,
        CommandCode::SKIP_BLOCKS,
        CommandCode::LOAD,
        CommandCode::GET_POSITION,
        CommandCode::SET_POSITION,
        CommandCode::DISCARD,
        CommandCode::FLUSH,
        CommandCode::SNAPSHOT,
        CommandCode::MOUNT_SNAPSHOT,
        CommandCode::PREPARE_TO_FREEZE,
        CommandCode::FILE_INFO_BEGIN,
        CommandCode::FILE_INFO_END,
        CommandCode::GET_ERROR,
        CommandCode::COMPLETE,
    ];

    /// The numeric value.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// Whether the command moves data through a buffer (Read or Write).
    pub const fn carries_data(self) -> bool {
        self.0 == 1 || self.0 == 2
    }

    /// The header's name, or `None` for an unknown code.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "VDC_Read",
            2 => "VDC_Write",
            3 => "VDC_ClearError",
            4 => "VDC_Rewind",
            5 => "VDC_WriteMark",
            6 => "VDC_SkipMarks",
            7 => "VDC_SkipBlocks",
            8 => "VDC_Load",
            9 => "VDC_GetPosition",
            10 => "VDC_SetPosition",
            11 => "VDC_Discard",
            12 => "VDC_Flush",
            13 => "VDC_Snapshot",
            14 => "VDC_MountSnapshot",
            15 => "VDC_PrepareToFreeze",
            16 => "VDC_FileInfoBegin",
            17 => "VDC_FileInfoEnd",
            18 => "VDC_GetError",
            19 => "VDC_Complete",
            _ => return None,
        })
    }
}

impl From<u32> for CommandCode {
    fn from(v: u32) -> CommandCode {
        CommandCode(v)
    }
}

impl fmt::Debug for CommandCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "VDC_Unknown({})", self.0),
        }
    }
}

impl fmt::Display for CommandCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `VDWhence`: the origin of a random-access `VDC_SetPosition`, carried in `size`.
pub mod whence {
    /// From the beginning of the data.
    pub const BEGINNING: u32 = 0;
    /// From the current position.
    pub const CURRENT: u32 = 1;
    /// From the end of the data.
    pub const END: u32 = 2;
}

/// Feature bits (`VDF_*`, reference §4.5).
pub mod features {
    /// Removable media.
    pub const REMOVABLE: u32 = 0x0000_0001;
    /// Supports `VDC_Rewind`.
    pub const REWIND: u32 = 0x0000_0002;
    /// Supports Get/SetPosition.
    pub const POSITION: u32 = 0x0000_0010;
    /// Supports `VDC_SkipBlocks`.
    pub const SKIP_BLOCKS: u32 = 0x0000_0020;
    /// Can position backwards.
    pub const REVERSE_POSITION: u32 = 0x0000_0040;
    /// Supports `VDC_Discard`.
    pub const DISCARD: u32 = 0x0000_0080;
    /// Supports filemarks.
    pub const FILE_MARKS: u32 = 0x0000_0100;
    /// Disk-like: Read/Write carry byte positions.
    pub const RANDOM_ACCESS: u32 = 0x0000_0200;
    /// Requests `VDC_PrepareToFreeze`.
    pub const SNAPSHOT_PREPARE: u32 = 0x0000_0400;
    /// Undocumented (VSS file enumeration).
    pub const ENUM_FROZEN_FILES: u32 = 0x0000_0800;
    /// Undocumented (SQL Writer).
    pub const VSS_WRITER: u32 = 0x0000_1000;
    /// Asks for `VDC_Complete`.
    pub const REQUEST_COMPLETE: u32 = 0x0000_2000;
    /// Server: the operation writes media (BACKUP).
    pub const WRITE_MEDIA: u32 = 0x0001_0000;
    /// Server: the operation reads media (RESTORE).
    pub const READ_MEDIA: u32 = 0x0002_0000;
    /// Server: `VDC_Complete` will be sent.
    pub const COMPLETE_ENABLED: u32 = 0x0004_0000;
    /// Undocumented.
    pub const LATCH_STATS: u32 = 0x8000_0000;
    /// A pure sequential stream.
    pub const LIKE_PIPE: u32 = 0;
    /// Tape-like.
    pub const LIKE_TAPE: u32 =
        FILE_MARKS | REMOVABLE | REWIND | POSITION | SKIP_BLOCKS | REVERSE_POSITION;
    /// Disk-like.
    pub const LIKE_DISK: u32 = RANDOM_ACCESS;
    /// The bits a client may request.
    pub const CLIENT_MASK: u32 = REMOVABLE
        | REWIND
        | POSITION
        | SKIP_BLOCKS
        | REVERSE_POSITION
        | DISCARD
        | FILE_MARKS
        | RANDOM_ACCESS
        | SNAPSHOT_PREPARE
        | ENUM_FROZEN_FILES
        | VSS_WRITER
        | REQUEST_COMPLETE
        | LATCH_STATS;
    /// The bits only the server sets.
    pub const SERVER_MASK: u32 = WRITE_MEDIA | READ_MEDIA | COMPLETE_ENABLED;
}

/// Win32 completion codes used by the protocol (reference §4.7).
pub mod completion {
    /// Success.
    pub const ERROR_SUCCESS: u32 = 0;
    /// `SendCommand` on a device that is not active.
    pub const ERROR_INVALID_HANDLE: u32 = 6;
    /// Defined in the Linux `vdi.h`.
    pub const ERROR_ARENA_TRASHED: u32 = 7;
    /// The parameter is invalid (a send with a bad buffer or size).
    pub const ERROR_INVALID_PARAMETER: u32 = 87;
    /// The data is invalid (a completion that claimed more bytes than asked for).
    pub const ERROR_INVALID_DATA: u32 = 13;
    /// Internal misuse (used by some clients).
    pub const ERROR_BAD_ENVIRONMENT: u32 = 10;
    /// Read: no more data.
    pub const ERROR_HANDLE_EOF: u32 = 38;
    /// Some clients fail a backup with it.
    pub const ERROR_HANDLE_DISK_FULL: u32 = 39;
    /// The command is not supported by the client.
    pub const ERROR_NOT_SUPPORTED: u32 = 50;
    /// Write: the device is full.
    pub const ERROR_DISK_FULL: u32 = 112;
    /// The set was aborted.
    pub const ERROR_OPERATION_ABORTED: u32 = 995;
    /// Write: entered the end-of-media warning zone.
    pub const ERROR_END_OF_MEDIA: u32 = 1100;
    /// Read through a filemark.
    pub const ERROR_FILEMARK_DETECTED: u32 = 1101;
    /// Tape positioning.
    pub const ERROR_BEGINNING_OF_MEDIA: u32 = 1102;
    /// Tape setmark.
    pub const ERROR_SETMARK_DETECTED: u32 = 1103;
    /// Read: no more data (treated like `ERROR_HANDLE_EOF`).
    pub const ERROR_NO_DATA_DETECTED: u32 = 1104;
    /// Commands rejected or flushed in the IO-ERROR state.
    pub const ERROR_IO_DEVICE: u32 = 1117;
    /// Write: physical end of media.
    pub const ERROR_EOM_OVERFLOW: u32 = 1129;
    /// `SendCommand` found the queue full.
    pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;
}
