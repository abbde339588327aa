//! `vdi-peer`: the other process of the cross-process tests.
//!
//! ```text
//! vdi-peer server    set=NAME devices=N transfer=B depth=D total=B seed=S restore=BOOL [pause=POINT]
//! vdi-peer client    (same keys)     creates the set, serves every device
//! vdi-peer client which=0,2 (same keys)   creates the set, serves only those devices:
//!                                    prints CONFIGURED once secondaries may attach and
//!                                    SERVED when its devices are done, then closes the
//!                                    set after a line (`go`) or EOF on standard input
//! vdi-peer secondary which=1,2 (same keys)   opens the set in secondary, serves those devices
//! vdi-peer open-server set=NAME      tries to open the set as server and reports
//! vdi-peer open-secondary set=NAME   tries to open the set as a secondary client and reports
//! vdi-peer handles set=NAME          maps buffer handles given on stdin and checks/fills them
//! vdi-peer ioerror-server set=NAME   the server half of the IO-ERROR / ClearError script
//! vdi-peer commands-server set=NAME  sends every command code 1..19 and an unknown one
//! vdi-peer vanish-server set=NAME    sends one Write, closes the device, exits without Close
//! vdi-peer gap-server set=NAME       one Write of 64 KiB per `write` line on stdin (prints
//!                                    `CALLBACK code` when it completes), `close` ends it
//! vdi-peer crash-server|crash-client|crash-secondary KEY=VALUE...
//!                                    the crash campaign's roles (`vdi_tests::campaign_peer`)
//! ```
//! It prints progress lines (`OPENED`, `CREATED`, `PAUSED point`, `DONE ...`,
//! `ERROR code message`) that the tests wait for. At `pause=POINT` it stops there until
//! it is killed.

use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vdi::{
    ClientSet, CommandCode, ErrorCode, ServerCommand, ServerSet, Timeout, completion, features,
};
use vdi_tests::say::{done, fail, line as say};
use vdi_tests::{Plan, device_name, pattern, run_client, run_server};

fn pause(point: &str) {
    say(&format!("PAUSED {point}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        eprintln!("usage: vdi-peer MODE key=value...");
        std::process::exit(64);
    };
    if mode.starts_with("crash-") {
        std::process::exit(vdi_tests::campaign_peer::main(mode, &args[1..]));
    }
    let plan = match Plan::from_args(&args[1..]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vdi-peer: {e}");
            std::process::exit(64);
        }
    };
    let code = match mode.as_str() {
        "server" => match ServerSet::open(&plan.set) {
            Ok(set) => {
                say("OPENED");
                match run_server(&set, &plan, &pause) {
                    Ok(r) => done(&r),
                    Err(e) => fail(&e),
                }
            }
            Err(e) => fail(&e),
        },
        "client" => match ClientSet::create(&plan.set, &vdi_tests::client_config(&plan)) {
            Ok(set) => {
                say("CREATED");
                let r = match &plan.which {
                    None => {
                        let all: Vec<u32> = (0..plan.devices).collect();
                        run_client(&set, &plan, &all, &pause)
                    }
                    Some(mine) => {
                        // Secondaries are admitted only after the primary's
                        // GetConfiguration: say when that is, for the test to start one.
                        let r = set
                            .get_configuration(Timeout::from_millis(30_000))
                            .and_then(|_| {
                                say("CONFIGURED");
                                run_client(&set, &plan, mine, &pause)
                            });
                        // Closing the set ends the secondary's devices too (and with one
                        // still open is VD_E_OPEN): wait until the test says the
                        // secondary is gone (`go`, or standard input closed).
                        say("SERVED");
                        let mut line = String::new();
                        let _ = std::io::stdin().read_line(&mut line);
                        r
                    }
                };
                let c = set.close();
                match (r, c) {
                    (Ok(r), Ok(())) => done(&r),
                    (Err(e), _) | (_, Err(e)) => fail(&e),
                }
            }
            Err(e) => fail(&e),
        },
        "secondary" => {
            let which = plan.which.clone().unwrap_or_default();
            match ClientSet::open_in_secondary(&plan.set) {
                Ok(set) => {
                    say("OPENED");
                    let r = run_client(&set, &plan, &which, &pause);
                    let c = set.close();
                    match (r, c) {
                        (Ok(r), Ok(())) => done(&r),
                        (Err(e), _) | (_, Err(e)) => fail(&e),
                    }
                }
                Err(e) => fail(&e),
            }
        }
        "open-server" => report_open(ServerSet::open(&plan.set).map(|s| {
            let _ = s.close();
        })),
        "open-secondary" => report_open(ClientSet::open_in_secondary(&plan.set).map(|s| {
            let _ = s.close();
        })),
        "handles" => handles(&plan),
        "ioerror-server" => ioerror_server(&plan),
        "commands-server" => commands_server(&plan),
        "vanish-server" => vanish_server(&plan),
        "gap-server" => gap_server(&plan),
        other => {
            eprintln!("vdi-peer: unknown mode {other}");
            64
        }
    };
    std::process::exit(code);
}

