//! The C client's way in: `libvdi.so` (crate `vdi-ffi`) loaded at run time, and the
//! serving loop written in C (`c/c_client.c`, compiled by `build.rs`) that calls it.
//!
//! The bench measures the library a C program would link: the exported `vdi_*` entry
//! points, each with its handle-table look-up and its panic fence, called from C. It
//! loads the library with `dlopen` rather than linking it, because Cargo cannot make one
//! package depend on another's `cdylib`: a missing library is then a clear error that
//! names the command that builds it ([`LibVdi::load`]), not a link failure of the bench.
//!
//! ```no_run
//! use vdi_bench::libvdi::LibVdi;
//! let lib = LibVdi::load(&LibVdi::default_path().unwrap()).unwrap();
//! let set = lib.client_set().unwrap();
//! set.create("my-set", 1).unwrap();
//! ```

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};

/// `VDConfig`: 11 × `uint32_t` (the header's layout; only the fields the bench uses are
/// named).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VdConfigC {
    /// `deviceCount`.
    pub device_count: u32,
    /// `features` .. `maxTransferSize`.
    pub middle: [u32; 9],
    /// `bufferAreaSize`.
    pub buffer_area_size: u32,
}

const _: () = assert!(std::mem::size_of::<VdConfigC>() == 44);

/// What one device's C loop saw (`struct vdi_bench_served`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// When the device's last expected byte had been checked (0: never).
    pub end_ns: u64,
    /// Bytes of Write commands checked.
    pub bytes: u64,
    /// Write commands.
    pub commands: u64,
    /// Chunks whose checksum or length was wrong.
    pub bad: u64,
}

type Handle = *mut c_void;

/// `struct vdi_bench_libvdi`: the per-command entry points, as the C loop calls them.
#[repr(C)]
#[derive(Clone, Copy)]
struct PerCommand {
    get_command: unsafe extern "C" fn(Handle, i64, *mut *mut c_void) -> i32,
    complete_command: extern "C" fn(Handle, *mut c_void, u32, u32, u64) -> i32,
}

type CheckFn = extern "C" fn(*mut c_void, u64, *const u8, u32) -> u32;

unsafe extern "C" {
    /// `c/c_client.c`.
    fn vdi_bench_serve_device(
        vdi: *const PerCommand,
        dev: Handle,
        want: u64,
        check: CheckFn,
        ctx: *mut c_void,
        out: *mut Served,
    ) -> i32;

    /// `c/c_client.c`.
    fn vdi_bench_serve_queued(vdi: *const PerCommand, dev: Handle, n: u32) -> i32;
}

/// libvdi, loaded. The library is never unloaded (its threads may outlive any object of
/// ours), so the entry points stay valid for the life of the process.
pub struct LibVdi {
    path: PathBuf,
    set_new: extern "C" fn() -> Handle,
    set_free: extern "C" fn(Handle) -> i32,
    set_create: unsafe extern "C" fn(Handle, *const c_char, *const VdConfigC) -> i32,
    set_get_configuration: unsafe extern "C" fn(Handle, i64, *mut VdConfigC) -> i32,
    set_open_device: unsafe extern "C" fn(Handle, *const c_char, *mut Handle) -> i32,
    set_close: extern "C" fn(Handle) -> i32,
    set_signal_abort: extern "C" fn(Handle) -> i32,
    last_error: unsafe extern "C" fn(*mut c_char, usize) -> usize,
    error_name: extern "C" fn(i32) -> *const c_char,
    per_command: PerCommand,
}

/// A C call that failed: its name, code and `vdi_last_error`'s reason; or the library
/// could not be loaded.
#[derive(Debug, Clone)]
pub struct CallError(pub String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallError {}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl*
    // call on this thread; it is copied at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// The profile directory the bench runs from (`target/release`), for the build hint.
fn profile_of(dir: &Path) -> &'static str {
    if dir.file_name().is_some_and(|n| n == "release") {
        " --release"
    } else {
        ""
    }
}

/// A symbol's address as the function pointer type `F`.
///
/// # Safety
/// `F` is a function pointer type, the type of the function at `p`.
unsafe fn f<F: Copy>(p: *mut c_void) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    // SAFETY: same size (checked above); the caller promises the type.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

