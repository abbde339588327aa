//! Fault injection (`--inject`, for testing): make the engine or the backup application
//! fail, stall or abort at a chosen command, to show that every fault surfaces as a clear
//! error and never as a backup that claims completion or a restore that looks good.
//!
//! The grammar, as typed after `--inject` (repeatable):
//!
//! ```text
//! ROLE:fail@N=CODE     ROLE:delay@N=DURATION     ROLE:abort@N     ROLE:kill@N
//! ROLE     engine | client
//! N        1, 2, ...: the Nth command of the operation, counted over every device
//! CODE     a Win32 completion code: a number (1117) or a name (ERROR_IO_DEVICE, IO_DEVICE)
//! DURATION 200ms, 2s, or a number of milliseconds
//! ```
//!
//! What each fault does:
//!
//! | fault | engine (server role) | backup application (client role) |
//! |---|---|---|
//! | `fail@N=CODE` | sends the Nth command, then treats its completion as failed with CODE (as when its own I/O for that command fails) and gives up: it aborts the set | completes the Nth command it receives with CODE instead of doing it |
//! | `delay@N=D` | stalls D before sending the Nth command | waits D before doing the Nth command |
//! | `abort@N` | calls SignalAbort instead of sending the Nth command | calls SignalAbort instead of doing the Nth command |
//! | `kill@N` | kills its own process (SIGKILL) instead of sending the Nth command: the peer must notice the death | the same, instead of doing the Nth command |
//!
//! The engine counts the commands it sends (header, data and trailer Writes, Flush,
//! Complete; Reads and ClearError for a restore) in the order it sends them; the backup
//! application counts the commands it receives, in the order it receives them. With one
//! device both orders are the same.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Kind, fail};
use crate::util::{code_by_name, code_meaning, code_name, is_full_code};

/// Which role a fault acts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The engine (server role).
    Engine,
    /// The backup application (client role).
    Client,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Engine => "engine",
            Role::Client => "client",
        }
    }

    /// How messages name the role.
    pub fn who(self) -> &'static str {
        match self {
            Role::Engine => "the engine",
            Role::Client => "the backup application",
        }
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The command fails with this completion code.
    Fail(u32),
    /// The role stalls this long first.
    Delay(Duration),
    /// The role calls SignalAbort.
    Abort,
    /// The role's process kills itself (SIGKILL), as a crash would.
    Kill,
}

/// One `--inject` fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The role it acts in.
    pub role: Role,
    /// The command it acts at (1 = the first).
    pub nth: u64,
    /// What it does.
    pub action: Action,
}

/// The grammar, for error messages and help.
pub const GRAMMAR: &str = "ROLE:fail@N=CODE, ROLE:delay@N=DURATION, ROLE:abort@N or ROLE:kill@N, where ROLE is engine or client, N counts commands from 1, CODE is a Win32 completion code (1117 or ERROR_IO_DEVICE) and DURATION is like 200ms or 2s";

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = self.role.word();
        match self.action {
            Action::Fail(c) => write!(f, "{role}:fail@{}={c}", self.nth),
            Action::Delay(d) => write!(f, "{role}:delay@{}={}ms", self.nth, d.as_millis()),
            Action::Abort => write!(f, "{role}:abort@{}", self.nth),
            Action::Kill => write!(f, "{role}:kill@{}", self.nth),
        }
    }
}

/// An injected delay: `200ms`, `2s`, or a bare number of milliseconds; at most an hour.
fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = crate::units::parse_duration(s, Duration::from_millis(1))
        .map_err(|_| format!("'{s}' is not a duration (write 200ms, 2s or 200)"))?;
    if d > Duration::from_secs(3600) {
        return Err(format!("'{s}' is longer than an hour"));
    }
    Ok(d)
}

