//! # libvdi — the C ABI of vdi, both roles
//!
//! `libvdi.so` and `libvdi.a`, declared by `include/vdi/vdi_c.h` (generated from this file
//! by cbindgen and checked in; a test regenerates it and fails on any difference). Every
//! call of the reference's client and server interfaces is one function here, returning
//! the documented `VD_E_*` HRESULT (`NOERROR` = 0). See `docs/c-abi.md` for handles,
//! ownership, threading and time-outs.
//!
//! The boundary: every function runs inside [`vdi_ffi_core::fence`] (no panic crosses it;
//! a bug is `VD_E_UNEXPECTED`), and handles are values looked up in a table, never
//! dereferenced, so a NULL, foreign, freed or stale handle is `VD_E_INVALID`. What is
//! left to the caller is what C cannot check: pointers to the caller's own memory
//! (strings, `VDConfig`, `VDS_Command`, out-pointers) must be valid, as each function's
//! `# Safety` section says.

#![allow(unsafe_code)] // this crate is the list of extern "C" entry points
#![allow(clippy::missing_safety_doc)] // each # Safety section is written out below

use std::ffi::{c_char, c_int};

use vdi_ffi_core::abi::{VDC_Command, VDConfig, VDS_Command};
use vdi_ffi_core::vdi;
use vdi_ffi_core::{client, fence, server};

/// A client set object (`IClientVirtualDeviceSet2` / `ClientVirtualDeviceSet`): an opaque
/// handle, never dereferenced by the library.
pub struct VdiClientSet {
    _opaque: [u8; 0],
}

/// A client device (`IClientVirtualDevice`): an opaque handle owned by its set.
pub struct VdiClientDevice {
    _opaque: [u8; 0],
}

/// A server set object (`IServerVirtualDeviceSet2`): an opaque handle.
pub struct VdiServerSet {
    _opaque: [u8; 0],
}

/// A server device (`IServerVirtualDevice`): an opaque handle owned by its set.
pub struct VdiServerDevice {
    _opaque: [u8; 0],
}

fn h<T>(p: *mut T) -> u64 {
    p.addr() as u64
}

fn as_ptr<T>(h: u64) -> *mut T {
    // A handle is a value, not an address: this pointer is never dereferenced.
    std::ptr::without_provenance_mut(h as usize)
}

// ---------------------------------------------------------------------------------------
// Errors

/// Copies the message of the last call that failed on this thread into `buf` (at most
/// `len` bytes, always NUL-terminated when `len > 0`) and returns the message's full
/// length (so a caller can size a buffer with `vdi_last_error(NULL, 0) + 1`). The message
/// says what happened and, where a person can act, what to change.
///
/// # Safety
/// `buf` is NULL or points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_last_error(buf: *mut c_char, len: usize) -> usize {
    // SAFETY: as the caller promised.
    fence::value(0, || Ok(unsafe { fence::copy_last_error(buf, len) }))
}

/// The name of a result code (`"VD_E_ABORT"`, `"NOERROR"`), or `"unknown"`: a static
/// string, never freed.
///
/// # Safety
/// None: any value may be passed.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_error_name(code: i32) -> *const c_char {
    let name: &'static std::ffi::CStr = match code {
        0 => c"NOERROR",
        c => match vdi::ErrorCode::from_hresult(c) {
            Some(e) => error_cname(e),
            None => c"unknown",
        },
    };
    name.as_ptr()
}

fn error_cname(e: vdi::ErrorCode) -> &'static std::ffi::CStr {
    use vdi::ErrorCode as E;
    match e {
        E::NotOpen => c"VD_E_NOTOPEN",
        E::Timeout => c"VD_E_TIMEOUT",
        E::Abort => c"VD_E_ABORT",
        E::Security => c"VD_E_SECURITY",
        E::Invalid => c"VD_E_INVALID",
        E::InstanceName => c"VD_E_INSTANCE_NAME",
        E::NotSupported => c"VD_E_NOTSUPPORTED",
        E::Memory => c"VD_E_MEMORY",
        E::Unexpected => c"VD_E_UNEXPECTED",
        E::Protocol => c"VD_E_PROTOCOL",
        E::Open => c"VD_E_OPEN",
        E::Close => c"VD_E_CLOSE",
        E::Busy => c"VD_E_BUSY",
        E::QueueFull => c"VD_E_QUEUE_FULL",
        E::IoError => c"VD_E_IO_ERROR",
        _ => c"unknown",
    }
}

