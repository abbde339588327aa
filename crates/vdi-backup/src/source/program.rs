//! A program the engine runs as a producer (its standard output is a source: `cmd:`,
//! `postgres:`) or a consumer (its standard input is a target: `cmd:`): started without a
//! shell, in its own process group, with its standard error kept (the last lines, for the
//! message when it fails); its exit status is the verdict. A program whose operation
//! fails or is interrupted is killed (its whole process group, so a `sh -c` pipeline goes
//! with it) and reaped: it never outlives the engine's hold on it.
//!
//! Reading its output and writing its input never block for ever: each waits a fifth of
//! a second at a time and gives up once the operation is over
//! ([`crate::cancel::stopping`]: a signal, an aborted set, a stalled peer).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Result;
use crate::error::{Kind, fail};

/// How many of the program's last lines of standard error are kept.
const TAIL_LINES: usize = 12;
/// The longest line kept (longer ones are cut).
const LINE_CHARS: usize = 400;

/// Splits `cmd:`'s argument into words as a shell would (quotes and backslashes), with
/// nothing expanded and no shell run: `sh -c '...'` runs one.
pub fn split_words(rest: &str) -> Result<Vec<String>> {
    let words = shlex::split(rest).ok_or_else(|| {
        fail(
            Kind::Usage,
            format!("cmd:{rest}: a quote is not closed (words are split as a shell would, without running one)"),
        )
    })?;
    if words.is_empty() || words[0].is_empty() {
        return Err(fail(
            Kind::Usage,
            format!("cmd:{rest} names no program (write cmd:PROGRAM ARGS...)"),
        ));
    }
    Ok(words)
}

/// Where `program` is: itself if it names a path, else the first executable file of
/// that name in `$PATH`. An error says what is wrong and what to do.
pub fn find_program(program: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let usable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
            Ok(m) if m.is_dir() => Err(fail(
                Kind::Input,
                format!("program {program} is a directory, not a program"),
            )),
            Ok(_) => Err(fail(
                Kind::Input,
                format!(
                    "program {program} is not executable (chmod +x it, or run it through sh -c)"
                ),
            )),
            Err(e) => Err(fail(Kind::Input, format!("program {program}: {e}"))),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| usable(p))
        .ok_or_else(|| {
            fail(
                Kind::Input,
                format!(
                    "program '{program}' was not found in PATH ({}): install it, or name it by its path",
                    path.to_string_lossy()
                ),
            )
        })
}

/// The last lines a program wrote on its standard error, kept by a thread.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    closed: bool,
}

#[derive(Default)]
struct TailShared {
    tail: Mutex<Tail>,
    cv: Condvar,
}

impl TailShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn words(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut t = self.lock();
        while !t.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            t = self
                .cv
                .wait_timeout(t, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        t.lines.iter().cloned().collect()
    }
}

fn suffix(w: &[String]) -> String {
    if w.is_empty() {
        String::new()
    } else {
        format!("; it said: {}", w.join(" | "))
    }
}

/// How a program is started.
pub struct Spawn<'a> {
    /// How messages name it (`the source program 'tar'`).
    pub what: &'a str,
    /// Its words: the program and its arguments.
    pub argv: &'a [String],
    /// Extra environment.
    pub env: &'a [(&'a str, &'a str)],
    /// Whether the engine writes its standard input (a target) or reads its standard
    /// output (a source).
    pub feeds: bool,
}

/// A running program.
pub struct Program {
    child: Option<Child>,
    pgid: Option<rustix::process::Pid>,
    what: String,
    tail: Arc<TailShared>,
    status: Option<ExitStatus>,
}

