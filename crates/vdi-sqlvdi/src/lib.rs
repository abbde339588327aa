//! # libsqlvdi — a drop-in for the Linux SQL Server VDI SDK's library
//!
//! Code compiled against the SDK's `vdi.h` (Microsoft's, or ours in `include/sqlvdi/`)
//! calls the member functions of two C++ classes, `ClientVirtualDeviceSet` and
//! `ClientVirtualDevice`, under their Itanium-mangled names. This library exports exactly
//! those 19 symbols (constructors and destructors in their C1/C2 and D1/D2 forms
//! included); each is a plain `extern "C"` function with `this` as its first argument,
//! which is how the x86-64 Itanium C++ ABI calls a non-virtual member function.
//!
//! The objects are 8 bytes (one pointer, `CVDS* cvds` / `CVD* cvd`), allocated by the
//! client (`new ClientVirtualDeviceSet()` or a stack or member object): the constructor
//! stores one of our handles there, nothing else. Device objects are allocated here
//! (with `malloc`, so a client that `delete`s one frees it correctly) and belong to their
//! set object: its destructor frees those the client has not deleted.
//!
//! Time-outs are milliseconds (`time_t`); negative or `INFINITE` (0xFFFFFFFF) waits
//! forever, 0 polls. See `docs/c-abi.md`.

#![allow(unsafe_code)] // this crate is the list of exported C++ member functions
#![allow(clippy::missing_safety_doc)] // each # Safety section is written out below

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong};
use std::sync::Mutex;

use vdi_ffi_core::abi::{VDC_Command, VDConfig};
use vdi_ffi_core::{client, fence};

/// `ClientVirtualDeviceSet` as the client compiled it: `CVDS* cvds`, 8 bytes.
#[repr(C)]
pub struct ClientVirtualDeviceSet {
    handle: u64,
}

/// `ClientVirtualDevice`: `CVD* cvd`, 8 bytes.
#[repr(C)]
pub struct ClientVirtualDevice {
    handle: u64,
}

const _: () = assert!(std::mem::size_of::<ClientVirtualDeviceSet>() == 8);
const _: () = assert!(std::mem::size_of::<ClientVirtualDevice>() == 8);

/// Device objects handed out and not deleted by the client: (set handle, object address).
static DEVICE_OBJECTS: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());

fn device_objects() -> std::sync::MutexGuard<'static, Vec<(u64, usize)>> {
    DEVICE_OBJECTS.lock().unwrap_or_else(|e| e.into_inner())
}

const DEVICE_LAYOUT: Layout = Layout::new::<ClientVirtualDevice>();

/// The handle in a client-allocated object (0 if `this` is NULL).
///
/// # Safety
/// `this` is NULL or points to a live object of the SDK's size (the C++ caller's promise).
unsafe fn handle_of<T>(this: *const T) -> u64 {
    if this.is_null() {
        return 0;
    }
    // SAFETY: a non-null `this` is a live 8-byte object whose first (only) field is ours.
    unsafe { this.cast::<u64>().read() }
}

// ---------------------------------------------------------------------------------------
// ClientVirtualDeviceSet

/// `ClientVirtualDeviceSet::ClientVirtualDeviceSet()`: a new object (no set yet).
///
/// # Safety
/// `this` points to 8 writable bytes (what the C++ compiler allocated for the object).
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSetC1Ev")]
pub unsafe extern "C" fn set_ctor(this: *mut ClientVirtualDeviceSet) {
    if this.is_null() {
        return;
    }
    // Without a handle (the process holds the most the library keeps) every call returns
    // VD_E_INVALID.
    let h = fence::value(0, client::new_set);
    // SAFETY: as the caller promised.
    unsafe { this.write(ClientVirtualDeviceSet { handle: h }) };
}

/// `ClientVirtualDeviceSet::ClientVirtualDeviceSet()` (the base-object constructor).
///
/// # Safety
/// As [`set_ctor`].
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSetC2Ev")]
pub unsafe extern "C" fn set_ctor2(this: *mut ClientVirtualDeviceSet) {
    // SAFETY: as the caller promised.
    unsafe { set_ctor(this) }
}