// ---------------------------------------------------------------------------------------
// Client set

/// A new client set object, in the DNE state (no set yet: call `vdi_client_set_create`).
/// NULL if the process already holds the most handles the library keeps (16384).
///
/// # Safety
/// None. Free the object with `vdi_client_set_free`.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_client_set_new() -> *mut VdiClientSet {
    fence::value(std::ptr::null_mut(), || client::new_set().map(as_ptr))
}

/// Frees a client set object and its devices. If its set is still open it is closed first,
/// as `vdi_client_set_close` would (which aborts the set if a device has not yet seen
/// `VD_E_CLOSE`), and that close's code is returned. `VD_E_INVALID` for NULL, a freed
/// object (a second free) or a value that is not a client set.
///
/// # Safety
/// None: the handle is looked up, never dereferenced. After the call, the object's device
/// handles are dead and its `VDC_Command` blocks are freed.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_client_set_free(set: *mut VdiClientSet) -> i32 {
    fence::run(|| client::free_set(h(set)))
}

/// `Create`: creates the set `name` (no `/`, `\` or NUL; at most 100 bytes) with the
/// client's configuration. `NOERROR`, `VD_E_PROTOCOL` (this object already has a set),
/// `VD_E_NOTSUPPORTED` (a field of `cfg` is invalid; `vdi_last_error` names it),
/// `VD_E_BUSY` (the name is taken), `VD_E_INVALID`.
///
/// # Safety
/// `name` is a NUL-terminated string; `cfg` points to a readable `VDConfig`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_create(
    set: *mut VdiClientSet,
    name: *const c_char,
    cfg: *const VDConfig,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::create_ex(h(set), std::ptr::null(), name, cfg) })
}

/// `CreateEx`: as `vdi_client_set_create`; `instance` must be NULL or "" (named instances
/// do not exist here: `VD_E_INSTANCE_NAME`).
///
/// # Safety
/// `instance` is NULL or a NUL-terminated string; otherwise as `vdi_client_set_create`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_create_ex(
    set: *mut VdiClientSet,
    instance: *const c_char,
    name: *const c_char,
    cfg: *const VDConfig,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::create_ex(h(set), instance, name, cfg) })
}

/// `GetConfiguration`: waits up to `timeout_ms` milliseconds (negative or `INFINITE`:
/// forever; 0: poll) until the server has configured the set, and fills `cfg`.
/// `NOERROR`, `VD_E_TIMEOUT`, `VD_E_ABORT`, `VD_E_PROTOCOL` (no set, or closed).
///
/// # Safety
/// `cfg` points to a writable `VDConfig`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_get_configuration(
    set: *mut VdiClientSet,
    timeout_ms: i64,
    cfg: *mut VDConfig,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::get_configuration(h(set), timeout_ms, cfg) })
}

/// `OpenDevice`: opens the device `name` (device 0 has the set's name). `*dev` is the
/// device, or NULL on failure. `NOERROR`, `VD_E_OPEN` (every device is open),
/// `VD_E_PROTOCOL` (before `GetConfiguration`, after `Close`, or already open),
/// `VD_E_INVALID` (no device of that name), `VD_E_ABORT`.
///
/// # Safety
/// `name` is a NUL-terminated string; `dev` points to a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_open_device(
    set: *mut VdiClientSet,
    name: *const c_char,
    dev: *mut *mut VdiClientDevice,
) -> i32 {
    // SAFETY: as the caller promised; a pointer and a u64 have the same size and
    // alignment here (asserted in vdi_ffi_core::abi).
    fence::run(|| unsafe { client::open_device(h(set), name, dev.cast()) })
}

/// `Close`: releases the set (every mapping, socket and thread) before it returns; the
/// object may `Create` again. `NOERROR`; `VD_E_OPEN` (a device had not seen
/// `VD_E_CLOSE`: the set was aborted, and still released); `VD_E_PROTOCOL` (no set).
///
/// # Safety
/// None: the handle is looked up. Buffers the caller still holds stop being shared.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_client_set_close(set: *mut VdiClientSet) -> i32 {
    fence::run(|| client::close(h(set)))
}

