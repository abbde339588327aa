//! The minimal backup application written async (feature `tokio`): creates a set, starts
//! the minimal engine (the `minimal_server` example next to this program), and serves its
//! device from a tokio runtime: one task fetches commands, and each Write is checked and
//! completed by a task of its own, in whatever order those tasks end.
//!
//! ```text
//! cargo build -p vdi --features tokio --examples && cargo run -p vdi --features tokio --example async_client
//! ```

use std::time::Instant;

use vdi::async_client::AsyncClientSet;
use vdi::{CommandCode, ErrorCode, Timeout, VdConfig, completion};

fn main() {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("async_client: cannot start a tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("async_client: {e}");
        std::process::exit(1);
    }
}

/// What one Write's task found.
struct Checked {
    bytes: u64,
    intact: bool,
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("vdi-async-example-{}", std::process::id());
    let set = AsyncClientSet::create(&name, &VdConfig::with_devices(1))?;
    println!("async_client: created virtual device set '{name}'");

    let engine = std::env::current_exe()?.with_file_name("minimal_server");
    let mut child = std::process::Command::new(&engine)
        .arg(&name)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e} (build it with `cargo build -p vdi --examples`)",
                engine.display()
            )
        })?;

    let start = Instant::now();
    let cfg = set.get_configuration(Timeout::from_millis(30_000)).await?;
    println!(
        "async_client: engine configured the set: maxTransferSize {}",
        cfg.max_transfer_size
    );
    let dev = set.open_device(&name).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut offset = 0u64;
    loop {
        let cmd = match dev.get_command(Timeout::from_millis(30_000)).await {
            Ok(cmd) => cmd,
            // Returned once the engine closed the device and every task below completed
            // its command.
            Err(e) if e.code() == ErrorCode::Close => break,
            Err(e) => return Err(e.into()),
        };
        let at = offset;
        if cmd.code() == CommandCode::WRITE {
            offset += u64::from(cmd.size());
        }
        // The command moves into the task, which reads the lent buffer in place and
        // completes it there.
        tasks.spawn(async move {
            match cmd.code() {
                CommandCode::WRITE => {
                    let data = cmd.buffer().unwrap_or(&[]);
                    let intact = data
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == ((at as usize + i) % 251) as u8);
                    let n = data.len() as u32;
                    cmd.complete(completion::ERROR_SUCCESS, n, 0)?;
                    Ok(Checked {
                        bytes: u64::from(n),
                        intact,
                    })
                }
                CommandCode::FLUSH | CommandCode::CLEAR_ERROR | CommandCode::COMPLETE => {
                    cmd.complete_ok()?;
                    Ok(Checked {
                        bytes: 0,
                        intact: true,
                    })
                }
                _ => {
                    cmd.complete(completion::ERROR_NOT_SUPPORTED, 0, 0)?;
                    Ok::<_, vdi::VdError>(Checked {
                        bytes: 0,
                        intact: true,
                    })
                }
            }
        });
    }
    let (mut stored, mut intact) = (0u64, true);
    while let Some(done) = tasks.join_next().await {
        let c = done??;
        stored += c.bytes;
        intact &= c.intact;
    }
    set.close()?;
    let elapsed = start.elapsed();
    let status = child.wait()?;
    println!(
        "async_client: received {stored} bytes in {:.1} ms; data {}; engine {}",
        elapsed.as_secs_f64() * 1e3,
        if intact { "intact" } else { "CORRUPT" },
        if status.success() {
            "succeeded"
        } else {
            "FAILED"
        }
    );
    if !intact || !status.success() || stored != 16 << 20 {
        return Err("the backup did not complete correctly".into());
    }
    println!("async_client: ok");
    Ok(())
}
