//! The set's configuration (`VDConfig`) and time-outs.
//!
//! The client fills the input fields of a [`VdConfig`] and passes it to
//! [`ClientSet::create`](crate::ClientSet::create); the server reads it, chooses the
//! output fields in `BeginConfiguration`, and both sides then see the final values.
//!
//! ```
//! use vdi::{VdConfig, Timeout};
//! use std::time::Duration;
//! let mut cfg = VdConfig::with_devices(3);
//! cfg.prefix_zone_size = 64;
//! assert!(cfg.validate_client().is_ok());
//! assert_eq!(Timeout::from_millis(u32::MAX), Timeout::Infinite);
//! assert_eq!(Timeout::from(Duration::from_millis(5)), Timeout::After(Duration::from_millis(5)));
//! ```

use std::time::{Duration, Instant};

use crate::error::{Result, VdError};
use crate::features;

/// Largest number of devices in a set.
pub const MAX_DEVICES: u32 = 64;
/// Smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size, and largest alignment.
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest alignment a buffer may ask for.
pub const MAX_ALIGNMENT: u32 = 64 * 1024;
/// Largest transfer size.
pub const MAX_TRANSFER_SIZE: u32 = 4 * 1024 * 1024;
/// Largest prefix zone a client may ask for.
pub const MAX_PREFIX_ZONE: u32 = 64 * 1024;
/// `maxIODepth` is always returned as 4.
pub const MAX_IO_DEPTH: u32 = 4;
/// `INFINITE` as the C API spells it.
pub const INFINITE: u32 = u32::MAX;

/// `VDConfig`: 11 × u32, 44 bytes, in the header's order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdConfig {
    /// Number of devices, 1..=64 (client).
    pub device_count: u32,
    /// Feature bits (client in, server adds `WRITE_MEDIA` / `READ_MEDIA` / `COMPLETE_ENABLED`).
    pub features: u32,
    /// Bytes reserved just before each buffer's data, for the client (0 = none).
    pub prefix_zone_size: u32,
    /// Minimum data alignment the client needs (client), final basic alignment (server).
    pub alignment: u32,
    /// Soft filemark block size (client, with `FILE_MARKS`).
    pub soft_file_mark_block_size: u32,
    /// End-of-media warning zone size (client).
    pub eom_warning_size: u32,
    /// Milliseconds; 0 = infinite. The set aborts when commands are outstanding and none
    /// completes for two intervals.
    pub server_time_out: u32,
    /// Block size used (server).
    pub block_size: u32,
    /// Always 4 (server).
    pub max_io_depth: u32,
    /// Largest transfer, data bytes per buffer (server).
    pub max_transfer_size: u32,
    /// Total bytes of shared buffer area (server).
    pub buffer_area_size: u32,
}

const _: () = assert!(std::mem::size_of::<VdConfig>() == 44);
const _: () = assert!(std::mem::align_of::<VdConfig>() == 4);

impl VdConfig {
    /// The feature bits, typed.
    pub fn flags(&self) -> crate::Features {
        crate::Features::from(self.features)
    }

    /// Whether every bit of `f` is set in `features`.
    pub fn has(&self, f: crate::Features) -> bool {
        self.flags().contains(f)
    }

    /// A zeroed configuration with `device_count` devices (pipe-like, no prefix).
    pub fn with_devices(device_count: u32) -> VdConfig {
        VdConfig {
            device_count,
            ..VdConfig::default()
        }
    }

