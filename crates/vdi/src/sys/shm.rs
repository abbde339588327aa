//! Shared memory: sealed memfds, mapped at 64 KiB-aligned addresses, pre-faulted.
//!
//! A segment is an anonymous memfd: nothing appears in `/dev/shm` or the file system,
//! and the kernel frees it when the last process holding it exits, however it exits.
//! The creator seals its size (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) so that a
//! hostile peer cannot truncate it under us (which would turn our accesses into SIGBUS);
//! a process that receives a segment checks those seals and the size before mapping.
//! Mappings start on a 64 KiB boundary in every process, so an offset aligned to a power
//! of two up to 64 KiB gives an address aligned the same way on both sides.
//!
//! [`SharedMemory::release`] ends the sharing without invalidating any address: the
//! shared pages are replaced, in place, by private anonymous ones (`MAP_FIXED`), and the
//! memfd is closed. Whoever still holds a pointer into the segment reads dead, unshared
//! memory instead of faulting; the address range itself is unmapped on drop.

#![allow(unsafe_code)] // mmap and munmap of our own segments; each block justified

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Mutex;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The alignment of every mapping's start.
pub const MAP_ALIGN: usize = 64 * 1024;

/// Why a received segment was refused.
#[derive(Debug)]
pub enum AttachError {
    /// The descriptor is not a sealed memfd of a fixed size.
    NotSealed,
    /// The segment's size is not what the protocol says.
    WrongSize {
        /// The size found.
        found: u64,
    },
    /// A system call failed.
    Os(rustix::io::Errno),
}

