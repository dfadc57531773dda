//! Hosts ordered by a score that changes as moves land: a `BTreeSet` of
//! (score, host) plus each host's current score, so an update is a removal
//! and an insertion, O(log H), and the best few are an iteration.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy)]
struct Score(f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub(crate) struct Ranked {
    set: BTreeSet<(Score, u32)>,
    /// Sparse: the per-flavor donor sets hold few of the hosts each.
    score: HashMap<u32, Score>,
}

impl Ranked {
    pub fn new() -> Self {
        Ranked {
            set: BTreeSet::new(),
            score: HashMap::new(),
        }
    }

    /// Puts `h` in the set with `score`, or takes it out with `None`.
    pub fn set(&mut self, h: usize, score: Option<f64>) {
        if let Some(old) = self.score.remove(&(h as u32)) {
            self.set.remove(&(old, h as u32));
        }
        if let Some(s) = score {
            self.score.insert(h as u32, Score(s));
            self.set.insert((Score(s), h as u32));
        }
    }

    /// The host with the highest score.
    pub fn top(&self) -> Option<usize> {
        self.set.last().map(|&(_, h)| h as usize)
    }

    /// Lowest scores first.
    pub fn lowest(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.set.iter().take(n).map(|&(_, h)| h as usize)
    }

    /// Highest scores first.
    pub fn highest(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.set.iter().rev().take(n).map(|&(_, h)| h as usize)
    }
}