impl LibVdi {
    /// `libvdi.so` beside the running executable: `target/<profile>/libvdi.so`, where
    /// `cargo build -p vdi-ffi` (with the same profile) puts it.
    pub fn default_path() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join("libvdi.so"))
    }

    /// The command that builds the library at `path`.
    pub fn build_hint(path: &Path) -> String {
        let profile = path.parent().map_or("", profile_of);
        format!("cargo build{profile} -p vdi-ffi")
    }

    /// Loads `path` and resolves every entry point the C client calls.
    pub fn load(path: &Path) -> Result<LibVdi, CallError> {
        if !path.exists() {
            return Err(CallError(format!(
                "the C client rows need libvdi.so, and {} does not exist: build it with `{}` \
                 (the bench's profile), point --libvdi at one, or leave the C rows out \
                 (--only without vdi-c and latency-c)",
                path.display(),
                LibVdi::build_hint(path)
            )));
        }
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| CallError(format!("{} has a NUL byte", path.display())))?;
        // SAFETY: a NUL-terminated path; loading runs the library's initialisers, which
        // for a Rust cdylib do nothing but register its TLS destructors.
        let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(CallError(format!(
                "loading {}: {}",
                path.display(),
                dl_error()
            )));
        }
        let sym = |name: &CStr| -> Result<*mut c_void, CallError> {
            // SAFETY: a live handle from dlopen and a NUL-terminated name.
            let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
            if p.is_null() {
                Err(CallError(format!(
                    "{} has no {} (an old build? rebuild it with `{}`)",
                    path.display(),
                    name.to_string_lossy(),
                    LibVdi::build_hint(path)
                )))
            } else {
                Ok(p)
            }
        };
        // SAFETY: each `f` below turns the address of the function vdi_c.h declares under
        // that name into a pointer of that declaration's type (handles as `void *`, which
        // the C ABI passes alike); the library is never unloaded, so they stay valid.
        unsafe {
            Ok(LibVdi {
                path: path.to_path_buf(),
                set_new: f(sym(c"vdi_client_set_new")?),
                set_free: f(sym(c"vdi_client_set_free")?),
                set_create: f(sym(c"vdi_client_set_create")?),
                set_get_configuration: f(sym(c"vdi_client_set_get_configuration")?),
                set_open_device: f(sym(c"vdi_client_set_open_device")?),
                set_close: f(sym(c"vdi_client_set_close")?),
                set_signal_abort: f(sym(c"vdi_client_set_signal_abort")?),
                last_error: f(sym(c"vdi_last_error")?),
                error_name: f(sym(c"vdi_error_name")?),
                per_command: PerCommand {
                    get_command: f(sym(c"vdi_client_device_get_command")?),
                    complete_command: f(sym(c"vdi_client_device_complete_command")?),
                },
            })
        }
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `NOERROR`, or the call's failure with its code's name and this thread's
    /// `vdi_last_error`.
    fn check(&self, call: &str, rc: i32) -> Result<(), CallError> {
        if rc == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; 1024];
        // SAFETY: `buf` has buf.len() writable bytes.
        unsafe { (self.last_error)(buf.as_mut_ptr().cast(), buf.len()) };
        let msg = CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        // SAFETY: vdi_error_name returns a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr((self.error_name)(rc)) }.to_string_lossy();
        Err(CallError(format!(
            "{call}: {name} (0x{:08X}): {msg}",
            rc as u32
        )))
    }

    /// `vdi_client_set_new`.
    pub fn client_set(&self) -> Result<CClientSet<'_>, CallError> {
        let h = (self.set_new)();
        if h.is_null() {
            return Err(CallError("vdi_client_set_new returned NULL".into()));
        }
        Ok(CClientSet { lib: self, h })
    }
}

/// A client set object of libvdi (`VdiClientSet*`), freed on drop.
pub struct CClientSet<'a> {
    lib: &'a LibVdi,
    h: Handle,
}

// SAFETY: the handle is a value the library looks up in its table, never a pointer we
// dereference; libvdi documents every call as safe from any thread, concurrently.
unsafe impl Send for CClientSet<'_> {}
// SAFETY: as above.
unsafe impl Sync for CClientSet<'_> {}

fn cstring(s: &str) -> Result<CString, CallError> {
    CString::new(s).map_err(|_| CallError(format!("{s:?} has a NUL byte")))
}

impl<'a> CClientSet<'a> {
    /// `vdi_client_set_create` with `devices` devices and nothing else configured.
    pub fn create(&self, name: &str, devices: u32) -> Result<(), CallError> {
        let cfg = VdConfigC {
            device_count: devices,
            ..VdConfigC::default()
        };
        let name = cstring(name)?;
        // SAFETY: a NUL-terminated name and a readable VDConfig, both live for the call.
        let rc = unsafe { (self.lib.set_create)(self.h, name.as_ptr(), &cfg) };
        self.lib.check("vdi_client_set_create", rc)
    }

