//! The C layouts: `VDConfig`, `VDC_Command`, `VDS_Command`, byte for byte as the
//! reference's headers lay them out on x86-64 Linux (`reference/linux-sdk.md` §1.3), with
//! the header's field names; and the numbers every C caller compares with.
//!
//! Each struct carries compile-time asserts of its size and of every offset the
//! reference gives; the C and C++ test programs assert the same with `sizeof` and
//! `offsetof`, so both sides agree.

#![allow(non_snake_case, non_camel_case_types)]

use std::ffi::c_void;

use vdi::VdConfig;

const _: () = assert!(
    std::mem::size_of::<usize>() == 8,
    "the C layouts are those of a 64-bit target"
);

/// `VDConfig`: 11 × `uint32_t`, 44 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VDConfig {
    /// Number of devices, 1 to 64 (client).
    pub deviceCount: u32,
    /// `VDF_*` bits (client in; the server adds `VDF_WriteMedia` or `VDF_ReadMedia`).
    pub features: u32,
    /// Bytes reserved just before each buffer's data, for the client.
    pub prefixZoneSize: u32,
    /// Minimum data alignment (client), final basic alignment (server).
    pub alignment: u32,
    /// Soft filemark block size (client, with `VDF_FileMarks`).
    pub softFileMarkBlockSize: u32,
    /// End-of-media warning zone (client).
    pub EOMWarningSize: u32,
    /// Milliseconds, 0 = none: the set aborts when commands are outstanding and none
    /// completes for two intervals.
    pub serverTimeOut: u32,
    /// Block size (server).
    pub blockSize: u32,
    /// Always 4 (server).
    pub maxIODepth: u32,
    /// Largest transfer (server).
    pub maxTransferSize: u32,
    /// Bytes of shared buffer area (server).
    pub bufferAreaSize: u32,
}

const _: () = assert!(std::mem::size_of::<VDConfig>() == 44);
const _: () = assert!(std::mem::align_of::<VDConfig>() == 4);
const _: () = assert!(std::mem::offset_of!(VDConfig, serverTimeOut) == 24);
const _: () = assert!(std::mem::offset_of!(VDConfig, bufferAreaSize) == 40);

impl From<VDConfig> for VdConfig {
    fn from(c: VDConfig) -> VdConfig {
        VdConfig {
            device_count: c.deviceCount,
            features: c.features,
            prefix_zone_size: c.prefixZoneSize,
            alignment: c.alignment,
            soft_file_mark_block_size: c.softFileMarkBlockSize,
            eom_warning_size: c.EOMWarningSize,
            server_time_out: c.serverTimeOut,
            block_size: c.blockSize,
            max_io_depth: c.maxIODepth,
            max_transfer_size: c.maxTransferSize,
            buffer_area_size: c.bufferAreaSize,
        }
    }
}

impl From<VdConfig> for VDConfig {
    fn from(c: VdConfig) -> VDConfig {
        VDConfig {
            deviceCount: c.device_count,
            features: c.features,
            prefixZoneSize: c.prefix_zone_size,
            alignment: c.alignment,
            softFileMarkBlockSize: c.soft_file_mark_block_size,
            EOMWarningSize: c.eom_warning_size,
            serverTimeOut: c.server_time_out,
            blockSize: c.block_size,
            maxIODepth: c.max_io_depth,
            maxTransferSize: c.max_transfer_size,
            bufferAreaSize: c.buffer_area_size,
        }
    }
}

/// `VDC_Command`: a command as the client sees it, 24 bytes. The library owns the
/// block; it stays readable after `CompleteCommand` until the device's next
/// `GetCommand` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VDC_Command {
    /// `VDC_*`.
    pub commandCode: i32,
    /// Bytes to transfer, or the command's parameter.
    pub size: i32,
    /// Position (random access, SetPosition).
    pub position: i64,
    /// The data, in this process (NULL without a buffer).
    pub buffer: *mut u8,
}

const _: () = assert!(std::mem::size_of::<VDC_Command>() == 24);
const _: () = assert!(std::mem::offset_of!(VDC_Command, position) == 8);
const _: () = assert!(std::mem::offset_of!(VDC_Command, buffer) == 16);

