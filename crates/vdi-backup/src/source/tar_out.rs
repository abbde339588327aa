//! A directory tree as a tar stream (GNU format, with PAX records for extended
//! attributes), made by a thread of the engine and read by the engine like any source.
//!
//! What it holds of each entry: the kind (directory, regular file, symbolic link, hard
//! link to an earlier entry, FIFO, character and block device), the permission bits
//! (set-id and sticky bits too), the numeric owner and group, the modification time in
//! seconds, and the extended attributes (`user.*`, and `security.*`, `trusted.*` and ACLs
//! as far as this process may read them). A sparse file is stored sparse (only its data
//! extents, found with `SEEK_DATA`/`SEEK_HOLE`). Sockets are left out (with a warning):
//! tar cannot hold them. Entries are in name order, the root first (as `./`).
//!
//! A file is read from one descriptor opened without following a link: a file replaced
//! by something else between the listing and the read is refused, one that shrinks while
//! it is read fails the backup ("changed while it was read"), and one that grows is read
//! up to the length it had when it was opened.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use tar::{EntryType, GnuExtSparseHeader, Header};

use super::Source;
use super::chan::{ChanReader, ChanWriter, Why, chan};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::SourceKind;

/// A directory's tar stream as a source.
pub struct TarSource {
    rx: Option<ChanReader>,
    thread: Option<JoinHandle<io::Result<()>>>,
    root: PathBuf,
}

impl TarSource {
    /// Starts making the tar stream of the directory `root` (checked to be one).
    pub fn start(root: &Path) -> Result<TarSource> {
        let why = Why::default();
        let (tx, rx) = chan("the engine", why);
        let r = root.to_owned();
        let thread = std::thread::Builder::new()
            .name("tar".into())
            .spawn(move || write_tree(&r, tx))
            .map_err(|e| fail(Kind::Other, format!("starting the tar thread: {e}")))?;
        Ok(TarSource {
            rx: Some(rx),
            thread: Some(thread),
            root: root.to_owned(),
        })
    }
}

impl Read for TarSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.rx.as_mut() {
            Some(rx) => rx.read(buf),
            None => Ok(0),
        }
    }
}

impl Source for TarSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Directory
    }
    fn size(&self) -> Option<u64> {
        None
    }
    fn checked(&self) -> bool {
        true
    }
    fn finish(&mut self) -> Result<()> {
        self.rx = None;
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        match t.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(fail(
                Kind::Input,
                format!(
                    "backing up the directory {}: {e}; nothing was marked complete",
                    self.root.display()
                ),
            )),
            Err(_) => Err(fail(Kind::Other, "the tar thread panicked")),
        }
    }
}

