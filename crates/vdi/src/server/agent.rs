//! The completion agent (`ExecuteCompletionAgent`): takes each device's completions and
//! runs their callbacks, enforces `serverTimeOut`, and does abort processing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{DeviceLocal, Record, ServerInner, ServerSet, ServerState};
use crate::consts::completion;
use crate::error::{AbortCause, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::stat;
use crate::server::Completion;
use crate::shared::lock;

impl ServerSet {
    /// `ExecuteCompletionAgent`: runs the completion agent on the calling thread. It calls
    /// each command's callback as the client completes it, and returns `Ok` once every
    /// device is closed and nothing is outstanding, or `VD_E_ABORT` after an abort, once
    /// every outstanding command has been called back with `ERROR_OPERATION_ABORTED`.
    ///
    /// Errors: `VD_E_PROTOCOL` (before `EndConfiguration`, or an agent already runs).
    pub fn execute_completion_agent(&self) -> Result<()> {
        let inner = &self.inner;
        {
            let mut l = lock(&inner.local);
            let st = inner.effective_state(&l);
            match st {
                ServerState::Initializing | ServerState::Active => {}
                ServerState::AbnormallyTerminated if inner.devices.get().is_some() => {}
                _ => return Err(inner.state_error("ExecuteCompletionAgent", st)),
            }
            let mut running = lock(&inner.agent_running);
            if running.is_some() {
                return Err(VdError::protocol(
                    "ExecuteCompletionAgent",
                    "already running the completion agent",
                ));
            }
            *running = Some(std::thread::current().id());
            if l.state == ServerState::Initializing {
                l.state = ServerState::Active;
            }
        }
        // Cleared even if a callback panics, so Close never waits for a dead agent.
        struct Running<'a>(&'a ServerInner);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                *lock(&self.0.agent_running) = None;
                self.0.agent_done.notify_all();
            }
        }
        let _running = Running(inner);
        inner.agent_loop()
    }
}

