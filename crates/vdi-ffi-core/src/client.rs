//! The client role behind handles: each function is one C call, over
//! [`vdi::object::ClientVirtualDeviceSet`] and [`vdi::object::ClientVirtualDevice`].
//!
//! Who owns what:
//! - the set object is the caller's handle from [`new_set`] until [`free_set`]; `Close`
//!   releases the set (shared memory, socket, threads) but not the object, which may
//!   `Create` again;
//! - device handles belong to the set object: they answer (`VD_E_PROTOCOL` after `Close`)
//!   until the set object is freed, which frees them too;
//! - `VDC_Command` blocks belong to their device: a block stays readable after
//!   `CompleteCommand` until that device's next `GetCommand` returns (the Linux sample
//!   reads `cmd->commandCode` after completing it), and is freed with the device.
//!
//! A `VDC_Command*` is never dereferenced to find out what it is: `CompleteCommand` looks
//! its address up among the blocks this device handed out, so a pointer from another
//! device, a stale or a made-up one, or a second completion of the same command is
//! `VD_E_INVALID`.

#![allow(unsafe_code)] // raw out-pointers and the command blocks; each use justified

use std::ffi::c_char;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use vdi::ErrorCode;
use vdi::object::{ClientVirtualDevice, ClientVirtualDeviceSet};

use crate::abi::{self, VD_E_MEMORY, VDC_Command, VDConfig};
use crate::fence::{self, CError};
use crate::handle::{self, Entry};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client set object.
#[derive(Default)]
pub struct ClientSetObj {
    set: ClientVirtualDeviceSet,
    /// Handles of the devices opened through this object, freed with it.
    devices: Mutex<Vec<u64>>,
}

impl ClientSetObj {
    /// The object underneath.
    pub fn object(&self) -> &ClientVirtualDeviceSet {
        &self.set
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    /// Never handed out, or handed out, completed and then recycled.
    Free,
    /// Handed out; the object layer's command handle.
    Outstanding(u64),
    /// Completed: still readable by the caller until the device's next GetCommand.
    Completed,
}

struct Block {
    cmd: NonNull<VDC_Command>,
    state: BlockState,
}

/// A client device.
pub struct ClientDevObj {
    dev: ClientVirtualDevice,
    blocks: Mutex<Vec<Block>>,
}

// SAFETY: the block pointers are boxes this object owns (allocated in `take_block`, freed
// only in Drop); the table of them is behind a mutex, and the library writes a block only
// while it is not handed out (Free, or Completed and being recycled).
unsafe impl Send for ClientDevObj {}
// SAFETY: as above: every access to the table goes through the mutex.
unsafe impl Sync for ClientDevObj {}

impl Drop for ClientDevObj {
    fn drop(&mut self) {
        for b in lock(&self.blocks).drain(..) {
            // SAFETY: each block came from Box::into_raw in `take_block` and is freed once,
            // here.
            drop(unsafe { Box::from_raw(b.cmd.as_ptr()) });
        }
    }
}

impl ClientDevObj {
    /// The object underneath.
    pub fn object(&self) -> &ClientVirtualDevice {
        &self.dev
    }