impl Drop for TarSource {
    fn drop(&mut self) {
        // The reader goes first: a thread blocked sending then fails, and ends.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The error for `rel` (an entry's name in the archive).
fn at(rel: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{rel}: {e}"))
}

struct Walk {
    b: tar::Builder<ChanWriter>,
    /// The first name of each file with more than one link, by (device, inode).
    links: HashMap<(u64, u64), String>,
    xattr_buf: Vec<u8>,
}

fn write_tree(root: &Path, tx: ChanWriter) -> io::Result<()> {
    let meta = std::fs::metadata(root)?;
    let mut w = Walk {
        b: tar::Builder::new(tx),
        links: HashMap::new(),
        xattr_buf: vec![0u8; 64 << 10],
    };
    w.entry(root, "./", &meta)?;
    w.dir(root, "")?;
    w.b.finish()?;
    let mut tx = w.b.into_inner()?;
    tx.close()
}

fn base_header(meta: &Metadata, ty: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

impl Walk {
    fn dir(&mut self, abs: &Path, rel: &str) -> io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(abs)
            .map_err(|e| at(if rel.is_empty() { "./" } else { rel }, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| at(rel, e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = abs.join(&name);
            let Some(n) = name.to_str() else {
                return Err(at(
                    &format!("{rel}{}", name.to_string_lossy()),
                    io::Error::other("a name that is not UTF-8 cannot be stored"),
                ));
            };
            let crel = format!("{rel}{n}");
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                // Removed since the listing: it is not part of the tree any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at(&crel, e)),
            };
            if meta.is_dir() {
                let drel = format!("{crel}/");
                self.entry(&child, &drel, &meta)?;
                self.dir(&child, &drel)?;
            } else {
                self.entry(&child, &crel, &meta)?;
            }
        }
        Ok(())
    }

    /// The PAX records of `abs`'s extended attributes.
    fn xattrs(&mut self, abs: &Path, rel: &str) -> io::Result<Vec<(String, Vec<u8>)>> {
        let n = loop {
            match rustix::fs::llistxattr(abs, &mut self.xattr_buf[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => {
                    let l = self.xattr_buf.len() * 2;
                    self.xattr_buf.resize(l, 0);
                }
                // Not supported here, or gone: none.
                Err(
                    rustix::io::Errno::NOTSUP | rustix::io::Errno::NOENT | rustix::io::Errno::PERM,
                ) => return Ok(Vec::new()),
                Err(e) => return Err(at(rel, e.into())),
            }
        };
        let names: Vec<Vec<u8>> = self.xattr_buf[..n]
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut out = Vec::new();
        for name in names {
            let Ok(key) = String::from_utf8(name.clone()) else {
                continue;
            };
            let mut val = vec![0u8; 4096];
            let got = loop {
                match rustix::fs::lgetxattr(abs, name.as_slice(), &mut val[..]) {
                    Ok(n) => break Some(n),
                    Err(rustix::io::Errno::RANGE) => {
                        let l = val.len() * 4;
                        val.resize(l, 0);
                    }
                    // Gone meanwhile, or not ours to read (security.* of another): left out.
                    Err(
                        rustix::io::Errno::NODATA
                        | rustix::io::Errno::NOTSUP
                        | rustix::io::Errno::PERM
                        | rustix::io::Errno::ACCESS,
                    ) => break None,
                    Err(e) => return Err(at(rel, e.into())),
                }
            };
            if let Some(n) = got {
                val.truncate(n);
                out.push((format!("SCHILY.xattr.{key}"), val));
            }
        }
        Ok(out)
    }

    fn entry(&mut self, abs: &Path, rel: &str, meta: &Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_socket() {
            tracing::warn!("{rel} is a socket: left out (tar cannot hold one)");
            return Ok(());
        }
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                let mut h = base_header(meta, EntryType::Link);
                return self
                    .b
                    .append_link(&mut h, rel, first)
                    .map_err(|e| at(rel, e));
            }
            self.links.insert(key, rel.to_owned());
        }
        let pax = self.xattrs(abs, rel)?;
        if !pax.is_empty() {
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| at(rel, e))?;
        }
        if ft.is_dir() {
            let mut h = base_header(meta, EntryType::Directory);
            return self
                .b
                .append_data(&mut h, rel, io::empty())
                .map_err(|e| at(rel, e));
        }
        if ft.is_symlink() {
            let to = std::fs::read_link(abs).map_err(|e| at(rel, e))?;
            let mut h = base_header(meta, EntryType::Symlink);
            return self.b.append_link(&mut h, rel, to).map_err(|e| at(rel, e));
        }
        if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let ty = if ft.is_fifo() {
                EntryType::Fifo
            } else if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut h = base_header(meta, ty);
            if !ft.is_fifo() {
                let dev = meta.rdev();
                h.set_device_major(rustix::fs::major(dev))?;
                h.set_device_minor(rustix::fs::minor(dev))?;
            }
            return self
                .b
                .append_data(&mut h, rel, io::empty())
                .map_err(|e| at(rel, e));
        }
        self.file(abs, rel, meta).map_err(|e| at(rel, e))
    }

