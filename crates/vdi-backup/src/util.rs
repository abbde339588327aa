//! What both roles say about VDI: device names, completion codes, and library errors
//! turned into failures a person can act on.

use vdi::{AbortCause, ErrorCode, Reason, VdError, completion};

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::{Kind, fail};

/// `ERROR_CRC` (23): data error (cyclic redundancy check). Not in the library's list.
pub const ERROR_CRC: u32 = 23;
/// `ERROR_WRITE_FAULT` (29): the device cannot be written.
pub const ERROR_WRITE_FAULT: u32 = 29;
/// `ERROR_READ_FAULT` (30): the device cannot be read.
pub const ERROR_READ_FAULT: u32 = 30;

/// The name of device `i` of set `set`: device 0 has the set's name, device `i` is
/// `SET#i` (both roles use this convention).
pub fn device_name(set: &str, i: u32) -> String {
    if i == 0 {
        set.to_owned()
    } else {
        format!("{set}#{i}")
    }
}

/// The completion codes the tool knows: code, name, meaning.
const CODES: &[(u32, &str, &str)] = &[
    (completion::ERROR_SUCCESS, "ERROR_SUCCESS", "success"),
    (
        completion::ERROR_INVALID_HANDLE,
        "ERROR_INVALID_HANDLE",
        "the device is not active",
    ),
    (
        completion::ERROR_INVALID_DATA,
        "ERROR_INVALID_DATA",
        "the data is invalid",
    ),
    (
        completion::ERROR_INVALID_PARAMETER,
        "ERROR_INVALID_PARAMETER",
        "a parameter is invalid",
    ),
    (
        completion::ERROR_HANDLE_EOF,
        "ERROR_HANDLE_EOF",
        "the end of the data was reached",
    ),
    (
        completion::ERROR_HANDLE_DISK_FULL,
        "ERROR_HANDLE_DISK_FULL",
        "the media is full",
    ),
    (
        completion::ERROR_NOT_SUPPORTED,
        "ERROR_NOT_SUPPORTED",
        "the command is not supported",
    ),
    (
        completion::ERROR_DISK_FULL,
        "ERROR_DISK_FULL",
        "the media is full",
    ),
    (
        completion::ERROR_OPERATION_ABORTED,
        "ERROR_OPERATION_ABORTED",
        "the operation was aborted",
    ),
    (
        completion::ERROR_END_OF_MEDIA,
        "ERROR_END_OF_MEDIA",
        "the end of the media was reached",
    ),
    (
        completion::ERROR_NO_DATA_DETECTED,
        "ERROR_NO_DATA_DETECTED",
        "no more data on the media",
    ),
    (
        completion::ERROR_IO_DEVICE,
        "ERROR_IO_DEVICE",
        "an I/O error on the device",
    ),
    (
        completion::ERROR_EOM_OVERFLOW,
        "ERROR_EOM_OVERFLOW",
        "the physical end of the media was reached",
    ),
    (
        completion::ERROR_NO_SYSTEM_RESOURCES,
        "ERROR_NO_SYSTEM_RESOURCES",
        "out of system resources",
    ),
    (
        ERROR_CRC,
        "ERROR_CRC",
        "a data error (cyclic redundancy check)",
    ),
    (
        ERROR_WRITE_FAULT,
        "ERROR_WRITE_FAULT",
        "the device cannot be written",
    ),
    (
        ERROR_READ_FAULT,
        "ERROR_READ_FAULT",
        "the device cannot be read",
    ),
];

/// `ERROR_DISK_FULL (112)`.
pub fn code_name(code: u32) -> String {
    let name = CODES.iter().find(|c| c.0 == code).map_or("error", |c| c.1);
    format!("{name} ({code})")
}

/// What a completion code means, in a few words.
pub fn code_meaning(code: u32) -> &'static str {
    CODES
        .iter()
        .find(|c| c.0 == code)
        .map_or("a Win32 error code this tool does not know", |c| c.2)
}

/// The code named `name` (`ERROR_IO_DEVICE` or `IO_DEVICE`, any case).
pub fn code_by_name(name: &str) -> Option<u32> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("ERROR_") {
        up
    } else {
        format!("ERROR_{up}")
    };
    CODES.iter().find(|c| c.1 == full).map(|c| c.0)
}

/// Whether a completion code says the media is full.
pub fn is_full_code(code: u32) -> bool {
    matches!(
        code,
        completion::ERROR_DISK_FULL
            | completion::ERROR_HANDLE_DISK_FULL
            | completion::ERROR_EOM_OVERFLOW
    )
}