fn report_open(r: Result<(), vdi::VdError>) -> i32 {
    match r {
        Ok(()) => {
            say("OPENED");
            0
        }
        Err(e) => {
            say(&format!("REFUSED {} {}", e.code().name(), e));
            3
        }
    }
}

/// Serves buffer handles from stdin: `check|fill HANDLE LEN SEED DEVICE OFFSET`.
fn handles(plan: &Plan) -> i32 {
    let set = match ClientSet::open_in_secondary(&plan.set) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    say("READY");
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"quit") {
            break;
        }
        let parse = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let (handle, len, seed, device, offset) = (
            parse(1) as u32,
            parse(2) as usize,
            parse(3),
            parse(4) as u32,
            parse(5),
        );
        match set.map_buffer_handle(handle) {
            Ok(m) => {
                let ok = match f.first() {
                    // SAFETY: the primary holds the command that lent this buffer and waits
                    // for our answer before completing it; nobody else touches the bytes.
                    Some(&"check") => unsafe { m.as_slice(len) }
                        .is_some_and(|b| pattern::mismatch(seed, device, offset, b).is_none()),
                    // SAFETY: as above.
                    Some(&"fill") => unsafe { m.as_mut_slice(len) }
                        .map(|b| pattern::fill(seed, device, offset, b))
                        .is_some(),
                    _ => false,
                };
                say(if ok { "OK" } else { "BAD" });
            }
            Err(e) => say(&format!("ERROR {} {}", e.code().name(), e)),
        }
    }
    match set.close() {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

/// The server half of the IO-ERROR script (see tests/io_error.rs for the client half).
fn ioerror_server(plan: &Plan) -> i32 {
    let run = || -> Result<String, vdi::VdError> {
        let set = ServerSet::open(&plan.set)?;
        set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 10_000)?;
        set.request_buffers(65536, 0, 8)?;
        set.end_configuration()?;
        let codes: Arc<Mutex<Vec<(u32, u32)>>> = Arc::new(Mutex::new(Vec::new()));
        let wait_for = |n: usize| {
            let t = Instant::now();
            while codes.lock().map(|c| c.len()).unwrap_or(0) < n
                && t.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let send_write = |dev: &vdi::ServerDevice, k: u32| -> Result<(), vdi::VdError> {
            let mut b = set.allocate_buffer(65536, 0)?;
            pattern::fill(plan.seed, 0, u64::from(k) * 65536, b.as_mut_slice());
            let c = codes.clone();
            dev.send_command(ServerCommand::write(b, 65536), move |done| {
                c.lock().map(|mut v| v.push((k, done.completion_code))).ok();
            })
        };
        let mut line = String::new();
        std::thread::scope(|s| -> Result<(), vdi::VdError> {
            let agent = s.spawn(|| set.execute_completion_agent());
            let dev = set.open_device(&device_name(&plan.set, 0))?;
            for k in 0..5 {
                send_write(&dev, k)?;
            }
            say("SENT5");
            wait_for(4); // W0 (error) and W2..W4 (flushed)
            let w5 = send_write(&dev, 5);
            let w5_code = w5.as_ref().err().map(|e| e.code());
            let c = codes.clone();
            dev.send_command(ServerCommand::new(CommandCode::CLEAR_ERROR), move |done| {
                c.lock()
                    .map(|mut v| v.push((100, done.completion_code)))
                    .ok();
            })?;
            say("CLEAR_SENT");
            wait_for(7); // + W5 (sync), W1, ClearError
            send_write(&dev, 6)?;
            wait_for(8);
            let c = codes.clone();
            dev.send_command(ServerCommand::new(CommandCode::FLUSH), move |done| {
                c.lock()
                    .map(|mut v| v.push((200, done.completion_code)))
                    .ok();
            })?;
            wait_for(9);
            dev.close_device()?;
            agent.join().map_err(|_| {
                vdi::VdError::new(
                    ErrorCode::Unexpected,
                    vdi::Reason::InvalidArgument("agent panicked".into()),
                )
            })??;
            let mut v = codes.lock().map(|v| v.clone()).unwrap_or_default();
            v.sort();
            line = format!(
                "RESULT w5={} {}",
                w5_code.map(|c| c.name()).unwrap_or("ok"),
                v.iter()
                    .map(|(k, c)| format!("{k}:{c}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(())
        })?;
        set.close()?;
        Ok(line)
    };
    match run() {
        Ok(l) => {
            say(&l);
            let want = format!(
                "RESULT w5=VD_E_IO_ERROR 0:{} 1:0 2:{io} 3:{io} 4:{io} 5:{io} 6:0 100:0 200:0",
                completion::ERROR_DISK_FULL,
                io = completion::ERROR_IO_DEVICE
            );
            i32::from(l != want)
        }
        Err(e) => fail(&e),
    }
}

/// Sends every command code 1..=19 (Read and Write with a buffer, each with its own size
/// and position), then the unknown code 77, then ClearError; prints what came back.
fn commands_server(plan: &Plan) -> i32 {
    let run = || -> Result<String, vdi::VdError> {
        let set = ServerSet::open(&plan.set)?;
        let asked = set.get_configuration()?;
        let mut feats = features::WRITE_MEDIA;
        if asked.features & features::REQUEST_COMPLETE != 0 {
            feats |= features::COMPLETE_ENABLED;
        }
        set.begin_configuration(feats, 4096, 0, 65536, 10_000)?;
        set.request_buffers(65536, 0, 2)?;
        set.end_configuration()?;
        let out: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let wait_for = |n: usize| {
            let t = Instant::now();
            while out.lock().map(|c| c.len()).unwrap_or(0) < n
                && t.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        std::thread::scope(|s| -> Result<(), vdi::VdError> {
            let agent = s.spawn(|| set.execute_completion_agent());
            let dev = set.open_device(&device_name(&plan.set, 0))?;
            let mut codes: Vec<u32> = (1..=19).filter(|&c| c != 3).collect();
            codes.push(77);
            codes.push(3);
            for (k, &c) in codes.iter().enumerate() {
                let code = CommandCode::from(c);
                let size = c * 3;
                let position = u64::from(c) * 1000 + 7;
                let cmd = if code.carries_data() {
                    let mut b = set.allocate_buffer(65536, 0)?;
                    b.as_mut_slice()[..size as usize].fill(c as u8);
                    ServerCommand::with_buffer(code, b, size).with_position(position)
                } else {
                    ServerCommand::new(code)
                        .with_size(size)
                        .with_position(position)
                };
                let o = out.clone();
                dev.send_command(cmd, move |d| {
                    let back = d.buffer.as_ref().map(|b| b.as_slice()[0]).unwrap_or(0);
                    o.lock()
                        .map(|mut v| {
                            v.push(format!(
                                "{}:{}:{}:{}:{}",
                                d.code.value(),
                                d.completion_code,
                                d.bytes_transferred,
                                d.out_position,
                                back
                            ))
                        })
                        .ok();
                })?;
                // One at a time, so the unknown command's error does not flush the rest.
                wait_for(k + 1);
            }
            dev.close_device()?;
            agent.join().map_err(|_| {
                vdi::VdError::new(
                    ErrorCode::Unexpected,
                    vdi::Reason::InvalidArgument("agent panicked".into()),
                )
            })??;
            Ok(())
        })?;
        set.close()?;
        let v = out.lock().map(|v| v.join(" ")).unwrap_or_default();
        Ok(format!("RESULT {v}"))
    };
    match run() {
        Ok(l) => {
            say(&l);
            0
        }
        Err(e) => fail(&e),
    }
}

/// Sends one Write, closes the device and exits at once: no agent, no Close, no goodbye.
fn vanish_server(plan: &Plan) -> i32 {
    let run = || -> Result<(), vdi::VdError> {
        let set = ServerSet::open(&plan.set)?;
        set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 10_000)?;
        set.request_buffers(65536, 0, 1)?;
        set.end_configuration()?;
        let dev = set.open_device(&device_name(&plan.set, 0))?;
        let b = set.allocate_buffer(65536, 0)?;
        dev.send_command(ServerCommand::write(b, 65536), |_| {})?;
        dev.close_device()?;
        say("VANISHING");
        std::process::exit(0);
    };
    match run() {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

/// A server whose pauses between commands the test chooses: one Write per `write` line on
/// stdin, its callback's code printed (`CALLBACK code`), `close` (or EOF) to end. The
/// completion agent is idle between commands for as long as the test waits.
fn gap_server(plan: &Plan) -> i32 {
    let run = || -> Result<(), vdi::VdError> {
        let set = ServerSet::open(&plan.set)?;
        set.begin_configuration(features::WRITE_MEDIA, 512, 0, 65536, 10_000)?;
        set.request_buffers(65536, 0, 1)?;
        set.end_configuration()?;
        std::thread::scope(|s| -> Result<(), vdi::VdError> {
            let agent = s.spawn(|| set.execute_completion_agent());
            let dev = set.open_device(&device_name(&plan.set, 0))?;
            say("READY");
            let mut offset = 0u64;
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if line.trim() != "write" {
                    break;
                }
                let mut b = set.allocate_buffer(65536, 0)?;
                pattern::fill(plan.seed, 0, offset, b.as_mut_slice());
                offset += 65536;
                let (tx, rx) = std::sync::mpsc::channel();
                let sent = dev.send_command(ServerCommand::write(b, 65536), move |c| {
                    // The buffer goes back first: the next `write` line allocates it again.
                    let code = c.completion_code;
                    drop(c);
                    let _ = tx.send(code);
                });
                let code = rx.recv().unwrap_or(u32::MAX);
                say(&format!("CALLBACK {code}"));
                sent?;
            }
            dev.close_device()?;
            agent.join().unwrap_or_else(|_| {
                Err(vdi::VdError::new(
                    ErrorCode::Unexpected,
                    vdi::Reason::InvalidArgument("the completion agent panicked".into()),
                ))
            })
        })?;
        set.close()?;
        say("DONE");
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}
