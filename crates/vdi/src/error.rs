//! Result codes of the Virtual Device Interface and the library's error type.
//!
//! Every failing call returns a [`VdError`]: the documented `VD_E_*` code (so logs and
//! the C ABI speak the numbers of the system we model) plus a [`Reason`] that says what
//! actually happened and, where a person can act, what to change.
//!
//! ```
//! use vdi::{VdError, ErrorCode, Reason};
//! let e = VdError::new(ErrorCode::Abort, Reason::PeerDied { peer: "server" });
//! assert_eq!(e.code().as_hresult(), 0x8077_0004_u32 as i32);
//! assert!(e.to_string().contains("server"));
//! ```

use std::fmt;

/// `NOERROR` / `S_OK`.
pub const NOERROR: i32 = 0;

/// A documented VDI result code (`vdierror.h`: `0x8077_0000 | n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `VD_E_NOTOPEN` (2): object not open.
    NotOpen,
    /// `VD_E_TIMEOUT` (3): the wait timed out.
    Timeout,
    /// `VD_E_ABORT` (4): the set is aborted; only termination actions are possible.
    Abort,
    /// `VD_E_SECURITY` (5): access to the set was refused.
    Security,
    /// `VD_E_INVALID` (6): an invalid parameter.
    Invalid,
    /// `VD_E_INSTANCE_NAME` (7): instance name not recognised.
    InstanceName,
    /// `VD_E_NOTSUPPORTED` (9): the requested configuration is invalid.
    NotSupported,
    /// `VD_E_MEMORY` (10): out of memory.
    Memory,
    /// `VD_E_UNEXPECTED` (11): an unexpected internal or system error.
    Unexpected,
    /// `VD_E_PROTOCOL` (12): the call is not allowed in this state.
    Protocol,
    /// `VD_E_OPEN` (13): all devices are open (or, from `Close`, devices were still open).
    Open,
    /// `VD_E_CLOSE` (14): the device is now closed.
    Close,
    /// `VD_E_BUSY` (15): resource busy (for example, a set name already in use).
    Busy,
    /// `VD_E_QUEUE_FULL` (`0x80770010`, undefined upstream): the device's queue is full.
    QueueFull,
    /// `VD_E_IO_ERROR` (`0x80770011`, undefined upstream): the device is in IO-ERROR.
    IoError,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::NotOpen,
        ErrorCode::Timeout,
        ErrorCode::Abort,
        ErrorCode::Security,
        ErrorCode::Invalid,
        ErrorCode::InstanceName,
        ErrorCode::NotSupported,
        ErrorCode::Memory,
        ErrorCode::Unexpected,
        ErrorCode::Protocol,
        ErrorCode::Open,
        ErrorCode::Close,
        ErrorCode::Busy,
        ErrorCode::QueueFull,
        ErrorCode::IoError,
    ];

    /// The low 16 bits of the HRESULT (`VD_ERROR(n)`).
    pub const fn number(self) -> u32 {
        match self {
            ErrorCode::NotOpen => 2,
            ErrorCode::Timeout => 3,
            ErrorCode::Abort => 4,
            ErrorCode::Security => 5,
            ErrorCode::Invalid => 6,
            ErrorCode::InstanceName => 7,
            ErrorCode::NotSupported => 9,
            ErrorCode::Memory => 10,
            ErrorCode::Unexpected => 11,
            ErrorCode::Protocol => 12,
            ErrorCode::Open => 13,
            ErrorCode::Close => 14,
            ErrorCode::Busy => 15,
            ErrorCode::QueueFull => 0x10,
            ErrorCode::IoError => 0x11,
        }
    }

    /// The full code as the C API returns it (a negative `int`, `0x8077_00nn`).
    pub const fn as_hresult(self) -> i32 {
        (0x8077_0000_u32 | self.number()) as i32
    }

    /// The code for an HRESULT value, if it is one of ours.
    pub fn from_hresult(value: i32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_hresult() == value)
    }

    /// The name used in the headers (`VD_E_ABORT`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::NotOpen => "VD_E_NOTOPEN",
            ErrorCode::Timeout => "VD_E_TIMEOUT",
            ErrorCode::Abort => "VD_E_ABORT",
            ErrorCode::Security => "VD_E_SECURITY",
            ErrorCode::Invalid => "VD_E_INVALID",
            ErrorCode::InstanceName => "VD_E_INSTANCE_NAME",
            ErrorCode::NotSupported => "VD_E_NOTSUPPORTED",
            ErrorCode::Memory => "VD_E_MEMORY",
            ErrorCode::Unexpected => "VD_E_UNEXPECTED",
            ErrorCode::Protocol => "VD_E_PROTOCOL",
            ErrorCode::Open => "VD_E_OPEN",
            ErrorCode::Close => "VD_E_CLOSE",
            ErrorCode::Busy => "VD_E_BUSY",
            ErrorCode::QueueFull => "VD_E_QUEUE_FULL",
            ErrorCode::IoError => "VD_E_IO_ERROR",
        }
    }

    /// The Win32 completion code a `SendCommand` callback receives when sending fails
    /// with this code.
    pub const fn send_completion_code(self) -> u32 {
        match self {
            ErrorCode::QueueFull => crate::completion::ERROR_NO_SYSTEM_RESOURCES,
            ErrorCode::IoError => crate::completion::ERROR_IO_DEVICE,
            ErrorCode::Abort => crate::completion::ERROR_OPERATION_ABORTED,
            ErrorCode::Invalid => crate::completion::ERROR_INVALID_PARAMETER,
            _ => crate::completion::ERROR_INVALID_HANDLE,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:08X})", self.name(), self.as_hresult() as u32)
    }
}

