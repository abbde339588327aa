//! Buffer handles (`GetBufferHandle`, `MapBufferHandle`): a buffer named independently
//! of the process, for a secondary client that moves a command's data.

#![allow(unsafe_code)] // MappedBuffer's bytes as slices, behind unsafe accessors

use super::ClientSet;
use crate::error::{Result, VdError};

impl ClientSet {
    /// `GetBufferHandle`: a process-independent handle for the buffer at `ptr` (the data
    /// start of a command's buffer), for another process of the same set.
    ///
    /// Errors: `VD_E_PROTOCOL` (closed), `VD_E_INVALID` (not a buffer address).
    pub fn get_buffer_handle(&self, ptr: *const u8) -> Result<u32> {
        self.check_open("GetBufferHandle")?;
        let (area, offset) = self.inner.shared.locate(ptr).ok_or_else(|| {
            VdError::invalid("the address is not inside a buffer area of this set")
        })?;
        encode_handle(area, offset)
            .ok_or_else(|| VdError::invalid("the address is not the start of a buffer"))
    }

    /// `MapBufferHandle`: the buffer behind `handle` in this process.
    ///
    /// Errors: `VD_E_PROTOCOL` (closed), `VD_E_INVALID` (not a handle of this set).
    pub fn map_buffer_handle(&self, handle: u32) -> Result<MappedBuffer<'_>> {
        self.check_open("MapBufferHandle")?;
        let (area, offset) = decode_handle(handle);
        self.inner.ensure_area(area)?;
        let m = self.inner.shared.areas[area as usize]
            .get()
            .ok_or_else(|| {
                VdError::invalid(format!(
                    "buffer handle 0x{handle:08X} names no area of this set"
                ))
            })?;
        if offset >= m.len() as u64 {
            return Err(VdError::invalid(format!(
                "buffer handle 0x{handle:08X} is out of range"
            )));
        }
        let len = m.len() - offset as usize;
        let ptr = self
            .inner
            .shared
            .buffer_ptr(area, offset, len as u64)
            .ok_or_else(|| VdError::invalid("buffer handle out of range"))?;
        Ok(MappedBuffer {
            ptr,
            len,
            _set: std::marker::PhantomData,
        })
    }
}

/// Handles: area in the top 6 bits, offset / 512 in the low 26.
pub(super) fn encode_handle(area: u32, offset: u64) -> Option<u32> {
    if area >= 64 || !offset.is_multiple_of(512) || offset / 512 >= 1 << 26 {
        return None;
    }
    Some(area << 26 | (offset / 512) as u32)
}

pub(super) fn decode_handle(h: u32) -> (u32, u64) {
    (h >> 26, u64::from(h & ((1 << 26) - 1)) * 512)
}

/// A buffer mapped from a handle ([`ClientSet::map_buffer_handle`]).
///
/// The bytes belong to the command that lent them, which another process holds; this
/// view gives the address and the bytes up to the end of the buffer area. Reading or
/// writing them is only sound while that command is outstanding and nobody else touches
/// the same bytes, which this type cannot check: hence the `unsafe` accessors.
pub struct MappedBuffer<'s> {
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
    pub(super) _set: std::marker::PhantomData<&'s ClientSet>,
}

impl std::fmt::Debug for MappedBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedBuffer")
            .field("ptr", &self.ptr)
            .field("capacity", &self.len)
            .finish()
    }
}

impl MappedBuffer<'_> {
    /// The address of the buffer's data in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes from the data start to the end of its area.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// The first `len` bytes.
    ///
    /// # Safety
    /// The command that lent this buffer must be outstanding for as long as the slice is
    /// used, and nobody may write these bytes meanwhile.
    pub unsafe fn as_slice(&self, len: usize) -> Option<&[u8]> {
        // SAFETY: `len <= capacity` keeps the slice inside the mapping (checked below);
        // exclusivity is the caller's promise.
        (len <= self.len).then(|| unsafe { std::slice::from_raw_parts(self.ptr, len) })
    }

    /// The first `len` bytes, writable.
    ///
    /// # Safety
    /// As for [`as_slice`](Self::as_slice), and nobody else may read or write these bytes
    /// while the slice is used.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self, len: usize) -> Option<&mut [u8]> {
        // SAFETY: in range as checked; exclusivity is the caller's promise.
        (len <= self.len).then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr, len) })
    }
}
