//! The protocol layer: the shared layout, the rings, the event counts and the socket
//! messages. Plain data and atomics; the only `unsafe` is where a mapped segment is
//! viewed as the structures of [`layout`].
//!
//! ```
//! use vdi::protocol::layout::QueueGeometry;
//! // 8 buffers on 2 devices: 16 slots per device (never fewer), 1600 bytes per device.
//! let g = QueueGeometry::for_buffers(2, 8);
//! assert_eq!(g.capacity, 16);
//! assert_eq!(g.stride(), 448 + 2 * 64 + 16 * 64);
//! ```

pub mod event;
pub mod layout;
pub mod msg;
pub mod ring;
pub mod sync;
