//! File operations on the pool: sparse data files, sparse-aware copies for
//! snapshots and clones, and image import. All blocking: callers run them
//! on the blocking pool.
//!
//! Copies try a reflink first (instant, shares extents on btrfs/XFS) and
//! otherwise copy only the allocated extents (`SEEK_DATA`/`SEEK_HOLE` +
//! `copy_file_range`), so a mostly-empty thin volume copies in proportion
//! to the data it holds, not its size.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Creates `path` as a sparse file of `size` bytes.
pub fn create_sparse(path: &Path, size: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.set_len(size)?;
    f.sync_all()
}

/// Copies `src` to a new file `dst` (same size, holes preserved), durably.
pub fn copy_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let to = OpenOptions::new().write(true).create_new(true).open(dst)?;
    let len = from.metadata()?.len();
    // FICLONE: a copy-on-write clone where the file system supports it.
    // SAFETY: both descriptors are open files owned by this function.
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE, from.as_raw_fd()) };
    if rc != 0 {
        to.set_len(len)?;
        for (start, end) in agent_support::fs::data_extents(&from)? {
            copy_range(&from, &to, start, end - start)?;
        }
    }
    to.set_len(len)?;
    to.sync_all()
}

fn copy_range(from: &File, to: &File, start: u64, mut len: u64) -> io::Result<()> {
    let mut off_in = start as libc::loff_t;
    let mut off_out = start as libc::loff_t;
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        // SAFETY: valid descriptors; the offsets are owned locals.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank during copy",
            ));
        }
        len -= n as u64;
    }
    Ok(())
}

/// Makes renames and creations in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Sets `path`'s length (growing leaves a hole) and syncs it.
pub fn resize_synced(path: &Path, size: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(size)?;
    f.sync_all()
}

/// Bytes actually allocated to `path` (what a thin volume really uses).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        create_sparse(&src, 64 << 20).unwrap();
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(b"hello", 4096).unwrap();
        f.write_all_at(&[7u8; 8192], 40 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(
            allocated_bytes(&dst).unwrap() < 4 << 20,
            "holes were filled"
        );
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        create_sparse(&p, 1 << 20).unwrap();
        assert!(create_sparse(&p, 1 << 20).is_err());
    }
}
