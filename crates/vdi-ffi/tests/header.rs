//! `include/vdi/vdi_c.h` is exactly what cbindgen makes of this crate: a C function,
//! struct or field changed in Rust without regenerating the header fails here.
//!
//! To regenerate: `VDI_BLESS=1 cargo test -p vdi-ffi --test header`.

use std::path::{Path, PathBuf};

fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include/vdi/vdi_c.h")
}

#[test]
fn checked_in_header_is_cbindgen_output() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(Path::new(dir).join("cbindgen.toml"))
        .expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = header_path();
    if std::env::var_os("VDI_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    if checked_in != fresh {
        let fresh = String::from_utf8_lossy(&fresh);
        let old = String::from_utf8_lossy(&checked_in);
        let first = fresh
            .lines()
            .zip(old.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(fresh.lines().count().min(old.lines().count()));
        panic!(
            "{} differs from cbindgen's output from line {} on:\n  generated: {:?}\n  checked in: {:?}\nRegenerate it with: VDI_BLESS=1 cargo test -p vdi-ffi --test header",
            path.display(),
            first + 1,
            fresh.lines().nth(first),
            old.lines().nth(first)
        );
    }
}
