//! Extracting a tar stream into a new, empty directory, safely: nothing lands outside it
//! and no symbolic link is ever followed.
//!
//! - An entry's name is split into components: an absolute name, or one with a `..`
//!   component, is refused (the whole restore fails: such an archive is damaged or
//!   hostile); `.` and empty components are dropped.
//! - Every directory on the way to an entry is opened from the one before it with
//!   `O_NOFOLLOW`, from the target's own descriptor: an entry that lies beyond a
//!   symbolic link (an archive that makes `a -> /etc`, then `a/passwd`) is refused, never
//!   written through. Symbolic links themselves are made as they are (their targets are
//!   only text), hard links only to entries the archive made before, inside the target.
//! - Files are made new (`O_CREAT|O_EXCL|O_NOFOLLOW`); a later entry of the same name
//!   replaces an earlier one that is not a directory, as `tar` does.
//! - Runs of zeros in a file's data become holes (a sparse file is restored sparse).
//! - Permission bits (set-id and sticky too), modification times and extended attributes
//!   are restored; owners only when this process runs as root (as `tar` does for other
//!   users); a directory's are set after its contents. Extended attributes the target's
//!   file system does not support, or that this process may not set, are left out.
//! - At the end the target's file system is synced (`syncfs`): what is put in place is
//!   durable.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

/// Why an extraction failed.
#[derive(Debug)]
pub enum XErr {
    /// The archive is hostile or damaged (a name outside the target, a link to follow).
    Refused(String),
    /// Writing failed.
    Io(String, io::Error),
}

impl std::fmt::Display for XErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XErr::Refused(s) => f.write_str(s),
            XErr::Io(s, e) => write!(f, "{s}: {e}"),
        }
    }
}

/// What was extracted.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Entries made.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Extended attributes left out (not supported, or not permitted).
    pub xattrs_skipped: u64,
    /// The owner recorded for the entry named this (the first one met), if asked for.
    pub owner_of: Option<(u32, u32)>,
}

/// Options of an extraction.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Record the owner of the entry with this name (`PG_VERSION`).
    pub owner_of: Option<String>,
}

#[derive(Clone, Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct X {
    root: OwnedFd,
    owners: bool,
    dirs: Vec<(Vec<Vec<u8>>, Meta)>,
    root_meta: Option<Meta>,
    cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    sum: Summary,
    opts: Options,
}

fn shown(c: &[Vec<u8>]) -> String {
    let v: Vec<String> = c
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    v.join("/")
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// The components of an entry's name (refusing what would leave the target).
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, XErr> {
    let name = String::from_utf8_lossy(raw);
    if raw.starts_with(b"/") {
        return Err(XErr::Refused(format!(
            "the archive holds an entry with an absolute name ({name}): refused, nothing is restored outside the target"
        )));
    }
    let mut v = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(XErr::Refused(format!(
                    "the archive holds an entry named {name}, with '..' in it: refused, nothing is restored outside the target"
                )));
            }
            c => v.push(c.to_vec()),
        }
    }
    Ok(v)
}

/// Extracts the tar stream `r` into the directory `root` (new and empty). Reads `r` to
/// its end (what follows the archive's end must be zeros).
pub fn extract<R: Read>(r: R, root: &Path, opts: Options) -> Result<Summary, XErr> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| XErr::Io(format!("opening {}", root.display()), errno(e)))?;
    let mut x = X {
        root: fd,
        owners: rustix::process::geteuid().is_root(),
        dirs: Vec::new(),
        root_meta: None,
        cache: None,
        sum: Summary::default(),
        opts,
    };
    let mut ar = tar::Archive::new(r);
    {
        let entries = ar
            .entries()
            .map_err(|e| XErr::Refused(format!("the tar stream is damaged: {e}")))?;
        for e in entries {
            let mut e = e.map_err(|e| XErr::Refused(format!("the tar stream is damaged: {e}")))?;
            x.entry(&mut e)?;
        }
    }
    // What follows the end of the archive (its padding) must be zeros.
    let mut rest = ar.into_inner();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| XErr::Io("reading the stream".into(), e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(XErr::Refused(
                "the tar stream goes on after the end of the archive: it is damaged".into(),
            ));
        }
    }
    x.finish()?;
    Ok(x.sum)
}

