//! Buffers in the shared areas: `AllocateBuffer`, `FreeBuffer`, `IsSharedBuffer`, and
//! [`ServerBuffer`], the value that owns a buffer's bytes.

#![allow(unsafe_code)] // a buffer's bytes as slices, and its Send/Sync; each justified

use std::sync::{Arc, Mutex};

use super::ServerSet;
use super::alloc::AreaAlloc;
use crate::config::MAX_TRANSFER_SIZE;
use crate::error::{ErrorCode, Reason, Result, VdError};
use crate::shared::{Shared, lock};

/// The buffer areas and their allocators; buffers keep this (and so the mappings) alive.
pub(super) struct Pool {
    pub(super) shared: Arc<Shared>,
    pub(super) prefix: u64,
    pub(super) areas: Mutex<Vec<AreaAlloc>>,
}

impl ServerSet {
    /// `AllocateBuffer`: a buffer of `size` data bytes from the shared area, its data
    /// start aligned to `alignment` (0 = the set's alignment), with the client's prefix
    /// zone in front. Dropping it (or [`free_buffer`](Self::free_buffer)) returns it.
    ///
    /// Errors: `VD_E_MEMORY` (no room: request more buffers), `VD_E_INVALID`,
    /// `VD_E_PROTOCOL`, `VD_E_ABORT`.
    pub fn allocate_buffer(&self, size: u32, alignment: u32) -> Result<ServerBuffer> {
        let inner = &self.inner;
        let l = lock(&inner.local);
        inner.buffer_row(&l, "AllocateBuffer")?;
        if size == 0 || size > MAX_TRANSFER_SIZE {
            return Err(VdError::invalid(format!(
                "buffer size {size} must be 1 to {MAX_TRANSFER_SIZE}"
            )));
        }
        let align = inner.effective_alignment(&l.config, alignment)?;
        drop(l);
        let pool = &inner.pool;
        let mut areas = lock(&pool.areas);
        for (i, a) in areas.iter_mut().enumerate() {
            if let Some(off) = a.alloc(pool.prefix, u64::from(size), align) {
                let ptr = pool.shared.buffer_ptr(i as u32, off, u64::from(size));
                let Some(ptr) = ptr else {
                    a.free(off);
                    return Err(VdError::violation("buffer outside its area"));
                };
                return Ok(ServerBuffer {
                    pool: pool.clone(),
                    area: i as u32,
                    offset: off,
                    len: size,
                    ptr,
                });
            }
        }
        Err(VdError::new(
            ErrorCode::Memory,
            Reason::OutOfMemory(format!(
                "no free buffer of {size} bytes is left in the shared area; request more with RequestBuffers or free some"
            )),
        ))
    }

    /// `FreeBuffer`: returns a buffer (the same as dropping it). The buffer is returned
    /// in every case; the result is the state table's row (shared with AllocateBuffer):
    /// `NOERROR` while Initializing or Active, `VD_E_PROTOCOL` before `EndConfiguration`,
    /// after the normal end or after `Close`, `VD_E_ABORT` after an abort, and
    /// `VD_E_INVALID` for a buffer of another set.
    pub fn free_buffer(&self, buffer: ServerBuffer) -> Result<()> {
        if !Arc::ptr_eq(&buffer.pool, &self.inner.pool) {
            return Err(VdError::invalid("the buffer belongs to another set"));
        }
        drop(buffer);
        self.check_buffer_row("FreeBuffer")
    }

    /// The AllocateBuffer/FreeBuffer row of the state table for the current state.
    pub(crate) fn check_buffer_row(&self, call: &'static str) -> Result<()> {
        let l = lock(&self.inner.local);
        self.inner.buffer_row(&l, call)
    }

    /// `IsSharedBuffer`: whether `p` points into a buffer allocated from this set.
    pub fn is_shared_buffer(&self, p: *const u8) -> bool {
        let pool = &self.inner.pool;
        match pool.shared.locate(p) {
            Some((area, off)) => lock(&pool.areas)
                .get(area as usize)
                .is_some_and(|a| a.is_inside(off)),
            None => false,
        }
    }
}

/// A buffer in the shared area, owned by the server. Sending it in a command moves it to
/// the client; the command's [`Completion`] gives it back. Dropping it frees it.
pub struct ServerBuffer {
    pub(super) pool: Arc<Pool>,
    pub(super) area: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) ptr: *mut u8,
}

// SAFETY: the pointer is into a mapping kept alive by `pool`; the buffer's bytes are owned
// by this value alone (the allocator never hands the same range out twice), so moving it
// between threads moves that ownership.
unsafe impl Send for ServerBuffer {}

// SAFETY: `&ServerBuffer` gives only read access to the bytes.
unsafe impl Sync for ServerBuffer {}

impl std::fmt::Debug for ServerBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuffer")
            .field("area", &self.area)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl ServerBuffer {
    /// Data bytes (without the prefix zone).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false: buffers have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The data start in this process.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The data.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocator gave this value `len` bytes at `ptr` inside a live
        // mapping; while the server holds the buffer the client does not touch it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }

    /// The data, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len as usize) }
    }
}

impl Drop for ServerBuffer {
    fn drop(&mut self) {
        if let Some(a) = lock(&self.pool.areas).get_mut(self.area as usize) {
            a.free(self.offset);
        }
    }
}
