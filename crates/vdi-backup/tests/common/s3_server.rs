//! A real S3 server for tests: `s3s-fs` (which checks request signatures), on 127.0.0.1
//! at a free port, with its own access key, secret and root directory, killed when
//! dropped. `S3Server::start` returns `None` (and the test prints `SKIPPED: ...` and
//! passes) when `s3s-fs` is not installed, unless `VDI_REQUIRE_S3=1`, when it fails.
//!
//! s3s-fs keeps a bucket as a directory of its root, and an open multipart upload as files
//! `.upload-UUID.json` (and `.upload_id-UUID.part-N`) there; it has no
//! ListMultipartUploads, so [`S3Server::open_uploads`] reads its root.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key and secret the server accepts.
pub const KEY_ID: &str = "AKIDVDITEST";
pub const SECRET: &str = "vdi-test-secret-0123456789";
/// The bucket every server has.
pub const BUCKET: &str = "vdi-test";

pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
}

/// The `s3s-fs` program, if installed (on PATH or in ~/.cargo/bin).
pub fn s3s_fs() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// Whether the S3 tests must run (`VDI_REQUIRE_S3=1`).
pub fn required() -> bool {
    std::env::var("VDI_REQUIRE_S3").is_ok_and(|v| v == "1")
}

impl S3Server {
    /// Starts a server, or `None` (after printing why) when s3s-fs is not installed and
    /// not required.
    pub fn start(test: &str) -> Option<S3Server> {
        let Some(bin) = s3s_fs() else {
            assert!(
                !required(),
                "VDI_REQUIRE_S3=1 but s3s-fs is not installed: cargo install --locked s3s-fs@0.14.1 --features binary"
            );
            eprintln!(
                "SKIPPED: {test}: s3s-fs is not installed (cargo install --locked s3s-fs@0.14.1 --features binary)"
            );
            return None;
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut s = S3Server {
            child: None,
            port: 0,
            root,
            _tmp: tmp,
        };
        // A free port, then the server on it (again, should another take it meanwhile).
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            s.port = port;
            if s.spawn(&bin) {
                return Some(s);
            }
        }
        panic!("s3s-fs did not start");
    }

    fn spawn(&mut self, bin: &Path) -> bool {
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL), keeping its root.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and root.
    pub fn restart(&mut self) {
        self.kill();
        let bin = s3s_fs().unwrap();
        for _ in 0..50 {
            if self.spawn(&bin) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("s3s-fs did not start again on port {}", self.port);
    }

    /// Makes another bucket.
    pub fn make_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).unwrap();
    }

    /// The multipart uploads it holds open (their upload files in its root).
    pub fn open_uploads(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.root)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
            .collect();
        v.sort();
        v
    }

    /// The file holding object `key` of the test bucket.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// The object keys under `prefix` of the test bucket (files, relative to the bucket).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let base = self.root.join(BUCKET);
        let mut out = Vec::new();
        walk(&base.join(prefix), &base, &mut out);
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
