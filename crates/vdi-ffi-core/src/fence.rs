//! The fence every C entry point runs inside: no panic crosses the boundary, every
//! failure becomes its documented `VD_E_*` code, and the reason is kept for
//! `vdi_last_error` on the calling thread.
//!
//! ```
//! use vdi_ffi_core::abi::{VD_E_INVALID, VD_E_UNEXPECTED};
//! use vdi_ffi_core::fence::{self, CError};
//! assert_eq!(fence::run(|| Ok(())), 0);
//! assert_eq!(fence::run(|| Err(CError::invalid("no"))), VD_E_INVALID);
//! assert!(fence::last_error().contains("no"));
//! // A panic inside is caught and reported, never unwound into C.
//! let r = fence::run(|| -> Result<(), CError> { panic!("bug") });
//! assert_eq!(r, VD_E_UNEXPECTED);
//! ```

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{VD_E_INVALID, VD_E_UNEXPECTED};

/// A failure to report to a C caller: the code and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CError {
    /// The `VD_E_*` code.
    pub code: i32,
    /// What happened, and where a person can act, what to change.
    pub message: String,
}

impl CError {
    /// `VD_E_INVALID` with a message.
    pub fn invalid(message: impl Into<String>) -> CError {
        CError {
            code: VD_E_INVALID,
            message: message.into(),
        }
    }

    /// Any code with a message.
    pub fn new(code: i32, message: impl Into<String>) -> CError {
        CError {
            code,
            message: message.into(),
        }
    }
}

impl From<vdi::VdError> for CError {
    fn from(e: vdi::VdError) -> CError {
        CError {
            code: e.hresult(),
            message: e.reason().to_string(),
        }
    }
}

thread_local! {
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

fn remember(message: String) {
    // try_with: a call from a thread that is being torn down still returns its code.
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = message;
        }
    });
}

/// The message of the last call that failed on this thread ("" if none).
pub fn last_error() -> String {
    LAST.try_with(|l| l.try_borrow().map(|s| s.clone()).unwrap_or_default())
        .unwrap_or_default()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "a panic"
    }
}

/// Runs `f` as a C entry point: `NOERROR`, the error's code, or `VD_E_UNEXPECTED` if it
/// panicked.
pub fn run(f: impl FnOnce() -> Result<(), CError>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            remember(e.message);
            e.code
        }
        Err(p) => {
            remember(format!(
                "internal error (a bug in the vdi library, please report it): {}",
                panic_text(&*p)
            ));
            VD_E_UNEXPECTED
        }
    }
}

/// Runs `f` as a C entry point that returns a value rather than a code (a handle, a
/// boolean): `fallback` if it fails or panics.
pub fn value<T>(fallback: T, f: impl FnOnce() -> Result<T, CError>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            remember(e.message);
            fallback
        }
        Err(p) => {
            remember(format!("internal error: {}", panic_text(&*p)));
            fallback
        }
    }
}

/// Copies the last error into `buf` (`len` bytes, NUL-terminated, cut if needed);
/// returns the message's full length in bytes.
///
/// # Safety
/// `buf` is NULL or points to `len` writable bytes.
#[allow(unsafe_code)]
pub unsafe fn copy_last_error(buf: *mut std::ffi::c_char, len: usize) -> usize {
    let msg = last_error();
    let bytes = msg.as_bytes();
    if !buf.is_null() && len > 0 {
        let n = bytes.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes at `buf`; we write n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    bytes.len()
}

/// A NUL-terminated name as `&str`: `VD_E_INVALID` if NULL or not UTF-8.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that stays valid during the call.
#[allow(unsafe_code)]
pub unsafe fn name<'a>(p: *const std::ffi::c_char, what: &str) -> Result<&'a str, CError> {
    if p.is_null() {
        return Err(CError::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    let c = unsafe { std::ffi::CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| CError::invalid(format!("{what} is not valid UTF-8")))
}

/// An optional name: NULL is `None`.
///
/// # Safety
/// As [`name`].
#[allow(unsafe_code)]
pub unsafe fn optional_name<'a>(
    p: *const std::ffi::c_char,
    what: &str,
) -> Result<Option<&'a str>, CError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: as the caller promised.
    unsafe { name(p, what) }.map(Some)
}

/// Checks that an out-pointer is usable: non-null and aligned for `T`.
pub fn out_ptr<T>(p: *mut T, what: &str) -> Result<(), CError> {
    if p.is_null() {
        return Err(CError::invalid(format!("{what} is NULL")));
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(CError::invalid(format!("{what} is not aligned")));
    }
    Ok(())
}

/// `VD_E_INVALID` unless `p` is non-null and aligned for `T`.
pub fn in_ptr<T>(p: *const T, what: &str) -> Result<(), CError> {
    out_ptr(p.cast_mut(), what)
}
