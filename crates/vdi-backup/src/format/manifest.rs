//! The backup application's storage format: a backup directory holds one stream file per
//! device and a manifest, written last (specified in `docs/backup-format.md`).
//!
//! ```text
//! DEST/
//!   device-0.stream[.zst]   the bytes the engine wrote through device 0 (zstd-compressed
//!   device-1.stream[.zst]   if the backup was made with --compress zstd)
//!   manifest.json           written after every stream is durable; names the set, the
//!                           backup, the device count, sizes, compression and a blake3
//!                           digest per stream; "complete": true is its last field
//! ```
//!
//! The manifest is written to a temporary name, synced, renamed into place and the
//! directory synced: a directory without `manifest.json` is an interrupted backup, never a
//! complete one.
//!
//! ```
//! use vdi_backup::format::manifest::{Compression, stream_file_name};
//! assert_eq!(Compression::parse("zstd:9"), Ok(Compression::Zstd { level: 9 }));
//! assert_eq!(stream_file_name(1, Compression::None), "device-1.stream");
//! assert_eq!(stream_file_name(0, Compression::Zstd { level: 3 }), "device-0.stream.zst");
//! ```

use std::io;

use serde::{Deserialize, Serialize};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The value of the manifest's `format` field.
pub const FORMAT: &str = "vdi-backup";
/// The manifest version of a backup that version-1 readers can read (no encryption, no
/// lz4): what this code writes for such a backup, byte for byte as before.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest version of a backup with encrypted (`encryption`) or lz4-compressed
/// streams, which a version-1 reader cannot read: it refuses the version at once.
pub const FORMAT_VERSION_2: u32 = 2;
/// The zstd frame magic (a compressed stream starts with it).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The lz4 frame magic.
pub const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// How stream files are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Compression {
    /// Stored as the engine wrote them.
    None,
    /// One zstd frame per stream (with zstd's own content checksum).
    Zstd {
        /// The zstd level (1 to 22; 3 is zstd's default; -1 to -100 are zstd's fast
        /// levels, faster than 1 and compressing less).
        level: i32,
    },
    /// lz4 frames (4 MiB blocks, with the frame's content checksum).
    Lz4,
}

/// The lowest zstd level accepted (zstd's fast levels go lower still, compressing
/// next to nothing).
pub const ZSTD_FASTEST: i32 = -100;

impl Compression {
    /// `none`, `zstd`, `zstd:LEVEL` (1 to 22, or -1 to -100) or `lz4`.
    pub fn parse(s: &str) -> Result<Compression, String> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd { level: 3 }),
            "lz4" => Ok(Compression::Lz4),
            _ => {
                let level = s
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .ok_or_else(|| {
                        format!("'{s}': use none, lz4, zstd or zstd:LEVEL (1 to 22, or -1 to -100 for zstd's fast levels)")
                    })?;
                if !(1..=22).contains(&level) && !(ZSTD_FASTEST..=-1).contains(&level) {
                    return Err(format!(
                        "zstd level {level}: use 1 to 22, or -1 to -100 for zstd's fast levels"
                    ));
                }
                Ok(Compression::Zstd { level })
            }
        }
    }

    /// `none`, `zstd:LEVEL` or `lz4`.
    pub fn label(&self) -> String {
        match self {
            Compression::None => "none".into(),
            Compression::Zstd { level } => format!("zstd:{level}"),
            Compression::Lz4 => "lz4".into(),
        }
    }
}

/// The file name of device `device`'s stream (not encrypted).
pub fn stream_file_name(device: u32, compression: Compression) -> String {
    stored_file_name(device, compression, false)
}

/// The file name of device `device`'s stream: `device-N.stream`, then `.zst` or `.lz4`
/// as compressed, then `.enc` if encrypted.
pub fn stored_file_name(device: u32, compression: Compression, encrypted: bool) -> String {
    let ext = match compression {
        Compression::None => "",
        Compression::Zstd { .. } => ".zst",
        Compression::Lz4 => ".lz4",
    };
    let enc = if encrypted { ".enc" } else { "" };
    format!("device-{device}.stream{ext}{enc}")
}

/// The manifest version for a backup compressed with `compression`, encrypted or not:
/// [`FORMAT_VERSION`] (1) when a version-1 reader can read it, else [`FORMAT_VERSION_2`].
pub fn version_for(compression: Compression, encrypted: bool) -> u32 {
    if encrypted || compression == Compression::Lz4 {
        FORMAT_VERSION_2
    } else {
        FORMAT_VERSION
    }
}

/// One stream of a backup, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// The device index.
    pub device: u32,
    /// The file, relative to the backup directory.
    pub file: String,
    /// Bytes the engine wrote through the device (the uncompressed stream).
    pub stream_bytes: u64,
    /// Bytes of the file.
    pub stored_bytes: u64,
    /// blake3 of the uncompressed stream, hex.
    pub blake3: String,
}

/// Where the data came from, as the backup application saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `file`, `sqlite`, `stdin`, or `unknown` (an engine started by hand).
    pub kind: String,
    /// The source as named on the command line.
    pub name: String,
    /// Bytes of the source, if known.
    pub bytes: Option<u64>,
    /// Whether the source could tell that it ended normally (a file's or a database
    /// snapshot's known size). False for an unchecked stream (standard input): a
    /// producer killed in the middle looks just like one that finished, so the backup
    /// holds everything that arrived, which may not be everything that was meant.
    /// (Absent in manifests written before this field: true.)
    #[serde(default = "yes")]
    pub checked: bool,
    /// The source file's permission bits (`0o640`), when it is a file: a restore gives
    /// them back to what it rebuilds. (Absent in manifests written before this field.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

