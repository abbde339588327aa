//! The control channel between the bench (the orchestrator) and the processes it starts.
//!
//! The orchestrator listens on an abstract Unix socket; each child is this same binary
//! re-executed with a hidden subcommand (`__child ROLE SOCKET ARGS...`). The child
//! connects, receives its setup message with the descriptors it needs (a pipe end, a
//! socket end, a memfd: passed with `SCM_RIGHTS`), then the two exchange short text
//! messages: `word key=value key=value ...`. A child's death shows as a hang-up.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use vdi::sys::socket::{Conn, Listener};

/// The hidden subcommand that makes the binary a child.
pub const CHILD: &str = "__child";

const MAX_MSG: usize = 4096;

/// A parsed message: a word and `key=value` fields.
#[derive(Debug, Clone)]
pub struct Msg {
    pub word: String,
    pub fields: BTreeMap<String, String>,
    /// Everything after the word, verbatim (an `error` message's reason).
    pub rest: String,
}

impl Msg {
    pub fn parse(text: &str) -> Msg {
        let text = text.trim();
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let fields = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Msg {
            word: word.to_owned(),
            fields,
            rest: rest.to_owned(),
        }
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self
            .fields
            .get(key)
            .ok_or_else(|| anyhow!("message '{}' has no field {key}", self.word))?;
        v.parse()
            .with_context(|| format!("field {key}={v} of message '{}'", self.word))
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self
            .fields
            .get(key)
            .ok_or_else(|| anyhow!("message '{}' has no field {key}", self.word))?;
        v.parse()
            .with_context(|| format!("field {key}={v} of message '{}'", self.word))
    }
}

fn recv_msg(conn: &Conn, timeout: Duration, who: &str) -> Result<(Msg, Vec<OwnedFd>)> {
    let mut buf = [0u8; MAX_MSG];
    let (n, fds) = conn.recv(&mut buf, Some(timeout)).map_err(|e| {
        if e == rustix::io::Errno::TIMEDOUT {
            anyhow!("{who} said nothing for {timeout:?}")
        } else {
            anyhow!("{who} went away ({e})")
        }
    })?;
    let text = std::str::from_utf8(&buf[..n]).context("a message that is not UTF-8")?;
    Ok((Msg::parse(text), fds))
}

/// The orchestrator's listening socket.
pub struct Hub {
    listener: Listener,
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Hub {
    pub fn new() -> Result<Hub> {
        let name = format!(
            "vdi-bench/{}/{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let listener = Listener::bind(name.as_bytes())
            .map_err(|e| anyhow!("binding the control socket {name}: {e}"))?;
        Ok(Hub { listener, name })
    }

    /// Starts this binary as a child in `role`, hands it `fds`, and returns its handle.
    pub fn spawn(&self, role: &str, args: &[String], fds: &[BorrowedFd<'_>]) -> Result<Peer> {
        let exe = std::env::current_exe().context("finding this program to re-execute it")?;
        let child = Command::new(&exe)
            .arg(CHILD)
            .arg(role)
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} as {role}", exe.display()))?;
        let mut peer = Peer {
            child,
            conn: None,
            role: role.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            match self.listener.accept() {
                Ok(c) => break c,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => bail!("accepting {role}: {e}"),
            }
            if let Ok(Some(st)) = peer.child.try_wait() {
                bail!("{role} exited ({st}) before connecting");
            }
            if Instant::now() >= deadline {
                bail!("{role} did not connect within 20 s");
            }
            vdi::sys::poll::poll(
                &[self.listener.fd()],
                &[true],
                Some(Duration::from_millis(50)),
            );
        };
        conn.send(b"setup", fds)
            .map_err(|e| anyhow!("sending {role} its setup: {e}"))?;
        peer.conn = Some(conn);
        Ok(peer)
    }
}

/// A child process and its control connection. Killed (by its pid) and reaped on drop
/// if it is still running.
pub struct Peer {
    child: Child,
    conn: Option<Conn>,
    role: String,
}

impl Peer {
    fn conn(&self) -> Result<&Conn> {
        self.conn
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not connected", self.role))
    }

    pub fn send(&self, text: &str) -> Result<()> {
        self.conn()?
            .send(text.as_bytes(), &[])
            .map_err(|e| anyhow!("telling {} '{text}': {e}", self.role))
    }

    /// The next message, which must be `word`; a child's `error` message becomes the error.
    pub fn expect(&self, word: &str, timeout: Duration) -> Result<Msg> {
        let (m, _) = recv_msg(self.conn()?, timeout, &self.role)?;
        if m.word == "error" {
            bail!("{} failed: {}", self.role, m.rest);
        }
        if m.word != word {
            bail!(
                "{} said '{}' where '{word}' was expected",
                self.role,
                m.word
            );
        }
        Ok(m)
    }

    /// Waits for the child to exit and checks that it succeeded.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!("{} exited with {st}", self.role);
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.role);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child's end of the control connection.
pub struct Link {
    conn: Conn,
}

impl Link {
    /// Connects to the orchestrator and takes the setup message's descriptors.
    pub fn connect(hub: &str) -> Result<(Link, Vec<OwnedFd>)> {
        let conn = Conn::connect(hub.as_bytes())
            .map_err(|e| anyhow!("connecting to the bench at {hub}: {e}"))?;
        let (m, fds) = recv_msg(&conn, Duration::from_secs(20), "the bench")?;
        if m.word != "setup" {
            bail!("the bench said '{}' where 'setup' was expected", m.word);
        }
        Ok((Link { conn }, fds))
    }

    pub fn send(&self, text: &str) -> Result<()> {
        self.conn
            .send(text.as_bytes(), &[])
            .map_err(|e| anyhow!("telling the bench '{text}': {e}"))
    }

    /// Waits (without a limit: the bench kills a child it gives up on) for `word`.
    pub fn expect(&self, word: &str) -> Result<Msg> {
        let (m, _) = recv_msg(&self.conn, Duration::from_secs(3600), "the bench")?;
        if m.word != word {
            bail!("the bench said '{}' where '{word}' was expected", m.word);
        }
        Ok(m)
    }
}

/// `key=value` arguments of a child, as given on its command line.
pub struct Args(BTreeMap<String, String>);

impl Args {
    pub fn parse(args: &[String]) -> Args {
        Args(
            args.iter()
                .filter_map(|a| a.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("missing argument {key}="))
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.str(key)?;
        v.parse().with_context(|| format!("argument {key}={v}"))
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        let v = self.str(key)?;
        v.parse().with_context(|| format!("argument {key}={v}"))
    }
}
