//! Per-I_T-nexus unit attention queues (SAM-5 5.14).
//!
//! The READ/WRITE path asks "is anything pending for anyone?" through one atomic
//! load; only when that says yes does it take the lock and look for its nexus.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::sense::{self, Sense};
use crate::Nexus;

/// More than this many distinct conditions for one nexus means the initiator is
/// not polling; the oldest are dropped (the newest state is what it must learn).
const MAX_QUEUED: usize = 16;

#[derive(Default)]
pub struct UnitAttentions {
    queues: Mutex<HashMap<Nexus, VecDeque<Sense>>>,
    /// Number of nexuses whose queue is non-empty.
    pending: AtomicUsize,
}

impl UnitAttentions {
    pub fn new() -> UnitAttentions {
        UnitAttentions::default()
    }

    /// A fresh login starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED,
    /// which initiators expect and consume during login.
    pub fn add_nexus(&self, nexus: &Nexus) {
        let mut q = self.queues.lock();
        let old = q.insert(nexus.clone(), VecDeque::from([sense::UA_POWER_ON_RESET]));
        if old.map_or(true, |o| o.is_empty()) {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn remove_nexus(&self, nexus: &Nexus) {
        let mut q = self.queues.lock();
        if let Some(old) = q.remove(nexus) {
            if !old.is_empty() {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Queues `s` for every nexus matching `filter`.
    pub fn establish_where(&self, s: Sense, mut filter: impl FnMut(&Nexus) -> bool) {
        let mut q = self.queues.lock();
        for (n, queue) in q.iter_mut() {
            if filter(n) {
                push(queue, s, &self.pending);
            }
        }
    }

    pub fn establish_all(&self, s: Sense) {
        self.establish_where(s, |_| true);
    }

    #[cfg(test)]
    pub fn establish(&self, nexus: &Nexus, s: Sense) {
        let mut q = self.queues.lock();
        let queue = q.entry(nexus.clone()).or_default();
        push(queue, s, &self.pending);
    }

    /// Removes and returns the oldest condition for `nexus`, if any.
    pub fn take(&self, nexus: &Nexus) -> Option<Sense> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut q = self.queues.lock();
        let queue = q.get_mut(nexus)?;
        let s = queue.pop_front()?;
        if queue.is_empty() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        Some(s)
    }

    #[cfg(test)]
    pub fn pending_for(&self, nexus: &Nexus) -> usize {
        self.queues.lock().get(nexus).map_or(0, |q| q.len())
    }
}

fn push(queue: &mut VecDeque<Sense>, s: Sense, pending: &AtomicUsize) {
    if queue.contains(&s) {
        return;
    }
    if queue.is_empty() {
        pending.fetch_add(1, Ordering::AcqRel);
    }
    if queue.len() >= MAX_QUEUED {
        queue.pop_front();
    }
    queue.push_back(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(i: &str) -> Nexus {
        Nexus {
            initiator_port: i.into(),
            target_port: "t".into(),
        }
    }

    #[test]
    fn login_ua_then_empty() {
        let ua = UnitAttentions::new();
        let a = nx("a");
        assert_eq!(ua.take(&a), None);
        ua.add_nexus(&a);
        assert_eq!(ua.take(&a), Some(sense::UA_POWER_ON_RESET));
        assert_eq!(ua.take(&a), None);
        assert_eq!(ua.pending.load(Ordering::Acquire), 0);
    }

    #[test]
    fn dedup_order_and_filter() {
        let ua = UnitAttentions::new();
        let (a, b) = (nx("a"), nx("b"));
        ua.add_nexus(&a);
        ua.add_nexus(&b);
        ua.establish_where(sense::UA_CAPACITY_CHANGED, |n| n == &a);
        ua.establish_where(sense::UA_CAPACITY_CHANGED, |n| n == &a);
        assert_eq!(ua.pending_for(&a), 2);
        assert_eq!(ua.pending_for(&b), 1);
        assert_eq!(ua.take(&a), Some(sense::UA_POWER_ON_RESET));
        assert_eq!(ua.take(&a), Some(sense::UA_CAPACITY_CHANGED));
        ua.remove_nexus(&b);
        assert_eq!(ua.pending.load(Ordering::Acquire), 0);
    }

    #[test]
    fn bounded() {
        let ua = UnitAttentions::new();
        let a = nx("a");
        for i in 0..40u8 {
            ua.establish(&a, Sense::new(6, 0x2a, i));
        }
        assert_eq!(ua.pending_for(&a), MAX_QUEUED);
    }
}