/// The abort cause of an error, if it is an abort.
pub fn abort_cause(e: &VdError) -> Option<AbortCause> {
    match e.reason() {
        Reason::Aborted(c) => Some(*c),
        _ if e.code() == ErrorCode::Abort => Some(AbortCause::Unknown),
        _ => None,
    }
}

/// A sentence for an abort seen by `me` (`"engine"` or `"backup application"`).
pub fn abort_sentence(cause: AbortCause, me: &str) -> String {
    let other = if me == "engine" {
        "backup application"
    } else {
        "engine"
    };
    match cause {
        AbortCause::ServerDied => {
            "the engine process went away in the middle of the operation".into()
        }
        AbortCause::ClientDied if me == "engine" => {
            "the backup application ended the operation (it closed the set or its process ended) before it was done; its own output says why (one started for a backup refuses a restore, and the reverse)".into()
        }
        AbortCause::ClientDied => {
            "the backup application process went away in the middle of the operation".into()
        }
        AbortCause::ClientSignalled if me == "engine" => {
            "the backup application aborted the operation; its own output says why (one started for a backup refuses a restore, and the reverse)".into()
        }
        AbortCause::ServerSignalled if me != "engine" => "the engine aborted the operation".into(),
        AbortCause::ClientSignalled | AbortCause::ServerSignalled => {
            format!("the operation was aborted (by this {me})")
        }
        AbortCause::ServerTimeout => format!("the {other} stopped answering (server time-out)"),
        AbortCause::SecondaryDied => "a secondary backup application process went away".into(),
        AbortCause::ProtocolViolation => {
            format!("the {other} broke the VDI protocol (the shared state is corrupt)")
        }
        _ => "the operation was aborted".into(),
    }
}

/// A library error as a failure, for role `me`, while doing `what`.
pub fn vd_fail(e: &VdError, me: &str, what: &str) -> crate::Error {
    if let Some(c) = abort_cause(e) {
        return fail(
            Kind::PeerFailed,
            format!("{what}: {}", abort_sentence(c, me)),
        );
    }
    let kind = match e.code() {
        ErrorCode::Busy => Kind::SetBusy,
        ErrorCode::Security => Kind::Input,
        _ => Kind::Other,
    };
    let hint = match (e.code() == ErrorCode::Security, me) {
        (false, _) => "",
        // The engine is refused: by the set (the backup application admits only its own
        // user unless it was started with --allow-group), or by its own rule (it opens a
        // set of another user only with --trust-owner).
        (true, "engine") => {
            " (a set made by another user is opened only with --trust-owner THAT-USER; an engine of another user is admitted only if the backup application was started with --allow-group GROUP)"
        }
        (true, _) => {
            " (an engine of another user is admitted only if this backup application is started with --allow-group GROUP)"
        }
    };
    fail(kind, format!("{what}: {e}{hint}"))
}

/// The other processes that have any of `paths` open (pid and command line), from
/// `/proc/*/fd` (those this user may look at): a database another process has open must
/// not be replaced under it.
pub fn opened_by_others(paths: &[std::path::PathBuf]) -> Vec<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let want: Vec<(u64, u64)> = paths
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if want.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let hit = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| want.contains(&(m.dev(), m.ino())))
        });
        if hit {
            let cmd = std::fs::read(p.path().join("cmdline"))
                .map(|c| {
                    c.split(|&b| b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            out.push((pid, cmd));
        }
    }
    out
}

/// `1 device`, `4 devices`.
pub fn devices(n: u32) -> String {
    if n == 1 {
        "1 device".into()
    } else {
        format!("{n} devices")
    }
}

/// A new set name, unique on this machine.
pub fn new_set_name(tag: &str) -> String {
    let id = random_id();
    format!(
        "vdi-{tag}-{}-{}",
        std::process::id(),
        &crate::format::stream::hex_id(&id)[..8]
    )
}

/// 16 random bytes (from the kernel; time and pid if that fails).
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = blake3::hash(format!("{t}-{}", std::process::id()).as_bytes());
        id.copy_from_slice(&h.as_bytes()[..16]);
    }
    id
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Syncs a directory (so a rename or a new file in it is durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an error means the disk (or quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == io::ErrorKind::StorageFull
}

/// This machine's host name (`unknown` if it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn disk_full_is_recognised() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(28)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(5)));
    }
}
