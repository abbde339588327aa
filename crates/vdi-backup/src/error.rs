//! What went wrong, as a category a script can act on (the exit code a front end gives
//! it) and a sentence a person can act on (the message): the one error type of this crate.
//!
//! ```
//! use vdi_backup::error::{Context, Kind, fail};
//! let e = fail(Kind::DiskFull, "the disk is full").context("storing device 0");
//! assert_eq!(e.kind(), Kind::DiskFull);
//! assert_eq!(e.to_string(), "storing device 0: the disk is full");
//! let io: Result<(), std::io::Error> = Err(std::io::Error::other("boom"));
//! let e = io.context("reading the manifest").unwrap_err();
//! assert_eq!((e.kind(), e.to_string().as_str()), (Kind::Other, "reading the manifest: boom"));
//! ```

use std::fmt;

/// The category of a failure; each has its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Anything else (exit 1).
    Other,
    /// A wrong command line (exit 2, as clap uses).
    Usage,
    /// The source or the backup is missing or unreadable (exit 3).
    Input,
    /// The target or destination exists and `--force` was not given (exit 4).
    TargetExists,
    /// The backup is damaged or incomplete: a missing, truncated or corrupted stream, a
    /// mismatched device count, no completion marker (exit 5).
    Damaged,
    /// The disk (or the media) is full (exit 6).
    DiskFull,
    /// The set name is in use (`VD_E_BUSY`), or the destination is locked by another
    /// backup (exit 7).
    SetBusy,
    /// The other role (the engine or the backup application) died or aborted (exit 8).
    PeerFailed,
    /// Interrupted by SIGINT (Ctrl-C), SIGTERM or SIGHUP (exit 130).
    Interrupted,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::Other,
        Kind::Usage,
        Kind::Input,
        Kind::TargetExists,
        Kind::Damaged,
        Kind::DiskFull,
        Kind::SetBusy,
        Kind::PeerFailed,
        Kind::Interrupted,
    ];

    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Other => 1,
            Kind::Usage => 2,
            Kind::Input => 3,
            Kind::TargetExists => 4,
            Kind::Damaged => 5,
            Kind::DiskFull => 6,
            Kind::SetBusy => 7,
            Kind::PeerFailed => 8,
            Kind::Interrupted => 130,
        }
    }

    /// The kind behind an exit code (of a child `vdi` process).
    pub fn from_exit_code(code: i32) -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| i32::from(k.exit_code()) == code)
            .unwrap_or(Kind::Other)
    }

    /// What the exit code means, as the documented table says it (`vdi --help`, the
    /// README).
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::Other => "other error (the message says what went wrong)",
            Kind::Usage => {
                "wrong command line: an unknown option or a bad value, a --devices count other than the backup's, a binary stream into a terminal, a sqlite: target for a backup that holds no database, - with standard input or output closed, an encrypted backup without its key (--key-file, --passphrase-env, --passphrase-fd) or with a wrong one"
            }
            Kind::Input => {
                "the source, the backup, the repository or a backup id is missing or unreadable (also: a directory as SOURCE, permission denied, a set that does not admit this user, an S3 bucket that is missing, refuses the credentials or cannot be reached)"
            }
            Kind::TargetExists => {
                "the target or destination exists (use --force), or is something vdi will not replace (a device, a FIFO, a link, a database another process has open)"
            }
            Kind::Damaged => "the backup is damaged or incomplete",
            Kind::DiskFull => {
                "disk full: the destination, or where the target is written (a restored file or database)"
            }
            Kind::SetBusy => "the set name is in use, or DEST is locked by another backup",
            Kind::PeerFailed => {
                "the engine or the backup application died, aborted, stalled (--stall-timeout) or never came (--wait)"
            }
            Kind::Interrupted => "interrupted (SIGINT, SIGTERM or SIGHUP)",
        }
    }

    /// The exit-code table: `  CODE  meaning` lines, wrapped at `width` columns.
    pub fn exit_code_table(width: usize) -> String {
        let mut out = String::from("   0  success\n");
        for k in Kind::ALL {
            let mut line = format!("{:>4}  ", k.exit_code());
            let indent = line.len();
            for w in k.meaning().split(' ') {
                let cur = line.rsplit('\n').next().map_or(0, str::len);
                if cur + 1 + w.len() > width && cur > indent {
                    line.push('\n');
                    line.push_str(&" ".repeat(indent));
                } else if cur > indent {
                    line.push(' ');
                }
                line.push_str(w);
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// A short name for JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Other => "error",
            Kind::Usage => "usage",
            Kind::Input => "input",
            Kind::TargetExists => "target-exists",
            Kind::Damaged => "damaged",
            Kind::DiskFull => "disk-full",
            Kind::SetBusy => "set-busy",
            Kind::PeerFailed => "peer-failed",
            Kind::Interrupted => "interrupted",
        }
    }

    /// The kind named by [`Kind::name`].
    pub fn from_name(s: &str) -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .unwrap_or(Kind::Other)
    }
}

