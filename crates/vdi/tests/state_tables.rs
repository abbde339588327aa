//! The reference's state tables as data: every call of each role in every state.
//!
//! Three tables, one row per cell:
//!
//! * the client table (reference §2.1: Configurable, Initializing, Active, Normally
//!   Terminated = the device got `VD_E_CLOSE`, Abort, and after `Close` = DNE);
//! * the server table (reference §2.2: Connected, Configurable, Initializing, Active,
//!   Normally Terminated = every device closed, Abnormally Terminated, after `Close`);
//! * the device-level cells of §2.4 (IO-ERROR, ClearError, a closed device, an aborted set).
//!
//! Where the reference is ambiguous, `DESIGN.md` §5 decides; each row names its source.
//!
//! For every representable cell a *driver* builds a fresh pair of sets in the row's state
//! (both roles live in this process, on several threads, but talk over a real socket and
//! real shared memory), a *dispatcher* makes the row's call, and the runner compares the
//! returned code, the state reached, and the completion code the command's callback got.
//! Cells the typed Rust API cannot express (a call on an object that cannot exist in that
//! state) are rows with an `Unrepresentable` reason and are printed, so that every cell of
//! the reference is accounted for (`every_cell_is_accounted_for`).
//!
//! A row marked with `bug` documents the value the reference asks for where the library
//! currently disagrees; the cell still asserts the reference value.
//!
//! Blocking calls use short finite time-outs, and every case runs under a hang guard, so a
//! bug shows as a failure, never as a hang. No assertion depends on how long anything took.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use vdi::{
    ClientDevice, ClientSet, Command, CommandCode, Completion, ErrorCode, ServerBuffer,
    ServerCommand, ServerDevice, ServerSet, ServerState, Timeout, VdConfig, VdError, completion,
    features,
};

// ---------------------------------------------------------------------------------------
// Codes, expectations, rows
// ---------------------------------------------------------------------------------------

/// Milliseconds a blocking call may wait (short and finite: a bug fails, never hangs).
const WAIT_MS: u32 = 2000;
/// How long a case may run before it is reported as hung (a guard, not a measurement).
const CASE_GUARD: Duration = Duration::from_secs(60);
/// How long to wait for a condition another thread brings about (a guard).
const SETTLE: Duration = Duration::from_secs(10);
/// Buffer size the peers configure and allocate.
const BUF: u32 = 64 * 1024;

fn wait() -> Timeout {
    Timeout::from_millis(WAIT_MS)
}

/// What a call returned: `NOERROR` or a `VD_E_*` code.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Code {
    NoError,
    Vd(ErrorCode),
}

impl Code {
    fn of<T>(r: &Result<T, VdError>) -> Code {
        match r {
            Ok(_) => Code::NoError,
            Err(e) => Code::Vd(e.code()),
        }
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::NoError => f.write_str("NOERROR"),
            Code::Vd(c) => f.write_str(c.name()),
        }
    }
}

const NOERROR: Code = Code::NoError;
const E_PROTOCOL: Code = Code::Vd(ErrorCode::Protocol);
const E_ABORT: Code = Code::Vd(ErrorCode::Abort);
const E_CLOSE: Code = Code::Vd(ErrorCode::Close);
const E_OPEN: Code = Code::Vd(ErrorCode::Open);
const E_TIMEOUT: Code = Code::Vd(ErrorCode::Timeout);
const E_IO_ERROR: Code = Code::Vd(ErrorCode::IoError);

const CB_SUCCESS: u32 = completion::ERROR_SUCCESS;
const CB_INVALID_HANDLE: u32 = completion::ERROR_INVALID_HANDLE;
const CB_ABORTED: u32 = completion::ERROR_OPERATION_ABORTED;
const CB_IO_DEVICE: u32 = completion::ERROR_IO_DEVICE;
const CB_EOF: u32 = completion::ERROR_HANDLE_EOF;

/// The expected outcome of one representable cell.
#[derive(Clone, Copy, Debug)]
struct Expect<S> {
    /// The code the call returns.
    code: Code,
    /// The state the set (or device) is in afterwards, where the table names one.
    then: Option<S>,
    /// The completion code the callback of the command the call concerns receives. When a
    /// `SendCommand` fails, the callback must have run synchronously on the sending thread.
    callback: Option<u32>,
    /// Device table: the completion code of a command that was queued (not fetched) when
    /// the device entered IO-ERROR.
    flushed: Option<u32>,
    /// Device table: what the client's next `GetCommand` returns.
    client_next: Option<Code>,
    /// Device table: whether the device is in IO-ERROR afterwards.
    io_error: Option<bool>,
    /// Whether the peer sees the set aborted afterwards.
    peer_aborted: bool,
}

fn ret<S>(code: Code) -> Expect<S> {
    Expect {
        code,
        then: None,
        callback: None,
        flushed: None,
        client_next: None,
        io_error: None,
        peer_aborted: false,
    }
}

impl<S> Expect<S> {
    fn to(mut self, state: S) -> Self {
        self.then = Some(state);
        self
    }
    fn cb(mut self, code: u32) -> Self {
        self.callback = Some(code);
        self
    }
    fn flushed(mut self, code: u32) -> Self {
        self.flushed = Some(code);
        self
    }
    fn next(mut self, code: Code) -> Self {
        self.client_next = Some(code);
        self
    }
    fn io_error(mut self, on: bool) -> Self {
        self.io_error = Some(on);
        self
    }
    fn peer_aborts(mut self) -> Self {
        self.peer_aborted = true;
        self
    }
}

impl<S: fmt::Debug> fmt::Display for Expect<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.code)?;
        if let Some(s) = &self.then {
            write!(f, " -> {s:?}")?;
        }
        if let Some(c) = self.callback {
            write!(f, ", callback {c}")?;
        }
        if let Some(c) = self.flushed {
            write!(f, ", queued command {c}")?;
        }
        if let Some(c) = self.client_next {
            write!(f, ", client next {c:?}")?;
        }
        if let Some(on) = self.io_error {
            write!(f, ", IO-ERROR {}", if on { "on" } else { "off" })?;
        }
        if self.peer_aborted {
            f.write_str(", peer sees abort")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Cell<S> {
    /// Make the call and check the outcome.
    Check(Expect<S>),
    /// The typed API cannot express this call in this state; the text says why.
    Unrepresentable(&'static str),
}

#[derive(Clone, Copy, Debug)]
struct Row<S, C> {
    state: S,
    call: C,
    cell: Cell<S>,
    /// Where the expected value comes from.
    source: &'static str,
    /// The library currently disagrees with the expected value (see the test report).
    bug: Option<&'static str>,
}

fn row<S, C>(state: S, call: C, expect: Expect<S>, source: &'static str) -> Row<S, C> {
    Row {
        state,
        call,
        cell: Cell::Check(expect),
        source,
        bug: None,
    }
}

fn unrep<S, C>(state: S, call: C, why: &'static str) -> Row<S, C> {
    Row {
        state,
        call,
        cell: Cell::Unrepresentable(why),
        source: "",
        bug: None,
    }
}

impl<S, C> Row<S, C> {
    /// Marks a row whose reference value the library does not meet yet (none today).
    #[allow(dead_code)]
    fn bug(mut self, what: &'static str) -> Self {
        self.bug = Some(what);
        self
    }
}

/// What a case saw: the code, and every other expectation that was not met.
struct Observed {
    code: Code,
    problems: Vec<String>,
}

impl Observed {
    fn new(code: Code) -> Observed {
        Observed {
            code,
            problems: Vec::new(),
        }
    }

    fn of<T>(r: &Result<T, VdError>) -> Observed {
        Observed::new(Code::of(r))
    }
}

// ---------------------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------------------

/// Runs every row of `table` in `state`, each on a fresh set, prints one line per cell and
/// fails with the list of cells whose outcome differs from the table.
fn run_state<S, C>(table: &[Row<S, C>], state: S, case: fn(S, C, Expect<S>) -> Observed)
where
    S: Copy + fmt::Debug + PartialEq + Send + 'static,
    C: Copy + fmt::Debug + Send + 'static,
{
    let mut failures = Vec::new();
    let mut checked = 0;
    for r in table.iter().filter(|r| r.state == state) {
        let label = format!("{:?} x {:?}", r.state, r.call);
        let e = match r.cell {
            Cell::Unrepresentable(why) => {
                println!("{label:<52} UNREPRESENTABLE: {why}");
                continue;
            }
            Cell::Check(e) => e,
        };
        checked += 1;
        let call = r.call;
        let problems = match guarded(&label, move || case(state, call, e)) {
            Ok(mut o) => {
                if o.code != e.code {
                    o.problems
                        .insert(0, format!("returned {:?}, expected {:?}", o.code, e.code));
                }
                o.problems
            }
            Err(msg) => vec![msg],
        };
        let bug = r
            .bug
            .map(|b| format!(" [known library bug: {b}]"))
            .unwrap_or_default();
        if problems.is_empty() {
            println!("{label:<52} ok       {e}   ({})", r.source);
            if let Some(b) = r.bug {
                println!("    note: marked as a known bug ({b}) but passes now; remove the mark");
            }
        } else {
            println!(
                "{label:<52} FAILED   expected {e} ({}){bug}: {}",
                r.source,
                problems.join("; ")
            );
            failures.push(format!(
                "{label}: expected {e} ({}){bug}: {}",
                r.source,
                problems.join("; ")
            ));
        }
    }
    assert!(checked > 0, "no checked rows for {state:?}");
    assert!(
        failures.is_empty(),
        "{} of {checked} cells in state {state:?} differ from the table:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Runs `f` on its own thread and returns its result, or a description of its panic, or
/// (if it has not finished after `CASE_GUARD`) reports a hang. Only in that last case is
/// the thread left behind: a hung call cannot be joined.
fn guarded<T: Send + 'static>(
    label: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(label.chars().take(60).collect())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("could not spawn the case thread: {e}"))?;
    match rx.recv_timeout(CASE_GUARD) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(RecvTimeoutError::Disconnected) => Err(match handle.join() {
            Err(p) => format!("panicked: {}", panic_text(p.as_ref())),
            Ok(()) => "the case ended without a result".to_owned(),
        }),
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "no result after {CASE_GUARD:?}: the case hangs (its thread is left behind)"
        )),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "a panic without a message".to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// A set name no other case (or test process) uses.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "vdi-states-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The name the server gives device 1.
fn dev1_name(set: &str) -> String {
    format!("{set}-d1")
}

/// The server's configuration steps: BeginConfiguration, RequestBuffers, EndConfiguration.
fn configure(server: &ServerSet) -> Result<(), VdError> {
    server.begin_configuration(features::WRITE_MEDIA, 512, 0, BUF, 1000)?;
    server.request_buffers(BUF, 0, 4)?;
    server.end_configuration()
}

fn flush() -> ServerCommand {
    ServerCommand::new(CommandCode::FLUSH)
}

/// Polls `cond` until it holds (true) or `SETTLE` has passed (false).
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// What a command's callback got, and on which thread it ran.
#[derive(Clone, Copy, Debug)]
struct Done {
    code: u32,
    thread: ThreadId,
}

/// A completion callback that reports to the returned receiver.
fn probe() -> (impl FnOnce(Completion) + Send + 'static, Receiver<Done>) {
    let (tx, rx) = mpsc::channel();
    let cb = move |c: Completion| {
        let _ = tx.send(Done {
            code: c.completion_code,
            thread: thread::current().id(),
        });
    };
    (cb, rx)
}

/// A failed `SendCommand` must already have called the callback, on the sending thread.
fn check_sync_callback(rx: &Receiver<Done>, want: u32, problems: &mut Vec<String>) {
    match rx.try_recv() {
        Ok(d) => {
            if d.code != want {
                problems.push(format!("callback got completion code {}, expected {want}", d.code));
            }
            if d.thread != thread::current().id() {
                problems.push("the callback of a failed send ran on another thread".to_owned());
            }
        }
        Err(_) => problems.push(
            "the callback had not run when SendCommand returned its error (it must run synchronously)"
                .to_owned(),
        ),
    }
}

/// The callback runs (on the completion agent) with `want`.
fn check_callback(rx: &Receiver<Done>, want: u32, what: &str, problems: &mut Vec<String>) {
    match rx.recv_timeout(Duration::from_millis(WAIT_MS.into())) {
        Ok(d) if d.code == want => {}
        Ok(d) => problems.push(format!(
            "{what}: callback got completion code {}, expected {want}",
            d.code
        )),
        Err(_) => problems.push(format!(
            "{what}: callback did not run within {WAIT_MS} ms (expected {want})"
        )),
    }
}

fn check_code<T>(what: &str, r: &Result<T, VdError>, want: Code, problems: &mut Vec<String>) {
    let got = Code::of(r);
    if got != want {
        let why = r
            .as_ref()
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        problems.push(format!("{what}: returned {got:?}{why}, expected {want:?}"));
    }
}

// ---------------------------------------------------------------------------------------
// Client table (reference §2.1)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CState {
    /// No set exists.
    Dne,
    /// After CreateEx (a server has attached but not configured the set).
    Configurable,
    /// After GetConfiguration returned (the server has opened both devices).
    Initializing,
    /// After OpenDevice (device 0 of two).
    Active,
    /// Device 0's GetCommand returned VD_E_CLOSE.
    NormallyTerminated,
    /// After the client's SignalAbort (with device 0 open).
    Abort,
    /// After Close (a normal close: DNE for this object).
    Closed,
}

