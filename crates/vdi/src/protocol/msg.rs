//! Messages on the rendezvous socket (the slow path: attach, segments, goodbye).
//!
//! Every message is one `SOCK_SEQPACKET` packet: a 12-byte header (magic `"VDIm"`,
//! version, kind) and a fixed body, little-endian. Descriptors travel as `SCM_RIGHTS`.
//! Decoding checks every length; an unknown or short message is an error, never a panic.
//!
//! ```
//! use vdi::protocol::msg::{Msg, Role};
//! let m = Msg::Hello { role: Role::Server, pid: 42 };
//! assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
//! assert!(Msg::decode(b"garbage").is_err());
//! ```

const MAGIC: u32 = u32::from_le_bytes(*b"VDIm");
const VERSION: u32 = 1;
/// Largest encoded message.
pub const MAX_MSG: usize = 512;
const MAX_REASON: usize = 400;

/// Who is connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The engine (server role).
    Server,
    /// A secondary client process.
    Secondary,
    /// An observer (`vdi sets`): is sent the control and queue segments to read, and
    /// takes no part in the set.
    Observer,
}

/// Which segment a [`Msg::Segment`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// The queue segment.
    Queues,
    /// Buffer area `index`.
    Area,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// First message of a connecting process.
    Hello {
        /// Its role.
        role: Role,
        /// Its process id (informational; the kernel's credentials decide).
        pid: u32,
    },
    /// The creator accepts; the control segment is attached. `segments` Segment messages
    /// follow (for a secondary: the queues and the areas that exist).
    Welcome {
        /// The number the creator gave this process (secondary clients: 2, 3, ...).
        process_no: u32,
        /// Segment messages that follow.
        segments: u32,
    },
    /// The creator refuses, with a `VD_E_*` code and a reason for a person.
    Refused {
        /// The code.
        code: i32,
        /// What to change.
        reason: String,
    },
    /// A segment (one descriptor attached).
    Segment {
        /// Which.
        kind: SegmentKind,
        /// Area index; for the queues, the queue capacity (slots per device).
        index: u32,
        /// Its size in bytes.
        size: u64,
    },
    /// A secondary asks the primary for buffer area `index`.
    AreaRequest {
        /// The area.
        index: u32,
    },
    /// A clean goodbye: the sender closes on purpose.
    Bye,
}

/// A message that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadMessage(pub &'static str);

fn put(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BadMessage> {
        let (a, b) = self
            .0
            .split_at_checked(4)
            .ok_or(BadMessage("message too short"))?;
        self.0 = b;
        Ok(u32::from_le_bytes([a[0], a[1], a[2], a[3]]))
    }

    fn u64(&mut self) -> Result<u64, BadMessage> {
        let lo = self.u32()? as u64;
        let hi = self.u32()? as u64;
        Ok(lo | hi << 32)
    }
}

impl Msg {
    fn kind(&self) -> u32 {
        match self {
            Msg::Hello { .. } => 1,
            Msg::Welcome { .. } => 2,
            Msg::Refused { .. } => 3,
            Msg::Segment { .. } => 4,
            Msg::AreaRequest { .. } => 5,
            Msg::Bye => 6,
        }
    }

    /// The packet bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        put(&mut v, MAGIC);
        put(&mut v, VERSION);
        put(&mut v, self.kind());
        match self {
            Msg::Hello { role, pid } => {
                put(
                    &mut v,
                    match role {
                        Role::Server => 1,
                        Role::Secondary => 2,
                        Role::Observer => 3,
                    },
                );
                put(&mut v, *pid);
            }
            Msg::Welcome {
                process_no,
                segments,
            } => {
                put(&mut v, *process_no);
                put(&mut v, *segments);
            }
            Msg::Refused { code, reason } => {
                put(&mut v, *code as u32);
                let mut r = reason.as_bytes();
                if r.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    r = &r[..end];
                }
                put(&mut v, r.len() as u32);
                v.extend_from_slice(r);
            }
            Msg::Segment { kind, index, size } => {
                put(&mut v, if *kind == SegmentKind::Queues { 1 } else { 2 });
                put(&mut v, *index);
                put(&mut v, *size as u32);
                put(&mut v, (*size >> 32) as u32);
            }
            Msg::AreaRequest { index } => put(&mut v, *index),
            Msg::Bye => {}
        }
        v
    }

    /// Parses a packet.
    pub fn decode(bytes: &[u8]) -> Result<Msg, BadMessage> {
        let mut r = Reader(bytes);
        if r.u32()? != MAGIC {
            return Err(BadMessage("not a vdi message (bad magic)"));
        }
        if r.u32()? != VERSION {
            return Err(BadMessage(
                "the peer speaks another version of the vdi protocol",
            ));
        }
        let msg = match r.u32()? {
            1 => Msg::Hello {
                role: match r.u32()? {
                    1 => Role::Server,
                    2 => Role::Secondary,
                    3 => Role::Observer,
                    _ => return Err(BadMessage("unknown role")),
                },
                pid: r.u32()?,
            },
            2 => Msg::Welcome {
                process_no: r.u32()?,
                segments: r.u32()?,
            },
            3 => {
                let code = r.u32()? as i32;
                let len = r.u32()? as usize;
                if len > MAX_REASON || r.0.len() < len {
                    return Err(BadMessage("bad reason length"));
                }
                let reason = String::from_utf8_lossy(&r.0[..len]).into_owned();
                r.0 = &r.0[len..];
                Msg::Refused { code, reason }
            }
            4 => Msg::Segment {
                kind: match r.u32()? {
                    1 => SegmentKind::Queues,
                    2 => SegmentKind::Area,
                    _ => return Err(BadMessage("unknown segment kind")),
                },
                index: r.u32()?,
                size: r.u64()?,
            },
            5 => Msg::AreaRequest { index: r.u32()? },
            6 => Msg::Bye,
            _ => return Err(BadMessage("unknown message kind")),
        };
        if !r.0.is_empty() {
            return Err(BadMessage("trailing bytes"));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for m in [
            Msg::Hello {
                role: Role::Secondary,
                pid: 7,
            },
            Msg::Welcome {
                process_no: 2,
                segments: 3,
            },
            Msg::Refused {
                code: -5,
                reason: "no ✓".into(),
            },
            Msg::Segment {
                kind: SegmentKind::Area,
                index: 3,
                size: 1 << 40,
            },
            Msg::AreaRequest { index: 9 },
            Msg::Bye,
        ] {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = Msg::Segment {
            kind: SegmentKind::Queues,
            index: 0,
            size: 4096,
        }
        .encode();
        for n in 0..b.len() {
            assert!(Msg::decode(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Msg::decode(&long).is_err());
    }
}
