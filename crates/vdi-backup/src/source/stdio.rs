//! `-`: standard input as a source (an unchecked stream: the producer's end looks the
//! same whether it finished or was killed) and standard output as a target (written in
//! source order, whatever order the devices deliver in).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::Arc;

use super::{InOrder, Scheme, Source, Target, TargetOptions};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::{Sink, SourceKind};

/// The standard streams.
#[derive(Debug)]
pub struct Stdio;

impl Scheme for Stdio {
    fn prefix(&self) -> &'static str {
        "-"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Stdin
    }
    fn is_stdio(&self) -> bool {
        true
    }
    fn path<'a>(&self, _rest: &'a str) -> Option<&'a std::path::Path> {
        None
    }
    fn probe(&self, _rest: &str) -> Result<Option<u64>> {
        stdin_file().map_err(|e| fail(Kind::Usage, format!("source -: {e}")))?;
        Ok(None)
    }
    fn open_source(&self, _rest: &str) -> Result<Box<dyn Source>> {
        Ok(Box::new(StdinSource(PolledStdin::open().map_err(|e| {
            fail(Kind::Usage, format!("source -: {e}"))
        })?)))
    }
    fn check_target(&self, _rest: &str, _force: bool) -> Result<()> {
        Ok(())
    }
    fn open_target(&self, _rest: &str, _opts: TargetOptions) -> Result<Box<dyn Target>> {
        let out = stdout_file().map_err(|e| fail(Kind::Usage, format!("target -: {e}")))?;
        Ok(Box::new(StdoutTarget(Arc::new(InOrder::new(
            out,
            "standard output",
        )))))
    }
}

/// Standard input: a stream whose end cannot be told from a producer killed mid-way.
struct StdinSource(PolledStdin);

impl Read for StdinSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Source for StdinSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Stdin
    }
    fn size(&self) -> Option<u64> {
        None
    }
    fn checked(&self) -> bool {
        false
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Standard output, in source order.
struct StdoutTarget(Arc<InOrder<File>>);

impl Target for StdoutTarget {
    fn begin(&self, devices: u32) {
        self.0.begin(devices);
    }
    fn sink(&self) -> Box<dyn Sink + Send> {
        self.0.sink()
    }
    fn device_done(&self, failed: bool) {
        self.0.device_done(failed);
    }
    fn commit(self: Box<Self>, total: u64, _check: bool) -> Result<Option<String>> {
        self.0.finish(total)?;
        Ok(None)
    }
}

/// Which of standard input, output and error were closed when the process started.
static CLOSED: [std::sync::atomic::AtomicBool; 3] = [
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
];

/// Notes which of standard input, output and error the process was started without
/// (`>&-`). Rust's runtime puts `/dev/null`, opened read-write, in place of a closed one
/// before `main`, so a backup "to standard output" went into `/dev/null` and was
/// reported as a success. A shell's `> /dev/null` opens it write-only (`< /dev/null`
/// read-only): only a read-write `/dev/null` is taken for a closed stream. Call first
/// thing in `main`.
pub fn note_closed_standard_streams() {
    use rustix::fs::{FileType, OFlags};
    let filler = |fd: std::os::fd::BorrowedFd<'_>| {
        let Ok(st) = rustix::fs::fstat(fd) else {
            return true;
        };
        let null = FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
            && rustix::fs::major(st.st_rdev) == 1
            && rustix::fs::minor(st.st_rdev) == 3;
        null && rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f & OFlags::RWMODE == OFlags::RDWR)
    };
    let fds = [
        filler(io::stdin().as_fd()),
        filler(io::stdout().as_fd()),
        filler(io::stderr().as_fd()),
    ];
    for (i, closed) in fds.into_iter().enumerate() {
        CLOSED[i].store(closed, std::sync::atomic::Ordering::Release);
    }
}

fn closed(i: usize, what: &str, redirect: &str) -> io::Result<()> {
    if CLOSED[i].load(std::sync::atomic::Ordering::Acquire) {
        return Err(io::Error::other(format!(
            "{what} is closed (the command was started with {redirect}&-): redirect it to a file or a pipe"
        )));
    }
    Ok(())
}

/// A duplicate of standard input as a file (read without Rust's buffering).
pub fn stdin_file() -> io::Result<File> {
    closed(0, "standard input", "<")?;
    Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
}

/// Standard input, read so that a producer that never writes again cannot hold this
/// process for ever: each read waits (poll, a fifth of a second at a time) until there
/// is data or the end, and gives up once the operation is over
/// ([`crate::cancel::stopping`]: a signal, an aborted set, a peer gone).
#[derive(Debug)]
pub struct PolledStdin(File);

impl PolledStdin {
    /// Standard input, duplicated.
    pub fn open() -> io::Result<PolledStdin> {
        let f = stdin_file()?;
        // A pipe of 1 MiB (one VDI buffer) instead of 64 KiB: a producer that writes in
        // small pieces (pg_basebackup, tar) fills it while the engine hands a buffer on,
        // and each read takes more (fewer wake-ups per buffer). Not a pipe, or not
        // allowed: left as it is.
        let _ = rustix::pipe::fcntl_setpipe_size(&f, 1 << 20);
        Ok(PolledStdin(f))
    }
}

impl Read for PolledStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        loop {
            if crate::cancel::stopping() {
                return Err(io::Error::other(
                    "the operation ended while waiting for standard input",
                ));
            }
            let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
            match poll(&mut fds, Some(&tick)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => return self.0.read(buf),
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
    }
}

/// A duplicate of standard output as a file (written without line buffering).
pub fn stdout_file() -> io::Result<File> {
    closed(1, "standard output", ">")?;
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}
