//! The cloud as the planner mutates it: allocations, who is where, group
//! members per host and per rack, and the band.

use std::collections::HashMap;

use crate::{Cloud, HostState, Options, Relocation, Standing, Utilization};

/// Slack on share comparisons (band edges): shares are O(1), and sums of
/// integer demands over capacities carry rounding far below this.
pub(crate) const TOL: f64 = 1e-9;
/// Slack on capacity comparisons, in vCPUs or MiB: capacities times ratios
/// are fractional, demands are integers.
const CAP_TOL: f64 = 1e-6;
/// Marks an instance whose host index is out of range.
pub(crate) const NOWHERE: u32 = u32::MAX;

pub(crate) type Dims = [f64; 2];

pub(crate) struct World<'a> {
    pub cloud: &'a Cloud,
    /// Effective capacity (capacity × ratio) per host.
    pub cap: Vec<Dims>,
    pub alloc: Vec<Dims>,
    /// Active with capacity in both dimensions: part of the band.
    pub counted: Vec<bool>,
    pub lower: Dims,
    pub upper: Dims,
    pub mean: Dims,
    pub host_of: Vec<u32>,
    /// Instances the planner may move, per host: `allow` instances on
    /// active and draining hosts. Empty for every other host.
    pub movable: Vec<Vec<u32>>,
    /// Distinct demands of the movable instances, and each instance's
    /// index in it; empty when there are more than [`MAX_FLAVORS`].
    pub flavors: Vec<Dims>,
    pub flavor_of: Vec<u32>,
    group_host: HashMap<(u32, u32), u32>,
    group_rack: HashMap<(u32, u32), u32>,
}

/// Above this many distinct instance sizes the planner keeps no donor set
/// per size (memory and update cost grow with it); a cloud's flavors are a
/// catalogue of tens.
pub(crate) const MAX_FLAVORS: usize = 64;

impl<'a> World<'a> {
    pub fn new(cloud: &'a Cloud, options: &Options) -> Self {
        let n = cloud.hosts.len();
        let cap: Vec<Dims> = cloud
            .hosts
            .iter()
            .map(|h| {
                // A NaN or negative ratio is a host that takes nothing.
                let c = |x: f64, r: f64| if r > 0.0 { x * r } else { 0.0 };
                [
                    c(h.vcpus as f64, h.cpu_ratio),
                    c(h.ram_mib as f64, h.ram_ratio),
                ]
            })
            .collect();
        let counted: Vec<bool> = (0..n)
            .map(|h| {
                cloud.hosts[h].state == HostState::Active && cap[h][0] > 0.0 && cap[h][1] > 0.0
            })
            .collect();
        let mut alloc = vec![[0.0; 2]; n];
        let mut host_of = Vec::with_capacity(cloud.instances.len());
        let mut movable = vec![Vec::new(); n];
        let mut group_host = HashMap::new();
        let mut group_rack = HashMap::new();
        // What must land on counted hosts: what is there, plus what leaves
        // the draining hosts.
        let mut total = [0.0; 2];
        for (i, inst) in cloud.instances.iter().enumerate() {
            let h = inst.host as usize;
            if h >= n {
                host_of.push(NOWHERE);
                continue;
            }
            host_of.push(inst.host);
            let d = demand(inst);
            alloc[h][0] += d[0];
            alloc[h][1] += d[1];
            let state = cloud.hosts[h].state;
            let may_move = inst.policy == Relocation::Allow
                && matches!(state, HostState::Active | HostState::Draining);
            if may_move {
                movable[h].push(i as u32);
            }
            if counted[h] || (state == HostState::Draining && may_move) {
                total[0] += d[0];
                total[1] += d[1];
            }
            if let Some(g) = inst.group {
                *group_host.entry((g, inst.host)).or_insert(0) += 1;
                *group_rack.entry((g, cloud.hosts[h].rack)).or_insert(0) += 1;
            }
        }
        let mut room = [0.0; 2];
        for h in (0..n).filter(|&h| counted[h]) {
            room[0] += cap[h][0];
            room[1] += cap[h][1];
        }
        let band = if options.band.is_finite() {
            options.band.max(0.0)
        } else {
            0.0
        };
        let mean = [0, 1].map(|d| {
            if room[d] > 0.0 {
                total[d] / room[d]
            } else {
                0.0
            }
        });
        let mut index: HashMap<(u32, u64), u32> = HashMap::new();
        let mut flavors = Vec::new();
        let mut flavor_of = vec![u32::MAX; cloud.instances.len()];
        for &i in movable.iter().flatten() {
            let inst = &cloud.instances[i as usize];
            let f = *index.entry((inst.vcpus, inst.ram_mib)).or_insert_with(|| {
                flavors.push(demand(inst));
                flavors.len() as u32 - 1
            });
            flavor_of[i as usize] = f;
        }
        if flavors.len() > MAX_FLAVORS {
            flavors.clear();
        }
        World {
            cloud,
            cap,
            alloc,
            counted,
            lower: mean.map(|m| m - band),
            upper: mean.map(|m| m + band),
            mean,
            host_of,
            movable,
            flavors,
            flavor_of,
            group_host,
            group_rack,
        }
    }

