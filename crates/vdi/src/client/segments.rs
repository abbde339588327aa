//! The segments a client maps after attaching: the queue segment and the buffer areas,
//! received from the server (primary) or from the primary (secondary), each checked.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ClientInner, Link, wrong_state};
use crate::error::{AbortCause, Result, VdError};
use crate::protocol::event;
use crate::protocol::layout::{MAX_AREAS, QueueGeometry, QueueSegment};
use crate::protocol::msg::{MAX_MSG, Msg, SegmentKind};
use crate::shared::{Shared, lock};
use crate::sys::shm::SharedMemory;
use crate::sys::socket::Conn;

pub(super) fn areas_received(sh: &Shared) -> bool {
    let n = (sh.header().area_count.load(Ordering::Acquire) as usize).min(MAX_AREAS);
    sh.areas[..n].iter().all(|a| a.get().is_some())
}

/// Receives one Segment message (`want`: the area asked for, if any).
pub(super) fn receive_segment(
    conn: &Conn,
    sh: &Shared,
    devices: u32,
    want: Option<u32>,
) -> Result<()> {
    let mut buf = [0u8; MAX_MSG];
    let (n, mut fds) = conn
        .recv(&mut buf, Some(Duration::from_secs(10)))
        .map_err(|_| VdError::aborted(AbortCause::ClientDied))?;
    match Msg::decode(&buf[..n]) {
        Ok(Msg::Segment { kind, index, size }) if fds.len() == 1 => {
            let fd = fds.remove(0);
            match kind {
                SegmentKind::Queues => {
                    let geo = QueueGeometry {
                        device_count: devices,
                        capacity: index,
                    };
                    if !geo.is_valid() || size != geo.segment_size() as u64 {
                        return Err(VdError::violation("invalid queue segment"));
                    }
                    let mem = SharedMemory::attach(fd, Some(size))
                        .map_err(|e| VdError::violation(format!("queue segment refused: {e:?}")))?;
                    let q = QueueSegment::new(mem, geo)
                        .ok_or_else(|| VdError::violation("queue segment too small"))?;
                    sh.install_queues(q).map_err(|why| {
                        VdError::violation(format!("the primary's queue segment: {why}"))
                    })?;
                }
                SegmentKind::Area => {
                    if index as usize >= MAX_AREAS || want.is_some_and(|w| w != index) {
                        return Err(VdError::violation(format!(
                            "the primary sent buffer area {index}, which was not asked for"
                        )));
                    }
                    let mem = SharedMemory::attach(fd, Some(size))
                        .map_err(|e| VdError::violation(format!("buffer area refused: {e:?}")))?;
                    sh.install_area(index as usize, mem).map_err(|why| {
                        VdError::violation(format!("the primary's buffer area {index}: {why}"))
                    })?;
                }
            }
            Ok(())
        }
        Ok(Msg::Refused { reason, .. }) => Err(VdError::invalid(reason)),
        _ => Err(VdError::violation("expected a segment message")),
    }
}

impl ClientInner {
    /// Makes sure buffer area `area` is mapped here (a secondary asks the primary).
    pub(super) fn ensure_area(&self, area: u32) -> Result<()> {
        let sh = &self.shared;
        let Some(slot) = sh.areas.get(area as usize) else {
            return Err(VdError::invalid(format!("buffer area {area} out of range")));
        };
        if slot.get().is_some() {
            return Ok(());
        }
        let published = sh.header().area_count.load(Ordering::Acquire);
        if area >= published.min(MAX_AREAS as u32) {
            return Err(VdError::invalid(format!(
                "buffer area {area} does not exist"
            )));
        }
        match &self.link {
            Link::Primary { .. } => {
                // The server sends the segment before publishing it; the set thread
                // maps it promptly. Wait for it (or an abort).
                let h = sh.header();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                event::wait_until(&h.set_event, Some(deadline), || {
                    slot.get().is_some() || sh.ended()
                });
                sh.check_live("buffer access")?;
                if slot.get().is_none() {
                    return Err(
                        sh.violation(format!("buffer area {area} was published but never sent"))
                    );
                }
                Ok(())
            }
            Link::Secondary { conn, .. } => {
                let conn = lock(conn);
                let Some(conn) = conn.as_ref() else {
                    return Err(wrong_state("buffer access", "closed"));
                };
                // Another thread may have fetched it while we waited for the connection.
                if slot.get().is_some() {
                    return Ok(());
                }
                conn.send(&Msg::AreaRequest { index: area }.encode(), &[])
                    .map_err(|_| VdError::aborted(AbortCause::ClientDied))?;
                let devices = sh.device_count();
                receive_segment(conn, sh, devices, Some(area))
            }
        }
    }
}
