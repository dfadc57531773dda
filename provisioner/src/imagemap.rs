//! Sparse deploys, in the manner of bmaptool: an image's allocated data,
//! cut into chunks that each carry their SHA-256. The boot environment
//! fetches and checks chunk by chunk and writes only those; the image's
//! holes are free space of its file systems, so what the target disk holds
//! there does not matter. A 2 GiB Debian image holds about 430 MiB of data,
//! and hashing in the boot environment (busybox, often on slow CPUs) is
//! what a deploy waits for.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Largest chunk: what the environment holds in RAM (tmpfs) at once.
pub const CHUNK_BYTES: u64 = 16 << 20;
/// Chunks start on this boundary, so the environment can `dd seek=` in MiB.
const ALIGN: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
}

/// The chunks of the image at `path`. Blocking: reads all its data.
pub fn chunks(path: &Path) -> std::io::Result<Vec<Chunk>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let ranges = aligned(&agent_support::fs::data_extents(&file)?, len);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in ranges {
        let mut offset = start;
        while offset < end {
            let length = (end - offset).min(CHUNK_BYTES);
            file.seek(SeekFrom::Start(offset))?;
            let mut hasher = Sha256::new();
            let mut left = length;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                file.read_exact(&mut buf[..n])?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            out.push(Chunk {
                offset,
                length,
                sha256: hex::encode(hasher.finalize()),
            });
            offset += length;
        }
    }
    Ok(out)
}

/// Extents widened to `ALIGN` boundaries (capped at `len`) and merged.
fn aligned(extents: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in extents {
        let s = s / ALIGN * ALIGN;
        let e = e.div_ceil(ALIGN).saturating_mul(ALIGN).min(len);
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The map as the environment reads it: `offset length sha256` per line.
pub fn render(chunks: &[Chunk]) -> String {
    chunks
        .iter()
        .map(|c| format!("{} {} {}\n", c.offset, c.length, c.sha256))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn extents_widen_to_mib_and_merge() {
        let m = 1 << 20;
        assert_eq!(
            aligned(&[(10, 20), (m + 5, m + 6), (5 * m, 5 * m + 1)], 5 * m + 100),
            [(0, 2 * m), (5 * m, 5 * m + 100)]
        );
    }

    #[test]
    fn a_sparse_image_maps_to_its_data_in_checked_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"boot", 0).unwrap();
        let data = vec![7u8; 20 << 20];
        f.write_all_at(&data, 32 << 20).unwrap();
        drop(f);
        let c = chunks(&p).unwrap();
        // Where the file system tracks holes: the first MiB, then 20 MiB in
        // two chunks. Without: the whole 64 MiB in 16 MiB chunks.
        let total: u64 = c.iter().map(|c| c.length).sum();
        assert!(total == 21 << 20 || total == 64 << 20, "{c:?}");
        assert!(c
            .iter()
            .all(|c| c.length <= CHUNK_BYTES && c.offset % ALIGN == 0));
        let bytes = std::fs::read(&p).unwrap();
        for ch in &c {
            let part = &bytes[ch.offset as usize..(ch.offset + ch.length) as usize];
            assert_eq!(hex::encode(Sha256::digest(part)), ch.sha256);
        }
        // Every byte that is not zero is inside a chunk.
        for (i, b) in bytes.iter().enumerate() {
            if *b != 0 {
                let i = i as u64;
                assert!(c
                    .iter()
                    .any(|ch| ch.offset <= i && i < ch.offset + ch.length));
            }
        }
        assert_eq!(render(&c).lines().count(), c.len());
    }
}
