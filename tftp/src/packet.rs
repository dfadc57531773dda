//! TFTP packets on the wire: parsing borrowed views out of a datagram and
//! serializing into caller-owned buffers.
//!
//! Parsing borrows from the receive buffer so the hot path (one ACK per
//! window) never allocates; only option lists collect into a `Vec`.

use thiserror::Error;

/// Largest block size RFC 2348 allows (65535 minus IP and UDP headers).
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Block size when none is negotiated (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Opcode plus block number.
pub const DATA_HEADER_LEN: usize = 4;

/// The opcodes of RFC 1350 and RFC 2347.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Opcode {
    Rrq = 1,
    Wrq = 2,
    Data = 3,
    Ack = 4,
    Error = 5,
    Oack = 6,
}

impl Opcode {
    fn from_u16(v: u16) -> Option<Opcode> {
        Some(match v {
            1 => Opcode::Rrq,
            2 => Opcode::Wrq,
            3 => Opcode::Data,
            4 => Opcode::Ack,
            5 => Opcode::Error,
            6 => Opcode::Oack,
            _ => return None,
        })
    }
}

/// Error codes of RFC 1350 (0-7) and RFC 2347 (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionNegotiation = 8,
}

/// Transfer modes of RFC 1350; "mail" is obsolete and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

impl Mode {
    /// Modes are case-insensitive on the wire ("OCTET", "octet", "Octet" all
    /// occur in PXE ROMs).
    pub fn parse(s: &str) -> Option<Mode> {
        if s.eq_ignore_ascii_case("octet") {
            Some(Mode::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Some(Mode::Netascii)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
        }
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a str,
    /// Kept raw so the server can answer an RRQ with an unsupported mode with
    /// an ERROR rather than treating it as garbage.
    pub mode: &'a str,
    /// RFC 2347 options in the order the client sent them.
    pub options: Vec<(&'a str, &'a str)>,
}

/// One parsed datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: &'a str },
    Oack { options: Vec<(&'a str, &'a str)> },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("packet shorter than its header")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("string field not NUL-terminated")]
    Unterminated,
    #[error("string field is not valid UTF-8")]
    NotUtf8,
    #[error("empty filename")]
    EmptyFilename,
}

/// Splits off one NUL-terminated string.
fn take_str(buf: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated)?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| ParseError::NotUtf8)?;
    Ok((s, &buf[nul + 1..]))
}

