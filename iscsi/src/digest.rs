//! CRC32C header and data digests (RFC 7143 §12.1, Appendix B.4). The
//! digest travels least-significant byte first, which is why `to_le_bytes`
//! is used everywhere a digest meets the wire.

/// CRC32C of `parts` taken as one contiguous buffer.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |crc, p| crc32c::crc32c_append(crc, p))
}

/// The data digest covers the data segment plus its padding bytes.
pub fn data_digest(data: &[u8]) -> u32 {
    let pad = crate::pdu::padded(data.len()) - data.len();
    crc32c(&[data, &[0u8; 3][..pad]])
}

/// Reads a digest as it appears on the wire.
pub fn read_digest(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3720 Appendix B.4 test vectors.
    #[test]
    fn rfc_vectors() {
        assert_eq!(
            crc32c(&[&[0u8; 32]]).to_le_bytes(),
            [0xaa, 0x36, 0x91, 0x8a]
        );
        assert_eq!(
            crc32c(&[&[0xffu8; 32]]).to_le_bytes(),
            [0x43, 0xab, 0xa8, 0x62]
        );
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&[&inc]).to_le_bytes(), [0x4e, 0x79, 0xdd, 0x46]);
    }

    #[test]
    fn split_input_matches_whole() {
        let v: Vec<u8> = (0..100u8).collect();
        assert_eq!(crc32c(&[&v[..37], &v[37..]]), crc32c(&[&v]));
    }

    #[test]
    fn data_digest_includes_padding() {
        assert_eq!(data_digest(&[1, 2, 3]), crc32c(&[&[1, 2, 3, 0]]));
        assert_eq!(read_digest(&[1, 0, 0, 0]), Some(1));
        assert_eq!(read_digest(&[1, 0]), None);
    }
}