    /// A block for a new command: a free one, else a completed one (its readability
    /// ends now, at the next GetCommand), else a new one.
    fn take_block(blocks: &mut Vec<Block>, out: u64) -> NonNull<VDC_Command> {
        let reuse = blocks
            .iter()
            .position(|b| b.state == BlockState::Free)
            .or_else(|| blocks.iter().position(|b| b.state == BlockState::Completed));
        let i = match reuse {
            Some(i) => i,
            None => {
                let p = Box::into_raw(Box::new(VDC_Command::EMPTY));
                // SAFETY: Box::into_raw never returns null.
                let cmd = unsafe { NonNull::new_unchecked(p) };
                blocks.push(Block {
                    cmd,
                    state: BlockState::Free,
                });
                blocks.len() - 1
            }
        };
        blocks[i].state = BlockState::Outstanding(out);
        blocks[i].cmd
    }
}

/// A new client set object (the DNE state).
pub fn new_set() -> Result<u64, CError> {
    handle::insert(Entry::ClientSet(Arc::default())).ok_or_else(|| {
        CError::new(
            VD_E_MEMORY,
            format!(
                "{} handles are alive in this process: free some",
                handle::CAPACITY
            ),
        )
    })
}

/// `vdi_client_set_free`: closes the set if it is still open (which aborts it unless every
/// device has seen `VD_E_CLOSE`, as `Close` does) and frees the object and its devices.
pub fn free_set(h: u64) -> Result<(), CError> {
    let Some(entry) = handle::get(h) else {
        return Err(CError::invalid(format!(
            "0x{h:x} is not a live client set handle (freed twice, or not one this library handed out)"
        )));
    };
    let Entry::ClientSet(set) = entry else {
        return Err(CError::invalid(format!(
            "0x{h:x} is not a client set handle"
        )));
    };
    let closed = crate::nothing_to_close(set.set.close());
    for d in lock(&set.devices).drain(..) {
        handle::remove(d);
    }
    handle::remove(h);
    closed
}

/// `Create` / `CreateEx`.
///
/// # Safety
/// `instance` is NULL or a NUL-terminated string, `name` a NUL-terminated string, `cfg`
/// NULL or a readable `VDConfig`.
pub unsafe fn create_ex(
    h: u64,
    instance: *const c_char,
    name: *const c_char,
    cfg: *const VDConfig,
) -> Result<(), CError> {
    let set = handle::client_set(h)?;
    // SAFETY: as the caller promised.
    let instance = unsafe { fence::optional_name(instance, "the instance name") }?;
    // SAFETY: as the caller promised.
    let name = unsafe { fence::name(name, "the set name") }?;
    fence::in_ptr(cfg, "the VDConfig pointer")?;
    // SAFETY: checked non-null and aligned; the caller promised it is readable.
    let cfg = unsafe { cfg.read() };
    set.set.create_ex(instance, name, &cfg.into())?;
    Ok(())
}

/// `GetConfiguration`.
///
/// # Safety
/// `cfg` is NULL or points to a writable `VDConfig`.
pub unsafe fn get_configuration(h: u64, timeout_ms: i64, cfg: *mut VDConfig) -> Result<(), CError> {
    let set = handle::client_set(h)?;
    fence::out_ptr(cfg, "the VDConfig pointer")?;
    let c = set.set.get_configuration(abi::timeout(timeout_ms))?;
    // SAFETY: checked non-null and aligned; the caller promised it is writable.
    unsafe { cfg.write(c.into()) };
    Ok(())
}

/// `OpenDevice`: `*out` is the device handle, or NULL on failure.
///
/// # Safety
/// `name` is a NUL-terminated string; `out` is NULL or points to a writable `u64`-sized
/// pointer.
pub unsafe fn open_device(h: u64, name: *const c_char, out: *mut u64) -> Result<(), CError> {
    fence::out_ptr(out, "the device out-pointer")?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(0) };
    let set = handle::client_set(h)?;
    // SAFETY: as the caller promised.
    let name = unsafe { fence::name(name, "the device name") }?;
    let dev = set.set.open_device(name)?;
    let obj = Arc::new(ClientDevObj {
        dev,
        blocks: Mutex::new(Vec::new()),
    });
    let Some(d) = handle::insert(Entry::ClientDevice(obj)) else {
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

/// `Close`.
pub fn close(h: u64) -> Result<(), CError> {
    handle::client_set(h)?.set.close()?;
    Ok(())
}

/// `SignalAbort`.
pub fn signal_abort(h: u64) -> Result<(), CError> {
    handle::client_set(h)?.set.signal_abort()?;
    Ok(())
}

/// `OpenInSecondary` / `OpenInSecondaryEx`.
///
/// # Safety
/// `instance` is NULL or a NUL-terminated string; `name` a NUL-terminated string.
pub unsafe fn open_in_secondary_ex(
    h: u64,
    instance: *const c_char,
    name: *const c_char,
) -> Result<(), CError> {
    let set = handle::client_set(h)?;
    // SAFETY: as the caller promised.
    let instance = unsafe { fence::optional_name(instance, "the instance name") }?;
    // SAFETY: as the caller promised.
    let name = unsafe { fence::name(name, "the set name") }?;
    if instance.is_some_and(|i| !i.is_empty()) {
        return Err(CError::new(
            abi::hresult(ErrorCode::InstanceName),
            "named instances are not supported; pass NULL",
        ));
    }
    set.set.open_in_secondary(name)?;
    Ok(())
}

/// `GetBufferHandle`.
///
/// # Safety
/// `out` is NULL or points to a writable `uint32_t`. `buffer` is only compared, never
/// read.
pub unsafe fn get_buffer_handle(h: u64, buffer: *const u8, out: *mut u32) -> Result<(), CError> {
    let set = handle::client_set(h)?;
    fence::out_ptr(out, "the handle out-pointer")?;
    let v = set.set.get_buffer_handle(buffer)?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(v) };
    Ok(())
}

/// `MapBufferHandle`.
///
/// # Safety
/// `out` is NULL or points to a writable pointer.
pub unsafe fn map_buffer_handle(h: u64, handle: u32, out: *mut *mut u8) -> Result<(), CError> {
    let set = handle::client_set(h)?;
    fence::out_ptr(out, "the buffer out-pointer")?;
    let p = set.set.map_buffer_handle(handle)?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(p) };
    Ok(())
}

