//! Devices: `OpenDevice`, and the send path (`SendCommand`, `CloseDevice`) of a
//! [`ServerDevice`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{
    Callback, Completion, DevLocal, DeviceLocal, Record, ServerCommand, ServerInner, ServerSet,
    ServerState,
};
use crate::consts::CommandCode;
use crate::error::{ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{self, DeviceView, MAX_NAME, NO_BUFFER, dev};
use crate::shared::lock;

impl ServerSet {
    /// `OpenDevice`: opens the next unopened device under `name` (device 0 must have the
    /// set's name; the client opens the others by the names given here).
    ///
    /// Errors: `VD_E_OPEN` (all devices open), `VD_E_INVALID` (bad or repeated name),
    /// `VD_E_PROTOCOL` (wrong state), `VD_E_ABORT`.
    pub fn open_device(&self, name: &str) -> Result<ServerDevice> {
        let inner = &self.inner;
        let mut l = lock(&inner.local);
        let st = inner.effective_state(&l);
        if st == ServerState::AbnormallyTerminated {
            return Err(inner.abort_error());
        }
        if !matches!(st, ServerState::Initializing | ServerState::Active) {
            return Err(inner.state_error("OpenDevice", st));
        }
        let index = l.opened;
        if index >= l.config.device_count {
            return Err(VdError::new(ErrorCode::Open, Reason::AllDevicesOpen));
        }
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return Err(VdError::invalid(format!(
                "device name must be 1 to {MAX_NAME} bytes without NUL"
            )));
        }
        if index == 0 && name != inner.shared.name {
            return Err(VdError::invalid(format!(
                "device 0 must have the set's name '{}' (got '{name}')",
                inner.shared.name
            )));
        }
        if l.names.iter().any(|n| n == name) {
            return Err(VdError::invalid(format!(
                "device name '{name}' is already used in this set"
            )));
        }
        let d = inner
            .shared
            .device(index)
            .ok_or_else(|| VdError::violation("device out of range"))?;
        layout::store_name(d.block, name);
        d.block.state.fetch_or(dev::SERVER_OPEN, Ordering::AcqRel);
        if let Some(devs) = inner.devices.get() {
            devs[index as usize].open.store(true, Ordering::Release);
        }
        event::notify(&inner.shared.header().set_event);
        l.opened += 1;
        l.names.push(name.to_owned());
        l.state = ServerState::Active;
        Ok(ServerDevice {
            set: self.inner.clone(),
            index,
        })
    }
}

/// One virtual device, as the server drives it. `Sync`: commands may be sent from any
/// thread, including from completion callbacks.
pub struct ServerDevice {
    pub(super) set: Arc<ServerInner>,
    pub(super) index: u32,
}

impl std::fmt::Debug for ServerDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDevice")
            .field("index", &self.index)
            .finish()
    }
}

impl ServerDevice {
    /// The device's index in the set.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether the device is in the IO-ERROR state.
    pub fn in_io_error(&self) -> bool {
        self.set
            .shared
            .device(self.index)
            .is_some_and(|d| d.block.state.load(Ordering::Acquire) & dev::IO_ERROR != 0)
    }

    /// `SendCommand`: queues `command`; `on_complete` runs on the completion agent's
    /// thread when the client completes it. If sending fails, `on_complete` runs at once,
    /// on this thread, with the mapped completion code (and the buffer), and the error is
    /// returned: `VD_E_ABORT` (`ERROR_OPERATION_ABORTED`), `VD_E_PROTOCOL`
    /// (`ERROR_INVALID_HANDLE`: the device is closed), `VD_E_IO_ERROR` (`ERROR_IO_DEVICE`:
    /// only ClearError may be sent), `VD_E_QUEUE_FULL` (`ERROR_NO_SYSTEM_RESOURCES`),
    /// `VD_E_INVALID` (`ERROR_INVALID_PARAMETER`: the buffer is too small or foreign).
    pub fn send_command(
        &self,
        command: ServerCommand,
        on_complete: impl FnOnce(Completion) + Send + 'static,
    ) -> Result<()> {
        self.try_send(command, Box::new(on_complete))
            .map_err(|r| r.call_back(self.index))
    }

    /// Queues a command, or hands it back with the reason (`SendCommand` without the
    /// callback's synchronous call).
    pub(super) fn try_send(
        &self,
        command: ServerCommand,
        callback: Callback,
    ) -> std::result::Result<(), Refused> {
        let inner = &self.set;
        let sh = &inner.shared;
        let (d, v, area, offset) = match self.admissible(&command) {
            Ok(x) => x,
            Err(error) => return Err(Refused::new(error, command, callback)),
        };
        let mut l = lock(&d.local);
        let idx = match self.free_slot(d, &mut l, &v, command.code) {
            Ok(idx) => idx,
            Err(error) => {
                drop(l);
                return Err(Refused::new(error, command, callback));
            }
        };
        let s = &v.slots[idx as usize];
        l.seq = l.seq.wrapping_add(1);
        s.code.store(command.code.value(), Ordering::Relaxed);
        s.size.store(command.size, Ordering::Relaxed);
        s.position.store(command.position, Ordering::Relaxed);
        s.area.store(area, Ordering::Relaxed);
        s.offset.store(offset, Ordering::Relaxed);
        s.seq.store(l.seq, Ordering::Relaxed);
        s.completion_code.store(0, Ordering::Relaxed);
        s.bytes_transferred.store(0, Ordering::Relaxed);
        s.out_position.store(0, Ordering::Relaxed);
        let ServerCommand {
            code,
            size,
            position,
            buffer,
        } = command;
        l.records[idx as usize] = Some(Record {
            code,
            size,
            position,
            buffer,
            callback,
        });
        inner.outstanding.fetch_add(1, Ordering::AcqRel);
        if l.producer.push(&v.sub_ring(), idx).is_err() {
            let rec = l.records[idx as usize].take();
            l.free.push(idx);
            drop(l);
            inner.outstanding.fetch_sub(1, Ordering::AcqRel);
            let error = sh.violation(format!(
                "device {}: submission ring positions are corrupt",
                self.index
            ));
            return match rec {
                Some(r) => Err(Refused::new(
                    error,
                    ServerCommand {
                        code: r.code,
                        size: r.size,
                        position: r.position,
                        buffer: r.buffer,
                    },
                    r.callback,
                )),
                None => Ok(()),
            };
        }
        drop(l);
        event::notify(&v.block.sub_event);
        Ok(())
    }

