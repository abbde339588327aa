//! The protocol's numbers: command codes, feature bits, Win32 completion codes.
//!
//! The values are those of `vdi.h`, so that logs and the C
//! ABI show the same numbers as the system we model.
//!
//! The C interface passes them as plain integers (the [`features`] and [`completion`]
//! modules hold those values); the typed API names them with newtypes that print their
//! names: [`CommandCode`], [`Features`], [`CompletionCode`]. Each converts from and to
//! the integer, so either may be passed where the typed API takes `impl Into<...>`.
//!
//! ```
//! use vdi::{CommandCode, CompletionCode, Features, features, completion};
//! assert_eq!(CommandCode::WRITE.value(), 2);
//! assert_eq!(CommandCode::from(19).name(), Some("VDC_Complete"));
//! assert_eq!(features::LIKE_TAPE, 0x173);
//! assert_eq!(completion::ERROR_IO_DEVICE, 1117);
//! let f = Features::WRITE_MEDIA | Features::REQUEST_COMPLETE;
//! assert!(f.contains(Features::WRITE_MEDIA));
//! assert_eq!(f.to_string(), "VDF_RequestComplete | VDF_WriteMedia");
//! assert_eq!(CompletionCode::from(1117).to_string(), "ERROR_IO_DEVICE (1117)");
//! assert!(CompletionCode::SUCCESS.is_success());
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

/// Feature bits (`VDF_*`).
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

/// Win32 completion codes used by the protocol.
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

macro_rules! named_values {
    ($ty:ident, $( $name:ident = $module:ident :: $value:ident, $cname:literal; )*) => {
        impl $ty {
            $(
                #[doc = concat!("`", $cname, "`.")]
                pub const $name: $ty = $ty($module::$value);
            )*
            /// Every named value, with its name as the C header spells it.
            pub const NAMED: &'static [($ty, &'static str)] = &[ $( ($ty::$name, $cname) ),* ];
        }
    };
}

/// A Win32 completion code, as a client reports it ([`Command::complete`]) and a callback
/// receives it ([`Completion::completion`]). Any value may be carried; the named ones
/// print their names.
///
/// [`Command::complete`]: crate::Command::complete
/// [`Completion::completion`]: crate::Completion::completion
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CompletionCode(u32);

named_values!(CompletionCode,
    SUCCESS = completion::ERROR_SUCCESS, "ERROR_SUCCESS";
    INVALID_HANDLE = completion::ERROR_INVALID_HANDLE, "ERROR_INVALID_HANDLE";
    ARENA_TRASHED = completion::ERROR_ARENA_TRASHED, "ERROR_ARENA_TRASHED";
    BAD_ENVIRONMENT = completion::ERROR_BAD_ENVIRONMENT, "ERROR_BAD_ENVIRONMENT";
    INVALID_DATA = completion::ERROR_INVALID_DATA, "ERROR_INVALID_DATA";
    HANDLE_EOF = completion::ERROR_HANDLE_EOF, "ERROR_HANDLE_EOF";
    HANDLE_DISK_FULL = completion::ERROR_HANDLE_DISK_FULL, "ERROR_HANDLE_DISK_FULL";
    NOT_SUPPORTED = completion::ERROR_NOT_SUPPORTED, "ERROR_NOT_SUPPORTED";
    INVALID_PARAMETER = completion::ERROR_INVALID_PARAMETER, "ERROR_INVALID_PARAMETER";
    DISK_FULL = completion::ERROR_DISK_FULL, "ERROR_DISK_FULL";
    OPERATION_ABORTED = completion::ERROR_OPERATION_ABORTED, "ERROR_OPERATION_ABORTED";
    END_OF_MEDIA = completion::ERROR_END_OF_MEDIA, "ERROR_END_OF_MEDIA";
    FILEMARK_DETECTED = completion::ERROR_FILEMARK_DETECTED, "ERROR_FILEMARK_DETECTED";
    BEGINNING_OF_MEDIA = completion::ERROR_BEGINNING_OF_MEDIA, "ERROR_BEGINNING_OF_MEDIA";
    SETMARK_DETECTED = completion::ERROR_SETMARK_DETECTED, "ERROR_SETMARK_DETECTED";
    NO_DATA_DETECTED = completion::ERROR_NO_DATA_DETECTED, "ERROR_NO_DATA_DETECTED";
    IO_DEVICE = completion::ERROR_IO_DEVICE, "ERROR_IO_DEVICE";
    EOM_OVERFLOW = completion::ERROR_EOM_OVERFLOW, "ERROR_EOM_OVERFLOW";
    NO_SYSTEM_RESOURCES = completion::ERROR_NO_SYSTEM_RESOURCES, "ERROR_NO_SYSTEM_RESOURCES";
);

impl CompletionCode {
    /// The numeric value.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// Whether this is `ERROR_SUCCESS`.
    pub const fn is_success(self) -> bool {
        self.0 == completion::ERROR_SUCCESS
    }

    /// The header's name, or `None` for a code this library does not name.
    pub fn name(self) -> Option<&'static str> {
        CompletionCode::NAMED
            .iter()
            .find(|(c, _)| *c == self)
            .map(|(_, n)| *n)
    }
}

