//! Devices: `OpenDevice`, then a [`ClientDevice`]'s commands: fetch (`GetCommand`), the
//! IO-ERROR and ClearError rules, and completion (`CompleteCommand`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::{ClientInner, ClientSet, Command, OwnedCommand, RawCommand, wrong_state};
use crate::config::Timeout;
use crate::consts::{CommandCode, completion};
use crate::error::{ErrorCode, Reason, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{self, DeviceView, NO_BUFFER, dev, stat};
use crate::protocol::ring::{Consumer, Producer};
use crate::shared::{Shared, lock};

impl ClientSet {
    /// `OpenDevice`: opens the device called `name` (device 0 has the set's name; the
    /// others have the names the server gave them). Waits, if needed, until the server
    /// has opened a device of that name.
    ///
    /// Errors: `VD_E_PROTOCOL` (before `GetConfiguration`, after `Close`, or this device
    /// is already open), `VD_E_OPEN` (every device is already open), `VD_E_INVALID` (no
    /// device has that name), `VD_E_ABORT`.
    pub fn open_device(&self, name: &str) -> Result<ClientDevice> {
        self.open_device_until(name, None)
    }

    /// `OpenDevice` whose wait for the server ends when `stop` is set: then, if the device
    /// cannot be opened yet, `VD_E_TIMEOUT` (a `stop` set beforehand makes it a poll).
    /// Whoever sets `stop` while it waits notifies `set_event` to end the wait at once.
    pub(crate) fn open_device_until(
        &self,
        name: &str,
        stop: Option<&AtomicBool>,
    ) -> Result<ClientDevice> {
        self.check_open("OpenDevice")?;
        let inner = &self.inner;
        let sh = &inner.shared;
        sh.check_abort()?;
        if !inner.configured.load(Ordering::Acquire) {
            return Err(wrong_state(
                "OpenDevice",
                "not yet configured (call GetConfiguration first)",
            ));
        }
        let n = sh.device_count();
        let all_owned = || {
            (0..n).all(|i| {
                sh.device(i)
                    .is_some_and(|d| d.block.owner.load(Ordering::Acquire) != 0)
            })
        };
        if all_owned() {
            return Err(VdError::new(ErrorCode::Open, Reason::AllDevicesOpen));
        }
        let mut found = None;
        let mut all_open = false;
        let h = sh.header();
        event::wait_until(&h.set_event, None, || {
            if sh.ended() {
                return true;
            }
            // "All open" first, then the name: a device the server opens between the two
            // looks is then found, never reported missing.
            all_open = (0..n).all(|i| {
                sh.device(i)
                    .is_some_and(|d| d.block.state.load(Ordering::Acquire) & dev::SERVER_OPEN != 0)
            });
            found = find_device(sh, name);
            found.is_some() || all_open || stop.is_some_and(|s| s.load(Ordering::Acquire))
        });
        sh.check_live("OpenDevice")?;
        if found.is_none() && !all_open {
            // Stopped while the server has not yet opened a device of that name.
            return Err(VdError::timeout());
        }
        let Some(index) = found else {
            return Err(VdError::invalid(format!(
                "no device of set '{}' is named '{name}'",
                sh.name
            )));
        };
        let Some(d) = sh.device(index) else {
            return Err(VdError::invalid(format!("no device {index}")));
        };
        if d.block
            .owner
            .compare_exchange(0, inner.process_no, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(wrong_state(
                "OpenDevice",
                "already open (this device is served by another thread or process)",
            ));
        }
        d.block.state.fetch_or(dev::CLIENT_OPEN, Ordering::AcqRel);
        inner.open_devices.fetch_add(1, Ordering::AcqRel);
        let cfg = lock(&inner.config).unwrap_or_default();
        Ok(ClientDevice {
            set: self.inner.clone(),
            index,
            name: name.to_owned(),
            prefix: cfg.prefix_zone_size,
            max_transfer: cfg.max_transfer_size,
            consumer: Mutex::new(ConsumerState {
                consumer: Consumer::attach(&d.sub_ring()),
                pending_clear: None,
            }),
            producer: Mutex::new(Producer::attach(&d.comp_ring())),
            outstanding: AtomicU32::new(0),
            clear_pending: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
            in_flight: (0..d.slots.len()).map(|_| AtomicBool::new(false)).collect(),
            head: AtomicU32::new(d.block.sub_head.pos.load(Ordering::Relaxed)),
        })
    }
}

pub(super) fn find_device(sh: &Shared, name: &str) -> Option<u32> {
    if name == sh.name {
        return Some(0);
    }
    (1..sh.device_count()).find(|&i| {
        sh.device(i).is_some_and(|d| {
            d.block.state.load(Ordering::Acquire) & dev::SERVER_OPEN != 0
                && layout::load_name(d.block).as_deref() == Some(name)
        })
    })
}

impl ClientInner {
    /// Records `[start, end)` of `area` as lent; false if it overlaps a lent range.
    pub(super) fn lend(&self, area: u32, start: u64, end: u64) -> bool {
        let mut lent = lock(&self.lent);
        if let Some((&(a, _), &e)) = lent.range(..=(area, start)).next_back()
            && a == area
            && e > start
        {
            return false;
        }
        if let Some((&(a, s), _)) = lent.range((area, start)..).next()
            && a == area
            && s < end
        {
            return false;
        }
        lent.insert((area, start), end);
        true
    }

    pub(super) fn give_back(&self, area: u32, start: u64) {
        lock(&self.lent).remove(&(area, start));
    }
}

pub(super) struct ConsumerState {
    pub(super) consumer: Consumer,
    /// A ClearError held back until the outstanding commands are completed.
    pub(super) pending_clear: Option<(u32, SlotRead)>,
}

/// A slot's input fields, read once from shared memory (so the server cannot change
/// them between our checks and our use).
#[derive(Clone, Copy)]
pub(super) struct SlotRead {
    pub(super) code: CommandCode,
    pub(super) size: u32,
    pub(super) position: u64,
    pub(super) area: u32,
    pub(super) offset: u64,
}

impl SlotRead {
    pub(super) fn load(s: &layout::CommandSlot) -> SlotRead {
        SlotRead {
            code: CommandCode::from(s.code.load(Ordering::Relaxed)),
            size: s.size.load(Ordering::Relaxed),
            position: s.position.load(Ordering::Relaxed),
            area: s.area.load(Ordering::Relaxed),
            offset: s.offset.load(Ordering::Relaxed),
        }
    }
}

/// One virtual device, as the client serves it.
///
/// `Sync`: one thread may wait in [`get_command`](ClientDevice::get_command) while others
/// complete earlier commands.
pub struct ClientDevice {
    pub(super) set: Arc<ClientInner>,
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) prefix: u32,
    pub(super) max_transfer: u32,
    pub(super) consumer: Mutex<ConsumerState>,
    pub(super) producer: Mutex<Producer>,
    pub(super) outstanding: AtomicU32,
    pub(super) clear_pending: AtomicBool,
    pub(super) terminated: AtomicBool,
    /// Slots handed out and not yet completed: a server that submits a slot twice is
    /// caught here instead of lending the same buffer twice.
    pub(super) in_flight: Box<[AtomicBool]>,
    /// Our consumer position, for the wait condition (never read back from the peer).
    pub(super) head: AtomicU32,
}