    /// The checks that need no lock: the set and device are usable, the size and the
    /// buffer fit. Returns the device, its view and the buffer's (area, offset).
    fn admissible(
        &self,
        command: &ServerCommand,
    ) -> Result<(&DeviceLocal, DeviceView<'_>, u32, u64)> {
        let inner = &self.set;
        let sh = &inner.shared;
        if inner.closed.load(Ordering::Acquire) {
            return Err(VdError::protocol("SendCommand", "closed"));
        }
        sh.check_abort()?;
        let (Some(devs), Some(v)) = (inner.devices.get(), sh.device(self.index)) else {
            return Err(VdError::protocol("SendCommand", "not configured"));
        };
        let d = &devs[self.index as usize];
        if d.closed.load(Ordering::Acquire) {
            return Err(VdError::protocol("SendCommand", "device closed"));
        }
        let max = inner.max_transfer.load(Ordering::Acquire);
        if (command.code.carries_data() || command.buffer.is_some()) && command.size > max {
            return Err(VdError::invalid(format!(
                "{} of {} bytes is larger than maxTransferSize ({max})",
                command.code, command.size
            )));
        }
        let (area, offset) = match &command.buffer {
            Some(b) if !Arc::ptr_eq(&b.pool, &inner.pool) => {
                return Err(VdError::invalid("the buffer belongs to another set"));
            }
            Some(b) if command.size > b.len => {
                return Err(VdError::invalid(format!(
                    "size {} is larger than the buffer ({} bytes)",
                    command.size, b.len
                )));
            }
            Some(b) => (b.area, b.offset),
            None if command.code.carries_data() && command.size > 0 => {
                return Err(VdError::invalid(format!(
                    "{} of {} bytes needs a buffer",
                    command.code, command.size
                )));
            }
            None => (NO_BUFFER, 0),
        };
        Ok((d, v, area, offset))
    }

    /// The checks under the device lock, then a free slot. Abort processing and
    /// `CloseDevice` take the same lock, so a command is either refused here or called
    /// back by abort processing (or fetched before `VD_E_CLOSE`), never lost.
    fn free_slot(
        &self,
        d: &DeviceLocal,
        l: &mut DevLocal,
        v: &DeviceView<'_>,
        code: CommandCode,
    ) -> Result<u32> {
        self.set.shared.check_abort()?;
        if d.closed.load(Ordering::Acquire) {
            return Err(VdError::protocol("SendCommand", "device closed"));
        }
        if v.block.state.load(Ordering::Acquire) & dev::IO_ERROR != 0
            && code != CommandCode::CLEAR_ERROR
        {
            return Err(VdError::new(ErrorCode::IoError, Reason::DeviceIoError));
        }
        l.free
            .pop()
            .ok_or_else(|| VdError::new(ErrorCode::QueueFull, Reason::QueueFull))
    }

    /// `CloseDevice`: the client's `GetCommand` returns `VD_E_CLOSE` once it has fetched
    /// every command sent before.
    ///
    /// Errors: `VD_E_CLOSE` (already closed), `VD_E_ABORT` (no action after an abort),
    /// `VD_E_PROTOCOL` (the set is closed).
    pub fn close_device(&self) -> Result<()> {
        let inner = &self.set;
        let sh = &inner.shared;
        if inner.closed.load(Ordering::Acquire) {
            return Err(VdError::protocol("CloseDevice", "closed"));
        }
        sh.check_abort()?;
        let (Some(devs), Some(v)) = (inner.devices.get(), sh.device(self.index)) else {
            return Err(VdError::protocol("CloseDevice", "not configured"));
        };
        let d = &devs[self.index as usize];
        {
            // Under the device lock: a concurrent SendCommand either queued before this
            // (the client fetches it before VD_E_CLOSE) or sees the device closed.
            let _l = lock(&d.local);
            if d.closed.swap(true, Ordering::AcqRel) {
                return Err(VdError::new(ErrorCode::Close, Reason::DeviceClosed));
            }
            // Counted before the client can see it: the watchdog compares the count.
            inner.closed_devices.fetch_add(1, Ordering::AcqRel);
            v.block.state.fetch_or(dev::SERVER_CLOSED, Ordering::AcqRel);
        }
        event::notify(&v.block.sub_event);
        event::notify(&sh.header().completion_event);
        Ok(())
    }
}

/// A command `SendCommand` refused, handed back with the reason (the shape of rtrb's
/// `PushError::Full(T)`): one type for every way a send can fail.
pub(super) struct Refused {
    error: VdError,
    command: ServerCommand,
    callback: Callback,
}

impl Refused {
    fn new(error: VdError, command: ServerCommand, callback: Callback) -> Refused {
        Refused {
            error,
            command,
            callback,
        }
    }

    /// VDI's rule for a failed send: the callback runs at once, on the sending
    /// thread, with the completion code mapped from the error (and the buffer back).
    fn call_back(self, device: u32) -> VdError {
        let Refused {
            error,
            command,
            callback,
        } = self;
        callback(command.into_completion(device, error.code().send_completion_code()));
        error
    }
}
