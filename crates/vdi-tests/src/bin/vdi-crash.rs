//! `vdi-crash`: the crash campaign (see `vdi_tests::campaign`).
//!
//! ```text
//! cargo build --release -p vdi-cli -p vdi-tests
//! target/release/vdi-crash --runs 600 --vdi target/release/vdi --keep-going
//! ```
//! Exit status: 0 when no run failed, 1 when one did, 64 on a wrong command line.

use vdi_tests::campaign;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match campaign::parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if e.is_empty() {
                print!("{}", campaign::USAGE);
                std::process::exit(0);
            }
            eprintln!("vdi-crash: {e}\n\n{}", campaign::USAGE);
            std::process::exit(64);
        }
    };
    if !o.peer.exists() {
        eprintln!(
            "vdi-crash: the peer binary {} does not exist (build it: cargo build -p vdi-tests, or give --peer PATH)",
            o.peer.display()
        );
        std::process::exit(64);
    }
    println!(
        "vdi-crash: {} runs, seed {} (repeat with --seed {})",
        o.runs, o.seed, o.seed
    );
    let sum = campaign::run(&o, &mut |l| println!("{l}"));
    print!("{}", sum.table());
    if o.json {
        println!("{}", sum.json());
    }
    std::process::exit(i32::from(!sum.failed().is_empty()));
}