/// A failure: its category, the message it was made with, and what was being done when
/// it happened (contexts, outermost first). It prints as `context: ...: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    /// Made by [`fail`] (with a kind chosen for it), rather than converted from another
    /// error.
    kinded: bool,
    message: String,
    contexts: Vec<String>,
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure of category `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            kinded: true,
            message: message.into(),
            contexts: Vec::new(),
        }
    }

    /// A failure of no particular category (exit 1), such as a system error passed up.
    pub fn other(message: impl Into<String>) -> Error {
        Error {
            kinded: false,
            ..Error::new(Kind::Other, message)
        }
    }

    /// The category.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What the failure says on its own, without the contexts around it: for a failure
    /// made with [`fail`], the sentence written for it (a report to another process
    /// carries that); for any other, the whole message.
    pub fn own_message(&self) -> String {
        if self.kinded {
            self.message.clone()
        } else {
            self.to_string()
        }
    }

    /// The same failure, said in the context of `what` (`what: message`).
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.contexts.insert(0, what.to_string());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.contexts {
            write!(f, "{c}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An error of category `kind`.
pub fn fail(kind: Kind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
}

/// The category of an error.
pub fn kind_of(e: &Error) -> Kind {
    e.kind()
}

macro_rules! other_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::other(e.to_string())
            }
        }
    )*};
}

other_from!(
    std::io::Error,
    rusqlite::Error,
    serde_json::Error,
    crate::format::stream::StreamError,
    std::num::ParseIntError
);

/// Says what was being done when a call failed: `Result::context` and
/// `Result::with_context`, for any error that becomes an [`Error`] (keeping its kind)
/// and for `Option`.
pub trait Context<T> {
    /// `what: the error`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
    /// `what(): the error`; `what` runs only on failure.
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::other(what.to_string()))
    }
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| Error::other(what().to_string()))
    }
}

/// A stored backup that cannot be read: [`Kind::Input`] when it cannot be read at all,
/// [`Kind::Damaged`] when what is there is not a complete backup.
impl From<crate::format::manifest::BackupError> for Error {
    fn from(e: crate::format::manifest::BackupError) -> Error {
        let kind = match e {
            crate::format::manifest::BackupError::Unreadable(_) => Kind::Input,
            crate::format::manifest::BackupError::Key(_) => Kind::Usage,
            _ => Kind::Damaged,
        };
        Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_exit_code(i32::from(k.exit_code())), k);
            assert_eq!(Kind::from_name(k.name()), k);
        }
        let e = fail(Kind::DiskFull, "full").context("while storing");
        assert_eq!(kind_of(&e), Kind::DiskFull);
        assert_eq!(e.to_string(), "while storing: full");
        let io: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("x"));
        assert_eq!(io.context("c").unwrap_err().kind(), Kind::Other);
    }
}
