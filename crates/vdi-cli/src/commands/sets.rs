//! `vdi sets`: the live sets on this machine, read-only (`vdi::observe`).

use std::io::IsTerminal;
use std::time::Duration;

use serde_json::json;
use vdi::observe::{DeviceStats, LiveSet, SetView, list, look};
use vdi_backup::Result;
use vdi_backup::units::human_bytes;

use crate::cli::SetsArgs;
use crate::output::print_json;

pub(super) fn run(a: &SetsArgs) -> Result<()> {
    loop {
        let live = list();
        let names: Vec<String> = match &a.name {
            Some(n) if live.contains(n) => vec![n.clone()],
            Some(n) if a.watch.is_none() => {
                return Err(vdi_backup::fail(
                    vdi_backup::Kind::Input,
                    format!(
                        "no virtual device set named '{n}' is live on this machine (vdi sets lists those that are)"
                    ),
                ));
            }
            Some(_) => Vec::new(),
            None => live,
        };
        let sets: Vec<LiveSet> = names.iter().map(|n| look(n)).collect();
        if a.output.json {
            print_json(
                &json!({ "command": "sets", "ok": true, "sets": sets.iter().map(set_json).collect::<Vec<_>>() }),
                false,
            );
        } else {
            let text = table(&sets, a.name.is_some());
            if a.watch.is_some() && std::io::stdout().is_terminal() {
                // Clear the screen and home the cursor, as watch(1) does.
                crate::print_line(format_args!("\x1b[H\x1b[2J{text}"));
            } else {
                crate::print_line(format_args!("{text}"));
            }
        }
        let Some(every) = a.watch else {
            return Ok(());
        };
        if sleep_or_interrupt(every) {
            return Ok(());
        }
    }
}

/// Sleeps `d`; true if a signal came meanwhile.
fn sleep_or_interrupt(d: Duration) -> bool {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if vdi_backup::cancel::interrupted() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - std::time::Instant::now()));
    }
    vdi_backup::cancel::interrupted()
}

fn share(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        (100.0 * part.as_secs_f64() / whole.as_secs_f64()).min(100.0)
    }
}

fn table(sets: &[LiveSet], named: bool) -> String {
    if sets.is_empty() {
        return "no virtual device set is live on this machine".into();
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{:<36} {:>6} {:>8} {:>8} {:>4} {:<11} {:>10}\n",
        "SET", "OWNER", "CLIENT", "ENGINE", "DEVS", "STATE", "BYTES"
    ));
    for s in sets {
        let owner = s.creator_uid.map_or("-".into(), |u| u.to_string());
        match &s.view {
            Ok(v) => {
                let bytes: u64 = v.devices.iter().map(|d| d.bytes).sum();
                out.push_str(&format!(
                    "{:<36} {:>6} {:>8} {:>8} {:>4} {:<11} {:>10}\n",
                    s.name,
                    owner,
                    v.client_pid,
                    v.server_pid.map_or("-".into(), |p| p.to_string()),
                    v.config.device_count,
                    v.state.name(),
                    human_bytes(bytes)
                ));
                if !v.devices.is_empty() {
                    out.push_str(&devices(v));
                }
            }
            Err(e) => {
                let pid = s.creator_pid.map_or("-".into(), |p| p.to_string());
                out.push_str(&format!(
                    "{:<36} {:>6} {:>8} {:>8} {:>4} {:<11} {:>10}\n",
                    s.name, owner, pid, "?", "?", "hidden", "?"
                ));
                if named {
                    out.push_str(&format!("  {e}\n"));
                }
            }
        }
    }
    out.trim_end().to_owned()
}

fn devices(v: &SetView) -> String {
    let mut out = format!(
        "  {:>4} {:<20} {:>10} {:>9} {:>4} {:>11} {:>11} {:<10}\n",
        "DEV", "NAME", "BYTES", "COMMANDS", "OUT", "CLIENT-WAIT", "ENGINE-WAIT", "BOTTLENECK"
    );
    for d in &v.devices {
        let name = d.name.clone().unwrap_or_else(|| "-".into());
        let name = fit(&name, 20);
        out.push_str(&format!(
            "  {:>4} {:<20} {:>10} {:>9} {:>4} {:>10.0}% {:>10.0}% {:<10}\n",
            d.index,
            name,
            human_bytes(d.bytes),
            d.commands,
            d.outstanding,
            share(d.client_waited, v.age),
            share(d.engine_waited, v.age),
            d.bottleneck()
        ));
    }
    out
}

/// `name` in at most `width` characters: a long one keeps its end (where device names
/// differ: `set`, `set#1`, `set#2`) behind an ellipsis.
fn fit(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

fn device_json(d: &DeviceStats, age: Duration) -> serde_json::Value {
    json!({
        "index": d.index,
        "name": d.name,
        "open": d.open,
        "closed": d.closed,
        "io_error": d.io_error,
        "owner_process": d.owner,
        "bytes": d.bytes,
        "commands": d.commands,
        "outstanding": d.outstanding,
        "client_wait_seconds": d.client_waited.as_secs_f64(),
        "engine_wait_seconds": d.engine_waited.as_secs_f64(),
        "client_wait_share": share(d.client_waited, age) / 100.0,
        "engine_wait_share": share(d.engine_waited, age) / 100.0,
        "bottleneck": d.bottleneck(),
    })
}

fn set_json(s: &LiveSet) -> serde_json::Value {
    match &s.view {
        Ok(v) => json!({
            "name": s.name,
            "owner_uid": s.creator_uid,
            "client_pid": v.client_pid,
            "engine_pid": v.server_pid,
            "state": v.state.name(),
            "abort_cause": match v.state {
                vdi::observe::SetState::Aborting(c) => Some(c.to_string()),
                _ => None,
            },
            "devices": v.config.device_count,
            "max_transfer_size": v.config.max_transfer_size,
            "age_seconds": v.age.as_secs_f64(),
            "bytes": v.devices.iter().map(|d| d.bytes).sum::<u64>(),
            "device_stats": v.devices.iter().map(|d| device_json(d, v.age)).collect::<Vec<_>>(),
        }),
        Err(e) => json!({
            "name": s.name,
            "owner_uid": s.creator_uid,
            "client_pid": s.creator_pid,
            "state": "hidden",
            "why": e,
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_device_names_keep_their_end() {
        assert_eq!(super::fit("short", 20), "short");
        assert_eq!(
            super::fit("vdi-backup-16865-a245c531#3", 20),
            "…up-16865-a245c531#3"
        );
        assert_eq!(
            super::fit("vdi-backup-16865-a245c531#3", 20)
                .chars()
                .count(),
            20
        );
    }
}
