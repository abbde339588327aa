//! The build id `vdi --version` shows: the git commit (with `-dirty` when the tree had
//! changes) and the build date, or `VDI_BUILD_ID` when set (a packager's own id).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=VDI_BUILD_ID");
    let id = std::env::var("VDI_BUILD_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuilt when HEAD moves (a commit, a checkout).
            for p in ["HEAD", "index"] {
                if let Some(path) = git(&["rev-parse", "--git-path", p]) {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(path) = git(&["rev-parse", "--git-path", &r])
            {
                println!("cargo:rerun-if-changed={path}");
            }
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_default();
            Some(format!(
                "{commit}{} {date}",
                if dirty { "-dirty" } else { "" }
            ))
        });
    println!(
        "cargo:rustc-env=VDI_BUILD_ID={}",
        id.unwrap_or_else(|| "unknown build".into()).trim()
    );
}