/// Why the set was aborted, as recorded in the shared abort word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortCause {
    /// The client called `SignalAbort` (or `Close` with devices open).
    ClientSignalled,
    /// The server called `SignalAbort` (or `Close` with devices open).
    ServerSignalled,
    /// The server process went away without closing its devices.
    ServerDied,
    /// The primary client process went away.
    ClientDied,
    /// A secondary client process went away while it still served devices.
    SecondaryDied,
    /// `serverTimeOut` expired twice with commands outstanding.
    ServerTimeout,
    /// A process found the shared state corrupt and stopped the set.
    ProtocolViolation,
    /// An unknown cause (a value we do not know was found in shared memory).
    Unknown,
}

impl AbortCause {
    pub(crate) const fn to_word(self) -> u32 {
        match self {
            AbortCause::ClientSignalled => 1,
            AbortCause::ServerSignalled => 2,
            AbortCause::ServerDied => 3,
            AbortCause::ClientDied => 4,
            AbortCause::SecondaryDied => 5,
            AbortCause::ServerTimeout => 6,
            AbortCause::ProtocolViolation => 7,
            AbortCause::Unknown => 8,
        }
    }

    pub(crate) const fn from_word(word: u32) -> AbortCause {
        match word {
            1 => AbortCause::ClientSignalled,
            2 => AbortCause::ServerSignalled,
            3 => AbortCause::ServerDied,
            4 => AbortCause::ClientDied,
            5 => AbortCause::SecondaryDied,
            6 => AbortCause::ServerTimeout,
            7 => AbortCause::ProtocolViolation,
            _ => AbortCause::Unknown,
        }
    }
}

impl fmt::Display for AbortCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortCause::ClientSignalled => "the client signalled abort",
            AbortCause::ServerSignalled => "the server signalled abort",
            AbortCause::ServerDied => "the server process went away without closing its devices",
            AbortCause::ClientDied => "the client process went away",
            AbortCause::SecondaryDied => {
                "a secondary client process went away while it still served devices"
            }
            AbortCause::ServerTimeout => {
                "no command completed for two serverTimeOut intervals while commands were outstanding"
            }
            AbortCause::ProtocolViolation => "a process found the shared state corrupt",
            AbortCause::Unknown => "an unknown cause",
        })
    }
}

/// Who holds a set name (the credentials the kernel recorded for its socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameHolder {
    /// The user of the process that created the set.
    pub uid: u32,
    /// That process.
    pub pid: u32,
}