/// `SignalAbort`: aborts the set; blocked and later calls on both sides return
/// `VD_E_ABORT`. `NOERROR`, `VD_E_PROTOCOL` (no set).
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_client_set_signal_abort(set: *mut VdiClientSet) -> i32 {
    fence::run(|| client::signal_abort(h(set)))
}

/// `OpenInSecondary`: opens, from another process, a set whose primary has already
/// returned from `GetConfiguration`. `NOERROR`, `VD_E_PROTOCOL`, `VD_E_ABORT`,
/// `VD_E_INVALID`, `VD_E_SECURITY`.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_open_in_secondary(
    set: *mut VdiClientSet,
    name: *const c_char,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::open_in_secondary_ex(h(set), std::ptr::null(), name) })
}

/// `OpenInSecondaryEx`: as `vdi_client_set_open_in_secondary`; `instance` NULL or "".
///
/// # Safety
/// `instance` is NULL or a NUL-terminated string; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_open_in_secondary_ex(
    set: *mut VdiClientSet,
    instance: *const c_char,
    name: *const c_char,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::open_in_secondary_ex(h(set), instance, name) })
}

/// `GetBufferHandle`: a process-independent handle for the buffer whose data starts at
/// `buffer` (from a Read or Write command). `NOERROR`, `VD_E_INVALID` (not a buffer
/// address), `VD_E_PROTOCOL`.
///
/// # Safety
/// `handle` points to a writable `uint32_t`. `buffer` is only compared, never read.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_get_buffer_handle(
    set: *mut VdiClientSet,
    buffer: *const u8,
    handle: *mut u32,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::get_buffer_handle(h(set), buffer, handle) })
}

/// `MapBufferHandle`: the address in this process of the buffer behind `handle`.
/// `NOERROR`, `VD_E_INVALID` (not a handle of this set), `VD_E_PROTOCOL`.
///
/// # Safety
/// `buffer` points to a writable pointer. The bytes belong to the command that lent them,
/// which another process of the set holds.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_set_map_buffer_handle(
    set: *mut VdiClientSet,
    handle: u32,
    buffer: *mut *mut u8,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::map_buffer_handle(h(set), handle, buffer) })
}

// ---------------------------------------------------------------------------------------
// Client device

/// `GetCommand`: waits up to `timeout_ms` milliseconds (negative or `INFINITE`: forever;
/// 0: poll) for the device's next command. `*cmd` is the command, or NULL on failure.
/// `NOERROR`, `VD_E_CLOSE` (the server closed the device: the normal end; returned again
/// on later calls), `VD_E_TIMEOUT`, `VD_E_ABORT`, `VD_E_PROTOCOL` (the set was closed).
///
/// The block belongs to the library; it stays readable after `CompleteCommand` until this
/// device's next `GetCommand` returns. Its `buffer` (Read/Write) is the client's until
/// the command is completed.
///
/// # Safety
/// `cmd` points to a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_client_device_get_command(
    dev: *mut VdiClientDevice,
    timeout_ms: i64,
    cmd: *mut *mut VDC_Command,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::get_command(h(dev), timeout_ms, cmd) })
}

/// `CompleteCommand`: reports a command's outcome (`completion_code`: a Win32 code,
/// `ERROR_SUCCESS` when done; `bytes_transferred` for Read and Write; `position` for
/// GetPosition and SetPosition). Any code but `ERROR_SUCCESS` puts the device in
/// IO-ERROR. `NOERROR`; `VD_E_INVALID` (not a command this device handed out, completed
/// already, or more bytes than asked for); `VD_E_ABORT`; `VD_E_PROTOCOL`.
///
/// # Safety
/// None: `cmd` is looked up among the device's blocks, never dereferenced.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_client_device_complete_command(
    dev: *mut VdiClientDevice,
    cmd: *mut VDC_Command,
    completion_code: u32,
    bytes_transferred: u32,
    position: u64,
) -> i32 {
    fence::run(|| {
        client::complete_command(h(dev), cmd, completion_code, bytes_transferred, position)
    })
}

// ---------------------------------------------------------------------------------------
// Server set

/// A new server set object, in the DNE state (call `vdi_server_set_open`). NULL if the
/// process holds the most handles the library keeps.
///
/// # Safety
/// None. Free it with `vdi_server_set_free`.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_new() -> *mut VdiServerSet {
    fence::value(std::ptr::null_mut(), || server::new_set().map(as_ptr))
}

