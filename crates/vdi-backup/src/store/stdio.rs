//! `-`: a backup as one bare stream on standard output (no manifest: what the engine
//! wrote, compressed or not), and a restore from one on standard input.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Mutex;

use super::{Commit, Object, ObjectWriter, Properties, Store, StoreReader, StoreWriter, Tracker};
use crate::Result;
use crate::error::{Kind, fail};
use crate::format::manifest::BackupError;
use crate::source::{PolledStdin, stdout_file};

/// Standard output (backup) and standard input (restore).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdio;

impl Store for Stdio {
    fn describe(&self) -> String {
        "- (standard output)".into()
    }

    fn properties(&self) -> Properties {
        Properties {
            atomic_replace: false,
            keeps_manifest: false,
            max_streams: 1,
        }
    }

    fn begin(&self, _force: bool) -> Result<Box<dyn StoreWriter>> {
        Ok(Box::new(StdoutWriter {
            created: false,
            tracker: Tracker::default(),
        }))
    }

    fn open(&self) -> Result<Box<dyn StoreReader>, BackupError> {
        Ok(Box::new(StdinReader(Mutex::new(false))))
    }
}

#[derive(Debug)]
struct StdoutWriter {
    created: bool,
    tracker: Tracker,
}

#[derive(Debug)]
struct StdoutObject(File);

impl Write for StdoutObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ObjectWriter for StdoutObject {
    fn sync(&mut self) -> io::Result<()> {
        sync_stream(&self.0)
    }
    fn finish(&mut self) -> io::Result<()> {
        self.0.flush()?;
        sync_stream(&self.0)
    }
}

/// fsync where that means something: pipes, terminals and `/dev/full` cannot be synced;
/// their data is handed on.
fn sync_stream(f: &File) -> io::Result<()> {
    match f.sync_data() {
        Err(e) if matches!(e.raw_os_error(), Some(22) | Some(30)) => Ok(()),
        r => r,
    }
}

impl StoreWriter for StdoutWriter {
    fn where_(&self, _name: &str) -> String {
        "on standard output".into()
    }

    fn create(&mut self, name: &str) -> Result<Box<dyn ObjectWriter>> {
        if self.created {
            return Err(fail(
                Kind::Usage,
                "destination - (standard output) holds a single stream: use --devices 1",
            ));
        }
        self.created = true;
        let f = stdout_file().map_err(|e| fail(Kind::Usage, format!("destination -: {e}")))?;
        Ok(self.tracker.track(name, StdoutObject(f)))
    }

    fn commit(self: Box<Self>, _manifest: &[u8]) -> Result<Commit> {
        // The stream is the whole backup: no manifest goes with it.
        self.tracker.all_finished()?;
        Ok(Commit::default())
    }
}

/// Standard input, read once.
#[derive(Debug)]
struct StdinReader(Mutex<bool>);

impl StoreReader for StdinReader {
    fn place(&self) -> String {
        "standard input".into()
    }

    fn place_of(&self, _name: &str) -> String {
        "standard input".into()
    }

    fn read_manifest(&self) -> Result<Option<Vec<u8>>, BackupError> {
        Ok(None)
    }

    fn open(&self, _name: &str) -> Result<Object, String> {
        let mut taken = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *taken {
            return Err("cannot be read twice: standard input holds a single stream".into());
        }
        *taken = true;
        let r = PolledStdin::open().map_err(|e| format!("cannot be read: {e}"))?;
        Ok(Object {
            reader: Box::new(r),
            len: None,
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
}
