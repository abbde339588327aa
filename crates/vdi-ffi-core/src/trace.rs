//! The client's calls, as `vdi check-client` reads them: when the environment names a file
//! in `VDI_TRACE_FILE`, every `GetCommand`, `CompleteCommand` and `Close` a C or C++
//! client makes through `libvdi` or `libsqlvdi` appends one line to it (one `write` per
//! line, with `O_APPEND`, so lines of several threads and processes never mix):
//!
//! ```text
//! get DEV RC CODE TIMEOUT_MS AFTER_CLOSE POSITION   GetCommand returned RC (hex), command CODE (0: none)
//! done DEV RC CODE COMPLETION BYTES        CompleteCommand of a CODE command returned RC
//! close RC                                  Close returned RC
//! ```
//!
//! DEV is the device's handle; AFTER_CLOSE is 1 when the device had already returned
//! VD_E_CLOSE. Without the variable nothing is written and nothing is slower. A failure
//! to write is ignored: the trace never changes what the client sees.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

fn file() -> Option<&'static Mutex<std::fs::File>> {
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::var_os("VDI_TRACE_FILE").filter(|p| !p.is_empty())?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
            .map(Mutex::new)
    })
    .as_ref()
}

/// Whether a trace is being written.
pub fn on() -> bool {
    file().is_some()
}

/// Appends one line (`line` without its newline).
pub fn line(line: std::fmt::Arguments<'_>) {
    if let Some(f) = file() {
        let s = format!("{line}\n");
        let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(s.as_bytes());
    }
}

/// The HRESULT of an outcome, as the trace writes it.
pub fn rc<T>(r: &Result<T, crate::fence::CError>) -> u32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.code as u32,
    }
}
