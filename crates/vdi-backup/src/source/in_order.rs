//! Writing a sequential target (standard output, a program's input) in source order,
//! whatever order the devices' chunks arrive in: chunks that arrive early wait in memory
//! (up to a limit), and a device that gets too far ahead waits for the others.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};

use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::{ChunkHeader, Sink};

/// How much early data may wait in memory before the device ahead waits.
pub const LIMIT: usize = 64 << 20;

struct SeqState<W> {
    next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    running: u32,
    /// Device threads asleep in [`InOrder::put`] since the last change: each holds a
    /// chunk past the gap at `next`, so none of them can fill it. Reset to 0 whenever
    /// `next` moves or a device ends (every sleeper is woken then and looks again).
    waiting: u32,
    /// Bumped whenever `next` moves or a device ends: a sleeper that wakes to the same
    /// epoch was woken for nothing and is still counted in `waiting`.
    epoch: u64,
    failed: bool,
    out: W,
}

impl<W> SeqState<W> {
    fn new(running: u32, out: W) -> SeqState<W> {
        SeqState {
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            running,
            waiting: 0,
            epoch: 0,
            failed: false,
            out,
        }
    }

    /// Something changed that the sleepers must look at again: none of them is known
    /// to be stuck any more.
    fn changed(&mut self) {
        self.epoch += 1;
        self.waiting = 0;
    }
}

/// A sequential target (standard output, a pipe) written in source order: chunks that arrive early wait in memory; a
/// device that gets too far ahead waits for the others.
///
/// Each device's chunks arrive in source order. So only a device whose own chunk is
/// still waiting (it is ahead of `next`) may sleep when too much is held: the chunk at
/// `next` is then the next one of a device that is not asleep. When every running device
/// is asleep, no chunk can fill the gap, and the streams do not hold it.
///
/// Two mistakes made sound striped backups fail to restore to a pipe with "the streams
/// hold no chunk for source byte N": a device whose chunk had just been written (the
/// one device that may hold the next chunk) slept too whenever much was held, and a
/// device woken because `next` moved was still counted as stuck until it ran again.
pub struct InOrder<W> {
    st: Mutex<SeqState<W>>,
    cv: Condvar,
    limit: usize,
    what: String,
}

impl<W: Write + Send> InOrder<W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeqState<W>> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the chunk at `offset`; writes what is now in order.
    pub fn put(&self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        let mut st = self.lock();
        if st.failed {
            return Err(io::Error::other("the restore stopped"));
        }
        st.pending_bytes += data.len();
        st.pending.insert(offset, data);
        let before = st.next;
        loop {
            let next = st.next;
            let Some(d) = st.pending.remove(&next) else {
                break;
            };
            st.pending_bytes -= d.len();
            st.next += d.len() as u64;
            if let Err(e) = st.out.write_all(&d) {
                st.failed = true;
                self.cv.notify_all();
                return Err(e);
            }
        }
        if st.next != before {
            st.changed();
            self.cv.notify_all();
        }
        // `offset >= next`: this device's chunk is still held, it is ahead of the others.
        while st.pending_bytes > self.limit && !st.failed && offset >= st.next {
            if st.waiting + 1 >= st.running {
                return Err(io::Error::other(format!(
                    "the streams hold no chunk for source byte {}",
                    st.next
                )));
            }
            st.waiting += 1;
            let epoch = st.epoch;
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            if st.epoch == epoch {
                // Woken for nothing: still stuck, and still counted until it sleeps again.
                st.waiting -= 1;
            }
        }
        Ok(())
    }

    /// A device ended (`failed`: the whole write fails).
    pub fn device_done(&self, failed: bool) {
        let mut st = self.lock();
        st.running = st.running.saturating_sub(1);
        st.failed |= failed;
        st.changed();
        self.cv.notify_all();
    }
}

struct SeqSink<W> {
    out: Arc<InOrder<W>>,
    cur: Vec<u8>,
}

impl<W: Write + Send> Sink for SeqSink<W> {
    fn payload(&mut self, _: &ChunkHeader, _: u32, data: &[u8]) -> io::Result<()> {
        self.cur.extend_from_slice(data);
        Ok(())
    }
    fn chunk_end(&mut self, c: &ChunkHeader) -> io::Result<()> {
        let data = std::mem::take(&mut self.cur);
        self.out.put(c.offset, data)
    }
}

