//! The protocol between storage agents that keeps a volume's copies equal.
//!
//! The primary of a replicated volume opens one TCP connection to each
//! replica, says who it is ([`Hello`]: volume, epoch, the volume's shared
//! key) and streams every change the logical unit makes, in the order it
//! applies them locally. The replica applies each [`Op`] in stream order and
//! answers with an [`Reply::Ack`] once it holds it (after an fdatasync for
//! [`OpKind::Sync`]); a [`Reply::Refused`] ends the connection.
//!
//! The epoch is the fence: the stack manager raises it whenever the primary
//! or the set of replicas changes, and a replica refuses anything older
//! than the epoch it was last given, so a deposed primary can no longer get
//! a write acknowledged.
//!
//! Frames are length-prefixed binary (`u32` big-endian length of the rest,
//! then a kind byte): a 4 KiB write costs 4 KiB and a few dozen bytes, not
//! an encoded document. Decoding never trusts a length it was sent.

use crate::ids::VolumeId;

/// Largest frame accepted: a 32 MiB write (the target's largest transfer)
/// and its header.
pub const MAX_FRAME: usize = (32 << 20) + 64;
/// Largest WRITE SAME pattern carried (one block).
pub const MAX_PATTERN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub volume: VolumeId,
    pub epoch: u64,
    /// The volume's replication key, which only its copies know.
    pub key: String,
}

/// The replica's answer to a [`Hello`] it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub size_bytes: u64,
    /// Regions (of [`Welcome::region_bytes`]) this copy changed without
    /// knowing that every other copy has the change: they may differ, so
    /// the primary sends them again.
    pub unsettled: Vec<u64>,
    pub region_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    PunchHole {
        offset: u64,
        len: u64,
    },
    ZeroRange {
        offset: u64,
        len: u64,
    },
    Pattern {
        offset: u64,
        len: u64,
        pattern: Vec<u8>,
    },
    SetLen {
        len: u64,
    },
    Sync,
}

/// One change, numbered in the primary's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub seq: u64,
    /// Every change up to here is held by every in-sync copy: a copy may
    /// forget that it changed those regions.
    pub settled: u64,
    pub kind: OpKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Welcome(Welcome),
    Ack {
        seq: u64,
    },
    Refused {
        reason: RefusedReason,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReason {
    /// The replica was given a newer epoch: the sender is no longer primary.
    StaleEpoch = 1,
    UnknownVolume = 2,
    BadKey = 3,
    /// The replica could not apply the change (its disk failed).
    Io = 4,
    Malformed = 5,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("frame is truncated")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

const HELLO: u8 = 1;
const WRITE: u8 = 2;
const PUNCH: u8 = 3;
const ZERO: u8 = 4;
const PATTERN: u8 = 5;
const SET_LEN: u8 = 6;
const SYNC: u8 = 7;
const WELCOME: u8 = 16;
const ACK: u8 = 17;
const REFUSED: u8 = 18;

/// Starts a frame in `out`; [`finish`] writes its length.
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

pub fn encode_hello(h: &Hello, out: &mut Vec<u8>) {
    let at = begin(out, HELLO);
    out.extend_from_slice(h.volume.0.as_bytes());
    out.extend_from_slice(&h.epoch.to_be_bytes());
    put_bytes(out, h.key.as_bytes());
    finish(out, at);
}

/// Encodes `op`; a write's data is copied once, into `out`.
pub fn encode_op(op: &Op, out: &mut Vec<u8>) {
    let kind = match &op.kind {
        OpKind::Write { .. } => WRITE,
        OpKind::PunchHole { .. } => PUNCH,
        OpKind::ZeroRange { .. } => ZERO,
        OpKind::Pattern { .. } => PATTERN,
        OpKind::SetLen { .. } => SET_LEN,
        OpKind::Sync => SYNC,
    };
    let at = begin(out, kind);
    out.extend_from_slice(&op.seq.to_be_bytes());
    out.extend_from_slice(&op.settled.to_be_bytes());
    match &op.kind {
        OpKind::Write { offset, data } => {
            out.extend_from_slice(&offset.to_be_bytes());
            put_bytes(out, data);
        }
        OpKind::PunchHole { offset, len } | OpKind::ZeroRange { offset, len } => {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
        }
        OpKind::Pattern {
            offset,
            len,
            pattern,
        } => {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            put_bytes(out, pattern);
        }
        OpKind::SetLen { len } => out.extend_from_slice(&len.to_be_bytes()),
        OpKind::Sync => {}
    }
    finish(out, at);
}

pub fn encode_reply(r: &Reply, out: &mut Vec<u8>) {
    match r {
        Reply::Welcome(w) => {
            let at = begin(out, WELCOME);
            out.extend_from_slice(&w.size_bytes.to_be_bytes());
            out.extend_from_slice(&w.region_bytes.to_be_bytes());
            out.extend_from_slice(&(w.unsettled.len() as u32).to_be_bytes());
            for r in &w.unsettled {
                out.extend_from_slice(&r.to_be_bytes());
            }
            finish(out, at);
        }
        Reply::Ack { seq } => {
            let at = begin(out, ACK);
            out.extend_from_slice(&seq.to_be_bytes());
            finish(out, at);
        }
        Reply::Refused { reason, message } => {
            let at = begin(out, REFUSED);
            out.push(*reason as u8);
            put_bytes(out, message.as_bytes());
            finish(out, at);
        }
    }
}

/// The body length a frame header announces, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n));
    }
    if n == 0 {
        return Err(WireError::Truncated);
    }
    Ok(n)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(WireError::TooLarge(n));
        }
        self.take(n)
    }
    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }
}

