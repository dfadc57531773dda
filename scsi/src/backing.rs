//! The medium a logical unit serves: positional I/O, hole punching and
//! extent queries. [`FileMedium`] is a sparse file; the storage agent wraps
//! it to replicate every change to other nodes before a command completes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Reads exactly `buf.len()` bytes at `offset`; bytes past end of file read as
/// zero, because a shrinking race with resize must not turn into a medium error.
/// Everything a logical unit does to its data. Mutations return only once
/// they hold wherever the implementation keeps copies; `sync` makes every
/// completed mutation durable in all of them.
pub trait Medium: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;
    fn write_pattern(&self, pattern: &[u8], offset: u64, len: u64) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn size_bytes(&self) -> io::Result<u64>;
    /// Whether `offset` is in allocated data and where that state ends.
    fn extent_at(&self, offset: u64, end: u64) -> io::Result<(bool, u64)>;
    /// Completes what this thread changed under [`defer_completion`]: on
    /// return every such change holds wherever the medium keeps copies.
    fn barrier(&self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static DEFERRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with completion deferred: a medium may return from a mutation
/// once it is applied locally and on its way to the other copies, and owes
/// the rest to the thread's next [`Medium::barrier`]. A transport uses it
/// to keep many commands in flight while it holds their responses back
/// until the barrier (a group commit).
pub fn defer_completion<R>(f: impl FnOnce() -> R) -> R {
    let before = DEFERRED.with(|d| d.replace(true));
    let r = f();
    DEFERRED.with(|d| d.set(before));
    r
}

/// Whether the current call runs under [`defer_completion`].
pub fn completion_deferred() -> bool {
    DEFERRED.with(|d| d.get())
}

/// A sparse file as the medium.
pub struct FileMedium(pub File);

impl Medium for FileMedium {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_at(&self.0, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_at(&self.0, buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        punch_hole(&self.0, offset, len)
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        zero_range(&self.0, offset, len)
    }
    fn write_pattern(&self, pattern: &[u8], offset: u64, len: u64) -> io::Result<()> {
        write_pattern(&self.0, pattern, offset, len)
    }
    fn sync(&self) -> io::Result<()> {
        sync(&self.0)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn extent_at(&self, offset: u64, end: u64) -> io::Result<(bool, u64)> {
        extent_at(&self.0, offset, end)
    }
}

pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)
}

pub fn sync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// Deallocates a byte range while keeping the file size; partial filesystem
/// blocks are zeroed by the kernel, so reads return zeros either way (LBPRZ=1).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Zeroes a range cheaply when the filesystem can; otherwise writes zeros.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    match fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) =>
        {
            write_pattern(file, &[0u8; 512], offset, len)
        }
        Err(e) => Err(e),
    }
}

/// Writes `pattern` repeatedly over `[offset, offset+len)`; `len` is a multiple of
/// the pattern length. Batches into ~1 MiB writes to keep syscalls few.
pub fn write_pattern(file: &File, pattern: &[u8], offset: u64, len: u64) -> io::Result<()> {
    if pattern.is_empty() || len == 0 {
        return Ok(());
    }
    let per_chunk = (1usize << 20) / pattern.len();
    let per_chunk = per_chunk.max(1);
    let chunk: Vec<u8> = pattern.repeat(per_chunk);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        write_at(file, &chunk[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let l = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: plain syscall on a valid, owned descriptor; no memory is passed.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether the byte at `offset` is in allocated data, and where that state ends
/// (bounded by `end`). Uses SEEK_DATA/SEEK_HOLE, so granularity is the filesystem's.
pub fn extent_at(file: &File, offset: u64, end: u64) -> io::Result<(bool, u64)> {
    let data = seek(file, offset, libc::SEEK_DATA)?;
    match data {
        // No data at or after offset: a hole up to end of file.
        None => Ok((false, end)),
        Some(d) if d > offset => Ok((false, d.min(end))),
        Some(_) => {
            let hole = seek(file, offset, libc::SEEK_HOLE)?.unwrap_or(end);
            Ok((true, hole.min(end)))
        }
    }
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a valid descriptor. The file position is not used by
    // anything else here (all I/O is positional), so moving it is harmless.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_data() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let (mapped, end) = extent_at(&f, 0, 1 << 20).unwrap();
        assert!(!mapped);
        assert_eq!(end, 1 << 20);
        write_at(&f, &[1u8; 65536], 65536).unwrap();
        let (mapped, end) = extent_at(&f, 0, 1 << 20).unwrap();
        assert!(!mapped);
        assert!(end <= 65536);
        let (mapped, _) = extent_at(&f, 65536, 1 << 20).unwrap();
        assert!(mapped);
        punch_hole(&f, 65536, 65536).unwrap();
        let mut b = [9u8; 16];
        read_at(&f, &mut b, 65536).unwrap();
        assert_eq!(b, [0u8; 16]);
    }

    #[test]
    fn read_past_eof_is_zero() {
        let f = tempfile::tempfile().unwrap();
        write_at(&f, &[7u8; 10], 0).unwrap();
        let mut b = [1u8; 20];
        read_at(&f, &mut b, 0).unwrap();
        assert_eq!(&b[..10], &[7u8; 10]);
        assert_eq!(&b[10..], &[0u8; 10]);
    }

    #[test]
    fn pattern_and_zero() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        write_pattern(&f, &[0xab; 512], 512, 2048).unwrap();
        let mut b = vec![0u8; 8192];
        read_at(&f, &mut b, 0).unwrap();
        assert!(b[..512].iter().all(|&x| x == 0));
        assert!(b[512..2560].iter().all(|&x| x == 0xab));
        zero_range(&f, 1024, 512).unwrap();
        read_at(&f, &mut b, 0).unwrap();
        assert!(b[1024..1536].iter().all(|&x| x == 0));
        assert!(b[1536..2560].iter().all(|&x| x == 0xab));
    }
}
