//! # vdi-ffi-core — what the C libraries share
//!
//! `libvdi` (the C ABI of both roles, crate `vdi-ffi`) and `libsqlvdi` (the drop-in for
//! the Linux SDK's C++ classes, crate `vdi-sqlvdi`) are thin layers of `extern "C"`
//! functions over this crate:
//!
//! - [`abi`]: the C layouts (`VDConfig`, `VDC_Command`, `VDS_Command`) and time-outs;
//! - [`handle`]: the table of handles a C caller holds, so that a NULL, foreign, freed
//!   or stale handle is `VD_E_INVALID`, never a dereference;
//! - [`fence`]: the boundary itself: no panic crosses it, errors become codes and the
//!   reason is kept for `vdi_last_error`;
//! - [`client`], [`server`]: one function per reference call, over [`vdi::object`].
//!
//! Nothing here is exported from a library: the exporting crates give each function its
//! C name (and the `# Safety` contract C callers must keep).

#![deny(unsafe_code)]

pub mod abi;
pub mod client;
pub mod fence;
pub mod handle;
pub mod server;
pub mod trace;

/// The Rust library underneath, for the exporting crates (one of which is itself named `vdi`).
pub use vdi;

/// `Close` from a destructor: "no set on this object" is nothing to close; any other
/// outcome (`VD_E_OPEN`, `VD_E_PROTOCOL` after closing with devices open) is reported.
fn nothing_to_close(r: vdi::Result<()>) -> Result<(), fence::CError> {
    match r {
        Err(e) if matches!(e.reason(), vdi::Reason::WrongState { .. }) => Ok(()),
        r => r.map_err(fence::CError::from),
    }
}
