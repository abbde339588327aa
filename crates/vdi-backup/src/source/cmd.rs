//! `cmd:PROGRAM ARGS...`: a program the engine runs. As a source, what it writes on its
//! standard output is backed up (striped over the devices like any source); as a target,
//! the restored bytes are its standard input, in order. Its exit status is the verdict:
//! a non-zero status or a signal fails the operation (a backup before `VDC_Complete`),
//! with its last lines of standard error in the message. The words are split as a shell
//! would, but no shell runs unless one is named (`cmd:sh -c 'tar c . | zstd'`).
//!
//! ```
//! use vdi_backup::source::Spec;
//! let s = Spec::parse("cmd:tar -C '/srv/my data' -c .").unwrap();
//! assert_eq!(s.label(), "cmd:tar -C '/srv/my data' -c .");
//! assert!(s.path().is_none());
//! assert!(Spec::parse("cmd:").is_err());
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::program::{PipeInput, PolledPipe, Program, Spawn, find_program, split_words};
use super::{InOrder, Scheme, Source, Target, TargetOptions};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::stream::{Sink, SourceKind};
use crate::units::human_bytes;

/// Programs.
#[derive(Debug)]
pub struct Cmd;

impl Scheme for Cmd {
    fn prefix(&self) -> &'static str {
        "cmd:"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Command
    }
    fn path<'a>(&self, _rest: &'a str) -> Option<&'a Path> {
        None
    }
    fn probe(&self, rest: &str) -> Result<Option<u64>> {
        let words = split_words(rest)?;
        find_program(&words[0])?;
        Ok(None)
    }
    fn open_source(&self, rest: &str) -> Result<Box<dyn Source>> {
        let words = split_words(rest)?;
        Ok(Box::new(ProgramSource::start(
            &words,
            &format!("the source program '{}'", words[0]),
            &[],
            SourceKind::Command,
        )?))
    }
    fn check_target(&self, rest: &str, _force: bool) -> Result<()> {
        let words = split_words(rest)?;
        find_program(&words[0]).map(|_| ())
    }
    fn open_target(&self, rest: &str, _opts: TargetOptions) -> Result<Box<dyn Target>> {
        let words = split_words(rest)?;
        Ok(Box::new(ProgramTarget::start(&words)?))
    }
}

/// A program's standard output as a source; its exit status is the verdict.
pub struct ProgramSource {
    program: Program,
    out: PolledPipe,
    bytes: u64,
    kind: SourceKind,
    /// Turns the program's failure into what to do about it (PostgreSQL's errors).
    advise: fn(&str) -> Option<String>,
}

impl ProgramSource {
    /// Starts `argv` (named `what` in messages) with `env` added to its environment.
    pub fn start(
        argv: &[String],
        what: &str,
        env: &[(&str, &str)],
        kind: SourceKind,
    ) -> Result<ProgramSource> {
        let (program, out) = Program::spawn(&Spawn {
            what,
            argv,
            env,
            feeds: false,
        })?;
        Ok(ProgramSource {
            program,
            out: PolledPipe::new(out, what),
            bytes: 0,
            kind,
            advise: |_| None,
        })
    }

    /// Adds advice to the failure message, chosen from the program's last words.
    pub fn with_advice(mut self, advise: fn(&str) -> Option<String>) -> ProgramSource {
        self.advise = advise;
        self
    }

    /// The program's last lines of standard error.
    pub fn last_words(&self) -> Vec<String> {
        self.program.last_words()
    }

    /// The program's process id.
    pub fn pid(&self) -> Option<u32> {
        self.program.pid()
    }

    /// Waits for the program to exit (it has written everything).
    pub fn verdict(&mut self) -> Result<()> {
        let after = format!(" after writing {}", human_bytes(self.bytes));
        self.program.verdict(Kind::Input, &after).map_err(|e| {
            match (self.advise)(&self.program.last_words().join("\n")) {
                Some(a) if e.kind() == Kind::Input => {
                    fail(Kind::Input, format!("{}; {a}", e.own_message()))
                }
                _ => e,
            }
        })
    }
}

impl Read for ProgramSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.out.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Source for ProgramSource {
    fn kind(&self) -> SourceKind {
        self.kind
    }
    fn size(&self) -> Option<u64> {
        None
    }
    fn checked(&self) -> bool {
        true
    }
    fn finish(&mut self) -> Result<()> {
        self.verdict()
    }
}

/// A program's standard input as a target, written in source order; committed when the
/// program, having read everything, exits with status 0. Dropped before that, the
/// program is killed (it never sees a clean end of its input).
struct ProgramTarget {
    // Declared first: dropped (the program killed) before its input is closed.
    program: Mutex<Program>,
    input: PipeInput,
    out: Arc<InOrder<PipeInput>>,
}

impl ProgramTarget {
    fn start(argv: &[String]) -> Result<ProgramTarget> {
        let what = format!("the target program '{}'", argv[0]);
        let (program, input): (Program, File) = Program::spawn(&Spawn {
            what: &what,
            argv,
            env: &[],
            feeds: true,
        })?;
        let input = PipeInput::new(input, &what, program.words_fn());
        Ok(ProgramTarget {
            program: Mutex::new(program),
            out: Arc::new(InOrder::new(input.clone(), &what)),
            input,
        })
    }
}

impl Target for ProgramTarget {
    fn begin(&self, devices: u32) {
        self.out.begin(devices);
    }
    fn sink(&self) -> Box<dyn Sink + Send> {
        self.out.sink()
    }
    fn device_done(&self, failed: bool) {
        self.out.device_done(failed);
    }
    fn commit(self: Box<Self>, total: u64, _check: bool) -> Result<Option<String>> {
        let mut program = self.program.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.out.finish(total) {
            // Its input broke off: say why, with the program's own words if it quit.
            let words = program.words_suffix();
            program.kill();
            return Err(fail(e.kind(), format!("{}{words}", e.own_message())));
        }
        // The end of its input: now it may finish.
        self.input.close();
        program.verdict(
            Kind::Other,
            &format!(" after reading {}", human_bytes(total)),
        )?;
        Ok(None)
    }
}
