//! A minimal backup application (client role): creates a set, starts the minimal engine
//! (the `minimal_server` example next to this program), stores every byte the engine
//! writes, checks it, and reports.
//!
//! ```text
//! cargo build --examples && cargo run --example minimal_client
//! ```

use std::time::Instant;

use vdi::{ClientSet, CommandCode, ErrorCode, Timeout, VdConfig, completion};

fn main() {
    if let Err(e) = run() {
        eprintln!("minimal_client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("vdi-example-{}", std::process::id());
    let set = ClientSet::create(&name, &VdConfig::with_devices(1))?;
    println!("minimal_client: created virtual device set '{name}'");

    // The engine is a separate process, as a database server would be.
    let engine = std::env::current_exe()?.with_file_name("minimal_server");
    let mut child = std::process::Command::new(&engine)
        .arg(&name)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e} (build it with `cargo build --examples`)",
                engine.display()
            )
        })?;

    let start = Instant::now();
    let cfg = set.get_configuration(Timeout::from_millis(30_000))?;
    println!(
        "minimal_client: engine configured the set: blockSize {}, maxTransferSize {}, {} bytes of shared buffers",
        cfg.block_size, cfg.max_transfer_size, cfg.buffer_area_size
    );
    let dev = set.open_device(&name)?;
    let mut stored: Vec<u8> = Vec::new();
    loop {
        let cmd = match dev.get_command(Timeout::from_millis(30_000)) {
            Ok(cmd) => cmd,
            Err(e) if e.code() == ErrorCode::Close => break,
            Err(e) => return Err(e.into()),
        };
        match cmd.code() {
            CommandCode::WRITE => {
                let data = cmd.buffer().unwrap_or(&[]);
                stored.extend_from_slice(data);
                let n = data.len() as u32;
                cmd.complete(completion::ERROR_SUCCESS, n, 0)?;
            }
            CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
                cmd.complete_ok()?
            }
            _ => cmd.complete(completion::ERROR_NOT_SUPPORTED, 0, 0)?,
        }
    }
    set.close()?;
    let elapsed = start.elapsed();
    let status = child.wait()?;
    let intact = stored
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8);
    println!(
        "minimal_client: received {} bytes in {:.1} ms; data {}; engine {}",
        stored.len(),
        elapsed.as_secs_f64() * 1e3,
        if intact { "intact" } else { "CORRUPT" },
        if status.success() {
            "succeeded"
        } else {
            "FAILED"
        }
    );
    if !intact || !status.success() || stored.len() != 16 << 20 {
        return Err("the backup did not complete correctly".into());
    }
    println!("minimal_client: ok");
    Ok(())
}
