//! Misuse at the C boundary (`tests/c/misuse.c`): every case returns its documented code,
//! plain and under AddressSanitizer (which fails the run on any invalid memory access,
//! use after free or leak on the C side, e.g. reading a completed `VDC_Command`). Also
//! checks that the header's numbers are the Rust library's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn run_misuse(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("misuse");
    compile(&source("c/misuse.c"), &exe, &libvdi_dir(), "vdi", extra);
    let r = run(&exe, &[]);
    r.ok();
    assert_eq!(r.field("failures"), "0");
}

#[test]
fn every_misuse_returns_its_documented_code() {
    run_misuse(&[]);
}

#[test]
fn every_misuse_is_clean_under_address_sanitizer() {
    run_misuse(&["-fsanitize=address", "-fno-omit-frame-pointer"]);
}

#[test]
fn the_header_numbers_are_the_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("codes.c");
    let mut c = String::from("#include <vdi/vdi_c.h>\n#include <stdio.h>\nint main(void) {\n");
    for code in vdi_rs::ErrorCode::ALL {
        c.push_str(&format!(
            "    printf(\"{0}=%d\\n\", (int){0});\n",
            code.name()
        ));
    }
    let win32 = [
        ("ERROR_SUCCESS", vdi_rs::completion::ERROR_SUCCESS),
        (
            "ERROR_INVALID_HANDLE",
            vdi_rs::completion::ERROR_INVALID_HANDLE,
        ),
        ("ERROR_HANDLE_EOF", vdi_rs::completion::ERROR_HANDLE_EOF),
        (
            "ERROR_NOT_SUPPORTED",
            vdi_rs::completion::ERROR_NOT_SUPPORTED,
        ),
        (
            "ERROR_INVALID_PARAMETER",
            vdi_rs::completion::ERROR_INVALID_PARAMETER,
        ),
        ("ERROR_DISK_FULL", vdi_rs::completion::ERROR_DISK_FULL),
        (
            "ERROR_OPERATION_ABORTED",
            vdi_rs::completion::ERROR_OPERATION_ABORTED,
        ),
        (
            "ERROR_NO_DATA_DETECTED",
            vdi_rs::completion::ERROR_NO_DATA_DETECTED,
        ),
        ("ERROR_IO_DEVICE", vdi_rs::completion::ERROR_IO_DEVICE),
        (
            "ERROR_NO_SYSTEM_RESOURCES",
            vdi_rs::completion::ERROR_NO_SYSTEM_RESOURCES,
        ),
        ("VDF_WriteMedia", vdi_rs::features::WRITE_MEDIA),
        ("VDF_ReadMedia", vdi_rs::features::READ_MEDIA),
        ("VDF_RequestComplete", vdi_rs::features::REQUEST_COMPLETE),
        ("VDF_CompleteEnabled", vdi_rs::features::COMPLETE_ENABLED),
        ("VDF_LikeTape", vdi_rs::features::LIKE_TAPE),
        ("VDF_LatchStats", vdi_rs::features::LATCH_STATS),
        ("INFINITE", vdi_rs::INFINITE),
    ];
    for (name, _) in win32 {
        c.push_str(&format!(
            "    printf(\"{name}=%u\\n\", (unsigned){name});\n"
        ));
    }
    for code in vdi_rs::CommandCode::ALL {
        let name = code.name().unwrap();
        c.push_str(&format!(
            "    printf(\"{name}=%u\\n\", (unsigned){name});\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    std::fs::write(&src, c).unwrap();
    let exe = dir.path().join("codes");
    compile(&src, &exe, &libvdi_dir(), "vdi", &[]);
    let out = run(&exe, &[]);
    out.ok();
    for code in vdi_rs::ErrorCode::ALL {
        assert_eq!(
            out.num(code.name()),
            i64::from(code.as_hresult()),
            "{}",
            code.name()
        );
    }
    for (name, v) in win32 {
        assert_eq!(out.num(name), i64::from(v), "{name}");
    }
    for code in vdi_rs::CommandCode::ALL {
        let name = code.name().unwrap();
        assert_eq!(out.num(name), i64::from(code.value()), "{name}");
    }
}

#[test]
fn libvdi_exports_every_function_of_the_header() {
    let header = std::fs::read_to_string(include_dir().join("vdi/vdi_c.h")).unwrap();
    let declared: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with("//") && l.contains("vdi_") && l.trim_end().ends_with(");"))
        .filter_map(|l| {
            let i = l.find("vdi_")?;
            l[i..].split('(').next()
        })
        .collect();
    assert!(declared.len() >= 30, "{declared:?}");
    let so = libvdi_dir().join("libvdi.so");
    let nm = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm (binutils)");
    let nm = String::from_utf8_lossy(&nm.stdout);
    for f in &declared {
        assert!(
            nm.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} is declared but not exported"
        );
    }
    assert!(
        libvdi_dir().join("libvdi.a").exists(),
        "libvdi.a is built too"
    );
}