/// `GetCommand`: `*out` is the command, or NULL on failure.
///
/// # Safety
/// `out` is NULL or points to a writable pointer.
pub unsafe fn get_command(
    h: u64,
    timeout_ms: i64,
    out: *mut *mut VDC_Command,
) -> Result<(), CError> {
    fence::out_ptr(out, "the command out-pointer")?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(std::ptr::null_mut()) };
    let dev = handle::client_device(h)?;
    let c = dev.dev.get_command(abi::timeout(timeout_ms))?;
    let block = {
        let mut blocks = lock(&dev.blocks);
        let p = ClientDevObj::take_block(&mut blocks, c.handle);
        // SAFETY: the block is ours and not handed out (it was Free, or Completed, whose
        // readability ends at this GetCommand); written through the raw pointer, no
        // reference to memory the caller may also read.
        unsafe {
            p.as_ptr().write(VDC_Command {
                commandCode: c.command_code as i32,
                size: c.size as i32,
                position: c.position as i64,
                buffer: c.buffer,
            })
        };
        p
    };
    // SAFETY: as above.
    unsafe { out.write(block.as_ptr()) };
    Ok(())
}

/// `CompleteCommand`.
pub fn complete_command(
    h: u64,
    cmd: *mut VDC_Command,
    completion_code: u32,
    bytes_transferred: u32,
    position: u64,
) -> Result<(), CError> {
    let dev = handle::client_device(h)?;
    let out = {
        let mut blocks = lock(&dev.blocks);
        let Some(b) = blocks.iter_mut().find(|b| b.cmd.as_ptr() == cmd) else {
            return Err(CError::invalid(if cmd.is_null() {
                "the command is NULL".to_owned()
            } else {
                format!("{cmd:p} is not a command this device handed out")
            }));
        };
        match b.state {
            BlockState::Outstanding(out) => {
                b.state = BlockState::Completed;
                out
            }
            _ => {
                return Err(CError::invalid(
                    "the command is not outstanding (it was completed already)",
                ));
            }
        }
    };
    dev.dev
        .complete_command(out, completion_code, bytes_transferred, position)?;
    Ok(())
}
