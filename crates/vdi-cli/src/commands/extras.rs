//! `vdi completions SHELL`, `vdi man` (both from the clap definitions) and `vdi config`.

use clap::CommandFactory;
use serde_json::json;
use vdi_backup::Result;
use vdi_backup::error::{Context, Kind, fail};

use crate::cli::{Cli, ConfigArgs, Shell};
use crate::config;
use crate::output::print_json;

/// The command line as clap knows it, with the configuration's defaults.
fn command() -> clap::Command {
    config::apply_defaults(Cli::command())
}

pub(super) fn completions(shell: Shell) -> Result<()> {
    let sh = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(sh, &mut command(), "vdi", &mut out);
    write_stdout(&out)
}

pub(super) fn man(command_name: Option<&str>) -> Result<()> {
    let mut out = Vec::new();
    let cmd = command();
    let page = match command_name {
        None => cmd,
        Some(n) => {
            let sub = cmd
                .find_subcommand(n)
                .filter(|s| !s.is_hide_set())
                .cloned()
                .ok_or_else(|| {
                    fail(
                        Kind::Usage,
                        format!("vdi has no command {n}: vdi --help lists them"),
                    )
                })?;
            let name = format!("vdi-{}", sub.get_name());
            sub.name(name)
        }
    };
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("rendering the manual page")?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        // A reader that stopped early (| head) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(fail(
            Kind::Other,
            format!("writing to standard output: {e}"),
        )),
    }
}

pub(super) fn config(a: &ConfigArgs) -> Result<()> {
    let loaded =
        config::load(&std::env::args_os().collect::<Vec<_>>()).map_err(|e| fail(Kind::Usage, e))?;
    let repo = config::repository_with_source(None);
    let c = &loaded.config;
    if a.output.json {
        print_json(
            &json!({
                "command": "config",
                "ok": true,
                "file": loaded.file.as_ref().map(|f| f.display().to_string()),
                "looked_for": loaded.looked_for.as_ref().map(|f| f.display().to_string()),
                "repository": repo.as_ref().map(|r| r.0.clone()),
                "repository_from": repo.as_ref().map(|r| r.1.clone()),
                "store_profile": config::store_profile(),
                "backup": c.backup,
                "expire": c.expire,
            }),
            false,
        );
        return Ok(());
    }
    let line = |k: &str, v: String| crate::print_line(format_args!("{k:<14} {v}"));
    line(
        "file",
        match (&loaded.file, &loaded.looked_for) {
            (Some(f), _) => f.display().to_string(),
            (None, Some(l)) => format!("none ({} does not exist)", l.display()),
            (None, None) => "none".into(),
        },
    );
    line(
        "repository",
        repo.map_or_else(|| "-".into(), |(r, from)| format!("{r} (from {from})")),
    );
    line(
        "store profile",
        config::store_profile().unwrap_or_else(|| "-".into()),
    );
    let b = &c.backup;
    line(
        "backup",
        format!(
            "devices {}, compress {}, mode {}, stall timeout {}",
            b.devices
                .map_or_else(|| "1 (vdi's default)".into(), |d| d.to_string()),
            b.compress
                .clone()
                .unwrap_or_else(|| "none (vdi's default)".into()),
            b.mode
                .clone()
                .unwrap_or_else(|| "600 (vdi's default)".into()),
            b.stall_timeout
                .clone()
                .unwrap_or_else(|| "5m (vdi's default)".into()),
        ),
    );
    let e = &c.expire;
    let rules: Vec<String> = [
        e.keep_last.map(|n| format!("--keep-last {n}")),
        e.keep_daily.map(|n| format!("--keep-daily {n}")),
        e.keep_within_text
            .clone()
            .map(|d| format!("--keep-within {d}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    line(
        "expire",
        if rules.is_empty() {
            "- (vdi expire needs a rule)".into()
        } else {
            rules.join(" ")
        },
    );
    Ok(())
}
