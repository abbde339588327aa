//! A process's memory use, from `/proc/self/status`.
//!
//! `VmRSS` is what is resident now, `VmHWM` the most that ever was; `RssShmem` is the
//! shared part of the resident set (the mapped buffer areas, counted in both processes).
//!
//! [`CpuUsage`] is the process's CPU time and context switches over all its threads,
//! finished ones included (`getrusage(RUSAGE_SELF)`): voluntary switches count sleeps,
//! involuntary ones count preemptions (more runnable threads than CPUs).
//!
//! ```
//! let m = vdi_bench::mem::MemStatus::current();
//! assert!(m.hwm_kib >= m.rss_kib);
//! let u = vdi_bench::mem::CpuUsage::current();
//! assert!(u.user_us + u.system_us > 0);
//! ```

/// Resident memory figures, in KiB (0 where the kernel did not report one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStatus {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident set.
    pub hwm_kib: u64,
    /// `RssAnon`: private anonymous memory (heap, stacks).
    pub anon_kib: u64,
    /// `RssShmem`: resident shared memory (memfd mappings).
    pub shmem_kib: u64,
}

impl MemStatus {
    /// This process's figures now.
    pub fn current() -> MemStatus {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| MemStatus::parse(&s))
            .unwrap_or_default()
    }

    /// Parses the text of a `/proc/PID/status` file.
    pub fn parse(status: &str) -> MemStatus {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        MemStatus {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            anon_kib: field("RssAnon:"),
            shmem_kib: field("RssShmem:"),
        }
    }
}

/// CPU time and context switches of the whole process (every thread, live or ended).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuUsage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub system_us: u64,
    /// Voluntary context switches (the thread blocked: a futex sleep, a read).
    pub voluntary: u64,
    /// Involuntary context switches (the thread was preempted).
    pub involuntary: u64,
}

impl CpuUsage {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuUsage) -> CpuUsage {
        CpuUsage {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }

    /// This process's figures now (zeros if the call fails).
    pub fn current() -> CpuUsage {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `getrusage` writes one `struct rusage` to the pointer, which points to
        // memory of that type and size owned by this frame; it has no other effect.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
        if rc != 0 {
            return CpuUsage::default();
        }
        // SAFETY: the call succeeded, so it initialised the struct (which was zeroed
        // before in any case, and every bit pattern is a valid `rusage`).
        let ru = unsafe { ru.assume_init() };
        let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
        CpuUsage {
            user_us: us(ru.ru_utime),
            system_us: us(ru.ru_stime),
            voluntary: ru.ru_nvcsw as u64,
            involuntary: ru.ru_nivcsw as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields() {
        let s =
            "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 100 kB\nRssShmem:\t 8 kB\n";
        assert_eq!(
            MemStatus::parse(s),
            MemStatus {
                rss_kib: 1024,
                hwm_kib: 2048,
                anon_kib: 100,
                shmem_kib: 8
            }
        );
    }
}
