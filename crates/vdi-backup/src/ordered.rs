//! A writer that transforms its input in pieces on a pool of worker threads and writes
//! the results in order ([`Ordered`]): how one device's stream is compressed with lz4
//! and sealed (encrypted) on every core.
//!
//! The input is cut in pieces of a fixed size (a flush cuts one short); piece `k` is
//! handed, with its number and whether it is the last, to whichever worker is free; the
//! writer writes each result once every earlier one is written. At most `2 × workers`
//! pieces are in flight, and the buffers are reused, so memory stays at
//! `4 × workers × piece` at most.
//!
//! ```
//! use std::io::Write;
//! use vdi_backup::ordered::Ordered;
//! let upper = std::sync::Arc::new(|| {
//!     Box::new(|_k: u64, piece: &[u8], _last: bool, out: &mut Vec<u8>| {
//!         out.extend(piece.iter().map(u8::to_ascii_uppercase));
//!         Ok(())
//!     }) as vdi_backup::ordered::Work
//! });
//! let mut w = Ordered::new(Vec::new(), 4, 2, false, upper);
//! w.write_all(b"hello, world").unwrap();
//! assert_eq!(w.finish().unwrap(), b"HELLO, WORLD");
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

/// What a worker does to piece `k` (`last`: the stream's last piece), appending the
/// result to the output buffer (handed over empty).
pub type Work = Box<dyn FnMut(u64, &[u8], bool, &mut Vec<u8>) -> io::Result<()> + Send>;

/// Makes each worker's [`Work`] (which may keep state from piece to piece).
pub type MakeWork = Arc<dyn Fn() -> Work + Send + Sync>;

/// A piece to transform: its number, its bytes, whether it is the last, and a buffer
/// for the result.
type Job = (u64, Vec<u8>, bool, Vec<u8>);
/// A piece transformed: its number, then the result and the piece's buffer.
type Done = (u64, io::Result<(Vec<u8>, Vec<u8>)>);

/// See the module's documentation.
pub struct Ordered<W: Write> {
    out: W,
    piece: usize,
    buf: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<std::thread::JoinHandle<()>>,
    sent: u64,
    written: u64,
    ready: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
    spare_in: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    limit: usize,
    always_last: bool,
}

impl<W: Write> std::fmt::Debug for Ordered<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ordered")
            .field("sent", &self.sent)
            .field("written", &self.written)
            .finish()
    }
}

fn worker(jobs: Arc<Mutex<Receiver<Job>>>, done: Sender<Done>, mut work: Work) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((k, piece, last, mut out)) = job else {
            return;
        };
        out.clear();
        let r = work(k, &piece, last, &mut out).map(|()| (out, piece));
        if done.send((k, r)).is_err() {
            return;
        }
    }
}

/// Worker threads for a stream: one per core, at most 8.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

impl<W: Write> Ordered<W> {
    /// Transforms what is written, in pieces of `piece` bytes, on `workers` threads, onto
    /// `out`. With `always_last`, [`Ordered::finish`] hands over a last piece even when
    /// it is empty (a sealed stream's last-chunk marker); otherwise an empty piece is
    /// never handed over.
    pub fn new(
        out: W,
        piece: usize,
        workers: usize,
        always_last: bool,
        make: MakeWork,
    ) -> Ordered<W> {
        let n = workers.max(1);
        let (jtx, jrx) = std::sync::mpsc::sync_channel::<Job>(n);
        let jrx = Arc::new(Mutex::new(jrx));
        let (dtx, drx) = std::sync::mpsc::channel::<Done>();
        let workers = (0..n)
            .map(|_| {
                let (jrx, dtx, work) = (jrx.clone(), dtx.clone(), make());
                std::thread::spawn(move || worker(jrx, dtx, work))
            })
            .collect();
        Ordered {
            out,
            piece: piece.max(1),
            buf: Vec::with_capacity(piece),
            jobs: Some(jtx),
            done: drx,
            workers,
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
            spare_in: Vec::new(),
            spare_out: Vec::new(),
            limit: 2 * n,
            always_last,
        }
    }

    /// The writer below.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Pieces handed over so far.
    pub fn pieces(&self) -> u64 {
        self.sent
    }