    /// Checks the fields a client sets (`CreateEx`): `VD_E_NOTSUPPORTED` names the field.
    pub fn validate_client(&self) -> Result<()> {
        if self.device_count == 0 || self.device_count > MAX_DEVICES {
            return Err(VdError::not_supported(format!(
                "deviceCount is {}; it must be 1 to {MAX_DEVICES}",
                self.device_count
            )));
        }
        let unknown = self.features & !features::CLIENT_MASK;
        if unknown != 0 {
            return Err(VdError::not_supported(format!(
                "features 0x{:08X} has bits a client may not request (0x{unknown:08X})",
                self.features
            )));
        }
        if self.alignment != 0
            && (!self.alignment.is_power_of_two() || self.alignment > MAX_ALIGNMENT)
        {
            return Err(VdError::not_supported(format!(
                "alignment is {}; it must be 0 or a power of two up to {MAX_ALIGNMENT}",
                self.alignment
            )));
        }
        if self.prefix_zone_size > MAX_PREFIX_ZONE {
            return Err(VdError::not_supported(format!(
                "prefixZoneSize is {}; it must be at most {MAX_PREFIX_ZONE}",
                self.prefix_zone_size
            )));
        }
        if self.soft_file_mark_block_size != 0
            && (self.features & features::FILE_MARKS == 0
                || !self.soft_file_mark_block_size.is_power_of_two())
        {
            return Err(VdError::not_supported(format!(
                "softFileMarkBlockSize is {}; it needs VDF_FileMarks and a power of two",
                self.soft_file_mark_block_size
            )));
        }
        Ok(())
    }

    /// The configuration as 11 words, in the header's order.
    pub fn to_words(&self) -> [u32; 11] {
        [
            self.device_count,
            self.features,
            self.prefix_zone_size,
            self.alignment,
            self.soft_file_mark_block_size,
            self.eom_warning_size,
            self.server_time_out,
            self.block_size,
            self.max_io_depth,
            self.max_transfer_size,
            self.buffer_area_size,
        ]
    }

    /// The configuration from 11 words, in the header's order.
    pub fn from_words(w: [u32; 11]) -> VdConfig {
        VdConfig {
            device_count: w[0],
            features: w[1],
            prefix_zone_size: w[2],
            alignment: w[3],
            soft_file_mark_block_size: w[4],
            eom_warning_size: w[5],
            server_time_out: w[6],
            block_size: w[7],
            max_io_depth: w[8],
            max_transfer_size: w[9],
            buffer_area_size: w[10],
        }
    }
}

/// How long a call may wait: a duration (zero polls) or forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Wait until the condition holds, the set aborts or the peer dies.
    Infinite,
    /// Wait at most this long; `Duration::ZERO` polls.
    After(Duration),
}

impl Timeout {
    /// Does not wait at all.
    pub const POLL: Timeout = Timeout::After(Duration::ZERO);

    /// From milliseconds as the C API passes them: `INFINITE` (`u32::MAX`) waits forever.
    pub const fn from_millis(ms: u32) -> Timeout {
        if ms == INFINITE {
            Timeout::Infinite
        } else {
            Timeout::After(Duration::from_millis(ms as u64))
        }
    }

    /// The instant at which the wait ends, if any.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Timeout::Infinite => None,
            Timeout::After(d) => Instant::now().checked_add(d),
        }
    }
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Timeout {
        Timeout::After(d)
    }
}

impl From<u32> for Timeout {
    fn from(ms: u32) -> Timeout {
        Timeout::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn device_count_bounds() {
        for (n, ok) in [(0, false), (1, true), (64, true), (65, false)] {
            let r = VdConfig::with_devices(n).validate_client();
            assert_eq!(r.is_ok(), ok, "device_count {n}");
            if let Err(e) = r {
                assert_eq!(e.code(), ErrorCode::NotSupported);
            }
        }
    }

    #[test]
    fn bad_alignment_and_features() {
        let mut c = VdConfig::with_devices(1);
        c.alignment = 1000;
        assert_eq!(
            c.validate_client().unwrap_err().code(),
            ErrorCode::NotSupported
        );
        c.alignment = 4096;
        assert!(c.validate_client().is_ok());
        c.features = features::WRITE_MEDIA;
        assert_eq!(
            c.validate_client().unwrap_err().code(),
            ErrorCode::NotSupported
        );
    }

    #[test]
    fn words_round_trip() {
        let c = VdConfig::from_words([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(VdConfig::from_words(c.to_words()), c);
    }
}
