//! Helpers for the `vdi` tests: running the real binary with a time limit, making files,
//! comparing them, finding the engine process, and looking for completion markers.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `vdi` binary under test.
pub fn vdi() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdi"));
    c.env_remove("VDI_DEMO_SIZE");
    c
}

/// What a finished `vdi` printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "vdi failed: {}", self.stderr);
        self
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        let s = self.stdout_str();
        let line = s
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON on stdout: {s:?}; stderr: {}", self.stderr));
        serde_json::from_str(line).unwrap()
    }
    /// Asserts the exit code and that stderr mentions every one of `words`.
    pub fn fails(&self, code: i32, words: &[&str]) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}; stderr: {}",
            self.code, self.stderr
        );
        for w in words {
            assert!(
                self.stderr.contains(w),
                "stderr does not mention {w:?}: {}",
                self.stderr
            );
        }
        self
    }
}

/// Waits for `child` at most `limit`; kills it and panics after that.
pub fn wait_output(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    let out_thread = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut o, &mut v);
            v
        })
    });
    let err_thread = child.stderr.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut o, &mut v);
            v
        })
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vdi did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_thread.map(|t| t.join().unwrap()).unwrap_or_default();
    let stderr = err_thread.map(|t| t.join().unwrap()).unwrap_or_default();
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `vdi args` with no input, within 120 s.
pub fn run(args: &[&str]) -> Run {
    run_in(args, None, None)
}

/// Runs `vdi args` with standard input from `stdin` (a file) and standard output to
/// `stdout` (a file) if given.
pub fn run_in(args: &[&str], stdin: Option<&Path>, stdout: Option<&Path>) -> Run {
    let mut c = vdi();
    c.args(args)
        .stdin(match stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
            None => Stdio::null(),
        })
        .stdout(match stdout {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(p)
                    .unwrap(),
            ),
            None => Stdio::piped(),
        })
        .stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(120))
}

/// Starts `vdi args` in the background (pipes for all three streams).
pub fn spawn(args: &[&str]) -> Child {
    vdi()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A deterministic, incompressible byte pattern (xorshift) of `len` bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `len` bytes of pattern `seed` to `path` (in pieces, so large files are cheap),
/// with every 4 KiB in 16 repeated (so zstd has something to find).
pub fn write_pattern(path: &Path, seed: u64, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let piece = 1 << 20;
    let mut done = 0u64;
    let mut s = seed;
    while done < len {
        let n = (len - done).min(piece as u64) as usize;
        let mut p = pattern(s, n);
        for k in (0..n).step_by(65536) {
            let e = (k + 4096).min(n);
            p[k..e].fill(0x2a);
        }
        f.write_all(&p).unwrap();
        done += n as u64;
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    f.flush().unwrap();
}

/// blake3 of a file.
pub fn digest(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Whether `dir` holds a manifest that claims completion.
pub fn claims_completion(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("manifest.json")) {
        Ok(t) => t.contains("\"complete\": true") || t.contains("\"complete\":true"),
        Err(_) => false,
    }
}

/// Files in `dir` whose name contains `part` (leftover temporaries, for example).
pub fn files_with(dir: &Path, part: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains(part))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(p);
        }
    }
    v
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Sends signal `sig` (a name such as `KILL` or `INT`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Waits until `cond` holds (panics after `limit`).
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A set name unique to this test process and call.
pub fn set_name(tag: &str) -> String {
    format!(
        "cli-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A string path.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `vdi args` under the umask `mask` (octal; through `sh`, which sets it).
pub fn run_with_umask(mask: &str, args: &[&str]) -> Run {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask \"$0\" && exec \"$@\"")
        .arg(mask)
        .arg(env!("CARGO_BIN_EXE_vdi"))
        .args(args)
        .env_remove("VDI_DEMO_SIZE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(120))
}

/// The permission bits of `path` (not following a link).
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Makes a FIFO at `path` (with `mkfifo`).
pub fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The backup id a backup directory's manifest records.
pub fn backup_id(dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    m["backup_id"].as_str().unwrap().to_owned()
}

/// A child process killed (and reaped) when this goes out of scope, even when the test
/// fails first: no process outlives its test.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