impl ServerInner {
    pub(super) fn agent_loop(&self) -> Result<()> {
        let sh = &self.shared;
        let h = sh.header();
        let Some(devs) = self.devices.get() else {
            return Err(VdError::protocol(
                "ExecuteCompletionAgent",
                "not configured",
            ));
        };
        let device_count = devs.len() as u32;
        // serverTimeOut counts only time with commands pending: from the later of the
        // last completion and the moment the agent saw itself busy again after an idle
        // spell (it looks at least every `event::SLICE`, so the clock may start up to that
        // much after the send: never earlier, in the client's favour).
        let interval = self.client_config.server_time_out;
        let mut last_progress = Instant::now();
        let mut busy_since: Option<Instant> = None;
        loop {
            if sh.abort_cause().is_some() {
                self.abort_processing();
                return Err(self.abort_error());
            }
            if sh.is_closed() {
                self.abort_processing();
                return Err(VdError::protocol("ExecuteCompletionAgent", "closed"));
            }
            let mut progressed = false;
            for (i, d) in devs.iter().enumerate() {
                if !d.open.load(Ordering::Acquire) {
                    continue;
                }
                loop {
                    match self.finish_next(i as u32, d) {
                        Ok(true) => progressed = true,
                        Ok(false) => break,
                        Err(_) => break,
                    }
                }
            }
            if progressed {
                last_progress = Instant::now();
                continue;
            }
            // The close count first, then the outstanding count: a send increments
            // `outstanding` before its device's close increments `closed_devices` (both
            // under the device lock), so "all closed" read first and "none outstanding"
            // read after cannot miss a command sent just before the last close. Read
            // the other way round, the agent could return with that command's callback
            // not yet run (found by the loom model `close_racing_with_send`).
            let all_closed = self.closed_devices.load(Ordering::Acquire) == device_count
                || self.closed.load(Ordering::Acquire);
            let outstanding = self.outstanding.load(Ordering::Acquire);
            if outstanding > 0 && self.client_gone.load(Ordering::Acquire) {
                // Every completion the client left is taken; nobody will send the rest.
                sh.abort(AbortCause::ClientDied);
                continue;
            }
            if outstanding == 0 && all_closed {
                return Ok(());
            }
            if outstanding == 0 {
                busy_since = None;
            } else if busy_since.is_none() {
                busy_since = Some(Instant::now());
            }
            let deadline = (interval > 0 && outstanding > 0).then(|| {
                let start = busy_since.map_or(last_progress, |b| b.max(last_progress));
                start + Duration::from_millis(u64::from(interval) * 2)
            });
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                sh.abort(AbortCause::ServerTimeout);
                continue;
            }
            // With a server time-out and nothing outstanding, also wake (at the next
            // re-check) when commands are sent, to start the clock.
            let watch_sends = interval > 0 && outstanding == 0;
            // Waiting with commands outstanding is waiting for the client: a statistic
            // for observers, per device that has commands at the client.
            let waited_from = (outstanding > 0).then(crate::sys::monotonic_ns);
            event::wait_until(&h.completion_event, deadline, || {
                sh.ended()
                    || self.client_gone.load(Ordering::Acquire)
                    || (watch_sends && self.outstanding.load(Ordering::Acquire) != 0)
                    || devs.iter().enumerate().any(|(i, d)| {
                        d.open.load(Ordering::Acquire)
                            && sh.device(i as u32).is_some_and(|v| {
                                v.block.comp_tail.pos.load(Ordering::Acquire)
                                    != d.comp_head.load(Ordering::Relaxed)
                            })
                    })
                    || (self.outstanding.load(Ordering::Acquire) == 0
                        && (self.closed_devices.load(Ordering::Acquire) == device_count
                            || self.closed.load(Ordering::Acquire)))
            });
            if let Some(from) = waited_from {
                let dt = crate::sys::monotonic_ns().saturating_sub(from);
                for (i, d) in devs.iter().enumerate() {
                    if let Some(v) = sh.device(i as u32)
                        && v.block.sub_tail.pos.load(Ordering::Relaxed)
                            != d.comp_head.load(Ordering::Relaxed)
                    {
                        v.block.comp_head.counters[stat::SERVER_WAIT_NS]
                            .fetch_add(dt, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Takes one completion from device `i`, if any, and runs its callback.
    pub(super) fn finish_next(&self, i: u32, d: &DeviceLocal) -> Result<bool> {
        let sh = &self.shared;
        let Some(v) = sh.device(i) else {
            return Ok(false);
        };
        let idx = {
            let mut c = lock(&d.consumer);
            let r = c.pop(&v.comp_ring());
            // Our own position, never read back from the segment the client can write.
            d.comp_head.store(c.position(), Ordering::Relaxed);
            match r {
                Ok(Some(idx)) => idx,
                Ok(None) => return Ok(false),
                Err(_) => {
                    return Err(
                        sh.violation(format!("device {i}: completion ring positions are corrupt"))
                    );
                }
            }
        };
        // Take the record and read the slot's outputs before the slot goes back on the
        // free list: once it is there, a sender may reuse (and reset) it.
        let taken = {
            let mut l = lock(&d.local);
            let rec = l.records.get_mut(idx as usize).and_then(Option::take);
            rec.map(|rec| {
                let s = &v.slots[idx as usize];
                let out = (
                    s.completion_code.load(Ordering::Relaxed),
                    s.bytes_transferred.load(Ordering::Relaxed),
                    s.out_position.load(Ordering::Relaxed),
                );
                l.free.push(idx);
                (rec, out)
            })
        };
        let Some((rec, (mut code, mut bytes, out_position))) = taken else {
            return Err(sh.violation(format!(
                "device {i}: completion for slot {idx}, which has no command in flight"
            )));
        };
        if rec.code.carries_data() && bytes > rec.size {
            sh.violation(format!(
                "device {i}: {} completed with {bytes} bytes of {}",
                rec.code, rec.size
            ));
            code = completion::ERROR_OPERATION_ABORTED;
            bytes = 0;
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        (rec.callback)(Completion {
            device: i,
            code: rec.code,
            size: rec.size,
            position: rec.position,
            completion_code: code,
            bytes_transferred: bytes,
            out_position,
            buffer: rec.buffer,
        });
        Ok(true)
    }

    /// Completes what the client already completed, then every other outstanding command
    /// with `ERROR_OPERATION_ABORTED`.
    pub(super) fn abort_processing(&self) {
        let Some(devs) = self.devices.get() else {
            return;
        };
        for (i, d) in devs.iter().enumerate() {
            while let Ok(true) = self.finish_next(i as u32, d) {}
        }
        for (i, d) in devs.iter().enumerate() {
            let taken: Vec<Record> = {
                let mut l = lock(&d.local);
                let mut v = Vec::new();
                for (k, r) in l.records.iter_mut().enumerate() {
                    if let Some(rec) = r.take() {
                        v.push((k, rec));
                    }
                }
                for (k, _) in &v {
                    l.free.push(*k as u32);
                }
                v.into_iter().map(|(_, r)| r).collect()
            };
            for rec in taken {
                self.outstanding.fetch_sub(1, Ordering::AcqRel);
                (rec.callback)(Completion {
                    device: i as u32,
                    code: rec.code,
                    size: rec.size,
                    position: rec.position,
                    completion_code: completion::ERROR_OPERATION_ABORTED,
                    bytes_transferred: 0,
                    out_position: 0,
                    buffer: rec.buffer,
                });
            }
        }
    }
}