impl std::fmt::Debug for ClientDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDevice")
            .field("index", &self.index)
            .field("name", &self.name)
            .finish()
    }
}

impl ClientDevice {
    /// The device's index in the set (0 = the set's name).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn view(&self) -> Result<DeviceView<'_>> {
        self.set
            .shared
            .device(self.index)
            .ok_or_else(|| VdError::violation("device vanished"))
    }

    /// Whether `GetCommand` has returned `VD_E_CLOSE` (Normally Terminated).
    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// Commands fetched and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// `GetCommand`: the next command, waiting up to `timeout`.
    ///
    /// Errors: `VD_E_CLOSE` (the server closed the device and every command fetched
    /// before has been completed: the normal end, the device is Normally Terminated;
    /// returned again on every later call. While fetched commands are outstanding, a
    /// closed device waits for their completion instead, so complete them from another
    /// thread or poll with a short time-out), `VD_E_TIMEOUT`, `VD_E_ABORT`, `VD_E_PROTOCOL` (the set was
    /// closed, or the server broke the protocol).
    pub fn get_command(&self, timeout: impl Into<Timeout>) -> Result<Command<'_>> {
        let raw = self.get_raw(timeout.into())?;
        Ok(Command::new(self, raw))
    }

    /// `GetCommand`, returning an [`OwnedCommand`]: the same command as
    /// [`get_command`](ClientDevice::get_command) gives, holding the device by `Arc`
    /// instead of borrowing it, so that it can be moved into a spawned task or another
    /// thread and completed there. Same waits and errors as `get_command`.
    pub fn get_owned_command(
        self: &Arc<ClientDevice>,
        timeout: impl Into<Timeout>,
    ) -> Result<OwnedCommand> {
        let raw = self.get_raw(timeout.into())?;
        Ok(OwnedCommand::new(self.clone(), raw))
    }

    /// `GetCommand` without the borrow: the object layer keeps commands in a table.
    pub(crate) fn get_raw(&self, timeout: Timeout) -> Result<RawCommand> {
        let sh = &self.set.shared;
        if self.set.closed.load(Ordering::Acquire) {
            return Err(wrong_state("GetCommand", "closed"));
        }
        let d = self.view()?;
        let deadline = timeout.deadline();
        loop {
            sh.check_live("GetCommand")?;
            if self.terminated.load(Ordering::Acquire) {
                return Err(VdError::new(ErrorCode::Close, Reason::DeviceClosed));
            }
            {
                let mut cons = lock(&self.consumer);
                if let Some(cmd) = self.try_next(&d, &mut cons)? {
                    return Ok(cmd);
                }
                let state = d.block.state.load(Ordering::Acquire);
                // VD_E_CLOSE (Normally Terminated) only once nothing is left: no command
                // queued, none held back, none fetched and not yet completed.
                if state & dev::SERVER_CLOSED != 0
                    && !cons.consumer.has_next(&d.sub_ring())
                    && cons.pending_clear.is_none()
                    && self.outstanding.load(Ordering::Acquire) == 0
                {
                    if !self.terminated.swap(true, Ordering::AcqRel) {
                        d.block.state.fetch_or(dev::CLIENT_DONE, Ordering::AcqRel);
                        self.set.open_devices.fetch_sub(1, Ordering::AcqRel);
                    }
                    return Err(VdError::new(ErrorCode::Close, Reason::DeviceClosed));
                }
            }
            // Whatever woke us (a predicate that holds without anything to deliver, a
            // peer's garbage), the time-out still ends the call.
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(VdError::timeout());
            }
            if !self.wait_fetchable(&d, deadline, None) {
                // One last look, so a command that arrived at the deadline is not lost.
                let mut cons = lock(&self.consumer);
                if let Some(cmd) = self.try_next(&d, &mut cons)? {
                    return Ok(cmd);
                }
                sh.check_live("GetCommand")?;
                return Err(VdError::timeout());
            }
        }
    }

    /// Waits on the device's `sub_event` until a fetch may deliver something (a command,
    /// a held-back ClearError, `VD_E_CLOSE`), the set ends, `stop` is set, or `deadline`
    /// passes (false). It fetches nothing itself: the async client waits here on a
    /// blocking thread and fetches on its task, so a cancelled wait cannot take a command.
    /// Whoever sets `stop` then notifies `sub_event` to end the wait at once.
    pub(super) fn wait_fetchable(
        &self,
        d: &DeviceView<'_>,
        deadline: Option<std::time::Instant>,
        stop: Option<&AtomicBool>,
    ) -> bool {
        let sh = &self.set.shared;
        let ring = d.sub_ring();
        // Time waiting for the server: a statistic for observers (only this slow path
        // reads the clock).
        let waited_from = crate::sys::monotonic_ns();
        let ready = event::wait_until(&d.block.sub_event, deadline, || {
            let clear = self.clear_pending.load(Ordering::Acquire);
            sh.ended()
                || stop.is_some_and(|s| s.load(Ordering::Acquire))
                // Nothing queued behind a held-back ClearError can be delivered
                // before it, so new submissions do not count then (note N19).
                || (!clear
                    && ring.tail.load(Ordering::Acquire) != self.head.load(Ordering::Relaxed))
                || ((d.block.state.load(Ordering::Acquire) & dev::SERVER_CLOSED != 0 || clear)
                    && self.outstanding.load(Ordering::Acquire) == 0)
        });
        d.block.sub_head.counters[stat::CLIENT_WAIT_NS].fetch_add(
            crate::sys::monotonic_ns().saturating_sub(waited_from),
            Ordering::Relaxed,
        );
        ready
    }

    pub(super) fn try_next(
        &self,
        d: &DeviceView<'_>,
        cons: &mut ConsumerState,
    ) -> Result<Option<RawCommand>> {
        if let Some((idx, read)) = cons.pending_clear {
            if self.outstanding.load(Ordering::Acquire) > 0 {
                return Ok(None);
            }
            cons.pending_clear = None;
            self.clear_pending.store(false, Ordering::Release);
            return self.deliver(d, idx, read).map(Some);
        }
        loop {
            let Some((idx, read)) = self.pop(d, cons)? else {
                return Ok(None);
            };
            let io_error = d.block.state.load(Ordering::Acquire) & dev::IO_ERROR != 0;
            if read.code == CommandCode::CLEAR_ERROR {
                if self.outstanding.load(Ordering::Acquire) > 0 {
                    cons.pending_clear = Some((idx, read));
                    self.clear_pending.store(true, Ordering::Release);
                    return Ok(None);
                }
                return self.deliver(d, idx, read).map(Some);
            }
            if io_error {
                // Flushed: the client never sees commands queued behind an error.
                self.push_completion(d, idx, completion::ERROR_IO_DEVICE, 0, 0)?;
                event::notify(&self.set.shared.header().completion_event);
                continue;
            }
            return self.deliver(d, idx, read).map(Some);
        }
    }

    /// Takes the next submission, checks its slot index and reads the slot once.
    pub(super) fn pop(
        &self,
        d: &DeviceView<'_>,
        cons: &mut ConsumerState,
    ) -> Result<Option<(u32, SlotRead)>> {
        let sh = &self.set.shared;
        let r = cons.consumer.pop(&d.sub_ring());
        self.head.store(cons.consumer.position(), Ordering::Relaxed);
        let idx = match r {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(None),
            Err(_) => return Err(sh.violation("submission ring positions are corrupt".into())),
        };
        let Some(slot) = d.slots.get(idx as usize) else {
            return Err(sh.violation(format!("a submission names slot {idx}, beyond the queue")));
        };
        if self.in_flight[idx as usize].load(Ordering::Acquire) {
            return Err(sh.violation(format!(
                "slot {idx} was submitted again while still outstanding"
            )));
        }
        Ok(Some((idx, SlotRead::load(slot))))
    }

    /// Validates a command's buffer and hands the command out.
    pub(super) fn deliver(
        &self,
        d: &DeviceView<'_>,
        idx: u32,
        read: SlotRead,
    ) -> Result<RawCommand> {
        let sh = &self.set.shared;
        let SlotRead {
            code,
            size,
            position,
            area,
            offset,
        } = read;
        let _ = d;
        let mut buffer = None;
        let mut lent = None;
        if area != NO_BUFFER {
            if self.set.ensure_area(area).is_err() {
                return Err(sh.violation(format!(
                    "command {code} names buffer area {area}, which does not exist"
                )));
            }
            let prefix = u64::from(self.prefix);
            let ok = size <= self.max_transfer && offset >= prefix;
            let start = offset.wrapping_sub(prefix);
            let end = offset.saturating_add(u64::from(size));
            let ptr = ok
                .then(|| sh.buffer_ptr(area, start, end - start))
                .flatten();
            let Some(p) = ptr else {
                return Err(sh.violation(format!(
                    "command {code} names bytes {offset}..+{size} of area {area}: outside the area, or larger than maxTransferSize"
                )));
            };
            if !self.set.lend(area, start, end) {
                return Err(sh.violation(format!(
                    "command {code} names bytes {offset}..+{size} of area {area}, which another outstanding command holds"
                )));
            }
            lent = Some((area, start));
            // `buffer_ptr` checked that `[offset - prefix, offset + size)` lies in the
            // area, so adding `prefix` stays in range.
            buffer = Some(p.wrapping_add(prefix as usize));
        } else if code.carries_data() && size > 0 {
            return Err(sh.violation(format!("{code} of {size} bytes without a buffer")));
        }
        self.in_flight[idx as usize].store(true, Ordering::Release);
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Ok(RawCommand {
            slot: idx,
            code,
            size,
            position,
            buffer,
            lent,
        })
    }

    pub(super) fn push_completion(
        &self,
        d: &DeviceView<'_>,
        idx: u32,
        code: u32,
        bytes: u32,
        pos: u64,
    ) -> Result<()> {
        let s = &d.slots[idx as usize];
        s.completion_code.store(code, Ordering::Relaxed);
        s.bytes_transferred.store(bytes, Ordering::Relaxed);
        s.out_position.store(pos, Ordering::Relaxed);
        // Statistics for observers, on the line this side owns anyway.
        let c = &d.block.comp_tail.counters;
        c[stat::BYTES].fetch_add(u64::from(bytes), Ordering::Relaxed);
        c[stat::COMMANDS].fetch_add(1, Ordering::Relaxed);
        let mut p = lock(&self.producer);
        p.push(&d.comp_ring(), idx).map_err(|_| {
            self.set
                .shared
                .violation("completion ring positions are corrupt".into())
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_slot(
        &self,
        idx: u32,
        cmd_code: CommandCode,
        lent: Option<(u32, u64)>,
        code: u32,
        bytes: u32,
        pos: u64,
    ) -> Result<()> {
        let sh = &self.set.shared;
        // The buffer and the slot stop being ours here, before the completion is published.
        if let Some((area, start)) = lent {
            self.set.give_back(area, start);
        }
        if let Some(f) = self.in_flight.get(idx as usize) {
            f.store(false, Ordering::Release);
        }
        let result = (|| {
            if self.set.closed.load(Ordering::Acquire) {
                return Err(wrong_state("CompleteCommand", "closed"));
            }
            sh.check_abort()?;
            let d = self.view()?;
            if code == completion::ERROR_SUCCESS {
                if cmd_code == CommandCode::CLEAR_ERROR {
                    d.block.state.fetch_and(!dev::IO_ERROR, Ordering::AcqRel);
                }
                self.push_completion(&d, idx, code, bytes, pos)?;
            } else {
                // IO-ERROR: mark the device, report this command, then flush what the
                // server queued behind it.
                let mut cons = lock(&self.consumer);
                d.block.state.fetch_or(dev::IO_ERROR, Ordering::AcqRel);
                self.push_completion(&d, idx, code, bytes, pos)?;
                while cons.pending_clear.is_none() {
                    let Some((i, read)) = self.pop(&d, &mut cons)? else {
                        break;
                    };
                    if read.code == CommandCode::CLEAR_ERROR {
                        cons.pending_clear = Some((i, read));
                        self.clear_pending.store(true, Ordering::Release);
                    } else {
                        self.push_completion(&d, i, completion::ERROR_IO_DEVICE, 0, 0)?;
                    }
                }
            }
            event::notify(&sh.header().completion_event);
            Ok(())
        })();
        // The last outstanding command: a held-back ClearError or the device's VD_E_CLOSE
        // may now be delivered to a waiting GetCommand.
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(d) = self.view()
            && (self.clear_pending.load(Ordering::Acquire)
                || d.block.state.load(Ordering::Acquire) & dev::SERVER_CLOSED != 0)
        {
            event::notify(&d.block.sub_event);
        }
        result
    }
}

impl ClientDevice {
    /// [`wait_fetchable`](ClientDevice::wait_fetchable) for the async client, which then
    /// fetches with a poll on its own task.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wait_for_fetch(
        &self,
        deadline: Option<std::time::Instant>,
        stop: &AtomicBool,
    ) -> bool {
        match self.view() {
            Ok(d) => self.wait_fetchable(&d, deadline, Some(stop)),
            // Nothing to wait on: the fetch that follows reports the error.
            Err(_) => true,
        }
    }

    /// Wakes the waits on this device's `sub_event`, so that a
    /// [`wait_for_fetch`](ClientDevice::wait_for_fetch) whose `stop` was set ends at once
    /// (other waiters of the device find nothing changed and sleep again).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn wake_fetch_waiters(&self) {
        if let Ok(d) = self.view() {
            event::notify(&d.block.sub_event);
        }
    }

    /// `CompleteCommand` on a detached command.
    pub(crate) fn complete_raw(
        &self,
        raw: &RawCommand,
        completion_code: u32,
        bytes_transferred: u32,
        position: u64,
    ) -> Result<()> {
        if raw.code.carries_data() && bytes_transferred > raw.size {
            let _ = self.complete_slot(
                raw.slot,
                raw.code,
                raw.lent,
                completion::ERROR_INVALID_DATA,
                0,
                0,
            );
            return Err(VdError::invalid(format!(
                "bytesTransferred {bytes_transferred} is more than the command's size {}",
                raw.size
            )));
        }
        self.complete_slot(
            raw.slot,
            raw.code,
            raw.lent,
            completion_code,
            bytes_transferred,
            position,
        )
    }
}
