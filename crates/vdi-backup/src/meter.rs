//! Progress counters: the roles add the bytes each device moves to a [`Meter`]; a front
//! end shows it while the operation runs (the `vdi` binary draws bars or log lines), or
//! not at all ([`Hidden`]).
//!
//! ```
//! use std::sync::Arc;
//! use vdi_backup::meter::{Meter, Show, Hidden};
//! let m = Meter::new("backup", 2, Some(100));
//! let shown = Hidden.show(m.clone());
//! m.add(1, 60);
//! assert_eq!((m.per_device(), m.sum(), m.total()), (vec![0, 60], 60, Some(100)));
//! drop(shown);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const UNKNOWN: u64 = u64::MAX;

/// Bytes per device, the expected total, and when the operation started.
#[derive(Debug)]
pub struct Meter {
    label: String,
    bytes: Vec<AtomicU64>,
    stored: Vec<AtomicU64>,
    retries: Vec<AtomicU64>,
    compressed: std::sync::atomic::AtomicBool,
    total: AtomicU64,
    started: Instant,
}

impl Meter {
    /// A meter of `devices` counters; `total` is the expected sum, if known.
    pub fn new(label: &str, devices: u32, total: Option<u64>) -> Arc<Meter> {
        Arc::new(Meter {
            label: label.to_owned(),
            bytes: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            stored: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            retries: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            compressed: std::sync::atomic::AtomicBool::new(false),
            total: AtomicU64::new(total.unwrap_or(UNKNOWN)),
            started: Instant::now(),
        })
    }

    /// What the operation is (`backup file:x through 2 device(s)`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Adds `n` bytes to device `device`.
    pub fn add(&self, device: u32, n: u64) {
        if let Some(b) = self.bytes.get(device as usize) {
            b.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds `n` bytes stored (after compression) to device `device`.
    pub fn add_stored(&self, device: u32, n: u64) {
        if let Some(b) = self.stored.get(device as usize) {
            b.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a retry on device `device` (a `VDC_ClearError` after a failed command, a
    /// device opened again).
    pub fn add_retry(&self, device: u32) {
        if let Some(b) = self.retries.get(device as usize) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says that what is stored is compressed (a front end shows both counts).
    pub fn set_compressed(&self) {
        self.compressed.store(true, Ordering::Relaxed);
    }

    /// Whether what is stored is compressed.
    pub fn compressed(&self) -> bool {
        self.compressed.load(Ordering::Relaxed)
    }

    /// The bytes stored of each device so far (what reached the store, compressed).
    pub fn stored_per_device(&self) -> Vec<u64> {
        self.stored
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The retries of each device so far.
    pub fn retries_per_device(&self) -> Vec<u64> {
        self.retries
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The bytes of each device so far.
    pub fn per_device(&self) -> Vec<u64> {
        self.bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The bytes of all devices so far.
    pub fn sum(&self) -> u64 {
        self.per_device().iter().sum()
    }

    /// The expected total, if known.
    pub fn total(&self) -> Option<u64> {
        let t = self.total.load(Ordering::Relaxed);
        (t != UNKNOWN).then_some(t)
    }

    /// The number of devices.
    pub fn devices(&self) -> u32 {
        self.bytes.len() as u32
    }

    /// Time since the meter was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// How a front end shows a meter: `show` starts showing it; dropping what it returns
/// stops (and clears what it drew).
pub trait Show: Send + Sync + std::fmt::Debug {
    /// Starts showing `meter`.
    fn show(&self, meter: Arc<Meter>) -> Box<dyn Send>;
}

/// Shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hidden;

impl Show for Hidden {
    fn show(&self, _meter: Arc<Meter>) -> Box<dyn Send> {
        Box::new(())
    }
}