    pub fn hosts(&self) -> usize {
        self.cap.len()
    }

    pub fn demand(&self, i: u32) -> Dims {
        demand(&self.cloud.instances[i as usize])
    }

    pub fn share(&self, h: usize, alloc: Dims) -> Dims {
        [0, 1].map(|d| {
            if self.cap[h][d] > 0.0 {
                alloc[d] / self.cap[h][d]
            } else {
                0.0
            }
        })
    }

    pub fn utilization(&self, h: usize) -> Utilization {
        let s = self.share(h, self.alloc[h]);
        Utilization {
            vcpu: s[0],
            ram: s[1],
        }
    }

    /// How far above the band, per dimension, `h` would be with `alloc`.
    pub fn excess(&self, h: usize, alloc: Dims) -> Dims {
        if !self.counted[h] {
            return [0.0; 2];
        }
        let s = self.share(h, alloc);
        [0, 1].map(|d| (s[d] - self.upper[d]).max(0.0))
    }

    /// How far below the band, per dimension, `h` would be with `alloc`.
    pub fn deficit(&self, h: usize, alloc: Dims) -> Dims {
        if !self.counted[h] {
            return [0.0; 2];
        }
        let s = self.share(h, alloc);
        [0, 1].map(|d| (self.lower[d] - s[d]).max(0.0))
    }

    /// Distance outside the band, summed over both dimensions: the
    /// potential every balance move lowers.
    pub fn phi(&self, h: usize, alloc: Dims) -> f64 {
        let e = self.excess(h, alloc);
        let f = self.deficit(h, alloc);
        e[0] + e[1] + f[0] + f[1]
    }

    /// Within the band (a host that does not count always is).
    pub fn within(&self, h: usize, alloc: Dims) -> bool {
        let e = self.excess(h, alloc);
        let f = self.deficit(h, alloc);
        e.iter().chain(f.iter()).all(|&x| x <= TOL)
    }

    pub fn standing(&self, h: usize) -> Standing {
        if !self.counted[h] {
            Standing::NotCounted
        } else if self.within(h, self.alloc[h]) {
            Standing::Within
        } else {
            Standing::Outside
        }
    }

    pub fn takes_work(&self, h: usize) -> bool {
        self.cloud.hosts[h].state == HostState::Active
    }

    /// Whether instance `i` may go to `t` now: state, capacity and
    /// anti-affinity (not whether that helps the balance).
    pub fn fits(&self, i: u32, t: usize) -> bool {
        if !self.takes_work(t) || self.host_of[i as usize] as usize == t {
            return false;
        }
        let d = self.demand(i);
        if (0..2).any(|k| self.alloc[t][k] + d[k] > self.cap[t][k] + CAP_TOL) {
            return false;
        }
        match self.cloud.instances[i as usize].group {
            Some(g) => self.group_host.get(&(g, t as u32)).copied().unwrap_or(0) == 0,
            None => true,
        }
    }

    /// Whether moving `i` to `t` concentrates its group on fewer racks
    /// (the sum of squared members per rack grows), and how many members
    /// `t`'s rack holds now.
    pub fn rack_spread(&self, i: u32, t: usize) -> (bool, u32) {
        let inst = &self.cloud.instances[i as usize];
        let Some(g) = inst.group else {
            return (false, 0);
        };
        let from = self.cloud.hosts[self.host_of[i as usize] as usize].rack;
        let to = self.cloud.hosts[t].rack;
        let b = self.group_rack.get(&(g, to)).copied().unwrap_or(0);
        if from == to {
            return (false, b);
        }
        let a = self.group_rack.get(&(g, from)).copied().unwrap_or(0);
        // (a-1)² + (b+1)² > a² + b²  ⇔  b ≥ a
        (b >= a, b)
    }

    pub fn apply(&mut self, i: u32, t: usize) {
        let s = self.host_of[i as usize] as usize;
        let d = self.demand(i);
        for (k, dk) in d.into_iter().enumerate() {
            self.alloc[s][k] -= dk;
            self.alloc[t][k] += dk;
        }
        self.host_of[i as usize] = t as u32;
        if let Some(p) = self.movable[s].iter().position(|&x| x == i) {
            self.movable[s].swap_remove(p);
        }
        self.movable[t].push(i);
        if let Some(g) = self.cloud.instances[i as usize].group {
            let (rs, rt) = (self.cloud.hosts[s].rack, self.cloud.hosts[t].rack);
            dec(&mut self.group_host, (g, s as u32));
            *self.group_host.entry((g, t as u32)).or_insert(0) += 1;
            dec(&mut self.group_rack, (g, rs));
            *self.group_rack.entry((g, rt)).or_insert(0) += 1;
        }
    }
}

fn dec(map: &mut HashMap<(u32, u32), u32>, key: (u32, u32)) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

pub(crate) fn demand(inst: &crate::Instance) -> Dims {
    [inst.vcpus as f64, inst.ram_mib as f64]
}
