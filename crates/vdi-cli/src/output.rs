//! What the binary prints: log lines (`vdi: ...`), lines that never panic on a closed
//! pipe, and the `--json` summaries.

/// Log lines as `vdi: message` (`vdi: warning: ...` for warnings).
struct LineFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        write!(writer, "vdi: ")?;
        if level == tracing::Level::WARN {
            write!(writer, "warning: ")?;
        } else if level == tracing::Level::ERROR {
            write!(writer, "error: ")?;
        }
        // The phases it happened in (with -v: configure, stream, device, commit).
        if let Some(scope) = ctx.event_scope() {
            let names: Vec<&str> = scope.from_root().map(|s| s.name()).collect();
            if !names.is_empty() {
                write!(writer, "{}: ", names.join(":"))?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Writes a line on standard error, and never panics doing it (unlike `eprintln!`): an
/// engine's standard error is a pipe to the `vdi backup`/`vdi restore` that started it,
/// and once that process is killed every write fails with EPIPE (Rust programs ignore
/// SIGPIPE). A last word nobody can read is dropped; the exit code still tells the outcome.
pub fn eprint_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Writes a line on standard output, and never panics doing it (a reader that went away,
/// as in `vdi backup --json ... | true`).
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

/// Log lines on standard error: errors only with `quiet`, else information too; with
/// `-v` each phase's span (configure, stream, commit) as it closes, with its duration;
/// with `-vv` debugging detail. `RUST_LOG` (a level, or `target=level,...`) overrides.
pub fn init_logging(quiet: bool, verbose: u8) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::INFO,
        (false, 1) => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let spans = verbose > 0 || rust_log.is_some();
    let filter = rust_log.map_or_else(
        || {
            tracing_subscriber::filter::Targets::new()
                .with_default(level)
                // -v shows vdi's own phases, not every library's detail.
                .with_target("vdi_backup", level)
                // The HTTP stack of s3:// stores says every connection it pools.
                .with_target("hyper_util", tracing::Level::INFO)
                .with_target("reqwest", tracing::Level::INFO)
                .with_target("h2", tracing::Level::INFO)
                .with_target("rustls", tracing::Level::INFO)
                .with_target(
                    "vdi",
                    if verbose > 1 {
                        level
                    } else {
                        tracing::Level::INFO
                    },
                )
        },
        |v| parse_rust_log(&v),
    );
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // A failed write (a standard error nobody reads any more) is dropped; the
        // default reports it with `eprintln!`, which panics on the same broken pipe.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(if spans { FmtSpan::CLOSE } else { FmtSpan::NONE })
        .event_format(LineFormat);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

/// `RUST_LOG`: `LEVEL` or `TARGET=LEVEL` pairs separated by commas.
fn parse_rust_log(v: &str) -> tracing_subscriber::filter::Targets {
    let mut t = tracing_subscriber::filter::Targets::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, level)) => {
                if let Ok(l) = level.parse::<tracing::Level>() {
                    t = t.with_target(target.to_owned(), l);
                }
            }
            None => {
                if let Ok(l) = part.parse::<tracing::Level>() {
                    t = t.with_default(l);
                }
            }
        }
    }
    t
}

static JSON_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process printed its JSON summary already.
pub fn json_printed() -> bool {
    JSON_PRINTED.load(std::sync::atomic::Ordering::Acquire)
}

/// Prints the JSON summary (standard output, or standard error when standard output
/// carries data).
pub fn print_json(v: &serde_json::Value, data_on_stdout: bool) {
    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Release);
    let s = v.to_string();
    if data_on_stdout {
        super::eprint_line(format_args!("{s}"));
    } else {
        super::print_line(format_args!("{s}"));
    }
}

/// Refuses to write a binary stream to standard output when it is a terminal (as gzip
/// does): it would fill the screen with bytes and be lost. `example` shows the redirect.
pub fn refuse_binary_on_terminal(example: &str) -> vdi_backup::Result<()> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        return Err(vdi_backup::fail(
            vdi_backup::Kind::Usage,
            format!(
                "standard output is a terminal: vdi does not write a binary stream to it; redirect it to a file or a pipe ({example}), or name a directory instead of -"
            ),
        ));
    }
    Ok(())
}