    fn file(&mut self, abs: &Path, rel: &str, listed: &Metadata) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            abs,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let f = File::from(fd);
        let meta = f.metadata()?;
        if !meta.is_file() || meta.ino() != listed.ino() || meta.dev() != listed.dev() {
            return Err(io::Error::other(
                "it was replaced by something else while the directory was read",
            ));
        }
        let size = meta.len();
        let mut h = base_header(&meta, EntryType::Regular);
        let extents = if size > 0 && meta.blocks() * 512 < size {
            data_extents(&f, size)?
        } else {
            None
        };
        match extents {
            None => {
                h.set_size(size);
                let r = Exact {
                    f: &f,
                    at: 0,
                    ranges: vec![(0, size)],
                    k: 0,
                    prefix: Vec::new(),
                    p: 0,
                };
                self.b.append_data(&mut h, rel, r)
            }
            Some(ext) => {
                let on_disk: u64 = ext.iter().map(|e| e.1).sum();
                h.set_entry_type(EntryType::GNUSparse);
                h.set_size(on_disk);
                let mut list = ext.clone();
                let (_, last_len) = list.last().copied().unwrap_or((0, 0));
                let last_end = list.last().map_or(0, |e| e.0 + last_len);
                if last_end < size {
                    // It ends in a hole: a last, empty extent at its end says how long.
                    list.push((size, 0));
                }
                let gnu = h
                    .as_gnu_mut()
                    .ok_or_else(|| io::Error::other("not a GNU header"))?;
                gnu.set_real_size(size);
                let mut it = list.iter();
                for slot in gnu.sparse.iter_mut() {
                    if let Some((o, l)) = it.next() {
                        slot.set_offset(*o);
                        slot.set_length(*l);
                    }
                }
                let rest: Vec<_> = it.copied().collect();
                gnu.set_is_extended(!rest.is_empty());
                // The extension headers come right after the header, before the data.
                let mut prefix = Vec::new();
                let mut chunks = rest.chunks(21).peekable();
                while let Some(c) = chunks.next() {
                    let mut x = GnuExtSparseHeader::new();
                    for (slot, (o, l)) in x.sparse_mut().iter_mut().zip(c) {
                        slot.set_offset(*o);
                        slot.set_length(*l);
                    }
                    x.set_is_extended(chunks.peek().is_some());
                    prefix.extend_from_slice(x.as_bytes());
                }
                let r = Exact {
                    f: &f,
                    at: ext.first().map_or(0, |e| e.0),
                    ranges: ext,
                    k: 0,
                    prefix,
                    p: 0,
                };
                self.b.append_data(&mut h, rel, r)
            }
        }
    }
}

/// The data extents `(offset, length)` of a file with holes, or `None` if it has none
/// (or the file system cannot tell). Each extent but the last is a multiple of 512
/// bytes long (the format wants it so): an extent is widened to the next boundary, which
/// only reads a few zeros of the hole after it.
fn data_extents(f: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    use rustix::fs::SeekFrom;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    while off < size {
        let start = match rustix::fs::seek(f, SeekFrom::Data(off)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(f, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(e) => return Err(e.into()),
        };
        let start = start - start % 512;
        let end = end.div_ceil(512).saturating_mul(512).min(size);
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= start => last.1 = end.max(last.0 + last.1) - last.0,
            _ => out.push((start, end - start)),
        }
        off = end;
    }
    if out.len() == 1 && out[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Exactly the bytes of `ranges` of a file, after `prefix`: fails if the file ends
/// early (it shrank while it was read), and never reads past the ranges (a file that
/// grows is read up to the length it had).
struct Exact<'a> {
    f: &'a File,
    at: u64,
    ranges: Vec<(u64, u64)>,
    k: usize,
    prefix: Vec<u8>,
    p: usize,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.p < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.p);
            buf[..n].copy_from_slice(&self.prefix[self.p..self.p + n]);
            self.p += n;
            return Ok(n);
        }
        loop {
            let Some(&(off, len)) = self.ranges.get(self.k) else {
                return Ok(0);
            };
            let end = off + len;
            if self.at < off {
                self.at = off;
            }
            if self.at >= end {
                self.k += 1;
                continue;
            }
            let want = buf.len().min((end - self.at) as usize);
            let n = self.f.read_at(&mut buf[..want], self.at)?;
            if n == 0 {
                return Err(io::Error::other(format!(
                    "it changed while it was read (it shrank to {} bytes)",
                    self.at
                )));
            }
            self.at += n as u64;
            return Ok(n);
        }
    }
}