/// Frees a server set object and its devices; closes the set first if it is still open
/// (as `vdi_server_set_close`, whose code it then returns). `VD_E_INVALID` for NULL, a
/// freed object or a value that is not a server set.
///
/// # Safety
/// None. Do not free the object from one of its own completion routines.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_free(set: *mut VdiServerSet) -> i32 {
    fence::run(|| server::free_set(h(set)))
}

/// `Open`: attaches to the set `name` a client created (`instance` NULL or "").
/// `NOERROR`, `VD_E_INVALID` (no such set), `VD_E_SECURITY` (another user's set),
/// `VD_E_PROTOCOL` (not the first call on this object), `VD_E_INSTANCE_NAME`.
///
/// # Safety
/// `instance` is NULL or a NUL-terminated string; `name` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_server_set_open(
    set: *mut VdiServerSet,
    instance: *const c_char,
    name: *const c_char,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { server::open(h(set), instance, name) })
}

/// `GetConfiguration`: the configuration the client asked for. `NOERROR`,
/// `VD_E_PROTOCOL`, `VD_E_ABORT`.
///
/// # Safety
/// `cfg` points to a writable `VDConfig`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_server_set_get_configuration(
    set: *mut VdiServerSet,
    cfg: *mut VDConfig,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { server::get_configuration(h(set), cfg) })
}

/// `BeginConfiguration` (the header's parameter order: features, block size, alignment,
/// max transfer size, time-out in milliseconds). `NOERROR`, `VD_E_PROTOCOL`,
/// `VD_E_ABORT`, `VD_E_INVALID` (a value out of range; `vdi_last_error` says which).
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_begin_configuration(
    set: *mut VdiServerSet,
    features: u32,
    block_size: u32,
    alignment: u32,
    max_transfer_size: u32,
    timeout_ms: u32,
) -> i32 {
    fence::run(|| {
        server::begin_configuration(
            h(set),
            features,
            block_size,
            alignment,
            max_transfer_size,
            timeout_ms,
        )
    })
}

/// `RequestBuffers`: declares `count` buffers of `size` bytes (`alignment` 0: the set's).
/// `NOERROR`, `VD_E_PROTOCOL`, `VD_E_ABORT`, `VD_E_MEMORY`, `VD_E_INVALID`.
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_request_buffers(
    set: *mut VdiServerSet,
    size: u32,
    alignment: u32,
    count: u32,
) -> i32 {
    fence::run(|| server::request_buffers(h(set), size, alignment, count))
}

/// `QueryAvailableBuffers`: how many buffers of that shape can still be allocated.
///
/// # Safety
/// `count` points to a writable `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_server_set_query_available_buffers(
    set: *mut VdiServerSet,
    size: u32,
    alignment: u32,
    count: *mut u32,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { server::query_available_buffers(h(set), size, alignment, count) })
}

/// `EndConfiguration`: allocates the buffer area; the client's `GetConfiguration`
/// returns. `NOERROR`, `VD_E_PROTOCOL`, `VD_E_ABORT`, `VD_E_MEMORY` (the set stays
/// Configurable).
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_end_configuration(set: *mut VdiServerSet) -> i32 {
    fence::run(|| server::end_configuration(h(set)))
}

/// `ExecuteCompletionAgent`: runs the completion agent on the calling thread, calling each
/// command's completion routine as the client completes it. Returns `NOERROR` once every
/// device is closed and nothing is outstanding, or `VD_E_ABORT` after an abort, once
/// every outstanding command has been called back with `ERROR_OPERATION_ABORTED`.
///
/// # Safety
/// None. The routines it calls must not unwind (no C++ exception may leave them).
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_execute_completion_agent(set: *mut VdiServerSet) -> i32 {
    fence::run(|| server::execute_completion_agent(h(set)))
}

/// `OpenDevice`: opens the next device under `name` (device 0 must have the set's name).
/// `*dev` is the device, or NULL on failure. `NOERROR`, `VD_E_OPEN` (all open),
/// `VD_E_INVALID`, `VD_E_PROTOCOL`, `VD_E_ABORT`.
///
/// # Safety
/// `name` is a NUL-terminated string; `dev` points to a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_server_set_open_device(
    set: *mut VdiServerSet,
    name: *const c_char,
    dev: *mut *mut VdiServerDevice,
) -> i32 {
    // SAFETY: as the caller promised; pointer and u64 have the same size and alignment.
    fence::run(|| unsafe { server::open_device(h(set), name, dev.cast()) })
}