impl CState {
    const ALL: [CState; 7] = [
        CState::Dne,
        CState::Configurable,
        CState::Initializing,
        CState::Active,
        CState::NormallyTerminated,
        CState::Abort,
        CState::Closed,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CCall {
    Create,
    GetConfiguration,
    /// OpenDevice of device 0 (the set's name).
    OpenDevice,
    /// The server queues a Flush (if it still can), then GetCommand.
    GetCommand,
    /// Variant of GetCommand in Active: the server has called CloseDevice.
    GetCommandAfterServerClose,
    /// Variant of GetCommand in Active: nothing queued, a 0 ms poll (§3.2).
    GetCommandPollEmpty,
    /// CompleteCommand of a command fetched while the device was Active.
    CompleteCommand,
    SignalAbort,
    Close,
}

impl CCall {
    /// The rows of the reference's table.
    const GRID: [CCall; 7] = [
        CCall::Create,
        CCall::GetConfiguration,
        CCall::OpenDevice,
        CCall::GetCommand,
        CCall::CompleteCommand,
        CCall::SignalAbort,
        CCall::Close,
    ];

    /// The reference row a variant belongs to.
    fn grid_call(self) -> CCall {
        match self {
            CCall::GetCommandAfterServerClose | CCall::GetCommandPollEmpty => CCall::GetCommand,
            c => c,
        }
    }
}

const NO_CLIENT_SET: &str = "no ClientSet exists before ClientSet::create (CreateEx) has succeeded; the object layer covers this column (tests/object_layer.rs: VD_E_PROTOCOL)";
const NO_CLIENT_DEVICE: &str = "a ClientDevice only comes from OpenDevice, which needs Initializing and makes the device Active";
const NO_COMMAND: &str = "a Command only comes from GetCommand on an open ClientDevice";
const CREATE_TWICE: &str = "ClientSet::create is a constructor: CreateEx on an object that already holds a set cannot be written (another set with the same name is a different case: VD_E_BUSY); the object layer covers it (tests/object_layer.rs: VD_E_PROTOCOL)";

fn client_table() -> Vec<Row<CState, CCall>> {
    use CCall as C;
    use CState as S;
    const T: &str = "§2.1";
    const DNE: &str = "§2.1 (DNE column)";
    vec![
        // DNE
        row(S::Dne, C::Create, ret(NOERROR).to(S::Configurable), T),
        unrep(S::Dne, C::GetConfiguration, NO_CLIENT_SET),
        unrep(S::Dne, C::OpenDevice, NO_CLIENT_SET),
        unrep(S::Dne, C::GetCommand, NO_CLIENT_DEVICE),
        unrep(S::Dne, C::CompleteCommand, NO_COMMAND),
        unrep(S::Dne, C::SignalAbort, NO_CLIENT_SET),
        unrep(S::Dne, C::Close, NO_CLIENT_SET),
        // Configurable
        unrep(S::Configurable, C::Create, CREATE_TWICE),
        row(
            S::Configurable,
            C::GetConfiguration,
            ret(NOERROR).to(S::Initializing),
            "§2.1 (the server configures the set while the call waits)",
        ),
        row(S::Configurable, C::OpenDevice, ret(E_PROTOCOL), T),
        unrep(S::Configurable, C::GetCommand, NO_CLIENT_DEVICE),
        unrep(S::Configurable, C::CompleteCommand, NO_COMMAND),
        row(
            S::Configurable,
            C::SignalAbort,
            ret(NOERROR).to(S::Abort),
            T,
        ),
        row(S::Configurable, C::Close, ret(NOERROR).to(S::Closed), T),
        // Initializing
        unrep(S::Initializing, C::Create, CREATE_TWICE),
        row(S::Initializing, C::GetConfiguration, ret(NOERROR), T),
        row(
            S::Initializing,
            C::OpenDevice,
            ret(NOERROR).to(S::Active),
            T,
        ),
        unrep(S::Initializing, C::GetCommand, NO_CLIENT_DEVICE),
        unrep(S::Initializing, C::CompleteCommand, NO_COMMAND),
        row(
            S::Initializing,
            C::SignalAbort,
            ret(NOERROR).to(S::Abort),
            T,
        ),
        row(S::Initializing, C::Close, ret(NOERROR).to(S::Closed), T),
        // Active
        unrep(S::Active, C::Create, CREATE_TWICE),
        row(S::Active, C::GetConfiguration, ret(NOERROR), T),
        row(
            S::Active,
            C::OpenDevice,
            ret(E_PROTOCOL),
            "§2.1 (inferred: re-opening an open device; device 1 is still free)",
        ),
        row(S::Active, C::GetCommand, ret(NOERROR), T),
        row(
            S::Active,
            C::GetCommandAfterServerClose,
            ret(E_CLOSE).to(S::NormallyTerminated),
            T,
        ),
        row(S::Active, C::GetCommandPollEmpty, ret(E_TIMEOUT), "§3.2"),
        row(
            S::Active,
            C::CompleteCommand,
            ret(NOERROR).cb(CB_SUCCESS),
            T,
        ),
        row(S::Active, C::SignalAbort, ret(NOERROR).to(S::Abort), T),
        row(
            S::Active,
            C::Close,
            ret(E_OPEN).to(S::Closed).peer_aborts(),
            "DESIGN §5: VD_E_OPEN, aborts, releases",
        ),
        // Normally Terminated
        unrep(S::NormallyTerminated, C::Create, CREATE_TWICE),
        row(S::NormallyTerminated, C::GetConfiguration, ret(NOERROR), T),
        row(S::NormallyTerminated, C::OpenDevice, ret(E_PROTOCOL), T),
        row(
            S::NormallyTerminated,
            C::GetCommand,
            ret(E_CLOSE),
            "DESIGN §5: VD_E_CLOSE again",
        ),
        unrep(
            S::NormallyTerminated,
            C::CompleteCommand,
            "GetCommand returns VD_E_CLOSE only once every fetched command is completed, so in Normally Terminated no Command exists to complete (the object layer answers VD_E_PROTOCOL there: tests/object_layer.rs)",
        ),
        row(
            S::NormallyTerminated,
            C::SignalAbort,
            ret(NOERROR).to(S::Abort),
            T,
        ),
        row(
            S::NormallyTerminated,
            C::Close,
            ret(NOERROR).to(S::Closed),
            T,
        ),
        // Abort
        unrep(S::Abort, C::Create, CREATE_TWICE),
        row(S::Abort, C::GetConfiguration, ret(E_ABORT), T),
        row(S::Abort, C::OpenDevice, ret(E_ABORT), T),
        row(S::Abort, C::GetCommand, ret(E_ABORT), T),
        row(
            S::Abort,
            C::CompleteCommand,
            ret(E_ABORT).cb(CB_ABORTED),
            "§2.1, §1.4",
        ),
        row(S::Abort, C::SignalAbort, ret(NOERROR).to(S::Abort), T),
        row(
            S::Abort,
            C::Close,
            ret(NOERROR).to(S::Closed),
            "§2.1, §3.1 (an aborted client closes without waiting for VD_E_CLOSE)",
        ),
        // After Close (DNE)
        row(
            S::Closed,
            C::Create,
            ret(NOERROR).to(S::Configurable),
            "§2.1 DNE column, §1.2 (the name can be used again after Close)",
        ),
        row(S::Closed, C::GetConfiguration, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::OpenDevice, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::GetCommand, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::CompleteCommand, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::SignalAbort, ret(E_PROTOCOL), DNE),
        row(
            S::Closed,
            C::Close,
            ret(E_PROTOCOL),
            "§2.1 DNE column, §3.1",
        ),
    ]
}

/// What a client case works with. The server is the peer.
#[derive(Clone, Copy)]
struct ClientCase<'a> {
    name: &'a str,
    client: Option<&'a ClientSet>,
    server: Option<&'a ServerSet>,
    /// The server's devices 0 and 1 (from Initializing on).
    sdevs: &'a [ServerDevice],
    /// The client's device 0 (from Active on).
    dev: Option<&'a ClientDevice>,
    /// The callback of the held command (when the driver fetched one).
    held_cb: Option<&'a Receiver<Done>>,
}

impl ClientCase<'_> {
    fn client(&self) -> &ClientSet {
        self.client.expect("driver: no ClientSet in this state")
    }
    fn dev(&self) -> &ClientDevice {
        self.dev.expect("driver: no ClientDevice in this state")
    }
}