impl Program {
    /// Starts it. Returns the program and the engine's end of its pipe (its standard
    /// output for a source, its standard input for a target).
    pub fn spawn(s: &Spawn<'_>) -> Result<(Program, File)> {
        let exe = find_program(&s.argv[0])?;
        let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| fail(Kind::Other, format!("making a pipe for {}: {e}", s.what)))?;
        let mut cmd = Command::new(&exe);
        cmd.arg0(&s.argv[0]).args(&s.argv[1..]);
        for (k, v) in s.env {
            cmd.env(k, v);
        }
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| fail(Kind::Other, format!("starting {}: {e}", s.what)))
        };
        if s.feeds {
            // What the program prints on its standard output goes with its standard error.
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::from(dup(&err_w)?))
                .stderr(Stdio::from(err_w));
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(err_w));
        }
        // Its own process group: a failed or interrupted operation kills the group (a
        // `sh -c` pipeline with it), and a Ctrl-C meant for vdi does not reach it first.
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            fail(
                Kind::Input,
                format!("cannot start {} ({}): {e}", s.what, exe.display()),
            )
        })?;
        drop(cmd); // closes this process's copies of the program's standard error
        let pgid = rustix::process::Pid::from_raw(child.id() as i32);
        let end = if s.feeds {
            child.stdin.take().map(|p| File::from(OwnedFd::from(p)))
        } else {
            child.stdout.take().map(|p| File::from(OwnedFd::from(p)))
        };
        let tail = Arc::new(TailShared::default());
        let t2 = tail.clone();
        let name = s.what.to_owned();
        let spawned = std::thread::Builder::new()
            .name("program-stderr".into())
            .spawn(move || keep_tail(File::from(err_r), &t2, &name));
        let p = Program {
            child: Some(child),
            pgid,
            what: s.what.to_owned(),
            tail,
            status: None,
        };
        if spawned.is_err() {
            return Err(fail(Kind::Other, format!("starting {}: no thread", s.what)));
        }
        let Some(end) = end else {
            return Err(fail(Kind::Other, format!("starting {}: no pipe", s.what)));
        };
        // A larger pipe (1 MiB, the unprivileged limit) than the default 64 KiB: fewer
        // wake-ups of each side per VDI buffer. Where refused, the default serves.
        let _ = rustix::pipe::fcntl_setpipe_size(&end, 1 << 20);
        if s.feeds {
            set_nonblocking(&end).map_err(|e| p.failure_io(&e))?;
        }
        Ok((p, end))
    }

    /// The program's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn failure_io(&self, e: &io::Error) -> crate::Error {
        fail(Kind::Other, format!("{}: {e}", self.what))
    }

    /// The last lines of its standard error, waiting a moment for them (a program's
    /// last words arrive after its exit status, and a child it left behind may hold the
    /// pipe open: then what arrived is all there is).
    pub fn last_words(&self) -> Vec<String> {
        self.tail.words()
    }

    /// A function that tells the program's last words (`; it said: ...`, or nothing),
    /// for messages made where the program itself is not at hand.
    pub fn words_fn(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let t = self.tail.clone();
        Arc::new(move || suffix(&t.words()))
    }

    /// `: its last words: a | b` (or nothing).
    pub fn words_suffix(&self) -> String {
        suffix(&self.last_words())
    }

    /// Whether the program has exited (not reaped yet: its group id stays its own).
    fn exited(&self) -> io::Result<bool> {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        let Some(pid) = self.pgid else {
            return Ok(true);
        };
        match waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        ) {
            Ok(st) => Ok(st.is_some()),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(rustix::io::Errno::CHILD) => Ok(true),
            Err(e) => Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }

    /// Kills what is left in the program's process group, then reaps the program. Its
    /// group id cannot be another process's meanwhile: the program is not reaped until
    /// after the kill.
    fn reap(&mut self) -> Option<ExitStatus> {
        if let Some(g) = self.pgid.take() {
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
        {
            self.status = c.wait().ok();
        }
        self.status
    }

    /// Waits for the program to exit (killing it if the operation is interrupted or
    /// over meanwhile); returns its exit status. Whatever it left running in its process group
    /// (the rest of a `sh -c` pipeline) is killed.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        loop {
            if let Some(st) = self.status {
                return Ok(st);
            }
            match self.exited() {
                Ok(true) => {
                    return self.reap().ok_or_else(|| {
                        fail(
                            Kind::Other,
                            format!("{} could not be waited for", self.what),
                        )
                    });
                }
                Ok(false) if crate::cancel::interrupted() => {
                    self.kill();
                    return Err(fail(
                        Kind::Interrupted,
                        format!(
                            "{} while waiting for {}; it was killed",
                            crate::cancel::what(),
                            self.what
                        ),
                    ));
                }
                Ok(false) if crate::cancel::stopping() => {
                    // The operation is over (its set aborted, its peer gone or stalled).
                    self.kill();
                    return Err(fail(
                        Kind::PeerFailed,
                        format!(
                            "the operation ended while waiting for {} to exit; it was killed",
                            self.what
                        ),
                    ));
                }
                Ok(false) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(self.failure_io(&e)),
            }
        }
    }

    /// Waits for it and fails (with `kind`) unless it exited with status 0; `after` says
    /// what it had done (` after writing 12 MiB`).
    pub fn verdict(&mut self, kind: Kind, after: &str) -> Result<()> {
        let st = self.wait()?;
        if st.success() {
            return Ok(());
        }
        Err(fail(
            kind,
            format!(
                "{} {}{after}{}",
                self.what,
                describe_status(st),
                self.words_suffix()
            ),
        ))
    }

    /// Kills the program (its whole process group) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.reap();
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `exited with status 1`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_status(st: ExitStatus) -> String {
    if let Some(c) = st.code() {
        return format!("exited with status {c}");
    }
    match st.signal() {
        Some(s) => {
            let name = match s {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {s}{name}")
        }
        None => format!("ended with {st}"),
    }
}

fn keep_tail(err: File, t: &TailShared, what: &str) {
    let mut r = BufReader::new(err);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let s = String::from_utf8_lossy(&line);
                let s = s.trim_end();
                if s.is_empty() {
                    continue;
                }
                tracing::debug!("{what}: {s}");
                let mut kept: String = s.chars().take(LINE_CHARS).collect();
                if kept.len() < s.len() {
                    kept.push('…');
                }
                let mut g = t.lock();
                if g.lines.len() == TAIL_LINES {
                    g.lines.pop_front();
                }
                g.lines.push_back(kept);
            }
        }
    }
    t.lock().closed = true;
    t.cv.notify_all();
}