impl Fault {
    /// Parses one `--inject` value.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let bad = |why: String| format!("bad fault '{s}': {why}; write {GRAMMAR}");
        let (role, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("no ROLE: (engine: or client:)".into()))?;
        let role = match role.trim().to_ascii_lowercase().as_str() {
            "engine" | "server" => Role::Engine,
            "client" => Role::Client,
            r => return Err(bad(format!("unknown role '{r}'"))),
        };
        let (kind, rest) = rest
            .split_once('@')
            .ok_or_else(|| bad("no @N (the command number)".into()))?;
        let (n, value) = match rest.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        let nth: u64 = n
            .trim()
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| bad(format!("'{n}' is not a command number (1, 2, ...)")))?;
        let action = match (kind.trim().to_ascii_lowercase().as_str(), value) {
            ("fail", Some(v)) => {
                let v = v.trim();
                let code = v
                    .parse::<u32>()
                    .ok()
                    .or_else(|| code_by_name(v))
                    .ok_or_else(|| bad(format!("'{v}' is not a completion code")))?;
                if code == 0 {
                    return Err(bad("0 is ERROR_SUCCESS, not a failure".into()));
                }
                Action::Fail(code)
            }
            ("fail", None) => return Err(bad("fail needs =CODE (e.g. =1117)".into())),
            ("delay", Some(v)) => Action::Delay(parse_delay(v).map_err(bad)?),
            ("delay", None) => return Err(bad("delay needs =DURATION (e.g. =200ms)".into())),
            ("abort", None) => Action::Abort,
            ("abort", Some(_)) => return Err(bad("abort takes no =VALUE".into())),
            ("kill", None) => Action::Kill,
            ("kill", Some(_)) => return Err(bad("kill takes no =VALUE".into())),
            (k, _) => {
                return Err(bad(format!(
                    "unknown fault '{k}' (fail, delay, abort or kill)"
                )));
            }
        };
        Ok(Fault { role, nth, action })
    }

    /// The exit category of the operation this fault makes fail.
    pub fn kind(&self) -> Kind {
        match self.action {
            Action::Fail(c) if is_full_code(c) => Kind::DiskFull,
            _ => Kind::PeerFailed,
        }
    }

    /// The error an operation ends with when this fault fired at `what` (e.g. "a Write on
    /// device 0") during `op` ("backup" or "restore").
    pub fn error(&self, what: &str, op: &str) -> crate::Error {
        let who = self.role.who();
        let n = self.nth;
        let done = match self.action {
            Action::Fail(c) => match self.role {
                Role::Engine => format!(
                    "{who} treated command {n} ({what}) as failed with {} and gave up",
                    explained(c)
                ),
                Role::Client => format!(
                    "{who} completed command {n} ({what}) with {} instead of doing it",
                    explained(c)
                ),
            },
            Action::Abort => format!("{who} called SignalAbort at command {n} ({what})"),
            Action::Kill => format!("{who} was to kill itself at command {n} ({what})"),
            Action::Delay(_) => format!("{who} stalled at command {n} ({what})"),
        };
        let outcome = if op == "backup" {
            "the backup was aborted and is not marked complete"
        } else {
            "the restore was aborted and the target was not written"
        };
        fail(
            self.kind(),
            format!(
                "injected fault --inject {self}: {done}; {outcome}. This fault was asked for (for testing): run the command again without --inject"
            ),
        )
    }
}

/// `ERROR_IO_DEVICE (1117: an I/O error on the device)`.
fn explained(code: u32) -> String {
    format!("{} ({code}: {})", code_name_only(code), code_meaning(code))
}

fn code_name_only(code: u32) -> String {
    let n = code_name(code);
    n.split(' ').next().unwrap_or_default().to_owned()
}

/// Kills this process with SIGKILL (a `kill@N` fault): no destructor, no cleanup, as a
/// crash; the peer must notice.
pub fn kill_self() -> ! {
    if let Some(pid) = rustix::process::Pid::from_raw(std::process::id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    // Not reached (SIGKILL cannot be caught); abort rather than go on.
    std::process::abort()
}

/// What the injected faults say about one command.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hit {
    /// Stall this long first.
    pub delay: Duration,
    /// Then fail or abort (the first such fault at this command).
    pub fault: Option<Fault>,
}

/// Counts one role's commands and finds the faults that act at each.
#[derive(Debug)]
pub struct Injector {
    faults: Vec<Fault>,
    count: AtomicU64,
}