/// `ClientVirtualDeviceSet::~ClientVirtualDeviceSet()`: closes the set if it is still open
/// (aborting it unless every device has seen `VD_E_CLOSE`), frees the object's state and
/// the device objects the client has not deleted. A second destruction does nothing.
///
/// # Safety
/// `this` is NULL or a live object built by the constructor.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSetD1Ev")]
pub unsafe extern "C" fn set_dtor(this: *mut ClientVirtualDeviceSet) {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    if h == 0 {
        return;
    }
    let _ = fence::run(|| client::free_set(h));
    let mine: Vec<usize> = {
        let mut objs = device_objects();
        let (mine, rest): (Vec<_>, Vec<_>) = objs.drain(..).partition(|&(s, _)| s == h);
        *objs = rest;
        mine.into_iter().map(|(_, p)| p).collect()
    };
    for p in mine {
        // SAFETY: each address was allocated in `open_device` with DEVICE_LAYOUT and is
        // still ours (a client `delete` removes it from the list first, in the device's
        // destructor).
        unsafe { System.dealloc(p as *mut u8, DEVICE_LAYOUT) };
    }
    // SAFETY: as the caller promised.
    unsafe { this.write(ClientVirtualDeviceSet { handle: 0 }) };
}

/// `ClientVirtualDeviceSet::~ClientVirtualDeviceSet()` (the base-object destructor).
///
/// # Safety
/// As [`set_dtor`].
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSetD2Ev")]
pub unsafe extern "C" fn set_dtor2(this: *mut ClientVirtualDeviceSet) {
    // SAFETY: as the caller promised.
    unsafe { set_dtor(this) }
}

/// `int Create(char* name, VDConfig* cfg)`.
///
/// # Safety
/// `this` is a live object; `name` a NUL-terminated string; `cfg` a readable `VDConfig`.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig")]
pub unsafe extern "C" fn create(
    this: *mut ClientVirtualDeviceSet,
    name: *mut c_char,
    cfg: *mut VDConfig,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::create_ex(h, std::ptr::null(), name, cfg) })
}

/// `int GetConfiguration(time_t timeout, VDConfig* cfg)`: milliseconds; negative or
/// `INFINITE` waits forever; 0 polls.
///
/// # Safety
/// `this` is a live object; `cfg` a writable `VDConfig`.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet16GetConfigurationElP8VDConfig")]
pub unsafe extern "C" fn get_configuration(
    this: *mut ClientVirtualDeviceSet,
    timeout: c_long,
    cfg: *mut VDConfig,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::get_configuration(h, timeout, cfg) })
}

/// `int OpenDevice(char* name, ClientVirtualDevice** ppVirtualDevice)`: `*pp` is NULL on
/// failure.
///
/// # Safety
/// `this` is a live object; `name` a NUL-terminated string; `pp` a writable pointer.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet10OpenDeviceEPcPP19ClientVirtualDevice")]
pub unsafe extern "C" fn open_device(
    this: *mut ClientVirtualDeviceSet,
    name: *mut c_char,
    pp: *mut *mut ClientVirtualDevice,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    fence::run(|| {
        fence::out_ptr(pp, "the device out-pointer")?;
        // SAFETY: checked non-null and aligned; writable as the caller promised.
        unsafe { pp.write(std::ptr::null_mut()) };
        let mut dev = 0u64;
        // SAFETY: as the caller promised; `dev` is a local.
        unsafe { client::open_device(h, name, &mut dev) }?;
        // SAFETY: DEVICE_LAYOUT has a non-zero size.
        let obj = unsafe { System.alloc(DEVICE_LAYOUT) }.cast::<ClientVirtualDevice>();
        if obj.is_null() {
            let _ = client::signal_abort(h);
            return Err(fence::CError::new(
                vdi_ffi_core::abi::VD_E_MEMORY,
                "out of memory for the device object (the set was aborted)",
            ));
        }
        // SAFETY: freshly allocated with the object's layout.
        unsafe { obj.write(ClientVirtualDevice { handle: dev }) };
        device_objects().push((h, obj as usize));
        // SAFETY: as above.
        unsafe { pp.write(obj) };
        Ok(())
    })
}

/// `int Close()`.
///
/// # Safety
/// `this` is a live object.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet5CloseEv")]
pub unsafe extern "C" fn close(this: *mut ClientVirtualDeviceSet) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    fence::run(|| client::close(h))
}

/// `int SignalAbort()`.
///
/// # Safety
/// `this` is a live object.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet11SignalAbortEv")]
pub unsafe extern "C" fn signal_abort(this: *mut ClientVirtualDeviceSet) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    fence::run(|| client::signal_abort(h))
}

/// `int OpenInSecondary(char* setName)`.
///
/// # Safety
/// `this` is a live object; `name` a NUL-terminated string.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet15OpenInSecondaryEPc")]
pub unsafe extern "C" fn open_in_secondary(
    this: *mut ClientVirtualDeviceSet,
    name: *mut c_char,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::open_in_secondary_ex(h, std::ptr::null(), name) })
}

/// `int GetBufferHandle(uint8_t* pBuffer, unsigned int* pBufferHandle)`.
///
/// # Safety
/// `this` is a live object; `out` a writable `unsigned int`.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet15GetBufferHandleEPhPj")]
pub unsafe extern "C" fn get_buffer_handle(
    this: *mut ClientVirtualDeviceSet,
    buffer: *mut u8,
    out: *mut c_uint,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::get_buffer_handle(h, buffer, out) })
}

