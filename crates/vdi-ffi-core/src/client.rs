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

use vdi::object::{ClientVirtualDevice, ClientVirtualDeviceSet};
use vdi::{Command, ErrorCode};

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

/// Where a command block is in its life.
enum BlockState {
    /// Never handed out, or handed out, completed and then recycled.
    Free,
    /// Handed out: the command itself, until `CompleteCommand` takes it.
    ///
    /// Its `'static` stands for "as long as the [`ClientDevObj`] that holds this block":
    /// the command borrows the device of `ClientDevObj::dev`, which does not move (a
    /// `ClientDevObj` lives in the `Arc` it is created into, in `open_device`, and is
    /// only ever reached through it) and is not dropped before the command
    /// (`ClientDevObj`'s `Drop` drops every block's command before its fields).
    Outstanding(Command<'static>),
    /// Completed: still readable by the caller until the device's next GetCommand.
    Completed,
}

struct Block {
    cmd: NonNull<VDC_Command>,
    state: BlockState,
}

/// A client device.
///
/// The per-command path holds the typed [`Command`] in the block it hands out, so
/// `CompleteCommand` finds the command with the block (one look-up among this device's
/// blocks, which it needs anyway to refuse a foreign `VDC_Command*`) instead of a second,
/// hashed table of the object layer's ([`ClientVirtualDevice::get_command`] /
/// `complete_command`): the same calls on the same device, with the object layer's rule
/// kept (`CompleteCommand` after the normal end is `VD_E_PROTOCOL`).
pub struct ClientDevObj {
    dev: ClientVirtualDevice,
    blocks: Mutex<Vec<Block>>,
}

// SAFETY: the block pointers are boxes this object owns (allocated in `take_block`, freed
// only in Drop); the table of them is behind a mutex, and the library writes a block only
// while it is not handed out (Free, or Completed and being recycled). The commands in it
// are Send (a command's buffer moves with it).
unsafe impl Send for ClientDevObj {}
// SAFETY: as above: every access to the table goes through the mutex.
unsafe impl Sync for ClientDevObj {}

impl Drop for ClientDevObj {
    fn drop(&mut self) {
        for b in lock(&self.blocks).drain(..) {
            // An outstanding command is dropped here, before `dev` (a field, dropped after
            // this body): it completes itself with ERROR_OPERATION_ABORTED, as the object
            // layer's device does with its own on drop.
            drop(b.state);
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

    /// A block for `cmd`: a free one, else a completed one (its readability ends now, at
    /// the next GetCommand), else a new one.
    fn take_block(blocks: &mut Vec<Block>, cmd: Command<'static>) -> NonNull<VDC_Command> {
        let reuse = blocks
            .iter()
            .position(|b| matches!(b.state, BlockState::Free))
            .or_else(|| {
                blocks
                    .iter()
                    .position(|b| matches!(b.state, BlockState::Completed))
            });
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
        blocks[i].state = BlockState::Outstanding(cmd);
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
    let r = close_inner(h);
    if crate::trace::on() {
        crate::trace::line(format_args!("close {:x}", crate::trace::rc(&r)));
    }
    r
}

fn close_inner(h: u64) -> Result<(), CError> {
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
    if !crate::trace::on() {
        // SAFETY: as the caller promised.
        return unsafe { get_command_inner(h, timeout_ms, out) };
    }
    let after_close = handle::client_device(h).is_ok_and(|d| d.dev.device().is_terminated());
    // SAFETY: as the caller promised.
    let r = unsafe { get_command_inner(h, timeout_ms, out) };
    let (code, position) = match (&r, out.is_null()) {
        (Ok(()), false) => {
            // SAFETY: `out` is non-null and writable (checked by the call); on success
            // `*out` holds a live command block of this device, read before the caller
            // sees it (a plain copy of two fields, no reference kept).
            let cmd = unsafe { out.read() };
            // SAFETY: as above: the block is live and aligned; only read here.
            unsafe { cmd.as_ref() }.map_or((0, 0), |c| (c.commandCode, c.position))
        }
        _ => (0, 0),
    };
    crate::trace::line(format_args!(
        "get {h} {:x} {code} {timeout_ms} {} {position}",
        crate::trace::rc(&r),
        u8::from(after_close)
    ));
    r
}

/// # Safety
/// As [`get_command`].
unsafe fn get_command_inner(
    h: u64,
    timeout_ms: i64,
    out: *mut *mut VDC_Command,
) -> Result<(), CError> {
    fence::out_ptr(out, "the command out-pointer")?;
    // SAFETY: checked non-null and aligned; writable as the caller promised.
    unsafe { out.write(std::ptr::null_mut()) };
    let dev = handle::client_device(h)?;
    let mut c = dev.dev.device().get_command(abi::timeout(timeout_ms))?;
    let fields = VDC_Command {
        commandCode: c.code().value() as i32,
        size: c.size() as i32,
        position: c.position() as i64,
        // Writable: a Read's buffer is for the caller to fill.
        buffer: c
            .buffer_mut()
            .map_or(std::ptr::null_mut(), |b| b.as_mut_ptr()),
    };
    // SAFETY: the command borrows the device of `dev.dev`, which stays where it is and
    // outlives every block of `dev` (see `BlockState::Outstanding`); the command is stored
    // in one of them and never leaves it but to be completed or dropped.
    let c = unsafe { std::mem::transmute::<Command<'_>, Command<'static>>(c) };
    let block = {
        let mut blocks = lock(&dev.blocks);
        let p = ClientDevObj::take_block(&mut blocks, c);
        // SAFETY: the block is ours and not handed out (it was Free, or Completed, whose
        // readability ends at this GetCommand); written through the raw pointer, no
        // reference to memory the caller may also read.
        unsafe { p.as_ptr().write(fields) };
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
    let mut code = 0u32;
    let r = complete_inner(
        h,
        cmd,
        completion_code,
        bytes_transferred,
        position,
        &mut code,
    );
    if crate::trace::on() {
        crate::trace::line(format_args!(
            "done {h} {:x} {code} {completion_code} {bytes_transferred}",
            crate::trace::rc(&r)
        ));
    }
    r
}

fn complete_inner(
    h: u64,
    cmd: *mut VDC_Command,
    completion_code: u32,
    bytes_transferred: u32,
    position: u64,
    code: &mut u32,
) -> Result<(), CError> {
    let dev = handle::client_device(h)?;
    if dev.dev.device().is_terminated() {
        // The object layer's rule: after VD_E_CLOSE the device has no commands.
        return Err(vdi::VdError::new(
            ErrorCode::Protocol,
            vdi::Reason::WrongState {
                call: "CompleteCommand",
                state: "Normally Terminated (the device returned VD_E_CLOSE)",
            },
        )
        .into());
    }
    let command = {
        let mut blocks = lock(&dev.blocks);
        let Some(b) = blocks.iter_mut().find(|b| b.cmd.as_ptr() == cmd) else {
            return Err(CError::invalid(if cmd.is_null() {
                "the command is NULL".to_owned()
            } else {
                format!("{cmd:p} is not a command this device handed out")
            }));
        };
        match std::mem::replace(&mut b.state, BlockState::Completed) {
            BlockState::Outstanding(c) => {
                *code = c.code().value();
                c
            }
            other => {
                b.state = other;
                return Err(CError::invalid(
                    "the command is not outstanding (it was completed already)",
                ));
            }
        }
    };
    // Outside the lock: completing may wake the server, and another thread may fetch
    // the device's next command meanwhile.
    command.complete(completion_code, bytes_transferred, position)?;
    Ok(())
}