impl Injector {
    /// The injector of `role`: keeps only that role's faults.
    pub fn new(role: Role, faults: &[Fault]) -> Injector {
        Injector {
            faults: faults.iter().copied().filter(|f| f.role == role).collect(),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one more command; returns its number and what the faults do to it.
    pub fn next(&self) -> (u64, Hit) {
        if self.faults.is_empty() {
            return (0, Hit::default());
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut hit = Hit::default();
        for f in self.faults.iter().filter(|f| f.nth == n) {
            match f.action {
                Action::Delay(d) => hit.delay += d,
                _ => {
                    hit.fault.get_or_insert(*f);
                }
            }
        }
        (n, hit)
    }

    /// The faults that never acted (the operation had fewer commands), with the count.
    pub fn unfired(&self) -> (Vec<Fault>, u64) {
        let n = self.count.load(Ordering::Relaxed);
        (
            self.faults.iter().copied().filter(|f| f.nth > n).collect(),
            n,
        )
    }

    /// Logs a warning for each fault that never acted.
    pub fn warn_unfired(&self) {
        let (left, n) = self.unfired();
        for f in left {
            tracing::warn!(
                "injected fault --inject {f} never acted: {} handled only {n} command(s)",
                f.role.who()
            );
        }
    }
}

/// A usage error for faults given to a command of the other role.
pub fn only_role(faults: &[Fault], role: Role, cmd: &str) -> crate::Result<()> {
    match faults.iter().find(|f| f.role != role) {
        None => Ok(()),
        Some(f) => Err(fail(
            Kind::Usage,
            format!(
                "--inject {f} acts in {}, but `vdi {cmd}` runs {} only: give it to the other command",
                f.role.who(),
                role.who()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(
            Fault::parse("engine:fail@5=1117"),
            Ok(Fault {
                role: Role::Engine,
                nth: 5,
                action: Action::Fail(1117)
            })
        );
        assert_eq!(
            Fault::parse("client:fail@7=ERROR_DISK_FULL")
                .unwrap()
                .action,
            Action::Fail(112)
        );
        assert_eq!(
            Fault::parse("client:fail@7=io_device").unwrap().action,
            Action::Fail(1117)
        );
        assert_eq!(
            Fault::parse("client:delay@3=200ms").unwrap().action,
            Action::Delay(Duration::from_millis(200))
        );
        assert_eq!(
            Fault::parse("client:delay@3=2s").unwrap().action,
            Action::Delay(Duration::from_secs(2))
        );
        assert_eq!(
            Fault::parse("engine:abort@10").unwrap(),
            Fault {
                role: Role::Engine,
                nth: 10,
                action: Action::Abort
            }
        );
        for s in [
            "engine:fail@5=1117",
            "client:delay@3=200ms",
            "engine:abort@10",
        ] {
            assert_eq!(Fault::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "",
            "engine",
            "disk:fail@1=5",
            "engine:fail@0=5",
            "engine:fail@x=5",
            "engine:fail@3",
            "engine:fail@3=0",
            "engine:fail@3=NOPE",
            "engine:delay@3",
            "engine:delay@3=soon",
            "engine:abort@3=1",
            "engine:explode@3",
        ] {
            let e = Fault::parse(bad).unwrap_err();
            assert!(e.contains("ROLE:fail@N=CODE"), "{bad}: {e}");
        }
    }

    #[test]
    fn injector_counts_and_matches() {
        let faults = [
            Fault::parse("engine:delay@2=5ms").unwrap(),
            Fault::parse("engine:fail@2=23").unwrap(),
            Fault::parse("client:abort@1").unwrap(),
            Fault::parse("engine:abort@9").unwrap(),
        ];
        let inj = Injector::new(Role::Engine, &faults);
        assert!(inj.next().1.fault.is_none());
        let (n, hit) = inj.next();
        assert_eq!(n, 2);
        assert_eq!(hit.delay, Duration::from_millis(5));
        assert_eq!(hit.fault.unwrap().action, Action::Fail(23));
        let (left, n) = inj.unfired();
        assert_eq!((left.len(), n), (1, 2));
        assert!(only_role(&faults, Role::Engine, "engine backup").is_err());
        assert!(only_role(&faults[..2], Role::Engine, "engine backup").is_ok());
    }
}
