//! A lower bound on the number of moves of any plan.
//!
//! Claim: every plan that obeys the rules (only `allow` instances on active
//! or draining hosts move, only to active hosts) and ends with every counted
//! host within the band and no movable instance on a draining host has at
//! least `max(drain + Σ_h shed_h, max(Σ_u fill_u, fill_all))` moves, where:
//!
//! - `drain` is the number of movable instances on draining hosts;
//! - `shed_h`, for a host `h` above the band, is the largest over the two
//!   dimensions of the fewest of `h`'s own movable instances whose demands
//!   sum to at least `h`'s excess (its allocation minus the upper edge);
//! - `fill_u`, for a host `u` below the band, is the largest over the two
//!   dimensions of the fewest movable instances of the whole cloud whose
//!   demands sum to at least `u`'s deficit;
//! - `fill_all` is the largest over the two dimensions of the fewest movable
//!   instances whose demands sum to at least the deficits of all those `u`.
//!
//! Proof. Take such a plan P. Every instance whose final host differs from
//! its first is moved at least once, so |P| ≥ |X| for every set X of such
//! instances. "The fewest elements of a set whose sum reaches R" is attained
//! by its largest elements, since no k elements sum to more than the k
//! largest; call that count `few(set, R)`.
//!
//! - D, the movable instances on draining hosts, all end elsewhere.
//! - For `h` above the band let L_h be the instances that start on `h` and
//!   end elsewhere. In each dimension `h`'s final allocation is its first
//!   one minus L_h plus whatever arrived, and must be at most the upper
//!   edge, so L_h sums to at least the excess; L_h holds only `h`'s movable
//!   instances, so |L_h| ≥ few(movable on h, excess) in both dimensions,
//!   i.e. |L_h| ≥ shed_h. The L_h are disjoint (different first hosts) and
//!   disjoint from D (a draining host is never counted, so never above).
//!   Hence |P| ≥ |D| + Σ shed_h.
//! - For `u` below the band let A_u be the instances that end on `u` and
//!   started elsewhere. Departures only lower `u`, so A_u sums to at least
//!   the deficit in each dimension, and A_u is a set of distinct movable
//!   instances: |A_u| ≥ fill_u. The A_u are disjoint (different final
//!   hosts), so their union has at least Σ fill_u elements, and it sums to
//!   at least the total deficit, so it has at least `fill_all` elements.
//!   Hence |P| ≥ max(Σ fill_u, fill_all).
//!
//! An A_u may share instances with D or an L_h (a drained or shed instance
//! that lands on an empty host is one move that counts for both), so the
//! two are combined with a max: adding `drain` to the fill side would not be
//! a bound (one draining host, one empty host, one instance: one move).
//!
//! When some count cannot be reached at all (a host whose movable
//! instances cannot cover its excess), no plan ends within the band and the
//! claim holds for any number; the count then uses every instance there is.
//!
//! Cost: sorting the movable demands, O(I log I), then a binary search per
//! host below the band.

use crate::world::{World, TOL};

pub(crate) fn lower_bound(w: &World) -> usize {
    let n = w.hosts();
    let mut drain = 0;
    let mut all: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for h in 0..n {
        let draining = w.cloud.hosts[h].state == crate::HostState::Draining;
        for &i in &w.movable[h] {
            let d = w.demand(i);
            all[0].push(d[0]);
            all[1].push(d[1]);
            drain += usize::from(draining);
        }
    }
    // Prefix sums of the demands, largest first.
    let prefix = all.map(|mut v| {
        v.sort_by(|a, b| b.total_cmp(a));
        let mut p = Vec::with_capacity(v.len() + 1);
        p.push(0.0);
        let mut sum = 0.0;
        for x in v {
            sum += x;
            p.push(sum);
        }
        p
    });
    let few_global = |d: usize, need: f64| -> usize {
        let p = &prefix[d];
        // The first k whose prefix reaches `need`; all of them if none does.
        p.partition_point(|&s| s < need).min(p.len() - 1)
    };

    let mut shed = 0;
    let mut fill = 0;
    let mut deficit_all = [0.0f64; 2];
    for h in (0..n).filter(|&h| w.counted[h]) {
        let (a, c) = (w.alloc[h], w.cap[h]);
        let excess = [0, 1].map(|d| a[d] - (w.upper[d] + TOL) * c[d]);
        let deficit = [0, 1].map(|d| (w.lower[d] - TOL) * c[d] - a[d]);
        if excess.iter().any(|&x| x > 0.0) {
            let own = |d: usize| -> usize {
                let mut v: Vec<f64> = w.movable[h].iter().map(|&i| w.demand(i)[d]).collect();
                v.sort_by(|a, b| b.total_cmp(a));
                let mut sum = 0.0;
                for (k, x) in v.iter().enumerate() {
                    if sum >= excess[d] {
                        return k;
                    }
                    sum += x;
                }
                v.len()
            };
            shed += own(0).max(own(1));
        }
        if deficit.iter().any(|&x| x > 0.0) {
            let need = [0, 1].map(|d| deficit[d].max(0.0));
            fill += few_global(0, need[0]).max(few_global(1, need[1]));
            deficit_all[0] += need[0];
            deficit_all[1] += need[1];
        }
    }
    let fill_all = few_global(0, deficit_all[0]).max(few_global(1, deficit_all[1]));
    (drain + shed).max(fill.max(fill_all))
}
