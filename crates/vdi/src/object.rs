//! VDI's four objects, states included: [`ClientVirtualDeviceSet`],
//! [`ClientVirtualDevice`], [`ServerVirtualDeviceSet`], [`ServerVirtualDevice`].
//!
//! The typed API ([`ClientSet`], [`ServerSet`]) makes most misuse impossible: a set only
//! exists once created, a command's buffer is borrowed until it is completed. The C
//! interface cannot do that: its set object exists before `Create` and after `Close`,
//! commands and buffers are addresses. These objects model that interface exactly (every
//! call in every state of VDI's state tables returns the documented code) on
//! top of the typed API; the C ABI wraps them.
//!
//! ```
//! use vdi::object::ClientVirtualDeviceSet;
//! use vdi::{ErrorCode, Timeout};
//! let set = ClientVirtualDeviceSet::new();
//! // No set yet (the DNE state): every call but Create is a protocol error.
//! assert_eq!(set.get_configuration(Timeout::POLL).unwrap_err().code(), ErrorCode::Protocol);
//! assert_eq!(set.close().unwrap_err().code(), ErrorCode::Protocol);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::client::RawCommand;
use crate::config::{Timeout, VdConfig};
use crate::consts::{CommandCode, completion};
use crate::error::{ErrorCode, Reason, Result, VdError};
use crate::shared::lock;
use crate::{
    AttachOptions, ClientDevice, ClientSet, ServerBuffer, ServerCommand, ServerDevice, ServerSet,
};

fn no_set(call: &'static str) -> VdError {
    VdError::protocol(call, "not created or opened (no set on this object)")
}

/// `IClientVirtualDeviceSet2` / `ClientVirtualDeviceSet`: a client set object.
#[derive(Default)]
pub struct ClientVirtualDeviceSet {
    set: Mutex<Option<ClientSet>>,
}

impl std::fmt::Debug for ClientVirtualDeviceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVirtualDeviceSet")
            .finish_non_exhaustive()
    }
}

impl ClientVirtualDeviceSet {
    /// A new object, with no set (the DNE state).
    pub fn new() -> ClientVirtualDeviceSet {
        ClientVirtualDeviceSet::default()
    }

    fn current(&self, call: &'static str) -> Result<ClientSet> {
        lock(&self.set).clone().ok_or_else(|| no_set(call))
    }

    /// `Create`: `VD_E_PROTOCOL` if this object already has a set.
    pub fn create(&self, name: &str, config: &VdConfig) -> Result<()> {
        self.create_ex(None, name, config)
    }

    /// `CreateEx`: named instances do not exist here; a non-empty `instance` gives
    /// `VD_E_INSTANCE_NAME`.
    pub fn create_ex(&self, instance: Option<&str>, name: &str, config: &VdConfig) -> Result<()> {
        let mut slot = lock(&self.set);
        if slot.is_some() {
            return Err(VdError::protocol(
                "CreateEx",
                "already created (call Close first)",
            ));
        }
        if instance.is_some_and(|i| !i.is_empty()) {
            return Err(VdError::new(
                ErrorCode::InstanceName,
                Reason::InvalidArgument(
                    "named instances are not supported; pass no instance name".into(),
                ),
            ));
        }
        *slot = Some(ClientSet::create(name, config)?);
        Ok(())
    }

    /// `OpenInSecondary`: `VD_E_PROTOCOL` if this object already has a set.
    pub fn open_in_secondary(&self, name: &str) -> Result<()> {
        self.open_in_secondary_with(name, AttachOptions::default())
    }

    /// `OpenInSecondary` trusting another creator ([`AttachOptions::trust_owner`]).
    pub fn open_in_secondary_with(&self, name: &str, options: AttachOptions) -> Result<()> {
        let mut slot = lock(&self.set);
        if slot.is_some() {
            return Err(VdError::protocol("OpenInSecondary", "already opened"));
        }
        *slot = Some(ClientSet::open_in_secondary_with(name, options)?);
        Ok(())
    }

    /// `GetConfiguration`.
    pub fn get_configuration(&self, timeout: Timeout) -> Result<VdConfig> {
        self.current("GetConfiguration")?.get_configuration(timeout)
    }