/// `AllocateBuffer`: `*buffer` is the data start of a new shared buffer of `size` bytes
/// (`alignment` 0: the set's), or NULL on failure. `NOERROR`, `VD_E_MEMORY`,
/// `VD_E_INVALID`, `VD_E_PROTOCOL`, `VD_E_ABORT`.
///
/// # Safety
/// `buffer` points to a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_server_set_allocate_buffer(
    set: *mut VdiServerSet,
    buffer: *mut *mut u8,
    size: u32,
    alignment: u32,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { server::allocate_buffer(h(set), buffer, size, alignment) })
}

/// `FreeBuffer`: returns a buffer from `AllocateBuffer` (`size` as allocated).
/// `NOERROR`; `VD_E_INVALID` (not an allocated buffer of this set, freed already, held by
/// an outstanding command, or another size); `VD_E_PROTOCOL`; `VD_E_ABORT`.
///
/// # Safety
/// None: the address is looked up, never read.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_free_buffer(
    set: *mut VdiServerSet,
    buffer: *mut u8,
    size: u32,
) -> i32 {
    fence::run(|| server::free_buffer(h(set), buffer, size))
}

/// `IsSharedBuffer`: 1 if `buffer` points into a buffer allocated from this set, else 0
/// (also for an invalid handle).
///
/// # Safety
/// None: the address is only compared.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_is_shared_buffer(
    set: *mut VdiServerSet,
    buffer: *const u8,
) -> c_int {
    fence::value(0, || {
        server::is_shared_buffer(h(set), buffer).map(c_int::from)
    })
}

/// `SignalAbort`: aborts the set; the completion agent calls back every outstanding
/// command with `ERROR_OPERATION_ABORTED` and returns. `NOERROR`, `VD_E_PROTOCOL`.
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_signal_abort(set: *mut VdiServerSet) -> i32 {
    fence::run(|| server::signal_abort(h(set)))
}

/// `Close`: releases the set before it returns. With devices still open it performs abort
/// processing (every outstanding command is called back with `ERROR_OPERATION_ABORTED`)
/// and returns `VD_E_PROTOCOL`; a running completion agent returns first. A second
/// `Close` returns `VD_E_PROTOCOL`.
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_set_close(set: *mut VdiServerSet) -> i32 {
    fence::run(|| server::close(h(set)))
}

// ---------------------------------------------------------------------------------------
// Server device

/// `SendCommand`: queues `cmd` (inputs: `commandCode`, `size`, `inPosition`, `buffer`
/// from `AllocateBuffer` or NULL, `completionRoutine` (required), `completionContext`).
/// The routine runs once, on the completion agent's thread, with `completionCode`,
/// `bytesTransferred` and `outPosition` filled in. If sending fails the routine has
/// already run, on this thread, with the mapped code, and the error is returned:
/// `VD_E_ABORT` (995), `VD_E_PROTOCOL` (6: the device is closed), `VD_E_IO_ERROR` (1117:
/// only ClearError may be sent), `VD_E_QUEUE_FULL` (1450), `VD_E_INVALID` (87: a buffer
/// that is not this set's, or too small). `VD_E_INVALID` without any call of the routine
/// when `cmd` is NULL or has no routine.
///
/// # Safety
/// `cmd` points to a `VDS_Command` that stays valid, and whose outputs the caller does not
/// touch, until its routine has run; the routine must not unwind.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vdi_server_device_send_command(
    dev: *mut VdiServerDevice,
    cmd: *mut VDS_Command,
) -> i32 {
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { server::send_command(h(dev), cmd) })
}

/// `CloseDevice`: the client's `GetCommand` returns `VD_E_CLOSE` once it has every command
/// sent before. `NOERROR`, `VD_E_CLOSE` (closed already), `VD_E_ABORT` (no action after
/// an abort), `VD_E_PROTOCOL`.
///
/// # Safety
/// None.
#[unsafe(no_mangle)]
pub extern "C" fn vdi_server_device_close_device(dev: *mut VdiServerDevice) -> i32 {
    fence::run(|| server::close_device(h(dev)))
}
