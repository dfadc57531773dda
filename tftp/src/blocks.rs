//! Cutting content into consecutive DATA payloads, in octet or netascii form.
//!
//! Blocks are produced strictly in order and exactly once; the transfer keeps
//! the produced packets for retransmission, which is what lets netascii
//! (whose output offsets do not map to file offsets) share the same window
//! logic as octet.

use std::io;

use crate::packet::Mode;
use crate::source::Content;

/// Raw bytes read per refill in netascii mode.
const NETASCII_CHUNK: usize = 16 * 1024;

pub(crate) struct BlockReader {
    content: Content,
    /// Next unread offset in the content.
    offset: u64,
    netascii: Option<Netascii>,
}

struct Netascii {
    raw: Vec<u8>,
    pos: usize,
    /// Second byte of a CR LF / CR NUL pair that did not fit in the previous
    /// block.
    pending: Option<u8>,
    eof: bool,
}

impl BlockReader {
    pub(crate) fn new(content: Content, mode: Mode) -> BlockReader {
        let netascii = match mode {
            Mode::Octet => None,
            Mode::Netascii => Some(Netascii {
                raw: Vec::with_capacity(NETASCII_CHUNK),
                pos: 0,
                pending: None,
                eof: false,
            }),
        };
        BlockReader {
            content,
            offset: 0,
            netascii,
        }
    }

    /// Fills `out` with the next payload; a count below `out.len()` marks the
    /// final block.
    pub(crate) fn next_block(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.netascii {
            None => {
                let n = self.content.read_at(out, self.offset)?;
                self.offset += n as u64;
                Ok(n)
            }
            Some(state) => {
                let mut filled = 0;
                while filled < out.len() {
                    if let Some(b) = state.pending.take() {
                        out[filled] = b;
                        filled += 1;
                        continue;
                    }
                    if state.pos == state.raw.len() {
                        if state.eof {
                            break;
                        }
                        state.raw.resize(NETASCII_CHUNK, 0);
                        let n = self.content.read_at(&mut state.raw, self.offset)?;
                        self.offset += n as u64;
                        state.raw.truncate(n);
                        state.pos = 0;
                        if n == 0 {
                            state.eof = true;
                            break;
                        }
                    }
                    let b = state.raw[state.pos];
                    state.pos += 1;
                    // RFC 764 netascii: newline is CR LF, a bare CR is CR NUL.
                    match b {
                        b'\n' => {
                            out[filled] = b'\r';
                            state.pending = Some(b'\n');
                        }
                        b'\r' => {
                            out[filled] = b'\r';
                            state.pending = Some(0);
                        }
                        b => out[filled] = b,
                    }
                    filled += 1;
                }
                Ok(filled)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn all_blocks(content: &'static [u8], mode: Mode, size: usize) -> Vec<Vec<u8>> {
        let mut r = BlockReader::new(Content::Bytes(Bytes::from_static(content)), mode);
        let mut blocks = Vec::new();
        loop {
            let mut buf = vec![0u8; size];
            let n = r.next_block(&mut buf).unwrap();
            buf.truncate(n);
            blocks.push(buf);
            if n < size {
                return blocks;
            }
        }
    }

    #[test]
    fn octet_ends_with_empty_block_on_exact_multiple() {
        let b = all_blocks(b"abcdefgh", Mode::Octet, 4);
        assert_eq!(b, vec![b"abcd".to_vec(), b"efgh".to_vec(), vec![]]);
    }

    #[test]
    fn netascii_expands_across_block_boundaries() {
        let b = all_blocks(b"abc\nd\re", Mode::Netascii, 4);
        let joined: Vec<u8> = b.concat();
        assert_eq!(joined, b"abc\r\nd\r\0e");
        assert_eq!(b[0], b"abc\r");
        assert_eq!(b[1], b"\nd\r\0");
        assert_eq!(b[2], b"e");
    }
}