/// Parses `name\0value\0` pairs. Lenient at the tail because real PXE ROMs
/// pad requests with NULs or cut the last option short; what cannot be read
/// as a complete pair is dropped, as RFC 2347 lets a server ignore options.
fn take_options(mut buf: &[u8]) -> Result<Vec<(&str, &str)>, ParseError> {
    let mut options = Vec::new();
    while !buf.is_empty() {
        let Ok((name, rest)) = take_str(buf) else {
            break;
        };
        if name.is_empty() {
            break;
        }
        let Ok((value, rest)) = take_str(rest) else {
            break;
        };
        options.push((name, value));
        buf = rest;
    }
    Ok(options)
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = take_str(body)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let (mode, rest) = take_str(rest)?;
    let options = take_options(rest)?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

impl<'a> Packet<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if buf.len() < 2 {
            return Err(ParseError::Truncated);
        }
        let raw = u16::from_be_bytes([buf[0], buf[1]]);
        let op = Opcode::from_u16(raw).ok_or(ParseError::UnknownOpcode(raw))?;
        let body = &buf[2..];
        Ok(match op {
            Opcode::Rrq => Packet::Rrq(parse_request(body)?),
            Opcode::Wrq => Packet::Wrq(parse_request(body)?),
            Opcode::Data => {
                if body.len() < 2 {
                    return Err(ParseError::Truncated);
                }
                Packet::Data {
                    block: u16::from_be_bytes([body[0], body[1]]),
                    data: &body[2..],
                }
            }
            Opcode::Ack => {
                // Trailing bytes after the block number are tolerated: some
                // clients send ACKs padded to a minimum frame size.
                if body.len() < 2 {
                    return Err(ParseError::Truncated);
                }
                Packet::Ack {
                    block: u16::from_be_bytes([body[0], body[1]]),
                }
            }
            Opcode::Error => {
                if body.len() < 2 {
                    return Err(ParseError::Truncated);
                }
                let code = u16::from_be_bytes([body[0], body[1]]);
                // A missing terminator or bad UTF-8 in the message is common
                // and harmless; the code is what matters.
                let msg = &body[2..];
                let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
                let message = std::str::from_utf8(&msg[..end]).unwrap_or("");
                Packet::Error { code, message }
            }
            Opcode::Oack => Packet::Oack {
                options: take_options(body)?,
            },
        })
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(r) => encode_request(out, Opcode::Rrq, r),
            Packet::Wrq(r) => encode_request(out, Opcode::Wrq, r),
            Packet::Data { block, data } => {
                out.extend_from_slice(&(Opcode::Data as u16).to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => out.extend_from_slice(&ack(*block)),
            Packet::Error { code, message } => {
                out.extend_from_slice(&(Opcode::Error as u16).to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
                out.push(0);
            }
            Packet::Oack { options } => {
                out.extend_from_slice(&(Opcode::Oack as u16).to_be_bytes());
                for (name, value) in options {
                    push_str(out, name);
                    push_str(out, value);
                }
            }
        }
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn encode_request(out: &mut Vec<u8>, op: Opcode, r: &Request<'_>) {
    out.extend_from_slice(&(op as u16).to_be_bytes());
    push_str(out, r.filename);
    push_str(out, r.mode);
    for (name, value) in &r.options {
        push_str(out, name);
        push_str(out, value);
    }
}

/// An ACK datagram.
pub fn ack(block: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&(Opcode::Ack as u16).to_be_bytes());
    b[2..].copy_from_slice(&block.to_be_bytes());
    b
}

/// Writes a DATA header into the first four bytes of a packet buffer, so
/// file data can be read straight into the buffer behind it.
pub fn write_data_header(buf: &mut [u8], block: u16) {
    buf[..2].copy_from_slice(&(Opcode::Data as u16).to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

/// An ERROR datagram. Messages are cut to keep the packet within the
/// 512-byte size every client accepts.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut end = message.len().min(400);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(5 + end);
    Packet::Error {
        code: code as u16,
        message: &message[..end],
    }
    .encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options() {
        let raw = b"\x00\x01/pxelinux.0\x00OCTET\x00blksize\x001468\x00tsize\x000\x00";
        let Ok(Packet::Rrq(r)) = Packet::parse(raw) else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "/pxelinux.0");
        assert_eq!(Mode::parse(r.mode), Some(Mode::Octet));
        assert_eq!(r.options, vec![("blksize", "1468"), ("tsize", "0")]);
    }

    #[test]
    fn tolerates_padding_and_dangling_option() {
        let raw = b"\x00\x01f\x00octet\x00blksize\x001024\x00tsize\x00\x00\x00\x00";
        let Ok(Packet::Rrq(r)) = Packet::parse(raw) else {
            panic!("not an RRQ")
        };
        assert_eq!(r.options, vec![("blksize", "1024"), ("tsize", "")]);
        let raw = b"\x00\x01f\x00octet\x00blksize";
        let Ok(Packet::Rrq(r)) = Packet::parse(raw) else {
            panic!("not an RRQ")
        };
        assert!(r.options.is_empty());
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Packet::parse(b""), Err(ParseError::Truncated));
        assert_eq!(
            Packet::parse(b"\x00\x09"),
            Err(ParseError::UnknownOpcode(9))
        );
        assert_eq!(Packet::parse(b"\x00\x01abc"), Err(ParseError::Unterminated));
        assert_eq!(
            Packet::parse(b"\x00\x01\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
        assert_eq!(Packet::parse(b"\x00\x04\x01"), Err(ParseError::Truncated));
    }

    #[test]
    fn roundtrips() {
        let packets = [
            Packet::Ack { block: 65535 },
            Packet::Data {
                block: 7,
                data: b"hello",
            },
            Packet::Error {
                code: 1,
                message: "File not found",
            },
            Packet::Oack {
                options: vec![("blksize", "1468"), ("windowsize", "16")],
            },
            Packet::Wrq(Request {
                filename: "x",
                mode: "octet",
                options: vec![],
            }),
        ];
        for p in packets {
            let mut out = Vec::new();
            p.encode(&mut out);
            assert_eq!(Packet::parse(&out), Ok(p));
        }
    }

    #[test]
    fn error_message_is_truncated_on_char_boundary() {
        let msg = "é".repeat(300);
        let e = error(ErrorCode::NotDefined, &msg);
        assert!(e.len() <= 405);
        assert!(matches!(
            Packet::parse(&e),
            Ok(Packet::Error { code: 0, .. })
        ));
    }
}