/// What a primary may send, decoded from one frame body (after the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Op(Op),
}

pub fn decode_request(body: &[u8]) -> Result<Request, WireError> {
    let mut r = Reader(body);
    let kind = r.u8()?;
    let req = if kind == HELLO {
        let mut id = [0u8; 16];
        id.copy_from_slice(r.take(16)?);
        let epoch = r.u64()?;
        let key = std::str::from_utf8(r.bytes(256)?)
            .map_err(|_| WireError::Malformed("key is not UTF-8"))?
            .to_string();
        Request::Hello(Hello {
            volume: VolumeId(uuid::Uuid::from_bytes(id)),
            epoch,
            key,
        })
    } else {
        if !(WRITE..=SYNC).contains(&kind) {
            return Err(WireError::UnknownKind(kind));
        }
        let seq = r.u64()?;
        let settled = r.u64()?;
        let kind = match kind {
            WRITE => {
                let offset = r.u64()?;
                let data = r.bytes(MAX_FRAME)?.to_vec();
                OpKind::Write { offset, data }
            }
            PUNCH => OpKind::PunchHole {
                offset: r.u64()?,
                len: r.u64()?,
            },
            ZERO => OpKind::ZeroRange {
                offset: r.u64()?,
                len: r.u64()?,
            },
            PATTERN => {
                let (offset, len) = (r.u64()?, r.u64()?);
                let pattern = r.bytes(MAX_PATTERN)?.to_vec();
                if pattern.is_empty() || len % pattern.len() as u64 != 0 {
                    return Err(WireError::Malformed("pattern does not tile the range"));
                }
                OpKind::Pattern {
                    offset,
                    len,
                    pattern,
                }
            }
            SET_LEN => OpKind::SetLen { len: r.u64()? },
            SYNC => OpKind::Sync,
            k => return Err(WireError::UnknownKind(k)),
        };
        Request::Op(Op { seq, settled, kind })
    };
    r.end()?;
    Ok(req)
}

/// Most regions a welcome may list: a 64 TiB volume in 1 MiB regions.
const MAX_REGIONS: usize = 1 << 26;

pub fn decode_reply(body: &[u8]) -> Result<Reply, WireError> {
    let mut r = Reader(body);
    let reply = match r.u8()? {
        WELCOME => {
            let size_bytes = r.u64()?;
            let region_bytes = r.u64()?;
            let n = r.u32()? as usize;
            if n > MAX_REGIONS || n * 8 > r.0.len() {
                return Err(WireError::Truncated);
            }
            let unsettled = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
            Reply::Welcome(Welcome {
                size_bytes,
                unsettled,
                region_bytes,
            })
        }
        ACK => Reply::Ack { seq: r.u64()? },
        REFUSED => {
            let reason = match r.u8()? {
                1 => RefusedReason::StaleEpoch,
                2 => RefusedReason::UnknownVolume,
                3 => RefusedReason::BadKey,
                4 => RefusedReason::Io,
                _ => RefusedReason::Malformed,
            };
            let message = String::from_utf8_lossy(r.bytes(4096)?).into_owned();
            Reply::Refused { reason, message }
        }
        k => return Err(WireError::UnknownKind(k)),
    };
    r.end()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let n = frame_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
        assert_eq!(n, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn requests_round_trip() {
        let hello = Hello {
            volume: VolumeId::new(),
            epoch: 7,
            key: "k".repeat(40),
        };
        let mut out = Vec::new();
        encode_hello(&hello, &mut out);
        assert_eq!(decode_request(body(&out)), Ok(Request::Hello(hello)));
        for kind in [
            OpKind::Write {
                offset: 4096,
                data: vec![7; 4096],
            },
            OpKind::PunchHole { offset: 1, len: 2 },
            OpKind::ZeroRange { offset: 3, len: 4 },
            OpKind::Pattern {
                offset: 0,
                len: 1024,
                pattern: vec![1; 512],
            },
            OpKind::SetLen { len: 1 << 30 },
            OpKind::Sync,
        ] {
            let op = Op {
                seq: 9,
                settled: 8,
                kind,
            };
            let mut out = Vec::new();
            encode_op(&op, &mut out);
            assert_eq!(decode_request(body(&out)), Ok(Request::Op(op)));
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Welcome(Welcome {
                size_bytes: 1 << 30,
                unsettled: vec![1, 5, 9],
                region_bytes: 1 << 20,
            }),
            Reply::Ack { seq: 3 },
            Reply::Refused {
                reason: RefusedReason::StaleEpoch,
                message: "epoch 3 < 4".into(),
            },
        ] {
            let mut out = Vec::new();
            encode_reply(&reply, &mut out);
            assert_eq!(decode_reply(body(&out)), Ok(reply));
        }
    }

    #[test]
    fn hostile_frames_are_errors() {
        assert_eq!(
            frame_len(u32::MAX.to_be_bytes()),
            Err(WireError::TooLarge(u32::MAX as usize))
        );
        assert!(decode_request(&[]).is_err());
        assert!(decode_request(&[WRITE, 0, 0]).is_err());
        // A write claiming more data than the frame holds.
        let mut f = vec![WRITE];
        f.extend_from_slice(&[0; 24]);
        f.extend_from_slice(&1000u32.to_be_bytes());
        assert_eq!(decode_request(&f), Err(WireError::Truncated));
        // A welcome claiming 2^32-1 regions in a few bytes.
        let mut w = vec![WELCOME];
        w.extend_from_slice(&[0; 16]);
        w.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_reply(&w).is_err());
        assert_eq!(decode_request(&[99]), Err(WireError::UnknownKind(99)));
    }
}