/// Builds a fresh two-device set in `state` (client under test, server as the peer) and
/// runs `f` on it; with `hold`, device 0 fetched a Flush while Active and `f` gets it.
/// Afterwards both sides are closed and the completion agent has returned.
fn with_client_state<R>(
    state: CState,
    hold: bool,
    f: impl FnOnce(&ClientCase<'_>, Option<Command<'_>>) -> R,
) -> R {
    let name = unique("c");
    let base = ClientCase {
        name: &name,
        client: None,
        server: None,
        sdevs: &[],
        dev: None,
        held_cb: None,
    };
    if state == CState::Dne {
        return f(&base, None);
    }
    let client =
        ClientSet::create(&name, &VdConfig::with_devices(2)).expect("driver: client CreateEx");
    let server = ServerSet::open(&name).expect("driver: server Open");
    let case = ClientCase {
        client: Some(&client),
        server: Some(&server),
        ..base
    };
    let r = catch_unwind(AssertUnwindSafe(|| {
        if state == CState::Configurable {
            return f(&case, None);
        }
        configure(&server).expect("driver: server configuration");
        client
            .get_configuration(wait())
            .expect("driver: client GetConfiguration");
        thread::scope(|s| {
            let agent = s.spawn(|| server.execute_completion_agent());
            let r = catch_unwind(AssertUnwindSafe(|| {
                assert!(
                    wait_for(|| server.state() == ServerState::Active),
                    "driver: the completion agent did not start"
                );
                let sdevs = [
                    server
                        .open_device(&name)
                        .expect("driver: server OpenDevice 0"),
                    server
                        .open_device(&dev1_name(&name))
                        .expect("driver: server OpenDevice 1"),
                ];
                let case = ClientCase {
                    sdevs: &sdevs,
                    ..case
                };
                if state == CState::Initializing {
                    return f(&case, None);
                }
                let dev = client
                    .open_device(&name)
                    .expect("driver: client OpenDevice");
                let (cb, rx) = probe();
                let held = if hold {
                    sdevs[0]
                        .send_command(flush(), cb)
                        .expect("driver: server SendCommand");
                    Some(dev.get_command(wait()).expect("driver: client GetCommand"))
                } else {
                    None
                };
                match state {
                    // A command still held: VD_E_CLOSE waits for it, so Close the set with
                    // the device open (VD_E_OPEN, abort) to reach the after-Close state.
                    CState::Closed if held.is_some() => {
                        sdevs[0].close_device().expect("driver: server CloseDevice");
                        let got = client.close().err().map(|e| e.code());
                        assert_eq!(
                            got,
                            Some(ErrorCode::Open),
                            "driver: Close with a held command"
                        );
                    }
                    CState::NormallyTerminated | CState::Closed => {
                        sdevs[0].close_device().expect("driver: server CloseDevice");
                        let got = dev.get_command(wait()).err().map(|e| e.code());
                        assert_eq!(
                            got,
                            Some(ErrorCode::Close),
                            "driver: GetCommand after CloseDevice"
                        );
                        if state == CState::Closed {
                            client.close().expect("driver: client Close");
                        }
                    }
                    CState::Abort => client.signal_abort().expect("driver: client SignalAbort"),
                    _ => {}
                }
                let case = ClientCase {
                    dev: Some(&dev),
                    held_cb: held.as_ref().map(|_| &rx),
                    ..case
                };
                f(&case, held)
            }));
            // Closing the server aborts a set with open devices, which ends the agent.
            let _ = client.close();
            let _ = server.close();
            let _ = agent.join();
            r.unwrap_or_else(|p| resume_unwind(p))
        })
    }));
    let _ = client.close();
    let _ = server.close();
    r.unwrap_or_else(|p| resume_unwind(p))
}

fn client_case(state: CState, call: CCall, e: Expect<CState>) -> Observed {
    with_client_state(state, call == CCall::CompleteCommand, |case, held| {
        client_call(case, call, held, &e)
    })
}

fn client_call(
    case: &ClientCase<'_>,
    call: CCall,
    held: Option<Command<'_>>,
    e: &Expect<CState>,
) -> Observed {
    let mut o = match call {
        CCall::Create => {
            let r = ClientSet::create(case.name, &VdConfig::with_devices(2));
            let mut o = Observed::of(&r);
            if let (Ok(set), Some(want)) = (&r, e.then) {
                confirm_client(case, set, None, want, &mut o.problems);
            }
            if let Ok(set) = r {
                let _ = set.close();
            }
            return o;
        }
        CCall::GetConfiguration => {
            let client = case.client();
            let (r, peer) = thread::scope(|s| {
                // In Configurable the server configures the set while the client waits.
                let peer = case
                    .server
                    .filter(|srv| srv.state() == ServerState::Connected)
                    .map(|srv| s.spawn(move || configure(srv)));
                let r = client.get_configuration(wait());
                (r, peer.map(|p| p.join()))
            });
            let mut o = Observed::of(&r);
            if let Some(Ok(Err(err))) = &peer {
                o.problems
                    .push(format!("peer: server configuration failed: {err}"));
            }
            o
        }
        CCall::OpenDevice => {
            let r = case.client().open_device(case.name);
            let mut o = Observed::of(&r);
            if let (Ok(dev), Some(want)) = (&r, e.then) {
                confirm_client(case, case.client(), Some(dev), want, &mut o.problems);
            }
            return o;
        }
        CCall::GetCommand => {
            if let Some(sdev) = case.sdevs.first() {
                // Refused (and called back at once) where the server may not send.
                let _ = sdev.send_command(flush(), |_| {});
            }
            let r = case.dev().get_command(wait());
            let o = Observed::of(&r);
            if let Ok(cmd) = r {
                let _ = cmd.complete_ok();
            }
            o
        }
        CCall::GetCommandAfterServerClose => {
            let mut o = Observed::new(NOERROR);
            if let Err(err) = case.sdevs[0].close_device() {
                o.problems.push(format!("peer: CloseDevice failed: {err}"));
            }
            let r = case.dev().get_command(wait());
            o.code = Code::of(&r);
            o
        }
        CCall::GetCommandPollEmpty => Observed::of(&case.dev().get_command(Timeout::POLL)),
        CCall::CompleteCommand => {
            let Some(cmd) = held else {
                let mut o = Observed::new(NOERROR);
                o.problems.push("driver: no command was held".to_owned());
                return o;
            };
            let mut o = Observed::of(&cmd.complete_ok());
            if let (Some(want), Some(rx)) = (e.callback, case.held_cb) {
                check_callback(rx, want, "the completed command", &mut o.problems);
            }
            o
        }
        CCall::SignalAbort => Observed::of(&case.client().signal_abort()),
        CCall::Close => Observed::of(&case.client().close()),
    };
    if e.peer_aborted
        && let Some(srv) = case.server
        && srv.abort_cause().is_none()
    {
        o.problems
            .push("the server does not see the set aborted".to_owned());
    }
    if let Some(want) = e.then
        && o.code == e.code
    {
        confirm_client(case, case.client(), case.dev, want, &mut o.problems);
    }
    o
}