impl VDC_Command {
    /// An empty block.
    pub const EMPTY: VDC_Command = VDC_Command {
        commandCode: 0,
        size: 0,
        position: 0,
        buffer: std::ptr::null_mut(),
    };
}

/// The completion routine of a `VDS_Command`: called once, with the command's outputs
/// filled in, on the completion agent's thread (or on the sending thread when
/// `SendCommand` fails).
pub type VDS_CompletionRoutine = Option<unsafe extern "C" fn(cmd: *mut VDS_Command)>;

/// `VDS_Command`: a command as the server sends it, 56 bytes. The caller owns the block
/// and keeps it valid until its completion routine has run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VDS_Command {
    /// `VDC_*` (input).
    pub commandCode: i32,
    /// Bytes to transfer, or the command's parameter (input).
    pub size: i32,
    /// Position to locate (input).
    pub inPosition: i64,
    /// Position reported (output).
    pub outPosition: i64,
    /// A buffer from `AllocateBuffer`, or NULL (input).
    pub buffer: *mut u8,
    /// Called once with the outputs filled in (input; required).
    pub completionRoutine: VDS_CompletionRoutine,
    /// For the routine (input; opaque to the library).
    pub completionContext: *mut c_void,
    /// Win32 completion code (output).
    pub completionCode: i32,
    /// Bytes transferred (output).
    pub bytesTransferred: i32,
}

const _: () = assert!(std::mem::size_of::<VDS_Command>() == 56);
const _: () = assert!(std::mem::offset_of!(VDS_Command, outPosition) == 16);
const _: () = assert!(std::mem::offset_of!(VDS_Command, buffer) == 24);
const _: () = assert!(std::mem::offset_of!(VDS_Command, completionRoutine) == 32);
const _: () = assert!(std::mem::offset_of!(VDS_Command, completionContext) == 40);
const _: () = assert!(std::mem::offset_of!(VDS_Command, completionCode) == 48);
const _: () = assert!(std::mem::offset_of!(VDS_Command, bytesTransferred) == 52);

/// `NOERROR`.
pub const NOERROR: i32 = 0;

/// A `VD_E_*` code as the C API returns it.
pub const fn hresult(code: vdi::ErrorCode) -> i32 {
    code.as_hresult()
}

/// `VD_E_INVALID`.
pub const VD_E_INVALID: i32 = hresult(vdi::ErrorCode::Invalid);
/// `VD_E_PROTOCOL`.
pub const VD_E_PROTOCOL: i32 = hresult(vdi::ErrorCode::Protocol);
/// `VD_E_UNEXPECTED`.
pub const VD_E_UNEXPECTED: i32 = hresult(vdi::ErrorCode::Unexpected);
/// `VD_E_MEMORY`.
pub const VD_E_MEMORY: i32 = hresult(vdi::ErrorCode::Memory);
/// `VD_E_CLOSE`.
pub const VD_E_CLOSE: i32 = hresult(vdi::ErrorCode::Close);

/// A C time-out in milliseconds: negative, or `INFINITE` (`0xFFFFFFFF`, what a Windows
/// caller passes as a `DWORD`), waits forever; 0 polls.
pub fn timeout(ms: i64) -> vdi::Timeout {
    if ms < 0 || ms == i64::from(u32::MAX) {
        vdi::Timeout::Infinite
    } else {
        vdi::Timeout::After(std::time::Duration::from_millis(ms.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(timeout(-1), vdi::Timeout::Infinite);
        assert_eq!(timeout(i64::MIN), vdi::Timeout::Infinite);
        assert_eq!(timeout(0xFFFF_FFFF), vdi::Timeout::Infinite);
        assert_eq!(timeout(0), vdi::Timeout::POLL);
        assert_eq!(
            timeout(90),
            vdi::Timeout::After(std::time::Duration::from_millis(90))
        );
    }

    #[test]
    fn config_round_trip() {
        let c = VdConfig::from_words([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(VdConfig::from(VDConfig::from(c)), c);
        assert_eq!(VDConfig::from(c).bufferAreaSize, 11);
    }
}
