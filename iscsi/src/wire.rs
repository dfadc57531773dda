//! Framing: cutting complete PDUs out of a receive buffer (with digest
//! checks) and appending outgoing PDUs to a send buffer. Neither side does
//! I/O by itself beyond `Reader::fill`, so a connection reads as much as the
//! socket has, handles every complete PDU, and flushes once.

use std::io::{self, Read};
use std::ops::Range;

use crate::digest;
use crate::pdu::{padded, segment_lengths, Bhs, PduError, BHS_LEN};
use crate::Error;

/// Which digests are in force on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// One received PDU. Ranges index the reader's buffer and stay valid until
/// the reader is filled again.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The raw BHS, kept so that a Reject can quote it.
    pub raw: [u8; BHS_LEN],
    pub bhs: Result<Bhs, PduError>,
    pub ahs: Range<usize>,
    pub data: Range<usize>,
}

pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    pub fn new(capacity: usize) -> Self {
        Reader {
            buf: vec![0u8; capacity.max(BHS_LEN * 4)],
            start: 0,
            end: 0,
        }
    }

    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        self.buf.get(r).unwrap_or(&[])
    }

    /// Appends bytes as if they had been read (tests and fuzzing).
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room(self.buffered() + bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `src`; returns 0 at end of stream.
    pub fn fill<R: Read>(&mut self, src: &mut R) -> io::Result<usize> {
        if self.end == self.buf.len() {
            self.make_room(self.buffered() + BHS_LEN);
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Ensures the buffer can hold `needed` bytes from `start`.
    fn make_room(&mut self, needed: usize) {
        if self.start > 0 && self.buf.len() - self.start < needed.max(BHS_LEN) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < needed {
            self.buf.resize(needed, 0);
        }
    }

    /// Cuts the next complete PDU, or returns None if more bytes are needed.
    /// `max_data` bounds the data segment, so a hostile length can never
    /// make the buffer grow beyond it.
    pub fn next_frame(&mut self, digests: Digests, max_data: u32) -> Result<Option<Frame>, Error> {
        let avail = self.buffered();
        if avail < BHS_LEN {
            self.make_room(BHS_LEN);
            return Ok(None);
        }
        let s = self.start;
        let (ahs_len, data_len) = segment_lengths(&self.buf[s..s + BHS_LEN])?;
        if data_len > max_data {
            return Err(PduError::DataTooLong(data_len, max_data).into());
        }
        let data_len = data_len as usize;
        let hd = if digests.header { 4 } else { 0 };
        let dd = if digests.data && data_len > 0 { 4 } else { 0 };
        let total = BHS_LEN + ahs_len + hd + padded(data_len) + dd;
        if avail < total {
            self.make_room(total);
            return Ok(None);
        }
        let hdr_end = s + BHS_LEN + ahs_len;
        if digests.header {
            let want = digest::crc32c(&[&self.buf[s..hdr_end]]);
            if digest::read_digest(&self.buf[hdr_end..]) != Some(want) {
                return Err(Error::Digest("header"));
            }
        }
        let data_start = hdr_end + hd;
        let data = data_start..data_start + data_len;
        if dd > 0 {
            let padded_end = data_start + padded(data_len);
            let want = digest::crc32c(&[&self.buf[data_start..padded_end]]);
            if digest::read_digest(&self.buf[padded_end..]) != Some(want) {
                return Err(Error::Digest("data"));
            }
        }
        let mut raw = [0u8; BHS_LEN];
        raw.copy_from_slice(&self.buf[s..s + BHS_LEN]);
        let frame = Frame {
            raw,
            bhs: Bhs::parse(&raw),
            ahs: s + BHS_LEN..hdr_end,
            data,
        };
        self.start += total;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(frame))
    }
}

/// Outgoing PDUs, batched.
#[derive(Default)]
pub struct Out {
    pub buf: Vec<u8>,
    pub digests: Digests,
}

impl Out {
    pub fn new() -> Self {
        Out {
            buf: Vec::with_capacity(256 * 1024),
            digests: Digests::default(),
        }
    }

    /// Appends a PDU whose data segment is the concatenation of `parts`.
    pub fn pdu(&mut self, bhs: &Bhs, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut hdr = [0u8; BHS_LEN];
        bhs.write(0, len as u32, &mut hdr);
        self.buf.extend_from_slice(&hdr);
        if self.digests.header {
            self.buf
                .extend_from_slice(&digest::crc32c(&[&hdr]).to_le_bytes());
        }
        let data_start = self.buf.len();
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        let pad = padded(len) - len;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        if self.digests.data && len > 0 {
            let crc = digest::crc32c(&[&self.buf[data_start..]]);
            self.buf.extend_from_slice(&crc.to_le_bytes());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, RESERVED_TAG};

    fn nop(data: &[u8], digests: Digests) -> Vec<u8> {
        let mut out = Out::new();
        out.digests = digests;
        let b = Bhs::NopOut(NopOut {
            immediate: true,
            itt: 1,
            ttt: RESERVED_TAG,
            ..Default::default()
        });
        out.pdu(&b, &[data]);
        out.buf
    }

    #[test]
    fn frames_are_cut_byte_by_byte() {
        for digests in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let wire = [nop(b"hello", digests), nop(b"", digests)].concat();
            let mut r = Reader::new(64);
            let mut frames = Vec::new();
            for b in &wire {
                r.push(&[*b]);
                while let Some(f) = r.next_frame(digests, 8192).unwrap() {
                    frames.push(r.slice(f.data.clone()).to_vec());
                }
            }
            assert_eq!(frames, vec![b"hello".to_vec(), Vec::new()]);
        }
    }

    #[test]
    fn digest_mismatch_and_oversize_are_errors() {
        let d = Digests {
            header: true,
            data: true,
        };
        let mut wire = nop(b"hello", d);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let mut r = Reader::new(64);
        r.push(&wire);
        assert!(matches!(r.next_frame(d, 8192), Err(Error::Digest("data"))));
        let mut r = Reader::new(64);
        r.push(&nop(&[0u8; 600], Digests::default()));
        assert!(matches!(
            r.next_frame(Digests::default(), 512),
            Err(Error::Pdu(PduError::DataTooLong(600, 512)))
        ));
    }
}
