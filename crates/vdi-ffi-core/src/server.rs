//! The server role behind handles: each function is one C call, over
//! [`vdi::object::ServerVirtualDeviceSet`] and [`vdi::object::ServerVirtualDevice`].
//!
//! Who owns what:
//! - the set object is the caller's from [`new_set`] until [`free_set`] (which closes the
//!   set if it is still open: abort processing if devices are open, as `Close` does);
//! - device handles belong to the set object and are freed with it;
//! - a `VDS_Command` block belongs to the caller, who keeps it valid from `SendCommand`
//!   until its completion routine has run; the library reads its inputs at
//!   `SendCommand`, and writes its outputs (`completionCode`, `bytesTransferred`,
//!   `outPosition`) just before calling the routine, once;
//! - buffers come from `AllocateBuffer` and go back with `FreeBuffer` (or `Close`); while
//!   a command holds one, the client has it.

#![allow(unsafe_code)] // the caller's VDS_Command blocks and out-pointers; each use justified

use std::ffi::c_char;
use std::sync::{Arc, Mutex, MutexGuard};

use vdi::object::{ServerVirtualDevice, ServerVirtualDeviceSet, VdsCompletion};

use crate::abi::{VD_E_MEMORY, VDConfig, VDS_Command};
use crate::fence::{self, CError};
use crate::handle::{self, Entry};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server set object.
#[derive(Default)]
pub struct ServerSetObj {
    set: ServerVirtualDeviceSet,
    devices: Mutex<Vec<u64>>,
}

impl ServerSetObj {
    /// The object underneath.
    pub fn object(&self) -> &ServerVirtualDeviceSet {
        &self.set
    }
}

/// A server device.
pub struct ServerDevObj {
    dev: ServerVirtualDevice,
}

/// A new server set object (the DNE state).
pub fn new_set() -> Result<u64, CError> {
    handle::insert(Entry::ServerSet(Arc::default())).ok_or_else(|| {
        CError::new(
            VD_E_MEMORY,
            format!(
                "{} handles are alive in this process: free some",
                handle::CAPACITY
            ),
        )
    })
}

/// `vdi_server_set_free`.
pub fn free_set(h: u64) -> Result<(), CError> {
    let set = handle::server_set(h)?;
    let closed = crate::nothing_to_close(set.set.close());
    for d in lock(&set.devices).drain(..) {
        handle::remove(d);
    }
    handle::remove(h);
    closed
}

/// `Open`.
///
/// # Safety
/// `instance` is NULL or a NUL-terminated string; `name` is a NUL-terminated string.
pub unsafe fn open(h: u64, instance: *const c_char, name: *const c_char) -> Result<(), CError> {
    let set = handle::server_set(h)?;
    // SAFETY: as the caller promised.
    let instance = unsafe { fence::optional_name(instance, "the instance name") }?;
    // SAFETY: as the caller promised.
    let name = unsafe { fence::name(name, "the set name") }?;
    set.set.open(instance, name)?;
    Ok(())
}

/// `GetConfiguration`.
///
/// # Safety
/// `cfg` is NULL or points to a writable `VDConfig`.
pub unsafe fn get_configuration(h: u64, cfg: *mut VDConfig) -> Result<(), CError> {
    let set = handle::server_set(h)?;
    fence::out_ptr(cfg, "the VDConfig pointer")?;
    let c = set.set.get_configuration()?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { cfg.write(c.into()) };
    Ok(())
}

/// `BeginConfiguration` (the header's order).
pub fn begin_configuration(
    h: u64,
    features: u32,
    block_size: u32,
    alignment: u32,
    max_transfer_size: u32,
    timeout_ms: u32,
) -> Result<(), CError> {
    handle::server_set(h)?.set.begin_configuration(
        features,
        block_size,
        alignment,
        max_transfer_size,
        timeout_ms,
    )?;
    Ok(())
}

/// `EndConfiguration`.
pub fn end_configuration(h: u64) -> Result<(), CError> {
    handle::server_set(h)?.set.end_configuration()?;
    Ok(())
}

/// `RequestBuffers`.
pub fn request_buffers(h: u64, size: u32, alignment: u32, count: u32) -> Result<(), CError> {
    handle::server_set(h)?
        .set
        .request_buffers(size, alignment, count)?;
    Ok(())
}

/// `QueryAvailableBuffers`.
///
/// # Safety
/// `count` is NULL or points to a writable `uint32_t`.
pub unsafe fn query_available_buffers(
    h: u64,
    size: u32,
    alignment: u32,
    count: *mut u32,
) -> Result<(), CError> {
    let set = handle::server_set(h)?;
    fence::out_ptr(count, "the count out-pointer")?;
    let n = set.set.query_available_buffers(size, alignment)?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { count.write(n) };
    Ok(())
}

/// `ExecuteCompletionAgent` (blocks the calling thread).
pub fn execute_completion_agent(h: u64) -> Result<(), CError> {
    handle::server_set(h)?.set.execute_completion_agent()?;
    Ok(())
}

