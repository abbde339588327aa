//! A minimal engine (server role): opens the set named on the command line, configures it
//! for a backup, writes 16 MiB of a known byte sequence through device 0 with four
//! commands in flight, and closes.
//!
//! ```text
//! minimal_server SET_NAME
//! ```

use std::sync::mpsc;

use vdi::{CommandCode, ServerCommand, ServerSet, features};

const TOTAL: usize = 16 << 20;
const CHUNK: u32 = 1 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("minimal_server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .ok_or("usage: minimal_server SET_NAME")?;
    let set = ServerSet::open(&name)?;
    set.begin_configuration(features::WRITE_MEDIA, 512, 0, CHUNK, 10_000)?;
    set.request_buffers(CHUNK, 0, 4)?;
    set.end_configuration()?;
    std::thread::scope(|s| -> Result<(), vdi::VdError> {
        let agent = s.spawn(|| set.execute_completion_agent());
        let dev = set.open_device(&name)?;
        // Each completion hands its buffer back through this channel.
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            tx.send(Some(set.allocate_buffer(CHUNK, 0)?)).ok();
        }
        let mut sent = 0;
        while sent < TOTAL {
            let Ok(Some(mut buf)) = rx.recv() else { break };
            for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
                *b = ((sent + i) % 251) as u8;
            }
            let tx = tx.clone();
            dev.send_command(ServerCommand::write(buf, CHUNK), move |done| {
                if !done.is_success() {
                    eprintln!(
                        "minimal_server: write failed with code {}",
                        done.completion_code
                    );
                }
                tx.send(done.buffer).ok();
            })?;
            sent += CHUNK as usize;
        }
        let (ftx, frx) = mpsc::channel();
        dev.send_command(ServerCommand::new(CommandCode::FLUSH), move |done| {
            ftx.send(done.is_success()).ok();
        })?;
        let flushed = frx.recv().unwrap_or(false);
        dev.close_device()?;
        agent.join().unwrap_or(Ok(()))?;
        if !flushed {
            eprintln!("minimal_server: the client failed the Flush");
        }
        Ok(())
    })?;
    set.close()?;
    println!("minimal_server: wrote {} MiB to set '{name}'", TOTAL >> 20);
    Ok(())
}