/// What went wrong, beyond the code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The call is not allowed in the object's current state.
    WrongState {
        /// The call that was refused.
        call: &'static str,
        /// The state the object is in.
        state: &'static str,
    },
    /// The set was aborted.
    Aborted(AbortCause),
    /// The peer process went away.
    PeerDied {
        /// Which peer (`"server"`, `"client"`, `"primary client"`).
        peer: &'static str,
    },
    /// A wait ran out of time.
    TimedOut,
    /// A parameter or configuration value is invalid; the text says which and why.
    InvalidArgument(String),
    /// Access was refused; the text says who and what to change.
    AccessDenied(String),
    /// No set of that name exists (or none that this process may see).
    NoSuchSet(String),
    /// The set name is already in use; `holder` says who holds it, when that process
    /// could be asked (it may have gone away meanwhile).
    NameInUse {
        /// What happened and what to do.
        message: String,
        /// The creator of the existing set.
        holder: Option<NameHolder>,
    },
    /// The peer wrote something into shared memory or the socket that breaks the protocol.
    ProtocolViolation(String),
    /// All devices are already open.
    AllDevicesOpen,
    /// The server closed the device.
    DeviceClosed,
    /// The device is in the IO-ERROR state.
    DeviceIoError,
    /// The device's command queue is full.
    QueueFull,
    /// Memory could not be obtained.
    OutOfMemory(String),
    /// A system call failed.
    System {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        errno: i32,
    },
    /// Devices were still open when the set was closed; the set was aborted.
    DevicesStillOpen,
    /// The async client could not wait on the tokio runtime (called outside one, or it is
    /// shutting down); the text says which.
    AsyncRuntime(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::WrongState { call, state } => {
                write!(f, "{call} is not allowed while the set is {state}")
            }
            Reason::Aborted(cause) => write!(f, "the set was aborted: {cause}"),
            Reason::PeerDied { peer } => write!(f, "the {peer} process went away"),
            Reason::TimedOut => f.write_str("the wait timed out"),
            Reason::InvalidArgument(s)
            | Reason::AccessDenied(s)
            | Reason::NoSuchSet(s)
            | Reason::NameInUse { message: s, .. }
            | Reason::OutOfMemory(s)
            | Reason::AsyncRuntime(s) => f.write_str(s),
            Reason::ProtocolViolation(s) => write!(f, "protocol violation by the peer: {s}"),
            Reason::AllDevicesOpen => f.write_str("all devices are already open"),
            Reason::DeviceClosed => f.write_str("the server closed the device"),
            Reason::DeviceIoError => f.write_str(
                "the device is in the IO-ERROR state; send VDC_ClearError, close the device or abort",
            ),
            Reason::QueueFull => f.write_str("the device's command queue is full"),
            Reason::System { op, errno } => write!(
                f,
                "{op} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Reason::DevicesStillOpen => {
                f.write_str("devices were still open at close; the set was aborted")
            }
        }
    }
}

/// The error every fallible call of this crate returns: a `VD_E_*` code and a reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct VdError {
    code: ErrorCode,
    reason: Reason,
}

impl VdError {
    /// Builds an error from a code and a reason.
    pub fn new(code: ErrorCode, reason: Reason) -> VdError {
        VdError { code, reason }
    }

    /// The documented code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// What happened.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The code as the C API returns it.
    pub fn hresult(&self) -> i32 {
        self.code.as_hresult()
    }

    pub(crate) fn protocol(call: &'static str, state: &'static str) -> VdError {
        VdError::new(ErrorCode::Protocol, Reason::WrongState { call, state })
    }

    pub(crate) fn invalid(what: impl Into<String>) -> VdError {
        VdError::new(ErrorCode::Invalid, Reason::InvalidArgument(what.into()))
    }

    pub(crate) fn not_supported(what: impl Into<String>) -> VdError {
        VdError::new(
            ErrorCode::NotSupported,
            Reason::InvalidArgument(what.into()),
        )
    }

    pub(crate) fn aborted(cause: AbortCause) -> VdError {
        VdError::new(ErrorCode::Abort, Reason::Aborted(cause))
    }

    pub(crate) fn timeout() -> VdError {
        VdError::new(ErrorCode::Timeout, Reason::TimedOut)
    }

    pub(crate) fn violation(what: impl Into<String>) -> VdError {
        VdError::new(ErrorCode::Protocol, Reason::ProtocolViolation(what.into()))
    }

    pub(crate) fn system(op: &'static str, err: rustix::io::Errno) -> VdError {
        VdError::new(
            ErrorCode::Unexpected,
            Reason::System {
                op,
                errno: err.raw_os_error(),
            },
        )
    }
}

/// The crate's result type.
pub type Result<T, E = VdError> = std::result::Result<T, E>;