/// `OpenDevice`: `*out` is the device handle, or NULL on failure.
///
/// # Safety
/// `name` is a NUL-terminated string; `out` is NULL or points to a writable pointer.
pub unsafe fn open_device(h: u64, name: *const c_char, out: *mut u64) -> Result<(), CError> {
    fence::out_ptr(out, "the device out-pointer")?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(0) };
    let set = handle::server_set(h)?;
    // SAFETY: as the caller promised.
    let name = unsafe { fence::name(name, "the device name") }?;
    let dev = set.set.open_device(name)?;
    let Some(d) = handle::insert(Entry::ServerDevice(Arc::new(ServerDevObj { dev }))) else {
        let _ = set.set.signal_abort();
        return Err(CError::new(
            VD_E_MEMORY,
            "no handle left for the device (the set was aborted)",
        ));
    };
    lock(&set.devices).push(d);
    // SAFETY: as above.
    unsafe { out.write(d) };
    Ok(())
}

/// `AllocateBuffer`: `*out` is the buffer's data start, or NULL on failure.
///
/// # Safety
/// `out` is NULL or points to a writable pointer.
pub unsafe fn allocate_buffer(
    h: u64,
    out: *mut *mut u8,
    size: u32,
    alignment: u32,
) -> Result<(), CError> {
    fence::out_ptr(out, "the buffer out-pointer")?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(std::ptr::null_mut()) };
    let set = handle::server_set(h)?;
    let p = set.set.allocate_buffer(size, alignment)?;
    // SAFETY: as above.
    unsafe { out.write(p) };
    Ok(())
}

/// `FreeBuffer`: the address is looked up, never read.
pub fn free_buffer(h: u64, buffer: *mut u8, size: u32) -> Result<(), CError> {
    handle::server_set(h)?.set.free_buffer(buffer, size)?;
    Ok(())
}

/// `IsSharedBuffer`: the address is only compared.
pub fn is_shared_buffer(h: u64, p: *const u8) -> Result<bool, CError> {
    Ok(handle::server_set(h)?.set.is_shared_buffer(p))
}

/// `SignalAbort`.
pub fn signal_abort(h: u64) -> Result<(), CError> {
    handle::server_set(h)?.set.signal_abort()?;
    Ok(())
}

/// `Close`.
pub fn close(h: u64) -> Result<(), CError> {
    handle::server_set(h)?.set.close()?;
    Ok(())
}

/// The caller's command block, carried to the completion agent's thread.
struct Block(*mut VDS_Command);

// SAFETY: the caller keeps the block valid, and does not touch its outputs, from
// SendCommand until the routine runs; the library writes it from one thread (the one that
// runs the routine), once.
unsafe impl Send for Block {}

impl Block {
    /// Writes the outputs and calls the routine.
    ///
    /// # Safety
    /// The block is still valid (the caller's promise at SendCommand).
    unsafe fn complete(self, routine: unsafe extern "C" fn(*mut VDS_Command), c: VdsCompletion) {
        let p = self.0;
        // SAFETY: valid as promised; fields written through raw pointers, no reference is
        // made to memory the caller owns.
        unsafe {
            std::ptr::addr_of_mut!((*p).completionCode).write(c.completion_code as i32);
            std::ptr::addr_of_mut!((*p).bytesTransferred).write(c.bytes_transferred as i32);
            std::ptr::addr_of_mut!((*p).outPosition).write(c.out_position as i64);
            routine(p);
        }
    }
}

/// `SendCommand`. On failure to send, the routine has already run (synchronously, with
/// the mapped completion code), except when the block itself is unusable (NULL, or no
/// routine): then nothing runs and the code is `VD_E_INVALID`.
///
/// # Safety
/// `cmd` is NULL or a valid `VDS_Command` that stays valid until its routine has run;
/// the routine does not unwind (no C++ exception may leave it).
pub unsafe fn send_command(h: u64, cmd: *mut VDS_Command) -> Result<(), CError> {
    fence::in_ptr(cmd, "the VDS_Command pointer")?;
    // SAFETY: checked non-null and aligned; readable as the caller promised. A copy of the
    // inputs: the block is not referenced while the client may run.
    let c = unsafe { cmd.read() };
    let Some(routine) = c.completionRoutine else {
        return Err(CError::invalid(
            "the VDS_Command has no completionRoutine (it is required)",
        ));
    };
    let dev = handle::server_device(h)?;
    let block = Block(cmd);
    dev.dev.send_command(
        c.commandCode as u32,
        c.size as u32,
        c.inPosition as u64,
        c.buffer,
        move |done| {
            // SAFETY: the caller keeps the block valid until this runs (SendCommand's
            // contract), and the routine is the caller's own function.
            unsafe { block.complete(routine, done) }
        },
    )?;
    Ok(())
}

/// `CloseDevice`.
pub fn close_device(h: u64) -> Result<(), CError> {
    handle::server_device(h)?.dev.close_device()?;
    Ok(())
}