    /// `OpenDevice`.
    pub fn open_device(&self, name: &str) -> Result<ClientVirtualDevice> {
        let dev = self.current("OpenDevice")?.open_device(name)?;
        Ok(ClientVirtualDevice {
            dev: Arc::new(dev),
            active: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// `SignalAbort`.
    pub fn signal_abort(&self) -> Result<()> {
        self.current("SignalAbort")?.signal_abort()
    }

    /// `Close`: releases the set; the object may then be used for another `Create`.
    pub fn close(&self) -> Result<()> {
        let set = lock(&self.set).take().ok_or_else(|| no_set("Close"))?;
        set.close()
    }

    /// `GetBufferHandle`.
    pub fn get_buffer_handle(&self, buffer: *const u8) -> Result<u32> {
        self.current("GetBufferHandle")?.get_buffer_handle(buffer)
    }

    /// `MapBufferHandle`: the buffer's address in this process.
    pub fn map_buffer_handle(&self, handle: u32) -> Result<*mut u8> {
        let set = self.current("MapBufferHandle")?;
        set.map_buffer_handle(handle).map(|m| m.as_ptr())
    }
}

/// The C object's destructor: an object dropped without `Close` closes its set (with
/// devices open, that aborts it), so its device objects cannot keep the set's resources.
impl Drop for ClientVirtualDeviceSet {
    fn drop(&mut self) {
        if let Some(set) = lock(&self.set).take() {
            let _ = set.close();
        }
    }
}

/// `VDC_Command`: what `GetCommand` returns, plus the handle to complete it with.
#[derive(Clone, Copy, Debug)]
pub struct VdcCommand {
    /// Identifies the command to [`ClientVirtualDevice::complete_command`].
    pub handle: u64,
    /// `VDC_*`.
    pub command_code: u32,
    /// Bytes to transfer, or the overloaded parameter.
    pub size: u32,
    /// Position.
    pub position: u64,
    /// The data area in this process (null without a buffer).
    pub buffer: *mut u8,
}

/// `IClientVirtualDevice` / `ClientVirtualDevice`: one device of a client set object.
pub struct ClientVirtualDevice {
    dev: Arc<ClientDevice>,
    active: Mutex<HashMap<u64, RawCommand>>,
    next: AtomicU64,
}

impl std::fmt::Debug for ClientVirtualDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVirtualDevice")
            .field("device", &self.dev)
            .finish()
    }
}

impl ClientVirtualDevice {
    /// `GetCommand`.
    pub fn get_command(&self, timeout: Timeout) -> Result<VdcCommand> {
        let raw = self.dev.get_raw(timeout)?;
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let cmd = VdcCommand {
            handle,
            command_code: raw.code.value(),
            size: raw.size,
            position: raw.position,
            buffer: raw.buffer.unwrap_or(std::ptr::null_mut()),
        };
        lock(&self.active).insert(handle, raw);
        Ok(cmd)
    }

    /// `CompleteCommand`: `VD_E_INVALID` if `handle` is not an active command.
    pub fn complete_command(
        &self,
        handle: u64,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        if self.dev.is_terminated() {
            return Err(VdError::protocol(
                "CompleteCommand",
                "Normally Terminated (the device returned VD_E_CLOSE)",
            ));
        }
        let raw = lock(&self.active).remove(&handle).ok_or_else(|| {
            VdError::invalid("the command is not an active command of this device")
        })?;
        self.dev
            .complete_raw(&raw, completion_code, bytes_transferred, position)
    }

    /// The typed device underneath.
    pub fn device(&self) -> &ClientDevice {
        &self.dev
    }
}

impl Drop for ClientVirtualDevice {
    fn drop(&mut self) {
        let left: Vec<RawCommand> = lock(&self.active).drain().map(|(_, r)| r).collect();
        for raw in left {
            let _ = self
                .dev
                .complete_raw(&raw, completion::ERROR_OPERATION_ABORTED, 0, 0);
        }
    }
}

/// Buffers handed out by address, keyed by that address.
#[derive(Default)]
struct BufferTable {
    free_to_use: Mutex<HashMap<usize, ServerBuffer>>,
    /// Set by `Close`: buffers that come back afterwards (abort processing's callbacks)
    /// are dropped, not kept, so nothing of the set outlives `Close` in the table.
    closed: AtomicBool,
}

impl BufferTable {
    /// Takes back a buffer a completion returned, unless the set is closed.
    fn put_back(&self, ptr: *mut u8, b: ServerBuffer) {
        let mut t = lock(&self.free_to_use);
        if !self.closed.load(Ordering::Acquire) {
            t.insert(ptr as usize, b);
        }
    }
}

/// `IServerVirtualDeviceSet2`: a server set object.
#[derive(Default)]
pub struct ServerVirtualDeviceSet {
    set: Mutex<Option<ServerSet>>,
    used: AtomicBool,
    buffers: Arc<BufferTable>,
}

impl std::fmt::Debug for ServerVirtualDeviceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerVirtualDeviceSet")
            .finish_non_exhaustive()
    }
}