/// `int MapBufferHandle(int dwBuffer, uint8_t** ppBuffer)`.
///
/// # Safety
/// `this` is a live object; `out` a writable pointer.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet15MapBufferHandleEiPPh")]
pub unsafe extern "C" fn map_buffer_handle(
    this: *mut ClientVirtualDeviceSet,
    handle: c_int,
    out: *mut *mut u8,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::map_buffer_handle(h, handle as u32, out) })
}

/// `void RegisterDeviceClosed()`: undocumented upstream; here it does nothing (a device's
/// end is known from its `VD_E_CLOSE`).
///
/// # Safety
/// None.
#[unsafe(export_name = "_ZN22ClientVirtualDeviceSet20RegisterDeviceClosedEv")]
pub extern "C" fn register_device_closed(_this: *mut ClientVirtualDeviceSet) {}

// ---------------------------------------------------------------------------------------
// ClientVirtualDevice

/// `ClientVirtualDevice::ClientVirtualDevice()`: an object made by the client is no
/// device (devices come from `OpenDevice`): its calls return `VD_E_INVALID`.
///
/// # Safety
/// `this` points to 8 writable bytes.
#[unsafe(export_name = "_ZN19ClientVirtualDeviceC1Ev")]
pub unsafe extern "C" fn device_ctor(this: *mut ClientVirtualDevice) {
    if !this.is_null() {
        // SAFETY: as the caller promised.
        unsafe { this.write(ClientVirtualDevice { handle: 0 }) };
    }
}

/// The base-object constructor.
///
/// # Safety
/// As [`device_ctor`].
#[unsafe(export_name = "_ZN19ClientVirtualDeviceC2Ev")]
pub unsafe extern "C" fn device_ctor2(this: *mut ClientVirtualDevice) {
    // SAFETY: as the caller promised.
    unsafe { device_ctor(this) }
}

/// `ClientVirtualDevice::~ClientVirtualDevice()`: the client is destroying (usually
/// `delete`-ing) a device object: it stops being the set's to free. The device itself
/// stays open in its set.
///
/// # Safety
/// `this` is NULL or a live device object.
#[unsafe(export_name = "_ZN19ClientVirtualDeviceD1Ev")]
pub unsafe extern "C" fn device_dtor(this: *mut ClientVirtualDevice) {
    if this.is_null() {
        return;
    }
    device_objects().retain(|&(_, p)| p != this as usize);
    // SAFETY: as the caller promised.
    unsafe { this.write(ClientVirtualDevice { handle: 0 }) };
}

/// The base-object destructor.
///
/// # Safety
/// As [`device_dtor`].
#[unsafe(export_name = "_ZN19ClientVirtualDeviceD2Ev")]
pub unsafe extern "C" fn device_dtor2(this: *mut ClientVirtualDevice) {
    // SAFETY: as the caller promised.
    unsafe { device_dtor(this) }
}

/// `int GetCommand(time_t timeOut, VDC_Command** ppCmd)`: milliseconds; negative or
/// `INFINITE` waits forever; 0 polls. The command stays readable after `CompleteCommand`
/// until this device's next `GetCommand`.
///
/// # Safety
/// `this` is a live device object; `pp` a writable pointer.
#[unsafe(export_name = "_ZN19ClientVirtualDevice10GetCommandElPP11VDC_Command")]
pub unsafe extern "C" fn get_command(
    this: *mut ClientVirtualDevice,
    timeout: c_long,
    pp: *mut *mut VDC_Command,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    // SAFETY: as the caller promised.
    fence::run(|| unsafe { client::get_command(h, timeout, pp) })
}

/// `int CompleteCommand(VDC_Command* pCmd, int completionCode, unsigned long
/// bytesTransferred, int64_t position)`.
///
/// # Safety
/// `this` is a live device object; `cmd` is only looked up.
#[unsafe(export_name = "_ZN19ClientVirtualDevice15CompleteCommandEP11VDC_Commandiml")]
pub unsafe extern "C" fn complete_command(
    this: *mut ClientVirtualDevice,
    cmd: *mut VDC_Command,
    completion_code: c_int,
    bytes_transferred: c_ulong,
    position: c_long,
) -> c_int {
    // SAFETY: as the caller promised.
    let h = unsafe { handle_of(this) };
    fence::run(|| {
        // More than any command asks for: the core refuses it (VD_E_INVALID) and
        // completes the command with ERROR_INVALID_DATA.
        let bytes = u32::try_from(bytes_transferred).unwrap_or(u32::MAX);
        client::complete_command(h, cmd, completion_code as u32, bytes, position as u64)
    })
}