/// Checks, by what the client may do next, that `set` is in `want`. May change the state
/// (it runs last in a case).
fn confirm_client(
    case: &ClientCase<'_>,
    set: &ClientSet,
    dev: Option<&ClientDevice>,
    want: CState,
    problems: &mut Vec<String>,
) {
    let p = |what: &str| format!("state {want:?}: {what}");
    match want {
        CState::Configurable => {
            check_code(
                &p("GetConfiguration(0 ms) before the server configures"),
                &set.get_configuration(Timeout::POLL),
                E_TIMEOUT,
                problems,
            );
            check_code(
                &p("OpenDevice before GetConfiguration"),
                &set.open_device(set.name()),
                E_PROTOCOL,
                problems,
            );
        }
        CState::Initializing => {
            // The server opens device 0; the client may now open it.
            let server = case.server.expect("driver: no server");
            let sdev = server.open_device(case.name);
            check_code(&p("the peer's OpenDevice"), &sdev, NOERROR, problems);
            if sdev.is_ok() {
                check_code(
                    &p("OpenDevice"),
                    &set.open_device(case.name),
                    NOERROR,
                    problems,
                );
            }
        }
        CState::Active => {
            // The device serves commands.
            let Some(dev) = dev else {
                problems.push(p("no device to check"));
                return;
            };
            let (cb, rx) = probe();
            let sent = case.sdevs[0].send_command(flush(), cb);
            check_code(&p("the peer's SendCommand"), &sent, NOERROR, problems);
            if sent.is_ok() {
                match dev.get_command(wait()) {
                    Ok(cmd) => {
                        check_code(&p("CompleteCommand"), &cmd.complete_ok(), NOERROR, problems);
                        check_callback(&rx, CB_SUCCESS, &p("the Flush"), problems);
                    }
                    Err(err) => problems.push(p(&format!("GetCommand failed: {err}"))),
                }
            }
        }
        CState::NormallyTerminated => {
            let Some(dev) = dev else {
                problems.push(p("no device to check"));
                return;
            };
            check_code(
                &p("GetCommand again"),
                &dev.get_command(Timeout::POLL),
                E_CLOSE,
                problems,
            );
            check_code(
                &p("Close (no device open any more)"),
                &set.close(),
                NOERROR,
                problems,
            );
        }
        CState::Abort => {
            check_code(
                &p("GetConfiguration"),
                &set.get_configuration(Timeout::POLL),
                E_ABORT,
                problems,
            );
            if let Some(srv) = case.server
                && srv.abort_cause().is_none()
            {
                problems.push(p("the server does not see the abort"));
            }
        }
        CState::Closed | CState::Dne => {
            check_code(
                &p("GetConfiguration"),
                &set.get_configuration(Timeout::POLL),
                E_PROTOCOL,
                problems,
            );
            let again = ClientSet::create(set.name(), &VdConfig::with_devices(1));
            check_code(&p("CreateEx of the same name"), &again, NOERROR, problems);
            if let Ok(s) = again {
                let _ = s.close();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server table (reference §2.2)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SState {
    /// No server object exists (the client has created the set).
    Dne,
    /// After Open.
    Connected,
    /// After BeginConfiguration.
    Configurable,
    /// After EndConfiguration (no completion agent yet, no device open).
    Initializing,
    /// The agent runs, device 0 (of two) is open on both sides.
    Active,
    /// Both devices opened and closed; the agent has returned.
    NormallyTerminated,
    /// Active, then the server's SignalAbort.
    AbnormallyTerminated,
    /// Normally Terminated, then Close.
    Closed,
}

impl SState {
    const ALL: [SState; 8] = [
        SState::Dne,
        SState::Connected,
        SState::Configurable,
        SState::Initializing,
        SState::Active,
        SState::NormallyTerminated,
        SState::AbnormallyTerminated,
        SState::Closed,
    ];

    fn server_state(self) -> Option<ServerState> {
        Some(match self {
            SState::Dne => return None,
            SState::Connected => ServerState::Connected,
            SState::Configurable => ServerState::Configurable,
            SState::Initializing => ServerState::Initializing,
            SState::Active => ServerState::Active,
            SState::NormallyTerminated => ServerState::NormallyTerminated,
            SState::AbnormallyTerminated => ServerState::AbnormallyTerminated,
            SState::Closed => ServerState::Closed,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SCall {
    Open,
    GetConfiguration,
    BeginConfiguration,
    RequestBuffers,
    QueryAvailableBuffers,
    EndConfiguration,
    /// OpenDevice of the next device (device 0 if none is open, else device 1).
    OpenDevice,
    ExecuteCompletionAgent,
    AllocateBuffer,
    /// FreeBuffer of a buffer allocated while that was allowed.
    FreeBuffer,
    /// SendCommand (Flush) on device 0.
    SendCommand,
    /// CloseDevice of device 0.
    CloseDevice,
    SignalAbort,
    Close,
}

impl SCall {
    const GRID: [SCall; 14] = [
        SCall::Open,
        SCall::GetConfiguration,
        SCall::BeginConfiguration,
        SCall::RequestBuffers,
        SCall::QueryAvailableBuffers,
        SCall::EndConfiguration,
        SCall::OpenDevice,
        SCall::ExecuteCompletionAgent,
        SCall::AllocateBuffer,
        SCall::FreeBuffer,
        SCall::SendCommand,
        SCall::CloseDevice,
        SCall::SignalAbort,
        SCall::Close,
    ];
}

const NO_SERVER_SET: &str = "no ServerSet exists before ServerSet::open (Open) has succeeded; the object layer covers this column (tests/object_layer.rs: VD_E_PROTOCOL)";
const OPEN_TWICE: &str = "ServerSet::open is a constructor: Open on an object that is already open (or closed: 'useless afterwards') cannot be written; the object layer covers it (tests/object_layer.rs: VD_E_PROTOCOL)";
const NO_BUFFER: &str =
    "a ServerBuffer only comes from AllocateBuffer, which needs Initializing or later";
const NO_SERVER_DEVICE: &str =
    "a ServerDevice only comes from OpenDevice, which needs Initializing and makes the set Active";

fn server_table() -> Vec<Row<SState, SCall>> {
    use SCall as C;
    use SState as S;
    const T: &str = "§2.2";
    const I: &str = "§2.2 (inferred)";
    const DNE: &str = "§2.2 (DNE column)";
    const BUF: &str = "§2.2 AllocateBuffer/FreeBuffer row (inferred cell; the buffer is returned all the same, as dropping it would)";
    vec![
        // DNE
        row(S::Dne, C::Open, ret(NOERROR).to(S::Connected), T),
        unrep(S::Dne, C::GetConfiguration, NO_SERVER_SET),
        unrep(S::Dne, C::BeginConfiguration, NO_SERVER_SET),
        unrep(S::Dne, C::RequestBuffers, NO_SERVER_SET),
        unrep(S::Dne, C::QueryAvailableBuffers, NO_SERVER_SET),
        unrep(S::Dne, C::EndConfiguration, NO_SERVER_SET),
        unrep(S::Dne, C::OpenDevice, NO_SERVER_SET),
        unrep(S::Dne, C::ExecuteCompletionAgent, NO_SERVER_SET),
        unrep(S::Dne, C::AllocateBuffer, NO_SERVER_SET),
        unrep(S::Dne, C::FreeBuffer, NO_SERVER_SET),
        unrep(S::Dne, C::SendCommand, NO_SERVER_SET),
        unrep(S::Dne, C::CloseDevice, NO_SERVER_SET),
        unrep(S::Dne, C::SignalAbort, NO_SERVER_SET),
        unrep(S::Dne, C::Close, NO_SERVER_SET),
        // Connected
        unrep(S::Connected, C::Open, OPEN_TWICE),
        row(S::Connected, C::GetConfiguration, ret(NOERROR), I),
        row(
            S::Connected,
            C::BeginConfiguration,
            ret(NOERROR).to(S::Configurable),
            "§2.2, §3.3",
        ),
        row(S::Connected, C::RequestBuffers, ret(E_PROTOCOL), I),
        row(S::Connected, C::QueryAvailableBuffers, ret(E_PROTOCOL), I),
        row(S::Connected, C::EndConfiguration, ret(E_PROTOCOL), I),
        row(S::Connected, C::OpenDevice, ret(E_PROTOCOL), I),
        row(S::Connected, C::ExecuteCompletionAgent, ret(E_PROTOCOL), I),
        row(S::Connected, C::AllocateBuffer, ret(E_PROTOCOL), I),
        unrep(S::Connected, C::FreeBuffer, NO_BUFFER),
        unrep(S::Connected, C::SendCommand, NO_SERVER_DEVICE),
        unrep(S::Connected, C::CloseDevice, NO_SERVER_DEVICE),
        row(
            S::Connected,
            C::SignalAbort,
            ret(NOERROR).to(S::AbnormallyTerminated),
            I,
        ),
        row(S::Connected, C::Close, ret(NOERROR).to(S::Closed), I),
        // Configurable
        unrep(S::Configurable, C::Open, OPEN_TWICE),
        row(S::Configurable, C::GetConfiguration, ret(NOERROR), T),
        row(S::Configurable, C::BeginConfiguration, ret(E_PROTOCOL), T),
        row(S::Configurable, C::RequestBuffers, ret(NOERROR), T),
        row(S::Configurable, C::QueryAvailableBuffers, ret(NOERROR), T),
        row(
            S::Configurable,
            C::EndConfiguration,
            ret(NOERROR).to(S::Initializing),
            T,
        ),
        row(S::Configurable, C::OpenDevice, ret(E_PROTOCOL), T),
        row(
            S::Configurable,
            C::ExecuteCompletionAgent,
            ret(E_PROTOCOL),
            T,
        ),
        row(S::Configurable, C::AllocateBuffer, ret(E_PROTOCOL), T),
        unrep(S::Configurable, C::FreeBuffer, NO_BUFFER),
        unrep(S::Configurable, C::SendCommand, NO_SERVER_DEVICE),
        unrep(S::Configurable, C::CloseDevice, NO_SERVER_DEVICE),
        row(
            S::Configurable,
            C::SignalAbort,
            ret(NOERROR).to(S::AbnormallyTerminated),
            T,
        ),
        row(S::Configurable, C::Close, ret(NOERROR).to(S::Closed), T),
        // Initializing
        unrep(S::Initializing, C::Open, OPEN_TWICE),
        row(S::Initializing, C::GetConfiguration, ret(NOERROR), T),
        row(S::Initializing, C::BeginConfiguration, ret(E_PROTOCOL), T),
        row(S::Initializing, C::RequestBuffers, ret(NOERROR), T),
        row(S::Initializing, C::QueryAvailableBuffers, ret(NOERROR), T),
        row(S::Initializing, C::EndConfiguration, ret(E_PROTOCOL), T),
        row(
            S::Initializing,
            C::OpenDevice,
            ret(NOERROR).to(S::Active),
            T,
        ),
        row(
            S::Initializing,
            C::ExecuteCompletionAgent,
            ret(NOERROR).to(S::Active),
            "§2.2 (Active while it runs; NOERROR once every device is closed)",
        ),
        row(S::Initializing, C::AllocateBuffer, ret(NOERROR), T),
        row(S::Initializing, C::FreeBuffer, ret(NOERROR), T),
        unrep(S::Initializing, C::SendCommand, NO_SERVER_DEVICE),
        unrep(S::Initializing, C::CloseDevice, NO_SERVER_DEVICE),
        row(
            S::Initializing,
            C::SignalAbort,
            ret(NOERROR).to(S::AbnormallyTerminated),
            T,
        ),
        row(S::Initializing, C::Close, ret(NOERROR).to(S::Closed), T),
        // Active
        unrep(S::Active, C::Open, OPEN_TWICE),
        row(S::Active, C::GetConfiguration, ret(NOERROR), T),
        row(S::Active, C::BeginConfiguration, ret(E_PROTOCOL), T),
        row(S::Active, C::RequestBuffers, ret(NOERROR), T),
        row(S::Active, C::QueryAvailableBuffers, ret(NOERROR), T),
        row(S::Active, C::EndConfiguration, ret(E_PROTOCOL), I),
        row(
            S::Active,
            C::OpenDevice,
            ret(NOERROR).to(S::Active),
            "§2.2 (inferred; device 1 is still unopened)",
        ),
        row(
            S::Active,
            C::ExecuteCompletionAgent,
            ret(E_PROTOCOL),
            "§2.2 (inferred: allowed once; an agent already runs)",
        ),
        row(S::Active, C::AllocateBuffer, ret(NOERROR), I),
        row(S::Active, C::FreeBuffer, ret(NOERROR), I),
        row(
            S::Active,
            C::SendCommand,
            ret(NOERROR).cb(CB_SUCCESS),
            "§2.2, §3.4 (the client completes it)",
        ),
        row(S::Active, C::CloseDevice, ret(NOERROR).to(S::Active), I),
        row(
            S::Active,
            C::SignalAbort,
            ret(NOERROR).to(S::AbnormallyTerminated),
            I,
        ),
        row(
            S::Active,
            C::Close,
            ret(E_PROTOCOL).to(S::Closed).peer_aborts(),
            "DESIGN §5: VD_E_PROTOCOL with devices open, aborts, releases",
        ),
        // Normally Terminated
        unrep(S::NormallyTerminated, C::Open, OPEN_TWICE),
        row(S::NormallyTerminated, C::GetConfiguration, ret(NOERROR), T),
        row(
            S::NormallyTerminated,
            C::BeginConfiguration,
            ret(E_PROTOCOL),
            T,
        ),
        row(S::NormallyTerminated, C::RequestBuffers, ret(E_PROTOCOL), T),
        row(
            S::NormallyTerminated,
            C::QueryAvailableBuffers,
            ret(E_PROTOCOL),
            T,
        ),
        row(
            S::NormallyTerminated,
            C::EndConfiguration,
            ret(E_PROTOCOL),
            I,
        ),
        row(S::NormallyTerminated, C::OpenDevice, ret(E_PROTOCOL), I),
        row(
            S::NormallyTerminated,
            C::ExecuteCompletionAgent,
            ret(E_PROTOCOL),
            "§2.2 cell empty ('—'); inferred: not allowed once the operation has ended",
        ),
        row(S::NormallyTerminated, C::AllocateBuffer, ret(E_PROTOCOL), I),
        row(S::NormallyTerminated, C::FreeBuffer, ret(E_PROTOCOL), BUF),
        row(
            S::NormallyTerminated,
            C::SendCommand,
            ret(E_PROTOCOL).cb(CB_INVALID_HANDLE),
            "§2.2 (inferred), §2.4",
        ),
        row(
            S::NormallyTerminated,
            C::CloseDevice,
            ret(E_CLOSE),
            "§2.2, §3.4 (already closed)",
        ),
        row(
            S::NormallyTerminated,
            C::SignalAbort,
            ret(NOERROR).to(S::AbnormallyTerminated),
            I,
        ),
        row(
            S::NormallyTerminated,
            C::Close,
            ret(NOERROR).to(S::Closed),
            T,
        ),
        // Abnormally Terminated
        unrep(S::AbnormallyTerminated, C::Open, OPEN_TWICE),
        row(
            S::AbnormallyTerminated,
            C::GetConfiguration,
            ret(E_ABORT),
            T,
        ),
        row(
            S::AbnormallyTerminated,
            C::BeginConfiguration,
            ret(E_PROTOCOL),
            T,
        ),
        row(
            S::AbnormallyTerminated,
            C::RequestBuffers,
            ret(E_PROTOCOL),
            T,
        ),
        row(
            S::AbnormallyTerminated,
            C::QueryAvailableBuffers,
            ret(E_PROTOCOL),
            T,
        ),
        row(
            S::AbnormallyTerminated,
            C::EndConfiguration,
            ret(E_ABORT),
            I,
        ),
        row(S::AbnormallyTerminated, C::OpenDevice, ret(E_ABORT), I),
        row(
            S::AbnormallyTerminated,
            C::ExecuteCompletionAgent,
            ret(E_ABORT),
            "§2.2 (inferred: returns VD_E_ABORT)",
        ),
        row(
            S::AbnormallyTerminated,
            C::AllocateBuffer,
            ret(E_ABORT),
            "§2.2 (no new buffers)",
        ),
        row(S::AbnormallyTerminated, C::FreeBuffer, ret(E_ABORT), BUF),
        row(
            S::AbnormallyTerminated,
            C::SendCommand,
            ret(E_ABORT).cb(CB_ABORTED),
            "§2.2, §2.4",
        ),
        row(
            S::AbnormallyTerminated,
            C::CloseDevice,
            ret(E_ABORT),
            "DESIGN §5: no action, VD_E_ABORT",
        ),
        row(
            S::AbnormallyTerminated,
            C::SignalAbort,
            ret(NOERROR).to(S::AbnormallyTerminated),
            I,
        ),
        row(
            S::AbnormallyTerminated,
            C::Close,
            ret(NOERROR).to(S::Closed),
            "§2.2, §1.4 (after an abort the devices need no CloseDevice)",
        ),
        // After Close (DNE)
        unrep(S::Closed, C::Open, OPEN_TWICE),
        row(S::Closed, C::GetConfiguration, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::BeginConfiguration, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::RequestBuffers, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::QueryAvailableBuffers, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::EndConfiguration, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::OpenDevice, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::ExecuteCompletionAgent, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::AllocateBuffer, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::FreeBuffer, ret(E_PROTOCOL), DNE),
        row(
            S::Closed,
            C::SendCommand,
            ret(E_PROTOCOL).cb(CB_INVALID_HANDLE),
            "§2.2 DNE column, §2.4",
        ),
        row(S::Closed, C::CloseDevice, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::SignalAbort, ret(E_PROTOCOL), DNE),
        row(S::Closed, C::Close, ret(E_PROTOCOL), DNE),
    ]
}

/// What a server case works with. The client is the peer.
#[derive(Clone, Copy)]
struct ServerCase<'a> {
    name: &'a str,
    client: &'a ClientSet,
    server: Option<&'a ServerSet>,
    /// The server's device 0 (from Active on).
    sdev: Option<&'a ServerDevice>,
    /// The client's device 0 (from Active on).
    cdev: Option<&'a ClientDevice>,
}

impl ServerCase<'_> {
    fn server(&self) -> &ServerSet {
        self.server.expect("driver: no ServerSet in this state")
    }
    fn sdev(&self) -> &ServerDevice {
        self.sdev.expect("driver: no ServerDevice in this state")
    }
}

/// Builds a fresh two-device set in `state` (server under test, client as the peer) and
/// runs `f` on it; with `buffer`, a buffer allocated while allowed is passed to `f`.
/// Afterwards both sides are closed and every completion agent has returned.
fn with_server_state<R>(
    state: SState,
    buffer: bool,
    f: impl FnOnce(&ServerCase<'_>, Option<ServerBuffer>) -> R,
) -> R {
    let name = unique("s");
    let client =
        ClientSet::create(&name, &VdConfig::with_devices(2)).expect("driver: client CreateEx");
    let base = ServerCase {
        name: &name,
        client: &client,
        server: None,
        sdev: None,
        cdev: None,
    };
    if state == SState::Dne {
        let r = catch_unwind(AssertUnwindSafe(|| f(&base, None)));
        let _ = client.close();
        return r.unwrap_or_else(|p| resume_unwind(p));
    }
    let server = ServerSet::open(&name).expect("driver: server Open");
    let case = ServerCase {
        server: Some(&server),
        ..base
    };
    let r = catch_unwind(AssertUnwindSafe(|| {
        if state == SState::Connected {
            return f(&case, None);
        }
        server
            .begin_configuration(features::WRITE_MEDIA, 512, 0, BUF, 1000)
            .expect("driver: BeginConfiguration");
        if state == SState::Configurable {
            return f(&case, None);
        }
        server
            .request_buffers(BUF, 0, 4)
            .expect("driver: RequestBuffers");
        server
            .end_configuration()
            .expect("driver: EndConfiguration");
        client
            .get_configuration(wait())
            .expect("driver: client GetConfiguration");
        if state == SState::Initializing {
            let buf = buffer.then(|| {
                server
                    .allocate_buffer(BUF, 0)
                    .expect("driver: AllocateBuffer")
            });
            return f(&case, buf);
        }
        thread::scope(|s| {
            let mut agent = Some(s.spawn(|| server.execute_completion_agent()));
            let r = catch_unwind(AssertUnwindSafe(|| {
                assert!(
                    wait_for(|| server.state() == ServerState::Active),
                    "driver: the completion agent did not start"
                );
                let sdev = server
                    .open_device(&name)
                    .expect("driver: server OpenDevice 0");
                let cdev = client
                    .open_device(&name)
                    .expect("driver: client OpenDevice 0");
                let buf = buffer.then(|| {
                    server
                        .allocate_buffer(BUF, 0)
                        .expect("driver: AllocateBuffer")
                });
                match state {
                    SState::NormallyTerminated | SState::Closed => {
                        let sdev1 = server
                            .open_device(&dev1_name(&name))
                            .expect("driver: server OpenDevice 1");
                        sdev.close_device().expect("driver: CloseDevice 0");
                        sdev1.close_device().expect("driver: CloseDevice 1");
                        // The agent returns by itself once every device is closed.
                        let ended = agent.take().map(|a| a.join());
                        assert!(
                            matches!(ended, Some(Ok(Ok(())))),
                            "driver: the agent after normal termination: {ended:?}"
                        );
                        if state == SState::Closed {
                            server.close().expect("driver: server Close");
                        }
                    }
                    SState::AbnormallyTerminated => {
                        server.signal_abort().expect("driver: server SignalAbort");
                        // The agent calls back what was outstanding and returns VD_E_ABORT.
                        let ended = agent.take().map(|a| a.join());
                        assert!(
                            matches!(&ended, Some(Ok(Err(e))) if e.code() == ErrorCode::Abort),
                            "driver: the agent after SignalAbort: {ended:?}"
                        );
                    }
                    _ => {}
                }
                let case = ServerCase {
                    sdev: Some(&sdev),
                    cdev: Some(&cdev),
                    ..case
                };
                f(&case, buf)
            }));
            // Closing the server aborts a set with open devices, which ends the agent.
            let _ = client.close();
            let _ = server.close();
            if let Some(a) = agent {
                let _ = a.join();
            }
            r.unwrap_or_else(|p| resume_unwind(p))
        })
    }));
    let _ = client.close();
    let _ = server.close();
    r.unwrap_or_else(|p| resume_unwind(p))
}

fn server_case(state: SState, call: SCall, e: Expect<SState>) -> Observed {
    with_server_state(state, call == SCall::FreeBuffer, |case, buf| {
        server_call(case, call, buf, &e)
    })
}

fn server_call(
    case: &ServerCase<'_>,
    call: SCall,
    buf: Option<ServerBuffer>,
    e: &Expect<SState>,
) -> Observed {
    let mut o = match call {
        SCall::Open => {
            let r = ServerSet::open(case.name);
            let mut o = Observed::of(&r);
            if let Ok(srv) = r {
                if let Some(want) = e.then.and_then(SState::server_state)
                    && srv.state() != want
                {
                    o.problems
                        .push(format!("state is {:?}, expected {want:?}", srv.state()));
                }
                let _ = srv.close();
            }
            return o;
        }
        SCall::GetConfiguration => Observed::of(&case.server().get_configuration()),
        SCall::BeginConfiguration => Observed::of(&case.server().begin_configuration(
            features::WRITE_MEDIA,
            512,
            0,
            BUF,
            1000,
        )),
        SCall::RequestBuffers => Observed::of(&case.server().request_buffers(BUF, 0, 1)),
        SCall::QueryAvailableBuffers => {
            Observed::of(&case.server().query_available_buffers(BUF, 0))
        }
        SCall::EndConfiguration => Observed::of(&case.server().end_configuration()),
        SCall::OpenDevice => {
            let name = if case.sdev.is_some() {
                dev1_name(case.name)
            } else {
                case.name.to_owned()
            };
            Observed::of(&case.server().open_device(&name))
        }
        SCall::ExecuteCompletionAgent => return server_agent_call(case, e),
        SCall::AllocateBuffer => Observed::of(&case.server().allocate_buffer(BUF, 0)),
        SCall::FreeBuffer => match buf {
            Some(b) => Observed::of(&case.server().free_buffer(b)),
            None => {
                let mut o = Observed::new(NOERROR);
                o.problems
                    .push("driver: no buffer was allocated".to_owned());
                o
            }
        },
        SCall::SendCommand => {
            let (cb, rx) = probe();
            let r = case.sdev().send_command(flush(), cb);
            let mut o = Observed::of(&r);
            match (&r, e.callback) {
                (Err(_), Some(want)) => check_sync_callback(&rx, want, &mut o.problems),
                (Ok(()), want) => {
                    // The client serves the command; the agent then runs the callback.
                    if let Some(cdev) = case.cdev {
                        match cdev.get_command(wait()) {
                            Ok(cmd) => {
                                let _ = cmd.complete_ok();
                            }
                            Err(err) => o
                                .problems
                                .push(format!("the client's GetCommand failed: {err}")),
                        }
                    }
                    if let Some(want) = want {
                        check_callback(&rx, want, "the Flush", &mut o.problems);
                    }
                }
                _ => {}
            }
            o
        }
        SCall::CloseDevice => Observed::of(&case.sdev().close_device()),
        SCall::SignalAbort => Observed::of(&case.server().signal_abort()),
        SCall::Close => Observed::of(&case.server().close()),
    };
    if let Some(want) = e.then.and_then(SState::server_state) {
        let got = case.server().state();
        if got != want {
            o.problems
                .push(format!("state is {got:?}, expected {want:?}"));
        }
    }
    if e.peer_aborted && case.client.abort_cause().is_none() {
        o.problems
            .push("the client does not see the set aborted".to_owned());
    }
    o
}

/// ExecuteCompletionAgent on a thread of its own: the state is checked while it runs;
/// if it is still running, the operation is ended normally (every device opened and
/// closed) so that it returns, and its return code is the cell's code.
fn server_agent_call(case: &ServerCase<'_>, e: &Expect<SState>) -> Observed {
    let server = case.server();
    let before = server.state();
    thread::scope(|s| {
        let h = s.spawn(|| server.execute_completion_agent());
        wait_for(|| h.is_finished() || server.state() != before);
        let mut problems = Vec::new();
        if let Some(want) = e.then.and_then(SState::server_state) {
            let got = server.state();
            if got != want {
                problems.push(format!(
                    "state while the agent runs is {got:?}, expected {want:?}"
                ));
            }
        }
        if !h.is_finished() {
            finish_normally(case);
            if !wait_for(|| h.is_finished()) {
                problems.push("the agent did not return after every device was closed".to_owned());
                let _ = server.signal_abort();
            }
        }
        let mut o = match h.join() {
            Ok(r) => Observed::of(&r),
            Err(p) => {
                let mut o = Observed::new(NOERROR);
                o.problems
                    .push(format!("the agent panicked: {}", panic_text(p.as_ref())));
                o
            }
        };
        o.problems.extend(problems);
        o
    })
}

/// The server opens every device it has not opened and closes every device.
fn finish_normally(case: &ServerCase<'_>) {
    let server = case.server();
    let opened: Vec<ServerDevice> = [case.name.to_owned(), dev1_name(case.name)]
        .iter()
        .filter_map(|n| server.open_device(n).ok())
        .collect();
    for d in opened.iter().chain(case.sdev) {
        let _ = d.close_device();
    }
}

// ---------------------------------------------------------------------------------------
// Device-level cells (reference §2.4)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DState {
    /// Open on both sides, agent running.
    Active,
    /// A command completed with ERROR_HANDLE_EOF; nothing outstanding.
    IoError,
    /// IO-ERROR while another command (fetched before the error) is still outstanding.
    IoErrorOutstanding,
    /// The server called CloseDevice; the client has not yet seen VD_E_CLOSE.
    Closed,
    /// The client called SignalAbort.
    ClientAborted,
    /// The server called SignalAbort.
    ServerAborted,
}

impl DState {
    const ALL: [DState; 6] = [
        DState::Active,
        DState::IoError,
        DState::IoErrorOutstanding,
        DState::Closed,
        DState::ClientAborted,
        DState::ServerAborted,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DCall {
    /// The server sends a Flush (any command but ClearError).
    SendCommand,
    /// The server sends VDC_ClearError; the client serves it.
    SendClearError,
    /// The server's CloseDevice; then the client's next GetCommand.
    CloseDevice,
    /// The client completes its outstanding command with ERROR_SUCCESS.
    CompleteCommand,
    /// The server queues a Flush (if it can), then the client completes its outstanding
    /// command with ERROR_HANDLE_EOF.
    CompleteWithError,
    /// The server's Close while the client holds a command.
    ServerClose,
    /// The client's Close while it holds a command.
    ClientClose,
}

impl DCall {
    /// Whether the case needs a command the client fetched while the device was Active.
    fn holds(self) -> bool {
        matches!(
            self,
            DCall::CompleteCommand
                | DCall::CompleteWithError
                | DCall::ServerClose
                | DCall::ClientClose
        )
    }
}

const NOTHING_OUTSTANDING: &str = "IO-ERROR with nothing outstanding has no command to complete; a command fetched before the error is the IoErrorOutstanding state";

fn device_table() -> Vec<Row<DState, DCall>> {
    use DCall as C;
    use DState as S;
    const T: &str = "§2.4";
    vec![
        // Active
        row(
            S::Active,
            C::SendCommand,
            ret(NOERROR).cb(CB_SUCCESS),
            "§3.4",
        ),
        row(
            S::Active,
            C::SendClearError,
            ret(NOERROR).cb(CB_SUCCESS).io_error(false),
            "§2.4, §5 (ClearError is an ordinary command outside IO-ERROR)",
        ),
        row(
            S::Active,
            C::CloseDevice,
            ret(NOERROR).next(E_CLOSE),
            "§3.4",
        ),
        row(
            S::Active,
            C::CompleteCommand,
            ret(NOERROR).cb(CB_SUCCESS),
            "§3.2",
        ),
        row(
            S::Active,
            C::CompleteWithError,
            ret(NOERROR).cb(CB_EOF).flushed(CB_IO_DEVICE).io_error(true),
            "§2.4 (enters IO-ERROR; the queued command is completed with ERROR_IO_DEVICE)",
        ),
        row(
            S::Active,
            C::ServerClose,
            ret(E_PROTOCOL).cb(CB_ABORTED).peer_aborts(),
            "DESIGN §5 (server Close with devices open)",
        ),
        row(
            S::Active,
            C::ClientClose,
            ret(E_OPEN).cb(CB_ABORTED).peer_aborts(),
            "DESIGN §5 (client Close with devices open)",
        ),
        // IO-ERROR, nothing outstanding
        row(
            S::IoError,
            C::SendCommand,
            ret(E_IO_ERROR).cb(CB_IO_DEVICE).io_error(true),
            T,
        ),
        row(
            S::IoError,
            C::SendClearError,
            ret(NOERROR).cb(CB_SUCCESS).io_error(false),
            "§2.4 (ClearError completed: back to Active)",
        ),
        row(
            S::IoError,
            C::CloseDevice,
            ret(NOERROR).next(E_CLOSE),
            "§2.4 (CloseDevice instead of ClearError)",
        ),
        unrep(S::IoError, C::CompleteCommand, NOTHING_OUTSTANDING),
        unrep(S::IoError, C::CompleteWithError, NOTHING_OUTSTANDING),
        row(
            S::IoError,
            C::ServerClose,
            ret(E_PROTOCOL).peer_aborts(),
            "DESIGN §5 (server Close with devices open)",
        ),
        // IO-ERROR with a command outstanding
        row(
            S::IoErrorOutstanding,
            C::SendCommand,
            ret(E_IO_ERROR).cb(CB_IO_DEVICE).io_error(true),
            T,
        ),
        row(
            S::IoErrorOutstanding,
            C::SendClearError,
            ret(NOERROR).cb(CB_SUCCESS).io_error(false),
            "§2.4 (ClearError withheld until the outstanding command is completed)",
        ),
        row(S::IoErrorOutstanding, C::CloseDevice, ret(NOERROR), T),
        row(
            S::IoErrorOutstanding,
            C::CompleteCommand,
            ret(NOERROR).cb(CB_SUCCESS).io_error(true),
            "§2.4 (only a completed ClearError leaves IO-ERROR)",
        ),
        row(
            S::IoErrorOutstanding,
            C::CompleteWithError,
            ret(NOERROR).cb(CB_EOF).io_error(true),
            T,
        ),
        row(
            S::IoErrorOutstanding,
            C::ServerClose,
            ret(E_PROTOCOL).cb(CB_ABORTED).peer_aborts(),
            "DESIGN §5 (server Close with devices open)",
        ),
        // Closed by the server
        row(
            S::Closed,
            C::SendCommand,
            ret(E_PROTOCOL).cb(CB_INVALID_HANDLE),
            "§2.4 (device not active)",
        ),
        row(
            S::Closed,
            C::SendClearError,
            ret(E_PROTOCOL).cb(CB_INVALID_HANDLE),
            "§2.4 (device not active)",
        ),
        row(
            S::Closed,
            C::CloseDevice,
            ret(E_CLOSE),
            "§3.4 (already closed)",
        ),
        row(
            S::Closed,
            C::CompleteCommand,
            ret(NOERROR).cb(CB_SUCCESS),
            "§2.1 Active column (the client has not yet seen VD_E_CLOSE)",
        ),
        row(
            S::Closed,
            C::CompleteWithError,
            ret(NOERROR).cb(CB_EOF),
            "§2.1 Active column (the client has not yet seen VD_E_CLOSE)",
        ),
        row(
            S::Closed,
            C::ServerClose,
            ret(NOERROR).cb(CB_ABORTED),
            "§3.3, DESIGN §5 (no device open; the outstanding command is called back with ERROR_OPERATION_ABORTED)",
        ),
        // Aborted by the client
        row(
            S::ClientAborted,
            C::SendCommand,
            ret(E_ABORT).cb(CB_ABORTED),
            "§2.4, §1.4",
        ),
        row(
            S::ClientAborted,
            C::SendClearError,
            ret(E_ABORT).cb(CB_ABORTED),
            "§2.4, §1.4",
        ),
        row(
            S::ClientAborted,
            C::CloseDevice,
            ret(E_ABORT),
            "DESIGN §5: no action, VD_E_ABORT",
        ),
        row(
            S::ClientAborted,
            C::CompleteCommand,
            ret(E_ABORT).cb(CB_ABORTED),
            "§1.4, §3.2",
        ),
        row(
            S::ClientAborted,
            C::CompleteWithError,
            ret(E_ABORT).cb(CB_ABORTED),
            "§1.4, §3.2",
        ),
        // Aborted by the server
        row(
            S::ServerAborted,
            C::SendCommand,
            ret(E_ABORT).cb(CB_ABORTED),
            "§2.4, §1.4",
        ),
        row(
            S::ServerAborted,
            C::SendClearError,
            ret(E_ABORT).cb(CB_ABORTED),
            "§2.4, §1.4",
        ),
        row(
            S::ServerAborted,
            C::CloseDevice,
            ret(E_ABORT),
            "DESIGN §5: no action, VD_E_ABORT",
        ),
        row(
            S::ServerAborted,
            C::CompleteCommand,
            ret(E_ABORT).cb(CB_ABORTED),
            "§1.4, §3.2",
        ),
        row(
            S::ServerAborted,
            C::CompleteWithError,
            ret(E_ABORT).cb(CB_ABORTED),
            "§1.4, §3.2",
        ),
    ]
}

/// What a device case works with: one device, open on both sides.
#[derive(Clone, Copy)]
struct DevCase<'a> {
    client: &'a ClientSet,
    server: &'a ServerSet,
    sdev: &'a ServerDevice,
    cdev: &'a ClientDevice,
    /// The callback of the held command.
    held_cb: Option<&'a Receiver<Done>>,
}

/// Builds a fresh one-device set with the device in `state` and runs `f` on it; with
/// `hold` (and always in IoErrorOutstanding), the client fetched a Flush while the device
/// was Active and `f` gets it. Afterwards both sides are closed and the agent has returned.
fn with_device_state<R>(
    state: DState,
    hold: bool,
    f: impl FnOnce(&DevCase<'_>, Option<Command<'_>>) -> R,
) -> R {
    let name = unique("d");
    let client =
        ClientSet::create(&name, &VdConfig::with_devices(1)).expect("driver: client CreateEx");
    let server = ServerSet::open(&name).expect("driver: server Open");
    let r = catch_unwind(AssertUnwindSafe(|| {
        configure(&server).expect("driver: server configuration");
        client
            .get_configuration(wait())
            .expect("driver: client GetConfiguration");
        thread::scope(|s| {
            let agent = s.spawn(|| server.execute_completion_agent());
            let r = catch_unwind(AssertUnwindSafe(|| {
                assert!(
                    wait_for(|| server.state() == ServerState::Active),
                    "driver: the completion agent did not start"
                );
                let sdev = server
                    .open_device(&name)
                    .expect("driver: server OpenDevice");
                let cdev = client
                    .open_device(&name)
                    .expect("driver: client OpenDevice");
                let (hcb, hrx) = probe();
                let held = if hold || state == DState::IoErrorOutstanding {
                    sdev.send_command(flush(), hcb)
                        .expect("driver: SendCommand (held)");
                    Some(cdev.get_command(wait()).expect("driver: GetCommand (held)"))
                } else {
                    None
                };
                match state {
                    DState::Active => {}
                    DState::IoError | DState::IoErrorOutstanding => {
                        let (ecb, erx) = probe();
                        sdev.send_command(flush(), ecb)
                            .expect("driver: SendCommand (to fail)");
                        let cmd = cdev
                            .get_command(wait())
                            .expect("driver: GetCommand (to fail)");
                        cmd.complete(CB_EOF, 0, 0)
                            .expect("driver: CompleteCommand with ERROR_HANDLE_EOF");
                        let d = erx
                            .recv_timeout(Duration::from_millis(WAIT_MS.into()))
                            .expect("driver: the failed command was not called back");
                        assert_eq!(d.code, CB_EOF, "driver: the failed command's code");
                        assert!(sdev.in_io_error(), "driver: the device is not in IO-ERROR");
                    }
                    DState::Closed => sdev.close_device().expect("driver: CloseDevice"),
                    DState::ClientAborted => {
                        client.signal_abort().expect("driver: client SignalAbort");
                    }
                    DState::ServerAborted => {
                        server.signal_abort().expect("driver: server SignalAbort");
                    }
                }
                let case = DevCase {
                    client: &client,
                    server: &server,
                    sdev: &sdev,
                    cdev: &cdev,
                    held_cb: held.as_ref().map(|_| &hrx),
                };
                f(&case, held)
            }));
            let _ = client.close();
            let _ = server.close();
            let _ = agent.join();
            r.unwrap_or_else(|p| resume_unwind(p))
        })
    }));
    let _ = client.close();
    let _ = server.close();
    r.unwrap_or_else(|p| resume_unwind(p))
}

fn device_case(state: DState, call: DCall, e: Expect<DState>) -> Observed {
    with_device_state(state, call.holds(), |case, held| {
        device_call(case, call, held, &e)
    })
}

fn device_call(
    case: &DevCase<'_>,
    call: DCall,
    held: Option<Command<'_>>,
    e: &Expect<DState>,
) -> Observed {
    let mut o = match call {
        DCall::SendCommand | DCall::SendClearError => {
            let code = if call == DCall::SendCommand {
                CommandCode::FLUSH
            } else {
                CommandCode::CLEAR_ERROR
            };
            let (cb, rx) = probe();
            let r = case.sdev.send_command(ServerCommand::new(code), cb);
            let mut o = Observed::of(&r);
            if r.is_err() {
                if let Some(want) = e.callback {
                    check_sync_callback(&rx, want, &mut o.problems);
                }
            } else {
                if let Some(h) = held {
                    if code == CommandCode::CLEAR_ERROR {
                        // Withheld while a command fetched before the error is outstanding.
                        match case.cdev.get_command(Timeout::POLL) {
                            Err(err) if err.code() == ErrorCode::Timeout => {}
                            Err(err) => o.problems.push(format!(
                                "GetCommand with a command outstanding: {err} (expected VD_E_TIMEOUT: ClearError withheld)"
                            )),
                            Ok(cmd) => o.problems.push(format!(
                                "GetCommand delivered {:?} while a command fetched before the error was outstanding (ClearError must be withheld)",
                                cmd.code()
                            )),
                        }
                    }
                    check_code(
                        "completing the outstanding command",
                        &h.complete_ok(),
                        NOERROR,
                        &mut o.problems,
                    );
                }
                match case.cdev.get_command(wait()) {
                    Ok(cmd) => {
                        if cmd.code() != code {
                            o.problems.push(format!(
                                "the client got {:?}, expected {code:?}",
                                cmd.code()
                            ));
                        }
                        check_code(
                            "the client's CompleteCommand",
                            &cmd.complete_ok(),
                            NOERROR,
                            &mut o.problems,
                        );
                    }
                    Err(err) => o
                        .problems
                        .push(format!("the client's GetCommand failed: {err}")),
                }
                if let Some(want) = e.callback {
                    check_callback(&rx, want, &format!("{code:?}"), &mut o.problems);
                }
            }
            o
        }
        DCall::CloseDevice => {
            let mut o = Observed::of(&case.sdev.close_device());
            drop(held);
            if let Some(want) = e.client_next {
                let r = case.cdev.get_command(wait());
                check_code("the client's next GetCommand", &r, want, &mut o.problems);
            }
            o
        }
        DCall::CompleteCommand | DCall::CompleteWithError => {
            let Some(h) = held else {
                let mut o = Observed::new(NOERROR);
                o.problems.push("driver: no command was held".to_owned());
                return o;
            };
            // A command queued behind the failing one (refused where the server may not
            // send; then its callback has already run).
            let queued = (call == DCall::CompleteWithError).then(|| {
                let (cb, rx) = probe();
                case.sdev.send_command(flush(), cb).ok().map(|()| rx)
            });
            let r = if call == DCall::CompleteCommand {
                h.complete_ok()
            } else {
                h.complete(CB_EOF, 0, 0)
            };
            let mut o = Observed::of(&r);
            if let (Some(want), Some(rx)) = (e.callback, case.held_cb) {
                check_callback(rx, want, "the completed command", &mut o.problems);
            }
            if let Some(want) = e.flushed {
                match queued.flatten() {
                    Some(rx) => check_callback(&rx, want, "the queued command", &mut o.problems),
                    None => o.problems.push(
                        "the server could not queue a command behind the failing one".to_owned(),
                    ),
                }
            }
            o
        }
        DCall::ServerClose | DCall::ClientClose => {
            let r = if call == DCall::ServerClose {
                case.server.close()
            } else {
                case.client.close()
            };
            let mut o = Observed::of(&r);
            if let (Some(want), Some(rx)) = (e.callback, case.held_cb) {
                check_callback(rx, want, "the outstanding command", &mut o.problems);
            }
            drop(held);
            o
        }
    };
    if let Some(want) = e.io_error
        && case.sdev.in_io_error() != want
    {
        o.problems.push(format!(
            "the device is {}in IO-ERROR afterwards",
            if want { "not " } else { "" }
        ));
    }
    if e.peer_aborted {
        let seen = match call {
            DCall::ClientClose => case.server.abort_cause(),
            _ => case.client.abort_cause(),
        };
        if seen.is_none() {
            o.problems
                .push("the peer does not see the set aborted".to_owned());
        }
    }
    o
}

// ---------------------------------------------------------------------------------------
// The tests: one per state of each table, plus the coverage check
// ---------------------------------------------------------------------------------------

macro_rules! state_tests {
    ($table:ident, $case:ident, $($test:ident => $state:expr),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_state(&$table(), $state, $case);
            }
        )*
    };
}

state_tests!(client_table, client_case,
    client_dne => CState::Dne,
    client_configurable => CState::Configurable,
    client_initializing => CState::Initializing,
    client_active => CState::Active,
    client_normally_terminated => CState::NormallyTerminated,
    client_abort => CState::Abort,
    client_closed => CState::Closed,
);

state_tests!(server_table, server_case,
    server_dne => SState::Dne,
    server_connected => SState::Connected,
    server_configurable => SState::Configurable,
    server_initializing => SState::Initializing,
    server_active => SState::Active,
    server_normally_terminated => SState::NormallyTerminated,
    server_abnormally_terminated => SState::AbnormallyTerminated,
    server_closed => SState::Closed,
);

state_tests!(device_table, device_case,
    device_active => DState::Active,
    device_io_error => DState::IoError,
    device_io_error_outstanding => DState::IoErrorOutstanding,
    device_closed => DState::Closed,
    device_client_aborted => DState::ClientAborted,
    device_server_aborted => DState::ServerAborted,
);

/// Every cell of the reference's client and server tables has exactly one row, and every
/// state of the device table has rows; prints the cells the typed API cannot express.
#[test]
fn every_cell_is_accounted_for() {
    fn check<S, C>(role: &str, table: &[Row<S, C>], states: &[S], calls: &[C], grid: fn(C) -> C)
    where
        S: Copy + fmt::Debug + PartialEq,
        C: Copy + fmt::Debug + PartialEq,
    {
        let mut missing = Vec::new();
        for &s in states {
            for &c in calls {
                let n = table.iter().filter(|r| r.state == s && r.call == c).count();
                if n != 1 {
                    missing.push(format!("{s:?} x {c:?}: {n} rows"));
                }
            }
        }
        for r in table {
            if !states.contains(&r.state) || !calls.contains(&grid(r.call)) {
                missing.push(format!("{:?} x {:?}: outside the grid", r.state, r.call));
            }
        }
        assert!(
            missing.is_empty(),
            "{role} table: cells without exactly one row:\n  {}",
            missing.join("\n  ")
        );
        let unrep: Vec<_> = table
            .iter()
            .filter_map(|r| match r.cell {
                Cell::Unrepresentable(why) => Some(format!("{:?} x {:?}: {why}", r.state, r.call)),
                Cell::Check(_) => None,
            })
            .collect();
        let grid_cells = states.len() * calls.len();
        let extra = table.len() - grid_cells;
        println!(
            "{role} table: {grid_cells} cells of the reference ({} checked, {} unrepresentable) + {extra} extra rows",
            grid_cells - unrep.len(),
            unrep.len()
        );
        for u in &unrep {
            println!("  unrepresentable: {u}");
        }
        for r in table.iter().filter(|r| r.bug.is_some()) {
            println!(
                "  known library bug: {:?} x {:?}: {}",
                r.state,
                r.call,
                r.bug.unwrap_or_default()
            );
        }
    }

    // The client's extra rows are variants of GetCommand (after CloseDevice, empty poll).
    check(
        "client",
        &client_table(),
        &CState::ALL,
        &CCall::GRID,
        CCall::grid_call,
    );
    check("server", &server_table(), &SState::ALL, &SCall::GRID, |c| c);

    let dev = device_table();
    for s in DState::ALL {
        assert!(
            dev.iter().any(|r| r.state == s),
            "device table: no row for {s:?}"
        );
    }
    let unrep: Vec<_> = dev
        .iter()
        .filter(|r| matches!(r.cell, Cell::Unrepresentable(_)))
        .collect();
    println!(
        "device table (§2.4): {} rows ({} checked, {} unrepresentable)",
        dev.len(),
        dev.len() - unrep.len(),
        unrep.len()
    );
    for r in unrep {
        if let Cell::Unrepresentable(why) = r.cell {
            println!("  unrepresentable: {:?} x {:?}: {why}", r.state, r.call);
        }
    }
}