fn yes() -> bool {
    true
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// This backup's id (chosen by the backup application), 32 hex digits.
    pub backup_id: String,
    /// The id the engine put in every stream header, if the streams are vdi streams.
    pub stream_id: Option<String>,
    /// The virtual device set's name.
    pub set_name: String,
    /// The tool that wrote it (`vdi 0.1.0`).
    pub tool: String,
    /// The machine it was made on (absent in manifests written before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the backup started and ended, seconds since the Unix epoch.
    pub started: u64,
    /// When the backup completed.
    pub completed: u64,
    /// What was backed up.
    pub source: SourceInfo,
    /// Devices (= streams).
    pub device_count: u32,
    /// The VDI block size the engine chose.
    pub block_size: u32,
    /// The VDI max transfer size the engine chose.
    pub max_transfer_size: u32,
    /// How the stream files are compressed.
    pub compression: Compression,
    /// How the stream files are encrypted (after compression); absent: not encrypted
    /// (and then the manifest is exactly what version 1 wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::seal::Encryption>,
    /// Sum of `stream_bytes`.
    pub total_stream_bytes: u64,
    /// Sum of `stored_bytes`.
    pub total_stored_bytes: u64,
    /// One entry per device, in device order.
    pub streams: Vec<StreamEntry>,
    /// The completion marker: true, and the last field written.
    pub complete: bool,
}

/// Why a stored backup cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The backup (or its manifest) cannot be read: the sentence says which and why.
    #[error("{0}")]
    Unreadable(String),
    /// No manifest: the backup never completed (or this is not a backup).
    #[error(
        "{place} holds no {MANIFEST}: it is not a completed backup (an interrupted or failed backup leaves none)"
    )]
    NoManifest {
        /// The backup (a directory).
        place: String,
    },
    /// The backup is encrypted and no key, a wrong key or the other kind of key was
    /// given: the sentence says which option to give.
    #[error("{0}")]
    Key(String),
    /// The manifest cannot be parsed or is not complete.
    #[error("{place}: {what}")]
    BadManifest {
        /// The manifest.
        place: String,
        /// What is wrong.
        what: String,
    },
}

/// Parses and checks a stored manifest (`place` names it in messages): this format and
/// version, the completion marker, one stream per device, in order, with file names
/// that stay inside the backup.
pub fn check_manifest(bytes: &[u8], place: &str) -> Result<Manifest, BackupError> {
    let bad = |what: String| BackupError::BadManifest {
        place: place.to_owned(),
        what,
    };
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("format is '{}', not '{FORMAT}'", m.format)));
    }
    if m.version != FORMAT_VERSION && m.version != FORMAT_VERSION_2 {
        return Err(bad(format!(
            "manifest version {}; this vdi reads versions {FORMAT_VERSION} and {FORMAT_VERSION_2}: use a newer vdi",
            m.version
        )));
    }
    if m.version == FORMAT_VERSION && (m.encryption.is_some() || m.compression == Compression::Lz4)
    {
        return Err(bad(
            "a version-1 manifest that records encryption or lz4 (written by no vdi): it was altered".into(),
        ));
    }
    if !m.complete {
        return Err(bad(
            "the manifest does not carry the completion marker: the backup did not complete".into(),
        ));
    }
    if m.device_count == 0
        || m.device_count > crate::format::stream::MAX_DEVICES
        || m.streams.len() != m.device_count as usize
    {
        return Err(bad(format!(
            "device_count is {} but {} streams are listed",
            m.device_count,
            m.streams.len()
        )));
    }
    for (i, s) in m.streams.iter().enumerate() {
        if s.device != i as u32 {
            return Err(bad(format!("stream {i} is listed for device {}", s.device)));
        }
        if s.file.contains('/') || s.file.contains('\\') || s.file.starts_with('.') {
            return Err(bad(format!("stream file name '{}' is not allowed", s.file)));
        }
    }
    Ok(m)
}

/// Parses a manifest's bytes as a manifest of this format, complete or not (what a
/// destination must hold for vdi to consider it a backup it wrote).
pub fn parse_manifest_any(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("format is '{}', not '{FORMAT}'", m.format));
    }
    Ok(m)
}

/// The manifest as it is stored (pretty JSON, `"complete"` last, a final newline).
pub fn manifest_bytes(manifest: &Manifest) -> io::Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(manifest).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_labels() {
        assert_eq!(Compression::parse("none"), Ok(Compression::None));
        assert_eq!(
            Compression::parse("zstd"),
            Ok(Compression::Zstd { level: 3 })
        );
        assert!(Compression::parse("zstd:0").is_err());
        assert!(Compression::parse("zstd:23").is_err());
        assert!(Compression::parse("zstd:-101").is_err());
        assert_eq!(
            Compression::parse("zstd:-5"),
            Ok(Compression::Zstd { level: -5 })
        );
        assert_eq!(Compression::parse("lz4"), Ok(Compression::Lz4));
        assert_eq!(Compression::Zstd { level: 7 }.label(), "zstd:7");
        assert_eq!(Compression::Lz4.label(), "lz4");
        assert_eq!(
            stored_file_name(2, Compression::Lz4, true),
            "device-2.stream.lz4.enc"
        );
        assert_eq!(
            stored_file_name(0, Compression::Zstd { level: 1 }, false),
            "device-0.stream.zst"
        );
    }

    /// The version a manifest is written with: 1 unless it needs 2.
    #[test]
    fn version_two_only_when_needed() {
        assert_eq!(version_for(Compression::Zstd { level: -3 }, false), 1);
        assert_eq!(version_for(Compression::None, false), 1);
        assert_eq!(version_for(Compression::Lz4, false), 2);
        assert_eq!(version_for(Compression::None, true), 2);
    }
}
