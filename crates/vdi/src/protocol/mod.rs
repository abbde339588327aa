//! The protocol layer: the shared layout, the rings, the event counts and the socket
//! messages. Plain data and atomics; the only `unsafe` is where a mapped segment is
//! viewed as the structures of [`layout`].

pub mod event;
pub mod layout;
pub mod msg;
pub mod ring;