    /// `vdi_client_set_get_configuration`.
    pub fn get_configuration(&self, timeout_ms: i64) -> Result<VdConfigC, CallError> {
        let mut cfg = VdConfigC::default();
        // SAFETY: a writable VDConfig.
        let rc = unsafe { (self.lib.set_get_configuration)(self.h, timeout_ms, &mut cfg) };
        self.lib.check("vdi_client_set_get_configuration", rc)?;
        Ok(cfg)
    }

    /// `vdi_client_set_open_device`.
    pub fn open_device(&self, name: &str) -> Result<CClientDevice<'a>, CallError> {
        let name = cstring(name)?;
        let mut dev: Handle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name and a writable pointer.
        let rc = unsafe { (self.lib.set_open_device)(self.h, name.as_ptr(), &mut dev) };
        self.lib.check("vdi_client_set_open_device", rc)?;
        Ok(CClientDevice {
            lib: self.lib,
            h: dev,
        })
    }

    /// `vdi_client_set_signal_abort`.
    pub fn signal_abort(&self) -> Result<(), CallError> {
        let rc = (self.lib.set_signal_abort)(self.h);
        self.lib.check("vdi_client_set_signal_abort", rc)
    }

    /// `vdi_client_set_close`.
    pub fn close(&self) -> Result<(), CallError> {
        let rc = (self.lib.set_close)(self.h);
        self.lib.check("vdi_client_set_close", rc)
    }
}

impl Drop for CClientSet<'_> {
    fn drop(&mut self) {
        // Closes the set first if it is still open (an error path); the code is of no use
        // here.
        let _ = (self.lib.set_free)(self.h);
    }
}

/// A device of a [`CClientSet`] (`VdiClientDevice*`), owned by the set object.
pub struct CClientDevice<'a> {
    lib: &'a LibVdi,
    h: Handle,
}

/// What the C loop calls back: `ctx` is a `&mut &mut dyn FnMut(u64, &[u8]) -> bool`.
extern "C" fn check_trampoline(ctx: *mut c_void, position: u64, data: *const u8, len: u32) -> u32 {
    let run = || {
        // SAFETY: `ctx` is the `&mut &mut dyn FnMut` that `serve` passed for this call
        // of the loop, alive and used by this thread only.
        let f = unsafe { &mut *ctx.cast::<&mut dyn FnMut(u64, &[u8]) -> bool>() };
        let data: &[u8] = if data.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the buffer of a Write command between GetCommand and
            // CompleteCommand: `len` bytes that are the client's (the server wrote them
            // before it handed the command over with the ring's release store, and does
            // not touch them until the completion), as the Rust client's `buffer()`.
            unsafe { std::slice::from_raw_parts(data, len as usize) }
        };
        f(position, data)
    };
    // Nothing may unwind into C: a panic counts as a bad chunk.
    u32::from(std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or(true))
}

impl CClientDevice<'_> {
    /// Serves the device until the server closes it, in C (`vdi_bench_serve_device`):
    /// every Write is checked with `bad(position, data)` (true: the chunk is wrong) and
    /// completed in full. `want`: the bytes after which `end_ns` is stamped.
    pub fn serve(
        &self,
        want: u64,
        mut bad: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<Served, CallError> {
        let mut out = Served::default();
        let mut f: &mut dyn FnMut(u64, &[u8]) -> bool = &mut bad;
        // SAFETY: the table holds the library's own entry points; `ctx` points to `f`,
        // which outlives the call; `out` is writable.
        let rc = unsafe {
            vdi_bench_serve_device(
                &self.lib.per_command,
                self.h,
                want,
                check_trampoline,
                (&mut f as *mut &mut dyn FnMut(u64, &[u8]) -> bool).cast(),
                &mut out,
            )
        };
        self.lib.check("the C serving loop", rc)?;
        Ok(out)
    }

    /// Fetches and completes `n` commands that are already queued (polling, in C:
    /// `vdi_bench_serve_queued`), for the per-call cost without any wait.
    pub fn serve_queued(&self, n: u32) -> Result<(), CallError> {
        // SAFETY: the table holds the library's own entry points.
        let rc = unsafe { vdi_bench_serve_queued(&self.lib.per_command, self.h, n) };
        self.lib.check("vdi_bench_serve_queued", rc)
    }
}