fn set_nonblocking(f: &File) -> io::Result<()> {
    use rustix::fs::OFlags;
    let fl = rustix::fs::fcntl_getfl(f)?;
    rustix::fs::fcntl_setfl(f, fl | OFlags::NONBLOCK)?;
    Ok(())
}

const TICK: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 200_000_000,
};

fn gave_up(what: &str) -> io::Error {
    io::Error::other(format!("the operation ended while waiting for {what}"))
}

/// Reads what a program writes: each read waits until there is data or the end, and
/// gives up once the operation is over.
pub struct PolledPipe {
    file: File,
    what: String,
}

impl PolledPipe {
    /// `file` (the read end of a pipe), named `what` in messages.
    pub fn new(file: File, what: &str) -> PolledPipe {
        PolledPipe {
            file,
            what: what.to_owned(),
        }
    }
}

impl Read for PolledPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, poll};
        loop {
            if crate::cancel::stopping() {
                return Err(gave_up(&self.what));
            }
            let mut fds = [PollFd::new(&self.file, PollFlags::IN)];
            match poll(&mut fds, Some(&TICK)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => match self.file.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                },
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
        }
    }
}

/// Writes a program's input (the non-blocking write end of a pipe): each write waits
/// until the program takes some, and gives up once the operation is over. The pipe can
/// be closed through any clone ([`PipeInput::close`]), which the program sees as the end
/// of its input.
#[derive(Clone)]
pub struct PipeInput {
    file: Arc<Mutex<Option<File>>>,
    what: Arc<str>,
    words: Arc<dyn Fn() -> String + Send + Sync>,
}

impl PipeInput {
    /// `file` (non-blocking), named `what` in messages, which end with what `words`
    /// tells (the program's last words) when the program stops reading.
    pub fn new(file: File, what: &str, words: Arc<dyn Fn() -> String + Send + Sync>) -> PipeInput {
        PipeInput {
            file: Arc::new(Mutex::new(Some(file))),
            what: what.into(),
            words,
        }
    }

    /// Closes the pipe: the program reads the end of its input.
    pub fn close(&self) {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Write for PipeInput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, poll};
        let g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = g.as_ref() else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("{} no longer takes input", self.what),
            ));
        };
        loop {
            match rustix::io::write(f, buf) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {}
                Err(rustix::io::Errno::PIPE) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("{} stopped reading its input{}", self.what, (self.words)()),
                    ));
                }
                Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
            }
            loop {
                if crate::cancel::stopping() {
                    return Err(gave_up(&self.what));
                }
                let mut fds = [PollFd::new(f, PollFlags::OUT)];
                match poll(&mut fds, Some(&TICK)) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => break,
                    Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