impl From<u32> for CompletionCode {
    fn from(v: u32) -> CompletionCode {
        CompletionCode(v)
    }
}

impl From<CompletionCode> for u32 {
    fn from(c: CompletionCode) -> u32 {
        c.0
    }
}

impl PartialEq<u32> for CompletionCode {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for CompletionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "completion code {}", self.0),
        }
    }
}

impl fmt::Display for CompletionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A set of feature bits (`VDF_*`): what the client asks for in its configuration and what
/// the server adds at `BeginConfiguration`. Prints as the names of its bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u32);

named_values!(Features,
    REMOVABLE = features::REMOVABLE, "VDF_Removable";
    REWIND = features::REWIND, "VDF_Rewind";
    POSITION = features::POSITION, "VDF_Position";
    SKIP_BLOCKS = features::SKIP_BLOCKS, "VDF_SkipBlocks";
    REVERSE_POSITION = features::REVERSE_POSITION, "VDF_ReversePosition";
    DISCARD = features::DISCARD, "VDF_Discard";
    FILE_MARKS = features::FILE_MARKS, "VDF_FileMarks";
    RANDOM_ACCESS = features::RANDOM_ACCESS, "VDF_RandomAccess";
    SNAPSHOT_PREPARE = features::SNAPSHOT_PREPARE, "VDF_SnapshotPrepare";
    ENUM_FROZEN_FILES = features::ENUM_FROZEN_FILES, "VDF_EnumFrozenFiles";
    VSS_WRITER = features::VSS_WRITER, "VDF_VSSWriter";
    REQUEST_COMPLETE = features::REQUEST_COMPLETE, "VDF_RequestComplete";
    WRITE_MEDIA = features::WRITE_MEDIA, "VDF_WriteMedia";
    READ_MEDIA = features::READ_MEDIA, "VDF_ReadMedia";
    COMPLETE_ENABLED = features::COMPLETE_ENABLED, "VDF_CompleteEnabled";
    LATCH_STATS = features::LATCH_STATS, "VDF_LatchStats";
);

impl Features {
    /// No bits: a pure sequential stream (`VDF_LikePipe`).
    pub const NONE: Features = Features(0);
    /// `VDF_LikeTape`.
    pub const LIKE_TAPE: Features = Features(features::LIKE_TAPE);
    /// `VDF_LikeDisk`.
    pub const LIKE_DISK: Features = Features(features::LIKE_DISK);

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    pub const fn intersects(self, other: Features) -> bool {
        self.0 & other.0 != 0
    }

    /// Bits this library has no name for.
    pub const fn unknown(self) -> u32 {
        let mut known = 0;
        let mut i = 0;
        while i < Features::NAMED.len() {
            known |= Features::NAMED[i].0.0;
            i += 1;
        }
        self.0 & !known
    }
}

impl From<u32> for Features {
    fn from(v: u32) -> Features {
        Features(v)
    }
}

impl From<Features> for u32 {
    fn from(f: Features) -> u32 {
        f.0
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, o: Features) -> Features {
        Features(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Features {
    fn bitor_assign(&mut self, o: Features) {
        self.0 |= o.0;
    }
}

impl std::ops::BitAnd for Features {
    type Output = Features;
    fn bitand(self, o: Features) -> Features {
        Features(self.0 & o.0)
    }
}

impl std::ops::Not for Features {
    type Output = Features;
    fn not(self) -> Features {
        Features(!self.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = Features::NAMED
            .iter()
            .filter(|(b, _)| self.contains(*b))
            .map(|(_, n)| *n)
            .collect();
        names.sort_unstable();
        let unknown = self.unknown();
        if names.is_empty() && unknown == 0 {
            return f.write_str("VDF_LikePipe (0)");
        }
        let mut text = names.join(" | ");
        if unknown != 0 {
            if !text.is_empty() {
                text.push_str(" | ");
            }
            text.push_str(&format!("0x{unknown:08X}"));
        }
        f.write_str(&text)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newtypes_name_their_values_and_convert_both_ways() {
        assert_eq!(u32::from(CompletionCode::IO_DEVICE), 1117);
        assert_eq!(
            CompletionCode::from(995).name(),
            Some("ERROR_OPERATION_ABORTED")
        );
        assert_eq!(
            CompletionCode::from(12345).to_string(),
            "completion code 12345"
        );
        assert_eq!(CompletionCode::NAMED.len(), 19);
        let f = Features::from(features::LIKE_TAPE);
        assert!(f.contains(Features::FILE_MARKS) && !f.contains(Features::RANDOM_ACCESS));
        assert_eq!(Features::NONE.to_string(), "VDF_LikePipe (0)");
        assert_eq!(
            Features::from(0x0001_0000 | 0x0800_0000).to_string(),
            "VDF_WriteMedia | 0x08000000"
        );
        assert_eq!(Features::from(0x0800_0000).unknown(), 0x0800_0000);
        assert_eq!(
            (Features::WRITE_MEDIA | Features::READ_MEDIA).bits(),
            0x0003_0000
        );
    }
}