impl ServerVirtualDeviceSet {
    /// A new object (the DNE state).
    pub fn new() -> ServerVirtualDeviceSet {
        ServerVirtualDeviceSet::default()
    }

    fn current(&self, call: &'static str) -> Result<ServerSet> {
        lock(&self.set).clone().ok_or_else(|| no_set(call))
    }

    /// `Open`: the first call on the object; `VD_E_PROTOCOL` afterwards.
    pub fn open(&self, instance: Option<&str>, name: &str) -> Result<()> {
        self.open_with(instance, name, AttachOptions::default())
    }

    /// `Open` trusting another creator ([`AttachOptions::trust_owner`]).
    pub fn open_with(
        &self,
        instance: Option<&str>,
        name: &str,
        options: AttachOptions,
    ) -> Result<()> {
        let mut slot = lock(&self.set);
        if slot.is_some() || self.used.load(Ordering::Acquire) {
            return Err(VdError::protocol(
                "Open",
                "already opened (Open is the first call on the object)",
            ));
        }
        if instance.is_some_and(|i| !i.is_empty()) {
            return Err(VdError::new(
                ErrorCode::InstanceName,
                Reason::InvalidArgument(
                    "named instances are not supported; pass no instance name".into(),
                ),
            ));
        }
        *slot = Some(ServerSet::open_with(name, options)?);
        self.used.store(true, Ordering::Release);
        Ok(())
    }

    /// `GetConfiguration`.
    pub fn get_configuration(&self) -> Result<VdConfig> {
        self.current("GetConfiguration")?.get_configuration()
    }

    /// `BeginConfiguration` (the header's parameter order).
    pub fn begin_configuration(
        &self,
        features: u32,
        block_size: u32,
        alignment: u32,
        max_transfer_size: u32,
        timeout_ms: u32,
    ) -> Result<()> {
        self.current("BeginConfiguration")?.begin_configuration(
            features,
            block_size,
            alignment,
            max_transfer_size,
            timeout_ms,
        )
    }

    /// `RequestBuffers`.
    pub fn request_buffers(&self, size: u32, alignment: u32, count: u32) -> Result<()> {
        self.current("RequestBuffers")?
            .request_buffers(size, alignment, count)
    }

    /// `QueryAvailableBuffers`.
    pub fn query_available_buffers(&self, size: u32, alignment: u32) -> Result<u32> {
        self.current("QueryAvailableBuffers")?
            .query_available_buffers(size, alignment)
    }

    /// `EndConfiguration`.
    pub fn end_configuration(&self) -> Result<()> {
        self.current("EndConfiguration")?.end_configuration()
    }

    /// `ExecuteCompletionAgent` (blocks the calling thread).
    pub fn execute_completion_agent(&self) -> Result<()> {
        self.current("ExecuteCompletionAgent")?
            .execute_completion_agent()
    }

    /// `OpenDevice`.
    pub fn open_device(&self, name: &str) -> Result<ServerVirtualDevice> {
        let dev = self.current("OpenDevice")?.open_device(name)?;
        Ok(ServerVirtualDevice {
            dev,
            buffers: self.buffers.clone(),
        })
    }

    /// `AllocateBuffer`: the data address of a new buffer.
    pub fn allocate_buffer(&self, size: u32, alignment: u32) -> Result<*mut u8> {
        let buf = self
            .current("AllocateBuffer")?
            .allocate_buffer(size, alignment)?;
        let p = buf.as_ptr() as *mut u8;
        lock(&self.buffers.free_to_use).insert(p as usize, buf);
        Ok(p)
    }

    /// `FreeBuffer`: the state table's row first (`VD_E_PROTOCOL` before
    /// `EndConfiguration`, after the normal end and after `Close`; `VD_E_ABORT` after an
    /// abort; nothing is freed then), then `VD_E_INVALID` unless `buffer` is an allocated
    /// buffer of `size` bytes that no outstanding command holds.
    pub fn free_buffer(&self, buffer: *mut u8, size: u32) -> Result<()> {
        let set = self.current("FreeBuffer")?;
        set.check_buffer_row("FreeBuffer")?;
        let mut t = lock(&self.buffers.free_to_use);
        match t.get(&(buffer as usize)) {
            Some(b) if b.len() == size => {}
            Some(b) => {
                return Err(VdError::invalid(format!(
                    "the buffer has {} bytes, not {size}",
                    b.len()
                )));
            }
            None => {
                return Err(VdError::invalid(
                    "not a buffer this set allocated (or it is in a command)",
                ));
            }
        }
        let b = t
            .remove(&(buffer as usize))
            .ok_or_else(|| VdError::invalid("buffer vanished"))?;
        drop(t);
        set.free_buffer(b)
    }

