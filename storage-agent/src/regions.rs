//! Persistent region maps: which 1 MiB regions of a volume a copy must be
//! sent again. A bit is made durable before the change it covers is applied
//! (only when it goes from clear to set, so a hot region costs nothing), and
//! cleared lazily: a bit left set after a crash costs a region of resync,
//! never a lost write.
//!
//! Two uses: the primary's *dirty map* per peer (regions a peer missed while
//! it was away), and every copy's *activity log* (regions changed whose
//! change is not yet known to be on every in-sync copy — after a crash or a
//! promotion, those are the regions where copies may differ).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

/// Region size: 1 MiB. A 10 GiB volume has 10,240 regions, a 1,280-byte map.
pub const REGION_SHIFT: u32 = 20;
pub const REGION_BYTES: u64 = 1 << REGION_SHIFT;

/// The regions `[offset, offset+len)` touches.
pub fn regions_of(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    (offset >> REGION_SHIFT)..((offset + len - 1) >> REGION_SHIFT) + 1
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Bits {
    words: Vec<u64>,
    count: u64,
}

pub struct RegionMap {
    file: File,
    bits: Mutex<Bits>,
}

impl RegionMap {
    /// Opens (or creates, 0600) the map at `path`, keeping what a previous
    /// run left set.
    pub fn open(path: &Path) -> io::Result<RegionMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len() as usize / 8 * 8;
        let mut raw = vec![0u8; len];
        file.read_exact_at(&mut raw, 0)?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Ok(RegionMap {
            file,
            bits: Mutex::new(Bits { words, count }),
        })
    }

    /// Sets the bits of `regions`; the newly set ones are durable on return.
    pub fn mark(&self, regions: impl IntoIterator<Item = u64>) -> io::Result<()> {
        let mut b = lock(&self.bits);
        let mut changed: Vec<usize> = Vec::new();
        for r in regions {
            let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
            if w >= b.words.len() {
                b.words.resize(w + 1, 0);
            }
            if b.words[w] & bit == 0 {
                b.words[w] |= bit;
                b.count += 1;
                if changed.last() != Some(&w) {
                    changed.push(w);
                }
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        for w in changed {
            self.file
                .write_all_at(&b.words[w].to_le_bytes(), (w * 8) as u64)?;
        }
        self.file.sync_data()
    }

    /// Clears `region`'s bit (not synced: a stale set bit only costs resync).
    pub fn clear(&self, region: u64) {
        let mut b = lock(&self.bits);
        let (w, bit) = ((region / 64) as usize, 1u64 << (region % 64));
        if w < b.words.len() && b.words[w] & bit != 0 {
            b.words[w] &= !bit;
            b.count -= 1;
            let _ = self
                .file
                .write_all_at(&b.words[w].to_le_bytes(), (w * 8) as u64);
        }
    }

    /// Clears every bit.
    pub fn clear_all(&self) {
        let mut b = lock(&self.bits);
        if b.count == 0 {
            return;
        }
        b.words.iter_mut().for_each(|w| *w = 0);
        b.count = 0;
        let _ = self.file.set_len(0);
    }

    pub fn first(&self) -> Option<u64> {
        let b = lock(&self.bits);
        b.words
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i as u64 * 64 + u64::from(w.trailing_zeros()))
    }

    pub fn count(&self) -> u64 {
        lock(&self.bits).count
    }

    pub fn list(&self) -> Vec<u64> {
        let b = lock(&self.bits);
        let mut out = Vec::with_capacity(b.count as usize);
        for (i, &w) in b.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                out.push(i as u64 * 64 + u64::from(w.trailing_zeros()));
                w &= w - 1;
            }
        }
        out
    }
}

/// Regions with changes not yet settled on every in-sync copy, each with
/// the sequence number of its last change: settling up to `n` forgets the
/// regions whose last change is at or before `n`.
pub struct ActivityLog {
    map: RegionMap,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    last: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
}

impl ActivityLog {
    /// Regions a previous run left set are kept until `settle` passes
    /// `from_seq`: their change was never known to be everywhere.
    pub fn open(path: &Path, from_seq: u64) -> io::Result<ActivityLog> {
        let map = RegionMap::open(path)?;
        let mut recent = Recent::default();
        for r in map.list() {
            recent.last.insert(r, from_seq);
            recent.order.push_back((from_seq, r));
        }
        Ok(ActivityLog {
            map,
            recent: Mutex::new(recent),
        })
    }

    pub fn mark(&self, regions: std::ops::Range<u64>, seq: u64) -> io::Result<()> {
        {
            let mut rc = lock(&self.recent);
            for r in regions.clone() {
                rc.last.insert(r, seq);
                rc.order.push_back((seq, r));
            }
        }
        self.map.mark(regions)
    }

    pub fn settle(&self, upto: u64) {
        let mut rc = lock(&self.recent);
        while let Some(&(seq, r)) = rc.order.front() {
            if seq > upto {
                break;
            }
            rc.order.pop_front();
            if rc.last.get(&r) == Some(&seq) {
                rc.last.remove(&r);
                self.map.clear(r);
            }
        }
    }

    /// Forgets everything: another copy has taken responsibility for it.
    pub fn reset(&self) {
        let mut rc = lock(&self.recent);
        rc.last.clear();
        rc.order.clear();
        self.map.clear_all();
    }

    pub fn unsettled(&self) -> Vec<u64> {
        self.map.list()
    }

    pub fn count(&self) -> u64 {
        self.map.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_reopen_and_clears_are_lazy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("map");
        let m = RegionMap::open(&p).unwrap();
        m.mark([3, 64, 65, 1000]).unwrap();
        m.clear(64);
        assert_eq!(m.list(), vec![3, 65, 1000]);
        assert_eq!(m.first(), Some(3));
        drop(m);
        let m = RegionMap::open(&p).unwrap();
        assert_eq!(m.list(), vec![3, 65, 1000]);
        assert_eq!(m.count(), 3);
        m.clear_all();
        assert_eq!(RegionMap::open(&p).unwrap().count(), 0);
    }

    #[test]
    fn settling_forgets_only_what_is_settled() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActivityLog::open(&dir.path().join("al"), 0).unwrap();
        log.mark(regions_of(0, 4096), 1).unwrap();
        log.mark(regions_of(REGION_BYTES, 4096), 2).unwrap();
        log.mark(regions_of(0, 4096), 3).unwrap();
        log.settle(2);
        // Region 0 changed again at 3: it stays.
        assert_eq!(log.unsettled(), vec![0]);
        log.settle(3);
        assert!(log.unsettled().is_empty());
        // A reopened log keeps its regions until settled past `from_seq`.
        log.mark(regions_of(5 * REGION_BYTES, 1), 4).unwrap();
        drop(log);
        let log = ActivityLog::open(&dir.path().join("al"), 10).unwrap();
        log.settle(9);
        assert_eq!(log.unsettled(), vec![5]);
        log.settle(10);
        assert!(log.unsettled().is_empty());
    }

    #[test]
    fn ranges_map_to_regions() {
        assert_eq!(regions_of(0, 1), 0..1);
        assert_eq!(regions_of(REGION_BYTES - 1, 2), 0..2);
        assert_eq!(regions_of(REGION_BYTES, REGION_BYTES), 1..2);
        assert_eq!(regions_of(7, 0), 0..0);
    }
}
