//! # vdi-bench — the pieces the benchmark program and the micro-benchmarks share
//!
//! The `vdi-bench` binary moves the same stream between two processes over several
//! transports (vdi, a pipe, a Unix stream socket, a hand-written shared-memory ring) and
//! compares them. Every transport uses the same producer work ([`work::fill`]) and the
//! same consumer work ([`work::checksum`]), so the figures differ only by the transport.
//!
//! ```
//! use vdi_bench::work;
//! let mut chunk = vec![0u8; 1 << 16];
//! let v = work::pattern(0, 3);
//! work::fill(&mut chunk, v);
//! assert_eq!(work::checksum(&chunk), work::expected_checksum(chunk.len(), v));
//! ```
//!
//! Modules: [`work`] (fill, checksum, how a stream is cut into chunks), [`wait`]
//! (spin-then-futex waiting on a shared word), [`raw_ring`] (the minimal shared-memory
//! ring the protocol is compared with), [`clock`] and [`mem`] (what each process reports),
//! [`libvdi`] (the C client: libvdi.so loaded at run time, driven by a loop written in C).

#![deny(unsafe_code)]

pub mod clock;
#[allow(unsafe_code)] // loads libvdi.so and calls its C entry points
pub mod libvdi;
#[allow(unsafe_code)] // one getrusage call
pub mod mem;
#[allow(unsafe_code)] // views a mapped segment as the ring's words and slots
pub mod raw_ring;
pub mod wait;
pub mod work;