impl<W: Write + Send + 'static> InOrder<W> {
    /// Writes into `out` (named `what` in messages), in source order.
    pub fn new(out: W, what: &str) -> InOrder<W> {
        InOrder::with_limit(out, what, LIMIT)
    }

    fn with_limit(out: W, what: &str, limit: usize) -> InOrder<W> {
        InOrder {
            st: Mutex::new(SeqState::new(1, out)),
            cv: Condvar::new(),
            limit,
            what: what.to_owned(),
        }
    }

    /// `devices` devices will deliver chunks.
    pub fn begin(&self, devices: u32) {
        self.lock().running = devices;
    }

    /// A sink for one device's chunks.
    pub fn sink(self: &Arc<Self>) -> Box<dyn Sink + Send> {
        Box::new(SeqSink {
            out: self.clone(),
            cur: Vec::new(),
        })
    }

    /// Runs `f` on the output (to close it once everything is written, say).
    pub fn with_out<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        f(&mut self.lock().out)
    }

    /// Checks that all `total` bytes were written, in order, and flushes.
    pub fn finish(&self, total: u64) -> Result<()> {
        let mut st = self.lock();
        if st.next != total || !st.pending.is_empty() {
            return Err(fail(
                Kind::Damaged,
                format!(
                    "the streams hold no chunk for source byte {} (of {total})",
                    st.next
                ),
            ));
        }
        st.out
            .flush()
            .map_err(|e| fail(Kind::Other, format!("{}: {e}", self.what)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seq_out(running: u32, limit: usize, p: &std::path::Path) -> InOrder<std::fs::File> {
        let o = InOrder::with_limit(std::fs::File::create(p).unwrap(), "test output", limit);
        o.begin(running);
        o
    }

    #[test]
    fn seq_out_orders_and_finds_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o");
        let out = seq_out(1, 2, &p);
        out.put(3, b"def".to_vec()).unwrap_err(); // over the limit with nobody to fill the gap
        let out = seq_out(2, 100, &p);
        out.put(3, b"def".to_vec()).unwrap();
        out.put(0, b"abc".to_vec()).unwrap();
        out.put(6, b"g".to_vec()).unwrap();
        drop(out);
        assert_eq!(std::fs::read(&p).unwrap(), b"abcdefg");
    }

    /// A device that fills a gap and meets the next one waits for the others, even when
    /// a device it woke has not run again yet (the state such a device leaves: still
    /// counted as asleep). It used to give up at once: "the streams hold no chunk".
    #[test]
    fn seq_out_does_not_count_a_woken_device_as_stuck() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o");
        let out = seq_out(2, 2, &p);
        // Device B was asleep with a chunk past the gap, and has been woken (it no longer
        // waits on the condition variable) but has not run yet.
        out.lock().waiting = 1;
        let a_done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // B runs again once A sleeps, and fills the gap A waits for.
            let b = s.spawn(|| {
                while !a_done.load(Ordering::Acquire) {
                    if out.lock().waiting == 1 && out.lock().next == 3 {
                        return out.put(3, b"def".to_vec());
                    }
                    std::thread::yield_now();
                }
                Ok(())
            });
            // Device A fills the gap at 0, then holds the chunk at 6: over the limit, the
            // gap at 3 is B's to fill, so A waits for it.
            let a = out
                .put(0, b"abc".to_vec())
                .and_then(|()| out.put(6, b"ghi".to_vec()));
            a_done.store(true, Ordering::Release);
            a.unwrap();
            b.join().unwrap().unwrap();
        });
        drop(out);
        assert_eq!(std::fs::read(&p).unwrap(), b"abcdefghi");
    }

    /// A device whose chunk fills the gap goes on even when much is still held: it may
    /// hold the next chunk too. It used to sleep, and the device ahead then gave up.
    #[test]
    fn seq_out_lets_the_device_behind_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o");
        let out = seq_out(2, 2, &p);
        std::thread::scope(|s| {
            // Device B is ahead: its chunk at 6 waits for 0..6.
            let b = s.spawn(|| {
                let r = out.put(6, b"ghi".to_vec());
                out.device_done(r.is_err());
                r
            });
            while out.lock().waiting == 0 {
                std::thread::yield_now();
            }
            // Device A holds 0..6, in two chunks.
            let a = out
                .put(0, b"abc".to_vec())
                .and_then(|()| out.put(3, b"def".to_vec()));
            out.device_done(a.is_err());
            a.unwrap();
            b.join().unwrap().unwrap();
        });
        drop(out);
        assert_eq!(std::fs::read(&p).unwrap(), b"abcdefghi");
    }

    /// When every running device is stuck, the last one to fall asleep says so (and a
    /// device that ends wakes the others to look again).
    #[test]
    fn seq_out_finds_a_gap_nobody_fills() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o");
        let out = seq_out(3, 2, &p);
        let device = |offset: u64| {
            let r = out.put(offset, b"xyz".to_vec());
            out.device_done(r.is_err());
            r
        };
        std::thread::scope(|s| {
            let a = s.spawn(|| device(3));
            let b = s.spawn(|| device(9));
            // The third device ends without the chunk at 0.
            out.device_done(false);
            let failed: Vec<_> = [a.join().unwrap(), b.join().unwrap()]
                .into_iter()
                .filter_map(Result::err)
                .collect();
            assert_eq!(
                failed.len(),
                1,
                "one stuck device gives up, and stops the other"
            );
            assert!(
                failed[0].to_string().contains("no chunk for source byte 0"),
                "{}",
                failed[0]
            );
        });
    }
}