/// A mapped shared-memory segment. Unmapped on drop.
#[derive(Debug)]
pub struct SharedMemory {
    /// The memfd; `None` once [`release`](SharedMemory::release)d.
    fd: Mutex<Option<OwnedFd>>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; all access to its bytes goes
// through atomics or through raw pointers whose use the protocol layer synchronises.
unsafe impl Send for SharedMemory {}
// SAFETY: as above; `&SharedMemory` only hands out the base pointer and length.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates a zero-filled segment of `len` bytes (rounded up to a page), sealed at
    /// that size, mapped and pre-faulted.
    pub fn create(name: &str, len: usize) -> Result<SharedMemory, rustix::io::Errno> {
        let len = round_up_page(len.max(1));
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        // A memfd is created with mode 0777. Nobody can reach it by a path anyway (its
        // /proc/PID/fd link is closed to other users), but keep its mode owner-only too:
        // only a process handed the descriptor (the creator's access check) may use it.
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o600))?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let ptr = map_aligned(fd.as_fd(), len, ProtFlags::READ | ProtFlags::WRITE)?;
        Ok(SharedMemory {
            fd: Mutex::new(Some(fd)),
            ptr,
            len,
        })
    }

    /// Maps a segment received from a peer, after checking that it is sealed against
    /// shrinking and growing and that its size is `expected_len` (if given).
    pub fn attach(fd: OwnedFd, expected_len: Option<u64>) -> Result<SharedMemory, AttachError> {
        SharedMemory::attach_with(fd, expected_len, ProtFlags::READ | ProtFlags::WRITE)
    }

    /// As [`attach`](SharedMemory::attach), mapped read-only (an observer: a store
    /// through it would fault, so nothing in this process can change the set).
    pub fn attach_read_only(
        fd: OwnedFd,
        expected_len: Option<u64>,
    ) -> Result<SharedMemory, AttachError> {
        SharedMemory::attach_with(fd, expected_len, ProtFlags::READ)
    }

    fn attach_with(
        fd: OwnedFd,
        expected_len: Option<u64>,
        prot: ProtFlags,
    ) -> Result<SharedMemory, AttachError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| AttachError::NotSealed)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL) {
            return Err(AttachError::NotSealed);
        }
        let st = rustix::fs::fstat(&fd).map_err(AttachError::Os)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if let Some(want) = expected_len
            && size != round_up_page(want as usize) as u64
        {
            return Err(AttachError::WrongSize { found: size });
        }
        if size == 0 || size > isize::MAX as u64 / 2 {
            return Err(AttachError::WrongSize { found: size });
        }
        let len = size as usize;
        let ptr = map_aligned(fd.as_fd(), len, prot).map_err(AttachError::Os)?;
        Ok(SharedMemory {
            fd: Mutex::new(Some(fd)),
            ptr,
            len,
        })
    }

    /// The first byte of the mapping (aligned to [`MAP_ALIGN`]).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: segments are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Runs `f` with the memfd (to pass it to another process); `None` once released.
    pub fn with_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        fd.as_ref().map(|fd| f(fd.as_fd()))
    }

    /// A duplicate of the memfd; `None` once released (or if `dup` fails).
    pub fn dup_fd(&self) -> Option<OwnedFd> {
        self.with_fd(|fd| fd.try_clone_to_owned().ok()).flatten()
    }

    /// Whether the segment is still shared (not yet released).
    pub fn is_shared(&self) -> bool {
        self.with_fd(|_| ()).is_some()
    }

    /// Stops sharing: replaces the mapping in place with private anonymous zero pages of
    /// the same length and closes the memfd, so the segment holds no descriptor and no
    /// shared page in this process any more while every address into it stays valid.
    /// Returns false if it was already released. If the kernel refuses the replacement
    /// (out of mappings), the shared pages stay mapped until drop; the memfd is closed
    /// either way.
    pub fn release(&self) -> bool {
        let mut fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        if fd.is_none() {
            return false;
        }
        // SAFETY: `[ptr, ptr + len)` is a mapping this value owns; MAP_FIXED replaces
        // exactly those pages with fresh anonymous ones at the same address, so every
        // pointer into the segment (ours, or a buffer address a caller kept) still points
        // at mapped, readable and writable memory, only no longer shared with the peer.
        let _ = unsafe {
            rustix::mm::mmap_anonymous(
                self.ptr.as_ptr().cast(),
                self.len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        };
        *fd = None;
        true
    }

    /// Whether `p` points into this mapping.
    pub fn contains(&self, p: *const u8) -> bool {
        let base = self.ptr.as_ptr() as usize;
        let a = p as usize;
        a >= base && a < base + self.len
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and owns; every
        // reference into it borrows `self`, so none outlives this point.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn round_up_page(len: usize) -> usize {
    const PAGE: usize = 4096;
    len.div_ceil(PAGE) * PAGE
}

/// Maps `len` bytes of `fd` read-write, shared, pre-faulted, at an address aligned to
/// [`MAP_ALIGN`].
fn map_aligned(
    fd: BorrowedFd<'_>,
    len: usize,
    prot: ProtFlags,
) -> Result<NonNull<u8>, rustix::io::Errno> {
    let reserve = len + MAP_ALIGN;
    // SAFETY: an anonymous PROT_NONE reservation at an address the kernel picks; it
    // aliases nothing.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            reserve,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?
    } as usize;
    let aligned = base.div_ceil(MAP_ALIGN) * MAP_ALIGN;
    // SAFETY: `[aligned, aligned + len)` lies inside the reservation we own, so
    // MAP_FIXED replaces only our own PROT_NONE pages.
    let mapped = unsafe {
        rustix::mm::mmap(
            aligned as *mut _,
            len,
            prot,
            MapFlags::SHARED | MapFlags::FIXED | MapFlags::POPULATE,
            fd,
            0,
        )
    };
    let head = aligned - base;
    let tail_start = aligned + len;
    let tail = base + reserve - tail_start;
    if let Err(e) = mapped {
        // SAFETY: the whole reservation is ours and nothing points into it.
        let _ = unsafe { rustix::mm::munmap(base as *mut _, reserve) };
        return Err(e);
    }
    if head > 0 {
        // SAFETY: the slack before the aligned start is part of our reservation and unused.
        let _ = unsafe { rustix::mm::munmap(base as *mut _, head) };
    }
    if tail > 0 {
        // SAFETY: the slack after the mapping is part of our reservation and unused.
        let _ = unsafe { rustix::mm::munmap(tail_start as *mut _, tail) };
    }
    NonNull::new(aligned as *mut u8).ok_or(rustix::io::Errno::NOMEM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_attach_share_bytes() {
        let a = SharedMemory::create("t", 10_000).unwrap();
        assert_eq!(a.len(), 12_288);
        assert_eq!(a.as_ptr() as usize % MAP_ALIGN, 0);
        let dup = a.dup_fd().unwrap();
        let b = SharedMemory::attach(dup, Some(10_000)).unwrap();
        // SAFETY: both mappings are ours and in range; single-threaded test.
        unsafe {
            a.as_ptr().add(5).write(42);
            assert_eq!(b.as_ptr().add(5).read(), 42);
        }
    }

    #[test]
    fn release_keeps_addresses_valid_but_stops_sharing() {
        let a = SharedMemory::create("t", 8192).unwrap();
        let b = SharedMemory::attach(a.dup_fd().unwrap(), Some(8192)).unwrap();
        // SAFETY: both mappings are ours and in range; single-threaded test.
        unsafe { a.as_ptr().add(7).write(9) };
        assert!(b.release());
        assert!(!b.release(), "a second release does nothing");
        assert!(!b.is_shared() && b.dup_fd().is_none());
        // SAFETY: as above: the address stays mapped after release.
        unsafe {
            assert_eq!(b.as_ptr().add(7).read(), 0, "dead memory reads as zero");
            b.as_ptr().add(8).write(1);
            a.as_ptr().add(9).write(2);
            assert_eq!(a.as_ptr().add(8).read(), 0, "no longer shared");
            assert_eq!(b.as_ptr().add(9).read(), 0, "no longer shared");
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let start = format!("{:x}-", b.as_ptr() as usize);
        let line = maps.lines().find(|l| l.starts_with(&start)).unwrap();
        assert!(!line.contains("memfd:"), "{line}");
    }

    #[test]
    fn attach_refuses_unsealed_and_wrong_size() {
        let fd = rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            SharedMemory::attach(fd, None),
            Err(AttachError::NotSealed)
        ));
        let a = SharedMemory::create("t", 4096).unwrap();
        let dup = a.dup_fd().unwrap();
        assert!(matches!(
            SharedMemory::attach(dup, Some(8192)),
            Err(AttachError::WrongSize { found: 4096 })
        ));
    }
}