    /// `IsSharedBuffer`.
    pub fn is_shared_buffer(&self, p: *const u8) -> bool {
        self.current("IsSharedBuffer")
            .is_ok_and(|s| s.is_shared_buffer(p))
    }

    /// `SignalAbort`.
    pub fn signal_abort(&self) -> Result<()> {
        self.current("SignalAbort")?.signal_abort()
    }

    /// `Close`: releases everything (see [`ServerSet::close`]), including every buffer
    /// this object handed out; the object is useless afterwards.
    pub fn close(&self) -> Result<()> {
        let set = lock(&self.set).take().ok_or_else(|| no_set("Close"))?;
        self.buffers.closed.store(true, Ordering::Release);
        let r = set.close();
        // After abort processing: its callbacks gave their buffers back (and dropped them).
        lock(&self.buffers.free_to_use).clear();
        r
    }
}

/// The C object's destructor: an object dropped without `Close` closes its set (a set
/// that did not end normally is aborted, its outstanding commands called back with
/// `ERROR_OPERATION_ABORTED`), so its device objects cannot keep the set's resources.
impl Drop for ServerVirtualDeviceSet {
    fn drop(&mut self) {
        if lock(&self.set).is_some() {
            let _ = self.close();
        }
    }
}

/// `VDS_Command`'s outputs, given to the completion routine.
#[derive(Clone, Copy, Debug)]
pub struct VdsCompletion {
    /// `VDC_*`.
    pub command_code: u32,
    /// The size the command carried.
    pub size: u32,
    /// The input position.
    pub in_position: u64,
    /// Output position.
    pub out_position: u64,
    /// The buffer's address (usable again by the server), or null.
    pub buffer: *mut u8,
    /// Win32 completion code.
    pub completion_code: u32,
    /// Bytes transferred.
    pub bytes_transferred: u32,
}

/// `IServerVirtualDevice`: one device of a server set object.
pub struct ServerVirtualDevice {
    dev: ServerDevice,
    buffers: Arc<BufferTable>,
}

impl std::fmt::Debug for ServerVirtualDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerVirtualDevice")
            .field("device", &self.dev)
            .finish()
    }
}

impl ServerVirtualDevice {
    /// `SendCommand`: `buffer` (or null) must be a buffer from `AllocateBuffer` that no
    /// other outstanding command holds. `routine` runs once, on the completion agent's
    /// thread, or at once on this thread if sending fails.
    pub fn send_command(
        &self,
        command_code: u32,
        size: u32,
        position: u64,
        buffer: *mut u8,
        routine: impl FnOnce(VdsCompletion) + Send + 'static,
    ) -> Result<()> {
        let code = CommandCode::from(command_code);
        let mut cmd = ServerCommand::new(code)
            .with_size(size)
            .with_position(position);
        if !buffer.is_null() {
            let taken = lock(&self.buffers.free_to_use).remove(&(buffer as usize));
            let Some(b) = taken else {
                routine(VdsCompletion {
                    command_code,
                    size,
                    in_position: position,
                    out_position: 0,
                    buffer,
                    completion_code: completion::ERROR_INVALID_PARAMETER,
                    bytes_transferred: 0,
                });
                return Err(VdError::invalid(
                    "the buffer is not an allocated buffer of this set, or another command holds it",
                ));
            };
            cmd = ServerCommand::with_buffer(code, b, size).with_position(position);
        }
        let table = self.buffers.clone();
        self.dev.send_command(cmd, move |done| {
            let ptr = done
                .buffer
                .as_ref()
                .map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut u8);
            if let Some(b) = done.buffer {
                table.put_back(ptr, b);
            }
            routine(VdsCompletion {
                command_code,
                size: done.size,
                in_position: done.position,
                out_position: done.out_position,
                buffer: ptr,
                completion_code: done.completion_code,
                bytes_transferred: done.bytes_transferred,
            });
        })
    }

    /// `CloseDevice`.
    pub fn close_device(&self) -> Result<()> {
        self.dev.close_device()
    }

    /// The typed device underneath.
    pub fn device(&self) -> &ServerDevice {
        &self.dev
    }
}
