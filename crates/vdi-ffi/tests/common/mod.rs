//! What the C-program tests share: the built libraries and the `vdi` tool next to the test
//! executable, compiling C and C++ with the system's gcc/g++ into a temporary directory,
//! running programs with a deadline, unique set names.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `target/<profile>`: the directory above the test executable's `deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Builds the libraries and the tool these tests run, once per test binary. Cargo does
/// not build a `cdylib` for integration tests, and a `.so` left from an earlier build
/// would test old code: so the tests run the (incremental, usually no-op) build
/// themselves, in the same profile as the test executable.
fn ensure_built() {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let mut c = Command::new(env!("CARGO"));
        c.args([
            "build",
            "-p",
            "vdi-ffi",
            "-p",
            "vdi-sqlvdi",
            "-p",
            "vdi-cli",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"));
        if target_dir().file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        match c.status() {
            Ok(st) if st.success() => Ok(()),
            other => Err(format!("{c:?}: {other:?}")),
        }
    });
    if let Err(e) = r {
        panic!("building the libraries under test failed ({e})");
    }
}

/// A built artifact in `target/<profile>`, or a failure that says how to build it.
pub fn artifact(name: &str, build: &str) -> PathBuf {
    ensure_built();
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it with `{build}` (cargo test --workspace builds everything)",
        p.display()
    );
    p
}

/// libvdi.so's directory (the library is checked to be there).
pub fn libvdi_dir() -> PathBuf {
    artifact("libvdi.so", "cargo build -p vdi-ffi");
    target_dir()
}

/// The `vdi` tool.
pub fn vdi_tool() -> PathBuf {
    artifact("vdi", "cargo build -p vdi-cli")
}

/// The repository's `include/`.
pub fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// A C or C++ source of this crate's tests.
pub fn source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

/// Compiles `src` into `out` with gcc (C11) or g++ (C++11, for `.cpp`), against
/// `include/`, linking `-l<lib>` from `lib_dir` with an rpath there. Fails the test with
/// the compiler's output.
pub fn compile(src: &Path, out: &Path, lib_dir: &Path, lib: &str, extra: &[&str]) {
    compile_opts(src, out, lib_dir, lib, extra, true);
}

/// As [`compile`]; without `rpath` the program finds the library only through
/// `LD_LIBRARY_PATH` (or the system's paths).
pub fn compile_opts(
    src: &Path,
    out: &Path,
    lib_dir: &Path,
    lib: &str,
    extra: &[&str],
    rpath: bool,
) {
    let cpp = src.extension().is_some_and(|e| e == "cpp");
    let mut c = Command::new(if cpp { "g++" } else { "gcc" });
    c.arg(if cpp { "-std=c++11" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Werror", "-g", "-O1", "-pthread"])
        .arg("-I")
        .arg(include_dir())
        .args(extra)
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(lib_dir)
        .arg(format!("-l{lib}"));
    if rpath {
        c.arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    }
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("running the compiler ({c:?}): {e}; install gcc and g++"));
    assert!(
        o.status.success(),
        "compiling {} failed:\n{}{}",
        src.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A set name nobody else uses.
pub fn set_name(tag: &str) -> String {
    format!(
        "ffi-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A program's outcome.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Asserts success, showing the output otherwise.
    pub fn ok(&self) -> &Ran {
        assert!(
            self.status.success(),
            "failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// `key=value` from the last line of stdout that has it.
    pub fn field(&self, key: &str) -> String {
        let pat = format!("{key}=");
        self.stdout
            .lines()
            .rev()
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&pat).map(str::to_owned))
            })
            .unwrap_or_else(|| panic!("no {key}= in:\n{}\n{}", self.stdout, self.stderr))
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> i64 {
        self.field(key).parse().expect("a number")
    }
}

/// Waits for `child` at most `limit` (then kills it and fails: a hang is a bug).
pub fn wait(mut child: Child, limit: Duration, what: &str) -> Ran {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish in {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o: Output = child.wait_with_output().expect("output");
    Ran {
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Starts `prog args` with piped output.
pub fn spawn(prog: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", prog.display()))
}

/// Runs `prog args` to the end (at most two minutes).
pub fn run(prog: &Path, args: &[&str]) -> Ran {
    wait(
        spawn(prog, args, &[]),
        Duration::from_secs(120),
        &prog.display().to_string(),
    )
}

/// Reads a child's stdout until a line equals `line` (the child keeps running).
pub fn wait_for_line(child: &mut Child, line: &str, limit: Duration) {
    use std::io::{BufRead, BufReader};
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = line.to_owned();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if l == want {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the program never printed {line:?}"));
}

/// A pseudo-random file of `len` bytes.
pub fn write_pattern(path: &Path, seed: u64, len: usize) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}

/// A path as a string argument.
pub fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

/// A SQLite database with `rows` rows in table t.
pub fn make_db(path: &Path, rows: u32) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO t SELECT i, printf('value %d', i) FROM n;"
    ))
    .unwrap();
}

/// The rows of table t and SQLite's integrity verdict.
pub fn db_rows(path: &Path) -> (i64, String) {
    let c = rusqlite::Connection::open(path).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    (n, ok)
}