fn meta_of<R: Read>(e: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta, XErr> {
    let h = e.header();
    let bad = |what: &str, err: io::Error| {
        XErr::Refused(format!(
            "the tar header of {name} has a damaged {what}: {err}"
        ))
    };
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let uid = h.uid().map_err(|e| bad("owner", e))?;
    let gid = h.gid().map_err(|e| bad("group", e))?;
    let mtime = h.mtime().map_err(|e| bad("time", e))?;
    let mut xattrs = Vec::new();
    if let Some(pax) = e
        .pax_extensions()
        .map_err(|e| XErr::Refused(format!("the PAX records of {name} are damaged: {e}")))?
    {
        for p in pax {
            let p = p.map_err(|e| {
                XErr::Refused(format!("the PAX records of {name} are damaged: {e}"))
            })?;
            if let Some(k) = p.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((k.to_vec(), p.value_bytes().to_vec()));
            }
        }
    }
    Ok(Meta {
        mode,
        uid: u32::try_from(uid).unwrap_or(u32::MAX),
        gid: u32::try_from(gid).unwrap_or(u32::MAX),
        mtime,
        xattrs,
    })
}

impl X {
    /// Opens the directory `comps` (under the root), making what is missing when
    /// `create`, never through a symbolic link.
    fn open_dir(&self, comps: &[Vec<u8>], create: bool, entry: &str) -> Result<OwnedFd, XErr> {
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| XErr::Io("duplicating a descriptor".into(), e))?;
        for (i, c) in comps.iter().enumerate() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&cur, c.as_slice(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, c.as_slice(), Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(XErr::Io(
                                format!("making {}", shown(&comps[..=i])),
                                errno(e),
                            ));
                        }
                    }
                    rustix::fs::openat(&cur, c.as_slice(), flags, Mode::empty()).map_err(|e| {
                        XErr::Io(format!("opening {}", shown(&comps[..=i])), errno(e))
                    })?
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    let is_link = rustix::fs::statat(&cur, c.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| {
                            rustix::fs::FileType::from_raw_mode(st.st_mode)
                                == rustix::fs::FileType::Symlink
                        });
                    return Err(XErr::Refused(if is_link {
                        format!(
                            "the archive's entry {entry} lies beyond the symbolic link {}: refused, no link is followed out of the target",
                            shown(&comps[..=i])
                        )
                    } else {
                        format!(
                            "the archive's entry {entry} lies beneath {}, which is not a directory: the archive is damaged",
                            shown(&comps[..=i])
                        )
                    }));
                }
                Err(e) => {
                    return Err(XErr::Io(
                        format!("opening {}", shown(&comps[..=i])),
                        errno(e),
                    ));
                }
            };
            cur = next;
        }
        Ok(cur)
    }

    fn parent(&mut self, comps: &[Vec<u8>], entry: &str) -> Result<OwnedFd, XErr> {
        if let Some((p, fd)) = &self.cache
            && p.as_slice() == comps
        {
            return fd
                .try_clone()
                .map_err(|e| XErr::Io("duplicating a descriptor".into(), e));
        }
        let fd = self.open_dir(comps, true, entry)?;
        let dup = fd
            .try_clone()
            .map_err(|e| XErr::Io("duplicating a descriptor".into(), e))?;
        self.cache = Some((comps.to_vec(), dup));
        Ok(fd)
    }

    /// Makes room for a new entry that is not a directory: removes an earlier one of
    /// that name (refusing to remove a directory).
    fn make_room(&self, dir: BorrowedFd<'_>, name: &[u8], entry: &str) -> Result<(), XErr> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(XErr::Io(format!("looking at {entry}"), errno(e))),
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory =>
            {
                Err(XErr::Refused(format!(
                    "the archive holds {entry} both as a directory and as something else: it is damaged"
                )))
            }
            Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| XErr::Io(format!("replacing {entry}"), errno(e))),
        }
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), XErr> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let ty = e.header().entry_type();
        if ty.is_pax_global_extensions() {
            return Ok(());
        }
        let comps = components(&raw)?;
        let meta = meta_of(e, &name)?;
        if let Some(want) = &self.opts.owner_of
            && self.sum.owner_of.is_none()
            && comps.len() == 1
            && comps[0] == want.as_bytes()
        {
            self.sum.owner_of = Some((meta.uid, meta.gid));
        }
        self.sum.entries += 1;
        let Some((leaf, parents)) = comps.split_last() else {
            if ty.is_dir() {
                self.root_meta = Some(meta);
                return Ok(());
            }
            return Err(XErr::Refused(format!(
                "the archive holds an entry with no name ({name:?}) that is not a directory: it is damaged"
            )));
        };
        let dir = self.parent(parents, &name)?;
        let leaf = leaf.as_slice();
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.make_room(dir.as_fd(), leaf, &name)?;
                let fd = rustix::fs::openat(
                    &dir,
                    leaf,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|er| XErr::Io(format!("making {name}"), errno(er)))?;
                let f = std::fs::File::from(fd);
                let n =
                    write_sparse(e, &f).map_err(|er| XErr::Io(format!("writing {name}"), er))?;
                self.sum.bytes += n;
                self.set_meta(f.as_fd(), &meta, &name)?;
            }
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&dir, leaf, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        let st = rustix::fs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|er| XErr::Io(format!("looking at {name}"), errno(er)))?;
                        if rustix::fs::FileType::from_raw_mode(st.st_mode)
                            != rustix::fs::FileType::Directory
                        {
                            return Err(XErr::Refused(format!(
                                "the archive holds {name} both as a directory and as something else: it is damaged"
                            )));
                        }
                    }
                    Err(er) => return Err(XErr::Io(format!("making {name}"), errno(er))),
                }
                self.dirs.push((comps.clone(), meta));
            }
            tar::EntryType::Symlink => {
                let to = e
                    .link_name_bytes()
                    .ok_or_else(|| {
                        XErr::Refused(format!("the symbolic link {name} has no target"))
                    })?
                    .into_owned();
                self.make_room(dir.as_fd(), leaf, &name)?;
                rustix::fs::symlinkat(to.as_slice(), &dir, leaf).map_err(|er| {
                    XErr::Io(format!("making the symbolic link {name}"), errno(er))
                })?;
                self.set_meta_at(dir.as_fd(), leaf, &meta, &name, false)?;
            }
            tar::EntryType::Link => {
                let to_raw = e
                    .link_name_bytes()
                    .ok_or_else(|| XErr::Refused(format!("the hard link {name} names no file")))?
                    .into_owned();
                let to = components(&to_raw)?;
                let to_name = String::from_utf8_lossy(&to_raw).into_owned();
                let Some((tleaf, tparents)) = to.split_last() else {
                    return Err(XErr::Refused(format!("the hard link {name} names no file")));
                };
                let tdir = self.open_dir(tparents, false, &name).map_err(|er| match er {
                    XErr::Io(_, ref io) if io.kind() == io::ErrorKind::NotFound => XErr::Refused(format!(
                        "the hard link {name} names {to_name}, which the archive does not hold before it"
                    )),
                    er => er,
                })?;
                self.make_room(dir.as_fd(), leaf, &name)?;
                rustix::fs::linkat(&tdir, tleaf.as_slice(), &dir, leaf, AtFlags::empty()).map_err(
                    |er| match er {
                        rustix::io::Errno::NOENT => XErr::Refused(format!(
                            "the hard link {name} names {to_name}, which the archive does not hold before it"
                        )),
                        er => XErr::Io(format!("making the hard link {name}"), errno(er)),
                    },
                )?;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let (ft, dev) = match ty {
                    tar::EntryType::Fifo => (rustix::fs::FileType::Fifo, 0),
                    t => {
                        let h = e.header();
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if t == tar::EntryType::Char {
                            rustix::fs::FileType::CharacterDevice
                        } else {
                            rustix::fs::FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                self.make_room(dir.as_fd(), leaf, &name)?;
                rustix::fs::mknodat(&dir, leaf, ft, Mode::from_raw_mode(0o600), dev).map_err(|er| {
                    if er == rustix::io::Errno::PERM && ft != rustix::fs::FileType::Fifo {
                        XErr::Io(
                            format!("making the device file {name} (only root may: restore as root, or leave devices out of the backup)"),
                            errno(er),
                        )
                    } else {
                        XErr::Io(format!("making {name}"), errno(er))
                    }
                })?;
                self.set_meta_at(dir.as_fd(), leaf, &meta, &name, true)?;
            }
            t => {
                return Err(XErr::Refused(format!(
                    "the archive's entry {name} is of a kind vdi does not restore (tar type {:?})",
                    t.as_byte() as char
                )));
            }
        }
        Ok(())
    }

    /// Owner (as root), mode, extended attributes and time of an open file or
    /// directory, in that order (a change of owner clears set-id bits and capabilities).
    fn set_meta(&mut self, fd: BorrowedFd<'_>, m: &Meta, name: &str) -> Result<(), XErr> {
        if self.owners {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
            )
            .map_err(|e| XErr::Io(format!("giving {name} its owner"), errno(e)))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode))
            .map_err(|e| XErr::Io(format!("giving {name} its mode"), errno(e)))?;
        for (k, v) in &m.xattrs {
            match rustix::fs::fsetxattr(fd, k.as_slice(), v, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                Err(
                    rustix::io::Errno::NOTSUP
                    | rustix::io::Errno::PERM
                    | rustix::io::Errno::ACCESS
                    | rustix::io::Errno::INVAL,
                ) => self.sum.xattrs_skipped += 1,
                Err(e) => {
                    return Err(XErr::Io(
                        format!("giving {name} its extended attributes"),
                        errno(e),
                    ));
                }
            }
        }
        let t = Timespec {
            tv_sec: m.mtime.min(i64::MAX as u64) as i64,
            tv_nsec: 0,
        };
        rustix::fs::futimens(
            fd,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
        )
        .map_err(|e| XErr::Io(format!("giving {name} its time"), errno(e)))
    }

    /// The same for an entry that cannot be opened (a link, a FIFO, a device), by name.
    fn set_meta_at(
        &mut self,
        dir: BorrowedFd<'_>,
        leaf: &[u8],
        m: &Meta,
        name: &str,
        chmod: bool,
    ) -> Result<(), XErr> {
        if self.owners {
            rustix::fs::chownat(
                dir,
                leaf,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| XErr::Io(format!("giving {name} its owner"), errno(e)))?;
        }
        if chmod {
            // Not a link (chmodat cannot refuse to follow one; none is here: the entry
            // was just made as a FIFO or a device).
            rustix::fs::chmodat(dir, leaf, Mode::from_raw_mode(m.mode), AtFlags::empty())
                .map_err(|e| XErr::Io(format!("giving {name} its mode"), errno(e)))?;
        }
        self.sum.xattrs_skipped += m.xattrs.len() as u64;
        let t = Timespec {
            tv_sec: m.mtime.min(i64::MAX as u64) as i64,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            dir,
            leaf,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| XErr::Io(format!("giving {name} its time"), errno(e)))
    }

    /// Gives the directories their metadata, the deepest first (after their contents),
    /// the root last, then syncs the file system.
    fn finish(&mut self) -> Result<(), XErr> {
        self.cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, meta) in dirs.iter().rev() {
            let name = shown(comps);
            let fd = self.open_dir(comps, false, &name)?;
            self.set_meta(fd.as_fd(), meta, &name)?;
        }
        let root = self
            .root
            .try_clone()
            .map_err(|e| XErr::Io("duplicating a descriptor".into(), e))?;
        if let Some(m) = self.root_meta.take() {
            self.set_meta(root.as_fd(), &m, "./")?;
        }
        rustix::fs::syncfs(&root)
            .map_err(|e| XErr::Io("syncing the restored tree".into(), errno(e)))
    }
}

/// Writes an entry's data into `f`, leaving holes where whole 4 KiB blocks are zeros;
/// sets the length; returns it.
fn write_sparse<R: Read>(r: &mut R, f: &std::fs::File) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = crate::codec::read_full(r, &mut buf)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let mut i = 0;
        while i < n {
            let zero = |s: usize| {
                let e = (s + BLOCK).min(n);
                data[s..e].iter().all(|b| *b == 0)
            };
            if zero(i) {
                i += BLOCK;
                continue;
            }
            let start = i;
            while i < n && !zero(i) {
                i += BLOCK;
            }
            let end = i.min(n);
            f.write_all_at(&data[start..end], off + start as u64)?;
        }
        off += n as u64;
    }
    f.set_len(off)?;
    Ok(off)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_that_leave_the_target_are_refused() {
        assert_eq!(
            components(b"./a//b/./c").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(matches!(components(b"/etc/passwd"), Err(XErr::Refused(_))));
        assert!(matches!(components(b"a/../../b"), Err(XErr::Refused(_))));
        assert!(matches!(components(b".."), Err(XErr::Refused(_))));
    }
}
