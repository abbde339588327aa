//! A bounded byte pipe between two threads of this process (a tar stream made by one
//! thread and read by the engine, or written by the engine and extracted by another):
//! a [`ChanWriter`] sends pieces of up to [`PIECE`] bytes, at most [`DEPTH`] ahead of the
//! [`ChanReader`]. When one end goes away the other learns it, with the reason the
//! failing side left ([`Why`]).

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

/// The size of one piece.
pub const PIECE: usize = 1 << 20;
/// How many pieces may wait.
pub const DEPTH: usize = 4;

/// Why one end stopped (set before it goes away, read by the other end): the kind of
/// error the other end then reports (`InvalidData` for damaged input, `StorageFull`),
/// and the message.
#[derive(Clone, Default)]
pub struct Why(Arc<Mutex<Option<(io::ErrorKind, String)>>>);

impl Why {
    /// Records why this end stopped (the first reason stays).
    pub fn set(&self, kind: io::ErrorKind, why: String) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert((kind, why));
    }

    /// The reason recorded, if any.
    pub fn get(&self) -> Option<(io::ErrorKind, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The writing end.
pub struct ChanWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    cur: Vec<u8>,
    /// Why the reader stopped.
    why: Why,
    /// How messages name the reader.
    reader: String,
}

/// The reading end.
pub struct ChanReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
}

/// A pipe whose reader is named `reader` in messages; `why` tells why the reader
/// stopped, when it did.
pub fn chan(reader: &str, why: Why) -> (ChanWriter, ChanReader) {
    let (tx, rx) = sync_channel(DEPTH);
    (
        ChanWriter {
            tx: Some(tx),
            cur: Vec::with_capacity(PIECE),
            why,
            reader: reader.to_owned(),
        },
        ChanReader {
            rx,
            cur: Vec::new(),
            at: 0,
        },
    )
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.cur, Vec::with_capacity(PIECE));
        let gone = || match self.why.get() {
            Some((kind, w)) => io::Error::new(kind, w),
            None => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{} stopped", self.reader),
            ),
        };
        match &self.tx {
            Some(tx) => tx.send(piece).map_err(|_| gone()),
            None => Err(gone()),
        }
    }

    /// Closes the pipe without sending what is held (the operation failed): the
    /// reader reads an early end.
    pub fn abandon(&mut self) {
        self.tx = None;
        self.cur.clear();
    }

    /// Sends what is held and closes the pipe: the reader reads its end.
    pub fn close(&mut self) -> io::Result<()> {
        let r = self.send();
        self.tx = None;
        r
    }
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PIECE - self.cur.len();
        let n = buf.len().min(room);
        self.cur.extend_from_slice(&buf[..n]);
        if self.cur.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.recv() {
                Ok(p) => {
                    self.cur = p;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.at);
        buf[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bytes_pass_in_order_and_a_gone_reader_says_why() {
        let why = Why::default();
        let (mut w, mut r) = chan("the reader", why.clone());
        let data: Vec<u8> = (0..3 * PIECE + 17).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            w.write_all(&d2).unwrap();
            w.close().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got, data);

        let (mut w, r) = chan("the reader", why.clone());
        why.set(io::ErrorKind::InvalidData, "it found a bad entry".into());
        drop(r);
        let e = w.write_all(&vec![0u8; 2 * PIECE]).unwrap_err();
        assert_eq!(e.to_string(), "it found a bad entry");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
