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

/// Log lines on standard error: errors only with `quiet`, else information too.
pub fn init_logging(quiet: bool) {
    let level = if quiet {
        tracing::Level::ERROR
    } else {
        tracing::Level::INFO
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        // A failed write (a standard error nobody reads any more) is dropped; the
        // default reports it with `eprintln!`, which panics on the same broken pipe.
        .log_internal_errors(false)
        .event_format(LineFormat)
        .try_init();
}

/// Prints the JSON summary (standard output, or standard error when standard output
/// carries data).
pub fn print_json(v: &serde_json::Value, data_on_stdout: bool) {
    let s = v.to_string();
    if data_on_stdout {
        super::eprint_line(format_args!("{s}"));
    } else {
        super::print_line(format_args!("{s}"));
    }
}
