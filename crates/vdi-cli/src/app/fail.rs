//! What went wrong, as a category a script can act on (the exit code) and a sentence a
//! person can act on (the message).

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
    /// The set name is in use (`VD_E_BUSY`, exit 7).
    SetBusy,
    /// The other role (the engine or the backup application) died or aborted (exit 8).
    PeerFailed,
    /// Interrupted by SIGINT (Ctrl-C), SIGTERM or SIGHUP (exit 130).
    Interrupted,
}

impl Kind {
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
        match code {
            2 => Kind::Usage,
            3 => Kind::Input,
            4 => Kind::TargetExists,
            5 => Kind::Damaged,
            6 => Kind::DiskFull,
            7 => Kind::SetBusy,
            8 => Kind::PeerFailed,
            130 => Kind::Interrupted,
            _ => Kind::Other,
        }
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
        [
            Kind::Usage,
            Kind::Input,
            Kind::TargetExists,
            Kind::Damaged,
            Kind::DiskFull,
            Kind::SetBusy,
            Kind::PeerFailed,
            Kind::Interrupted,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .unwrap_or(Kind::Other)
    }
}

/// A failure with its category.
#[derive(Debug)]
pub struct Failure {
    /// The category.
    pub kind: Kind,
    /// The whole message.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error of category `kind`.
pub fn fail(kind: Kind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        kind,
        message: message.into(),
    })
}

/// The category of an error (the first [`Failure`] in its chain; `Other` if none).
pub fn kind_of(e: &anyhow::Error) -> Kind {
    e.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map_or(Kind::Other, |f| f.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for k in [
            Kind::Other,
            Kind::Usage,
            Kind::Input,
            Kind::TargetExists,
            Kind::Damaged,
            Kind::DiskFull,
            Kind::SetBusy,
            Kind::PeerFailed,
            Kind::Interrupted,
        ] {
            assert_eq!(Kind::from_exit_code(i32::from(k.exit_code())), k);
            assert_eq!(Kind::from_name(k.name()), k);
        }
        let e = fail(Kind::DiskFull, "full").context("while storing");
        assert_eq!(kind_of(&e), Kind::DiskFull);
        assert_eq!(kind_of(&anyhow::anyhow!("x")), Kind::Other);
    }
}
