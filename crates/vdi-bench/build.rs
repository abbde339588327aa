//! Compiles the C client's serving loop (`c/c_client.c`) against the checked-in C header,
//! with the system's C compiler (the one Rust already links with), into a static library
//! linked into the bench. See `src/libvdi.rs`.

fn main() {
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include");
    println!("cargo:rerun-if-changed=c/c_client.c");
    println!(
        "cargo:rerun-if-changed={}",
        include.join("vdi/vdi_c.h").display()
    );
    cc::Build::new()
        .file("c/c_client.c")
        .include(&include)
        .flag_if_supported("-std=c11")
        .warnings(true)
        .extra_warnings(true)
        .compile("vdi_bench_c");
}