    /// Hands the buffered piece to the workers.
    fn send(&mut self, last: bool) -> io::Result<()> {
        if self.buf.is_empty() && !last {
            return Ok(());
        }
        let next = self
            .spare_in
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.piece));
        let piece = std::mem::replace(&mut self.buf, next);
        let out = self.spare_out.pop().unwrap_or_default();
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the stream is already finished"))?;
        jobs.send((self.sent, piece, last, out))
            .map_err(|_| io::Error::other("the stream's worker threads stopped"))?;
        self.sent += 1;
        Ok(())
    }

    fn take(&mut self, (k, r): Done) -> io::Result<()> {
        self.ready.insert(k, r?);
        Ok(())
    }

    /// Writes the results that are done, in order; then, with `most` > 0, returns once
    /// fewer than `most` pieces are in flight; with 0, once none is.
    fn drain(&mut self, most: usize) -> io::Result<()> {
        loop {
            while let Some((result, mut piece)) = self.ready.remove(&self.written) {
                self.out.write_all(&result)?;
                self.written += 1;
                piece.clear();
                self.spare_in.push(piece);
                self.spare_out.push(result);
            }
            let in_flight = (self.sent - self.written) as usize;
            if in_flight == 0 {
                return Ok(());
            }
            if most > 0 && in_flight < most {
                // Take what is done without waiting.
                match self.done.try_recv() {
                    Ok(d) => {
                        self.take(d)?;
                        continue;
                    }
                    Err(_) => return Ok(()),
                }
            }
            let d = self
                .done
                .recv()
                .map_err(|_| io::Error::other("the stream's worker threads stopped"))?;
            self.take(d)?;
        }
    }

    /// Hands over the last piece, writes every result, flushes and returns the writer
    /// below.
    pub fn finish(mut self) -> io::Result<W> {
        if self.always_last || !self.buf.is_empty() {
            self.send(true)?;
        }
        self.drain(0)?;
        self.out.flush()?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for Ordered<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.piece - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.piece {
            self.send(false)?;
            let limit = self.limit;
            self.drain(limit)?;
        }
        Ok(n)
    }

    /// Hands over what is buffered as a (short) piece and writes every result, so that
    /// everything written so far is on the writer below (then flushed).
    fn flush(&mut self) -> io::Result<()> {
        self.send(false)?;
        self.drain(0)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagger() -> MakeWork {
        Arc::new(|| {
            Box::new(|k: u64, piece: &[u8], last: bool, out: &mut Vec<u8>| {
                out.extend_from_slice(&k.to_le_bytes());
                out.push(u8::from(last));
                out.extend_from_slice(&(piece.len() as u32).to_le_bytes());
                out.extend_from_slice(piece);
                // Uneven work, so results come back out of order.
                if k.is_multiple_of(3) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(())
            }) as Work
        })
    }

    #[test]
    fn results_come_out_in_order_with_flushes_and_a_last_piece() {
        for workers in [1, 2, 5] {
            let mut w = Ordered::new(Vec::new(), 10, workers, true, tagger());
            let data: Vec<u8> = (0..255u8).collect();
            for (i, p) in data.chunks(7).enumerate() {
                w.write_all(p).unwrap();
                if i % 5 == 4 {
                    w.flush().unwrap();
                }
            }
            let out = w.finish().unwrap();
            let (mut at, mut k, mut got, mut lasts) = (0, 0u64, Vec::new(), 0);
            while at < out.len() {
                assert_eq!(u64::from_le_bytes(out[at..at + 8].try_into().unwrap()), k);
                lasts += usize::from(out[at + 8]);
                let n = u32::from_le_bytes(out[at + 9..at + 13].try_into().unwrap()) as usize;
                assert!(n <= 10);
                got.extend_from_slice(&out[at + 13..at + 13 + n]);
                at += 13 + n;
                k += 1;
            }
            assert_eq!(got, data);
            assert_eq!(lasts, 1);
        }
    }

    #[test]
    fn an_empty_stream_has_only_its_last_piece_or_nothing() {
        let w = Ordered::new(Vec::new(), 10, 2, true, tagger());
        assert_eq!(w.finish().unwrap().len(), 13);
        let w = Ordered::new(Vec::new(), 10, 2, false, tagger());
        assert!(w.finish().unwrap().is_empty());
    }

    #[test]
    fn a_failing_piece_fails_the_writer() {
        let make: MakeWork = Arc::new(|| {
            Box::new(|k: u64, _: &[u8], _: bool, _: &mut Vec<u8>| {
                if k == 2 {
                    Err(io::Error::other("boom"))
                } else {
                    Ok(())
                }
            }) as Work
        });
        let mut w = Ordered::new(Vec::new(), 4, 2, false, make);
        let r = w.write_all(&[0u8; 64]).and_then(|()| w.flush());
        assert!(r.is_err());
    }
}
