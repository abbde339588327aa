//! The work every transport does: the producer fills each chunk with a one-byte pattern,
//! the consumer reads every byte of it into a checksum and compares it with the value
//! the pattern implies.
//!
//! Both loops are checked to vectorise at the baseline x86-64 target (SSE2), without
//! `-C target-cpu=native`: `fill` is a `memset`; `checksum` adds the chunk as
//! little-endian `u64` words (`paddq`), about 60 GB/s on one core of the build machine
//! for a cache-hot 1 MiB chunk. A byte-at-a-time `fold(0u64, |a, &b| a + b as u64)` runs
//! at about 6 GB/s there (SSE2) or 20 GB/s (AVX2): it would cap every transport.
//!
//! ```
//! use vdi_bench::work::{self, Plan};
//! let plan = Plan { devices: 2, total: 5 << 20, transfer: 1 << 20 };
//! assert_eq!(plan.device_bytes(0) + plan.device_bytes(1), 5 << 20);
//! assert_eq!(plan.chunks(1), 3); // 2.5 MiB: two whole chunks and a half one
//! assert_eq!(plan.chunk_len(1, 2), 512 << 10);
//! ```

/// The byte that fills chunk `chunk` of device `device`'s stream.
#[inline]
pub fn pattern(device: u32, chunk: u64) -> u8 {
    (chunk
        .wrapping_mul(131)
        .wrapping_add(u64::from(device).wrapping_mul(17))
        .wrapping_add(1)
        & 0xFF) as u8
}

/// The producer's work: writes every byte of `buf` (a `memset`).
#[inline]
pub fn fill(buf: &mut [u8], value: u8) {
    buf.fill(value);
}

/// The consumer's work: reads every byte of `buf` and returns the wrapping sum of its
/// little-endian `u64` words, plus the trailing bytes one by one.
#[inline]
pub fn checksum(buf: &[u8]) -> u64 {
    let (words, tail) = buf.as_chunks::<8>();
    let s = words
        .iter()
        .fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(*w)));
    tail.iter().fold(s, |a, &b| a.wrapping_add(u64::from(b)))
}

/// What [`checksum`] returns for `len` bytes that all hold `value`.
pub fn expected_checksum(len: usize, value: u8) -> u64 {
    let word = u64::from(value).wrapping_mul(0x0101_0101_0101_0101);
    ((len / 8) as u64)
        .wrapping_mul(word)
        .wrapping_add(((len % 8) as u64).wrapping_mul(u64::from(value)))
}

/// How a run's bytes are cut: `total` bytes over `devices` streams (the remainder goes
/// to the last one), each cut into chunks of `transfer` bytes (the last may be short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Streams (vdi devices; 1 for the other transports).
    pub devices: u32,
    /// Bytes over all streams.
    pub total: u64,
    /// Bytes per chunk (a vdi transfer, a pipe write, a ring slot).
    pub transfer: u32,
}

impl Plan {
    /// Bytes on stream `device`.
    pub fn device_bytes(&self, device: u32) -> u64 {
        let n = u64::from(self.devices.max(1));
        let base = self.total / n;
        if device + 1 == self.devices.max(1) {
            self.total - base * (n - 1)
        } else {
            base
        }
    }

    /// Chunks on stream `device`.
    pub fn chunks(&self, device: u32) -> u64 {
        self.device_bytes(device)
            .div_ceil(u64::from(self.transfer.max(1)))
    }

    /// The length of chunk `chunk` of stream `device` (0 past the end).
    pub fn chunk_len(&self, device: u32, chunk: u64) -> usize {
        let t = u64::from(self.transfer.max(1));
        let start = chunk.saturating_mul(t);
        self.device_bytes(device).saturating_sub(start).min(t) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_expected_for_every_length_and_value() {
        let mut buf = vec![0u8; 4099];
        for len in [0, 1, 7, 8, 9, 63, 64, 4096, 4099] {
            for v in [0u8, 1, 0x7F, 0xFF] {
                fill(&mut buf[..len], v);
                assert_eq!(
                    checksum(&buf[..len]),
                    expected_checksum(len, v),
                    "{len} {v}"
                );
            }
        }
    }

    #[test]
    fn checksum_sees_a_changed_byte() {
        let mut buf = vec![9u8; 1 << 16];
        let good = checksum(&buf);
        buf[12345] = 10;
        assert_ne!(checksum(&buf), good);
    }

    #[test]
    fn plan_covers_every_byte_once() {
        for (devices, total, transfer) in [(1, 10 << 20, 1 << 20), (3, 10_000_000, 65536)] {
            let p = Plan {
                devices,
                total,
                transfer,
            };
            let sum: u64 = (0..devices)
                .map(|d| {
                    (0..p.chunks(d))
                        .map(|k| p.chunk_len(d, k) as u64)
                        .sum::<u64>()
                })
                .sum();
            assert_eq!(sum, total);
            assert_eq!(p.chunk_len(0, p.chunks(0)), 0);
        }
    }

    #[test]
    fn neighbouring_chunks_differ() {
        assert_ne!(pattern(0, 0), pattern(0, 1));
        assert_ne!(pattern(0, 0), pattern(1, 0));
    }
}
