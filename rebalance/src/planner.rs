//! The greedy itself: drain, then balance (see the crate documentation).

use crate::ranked::Ranked;
use crate::world::{World, NOWHERE, TOL};
use crate::{
    bound, Band, Cloud, HostReport, HostState, Move, MoveReason, Options, Plan, Relocation,
    Standing, Stuck, StuckReason, Utilization, EQUAL_GAIN,
};

/// At most this many balance passes; a pass after the first only retries
/// the hosts earlier passes set aside, and only if the pass before moved
/// something (which may have opened room for them).
const PASSES: usize = 4;

/// A move that spills (see [`Candidate::spills`]) must lower the total
/// distance outside the band by at least this much (1 percentage point):
/// it trades one problem for a smaller one, and trades of crumbs would
/// only add moves.
const MIN_SPILL_GAIN: f64 = 0.01;

pub(crate) fn plan(cloud: &Cloud, options: &Options) -> Plan {
    let w = World::new(cloud, options);
    let n = w.hosts();
    let before: Vec<(Utilization, Standing)> =
        (0..n).map(|h| (w.utilization(h), w.standing(h))).collect();
    let lower_bound = bound::lower_bound(&w);
    let mut stuck = Vec::new();
    for (i, inst) in cloud.instances.iter().enumerate() {
        if w.host_of[i] == NOWHERE {
            stuck.push(Stuck {
                instance: i as u32,
                reason: StuckReason::UnknownHost,
            });
        } else if inst.policy == Relocation::Never
            && cloud.hosts[inst.host as usize].state == HostState::Draining
        {
            stuck.push(Stuck {
                instance: i as u32,
                reason: StuckReason::RelocationNever,
            });
        }
    }

    let mut p = Planner::new(w, options.candidates.max(1));
    p.drain(&mut stuck);
    p.balance();

    let w = &p.w;
    let hosts: Vec<HostReport> = before
        .into_iter()
        .enumerate()
        .map(|(h, (util, standing))| HostReport {
            before: util,
            after: w.utilization(h),
            standing_before: standing,
            standing_after: w.standing(h),
        })
        .collect();
    let outside = |after: bool| {
        hosts
            .iter()
            .filter(|r| {
                let s = if after {
                    r.standing_after
                } else {
                    r.standing_before
                };
                s == Standing::Outside
            })
            .count()
    };
    let (hosts_outside_before, hosts_outside_after) = (outside(false), outside(true));
    let util = |d: [f64; 2]| Utilization {
        vcpu: d[0],
        ram: d[1],
    };
    stuck.sort_by_key(|s| s.instance);
    Plan {
        band: Band {
            mean: util(w.mean),
            lower: util(w.lower),
            upper: util(w.upper),
        },
        lower_bound,
        within_band: hosts_outside_after == 0,
        hosts_outside_before,
        hosts_outside_after,
        hosts,
        moves: p.moves,
        stuck,
    }
}

/// One possible move and how good it is.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    instance: u32,
    to: usize,
    /// How much the distance outside the band, summed over hosts and
    /// dimensions, falls.
    gain: f64,
    /// Concentrates the instance's group on fewer racks.
    spread_worse: bool,
    /// Members of the instance's group in the target's rack.
    rack_members: u32,
}

struct Planner<'a> {
    w: World<'a>,
    candidates: usize,
    /// Hosts above the band, by summed excess.
    over: Ranked,
    /// Hosts below the band, by summed deficit.
    under: Ranked,
    /// Counted hosts by their share relative to the upper edge: in vCPU,
    /// in RAM, and in the fuller of the two. A host over in one dimension
    /// looks for room in that one.
    room: [Ranked; 3],
    /// Counted hosts with movable instances by their share relative to the
    /// lower edge: in vCPU, in RAM, and in the emptier of the two. A host
    /// under in RAM looks for donors with RAM to spare.
    surplus: [Ranked; 3],
    /// Per flavor, the hosts holding a movable instance of it, by what they
    /// keep above the lower edge after giving one away: a host under the
    /// band looks up exactly the sizes that fit its gap.
    donors: Vec<Ranked>,
    /// The flavors each host is registered under in `donors`.
    donor_of: Vec<Vec<u32>>,
    moves: Vec<Move>,
    /// Indices of the moves off each host so far.
    departures: Vec<Vec<usize>>,
    last_move: Vec<Option<usize>>,
}

impl<'a> Planner<'a> {
    fn new(w: World<'a>, candidates: usize) -> Self {
        let n = w.hosts();
        let mut p = Planner {
            over: Ranked::new(),
            under: Ranked::new(),
            room: [(); 3].map(|_| Ranked::new()),
            surplus: [(); 3].map(|_| Ranked::new()),
            donors: (0..w.flavors.len()).map(|_| Ranked::new()).collect(),
            donor_of: vec![Vec::new(); n],
            moves: Vec::new(),
            departures: vec![Vec::new(); n],
            last_move: vec![None; w.cloud.instances.len()],
            candidates,
            w,
        };
        for h in 0..n {
            p.rank(h);
        }
        p
    }

    /// Puts `h` where it now belongs in the four orders.
    fn rank(&mut self, h: usize) {
        let w = &self.w;
        if !w.counted[h] {
            return;
        }
        let a = w.alloc[h];
        let (e, f, s) = (w.excess(h, a), w.deficit(h, a), w.share(h, a));
        let (e, f) = (e[0] + e[1], f[0] + f[1]);
        let room = [s[0] - w.upper[0], s[1] - w.upper[1]];
        let surplus = [s[0] - w.lower[0], s[1] - w.lower[1]];
        let room = [room[0], room[1], room[0].max(room[1])];
        let surplus = [surplus[0], surplus[1], surplus[0].min(surplus[1])];
        let has_movable = !w.movable[h].is_empty();
        self.over.set(h, (e > TOL).then_some(e));
        self.under.set(h, (f > TOL).then_some(f));
        for k in 0..3 {
            self.room[k].set(h, Some(room[k]));
            self.surplus[k].set(h, has_movable.then_some(surplus[k]));
        }
        if self.w.flavors.is_empty() {
            return;
        }
        for f in std::mem::take(&mut self.donor_of[h]) {
            self.donors[f as usize].set(h, None);
        }
        let w = &self.w;
        let mut held: Vec<u32> = w.movable[h]
            .iter()
            .map(|&i| w.flavor_of[i as usize])
            .collect();
        held.sort_unstable();
        held.dedup();
        for &f in &held {
            let d = w.flavors[f as usize];
            let keep = [0, 1].map(|k| s[k] - d[k] / w.cap[h][k] - w.lower[k]);
            self.donors[f as usize].set(h, Some(keep[0].min(keep[1])));
        }
        self.donor_of[h] = held;
    }

    /// The targets worth trying for an instance leaving a host that is
    /// over in `dims`: the most under-loaded hosts, then those with the most
    /// room overall and in each of those dimensions.
    fn targets(&self, dims: [bool; 2]) -> Vec<usize> {
        let mut t: Vec<usize> = self.under.highest(self.candidates).collect();
        for k in (0..3).filter(|&k| k == 2 || dims[k]) {
            for h in self.room[k].lowest(self.candidates) {
                if !t.contains(&h) {
                    t.push(h);
                }
            }
        }
        t
    }

    /// Moving `instance` to `to`, if that is allowed; `drain` moves must
    /// happen anyway, balance moves must help without pushing their source
    /// below the band or their target above it.
    fn consider(&self, instance: u32, to: usize, drain: bool) -> Option<Candidate> {
        let w = &self.w;
        if !w.fits(instance, to) {
            return None;
        }
        let from = w.host_of[instance as usize] as usize;
        let d = w.demand(instance);
        let (sa, ta) = (w.alloc[from], w.alloc[to]);
        let sa2 = [sa[0] - d[0], sa[1] - d[1]];
        let ta2 = [ta[0] + d[0], ta[1] + d[1]];
        let (f, f2) = (w.deficit(from, sa), w.deficit(from, sa2));
        let (e, e2) = (w.excess(to, ta), w.excess(to, ta2));
        let spills = (0..2).any(|k| f2[k] > f[k] + TOL || e2[k] > e[k] + TOL);
        let gain = w.phi(from, sa) - w.phi(from, sa2) + w.phi(to, ta) - w.phi(to, ta2);
        if !drain && gain <= if spills { MIN_SPILL_GAIN } else { TOL } {
            return None;
        }
        let (spread_worse, rack_members) = w.rack_spread(instance, to);
        Some(Candidate {
            instance,
            to,
            gain,
            spread_worse,
            rack_members,
        })
    }

    /// The best candidate: most gain; among those of equal gain, the one
    /// that keeps the group's racks spread, then the emptiest rack.
    fn pick(cands: &[Candidate]) -> Option<Candidate> {
        // Preferring moves that do not spill, whatever their gain, was
        // measured worse at scale (more moves and more hosts left outside):
        // small clean moves crowd out the big ones that fix a host at once.
        let best = cands
            .iter()
            .map(|c| c.gain)
            .fold(f64::NEG_INFINITY, f64::max);
        cands
            .iter()
            .filter(|c| c.gain >= best - EQUAL_GAIN)
            .min_by(|a, b| {
                (a.spread_worse, a.rack_members)
                    .cmp(&(b.spread_worse, b.rack_members))
                    .then(b.gain.total_cmp(&a.gain))
                    .then((a.to, a.instance).cmp(&(b.to, b.instance)))
            })
            .copied()
    }

    fn apply(&mut self, c: Candidate, reason: MoveReason) {
        let i = c.instance;
        let from = self.w.host_of[i as usize] as usize;
        let index = self.moves.len();
        let mut depends_on = self.departures[c.to].clone();
        depends_on.extend(self.last_move[i as usize]);
        depends_on.sort_unstable();
        depends_on.dedup();
        self.w.apply(i, c.to);
        self.departures[from].push(index);
        self.last_move[i as usize] = Some(index);
        self.moves.push(Move {
            instance: i,
            from: from as u32,
            to: c.to as u32,
            reason,
            depends_on,
        });
        self.rank(from);
        self.rank(c.to);
    }

    /// Every movable instance off the draining hosts, largest first (the
    /// big ones have the fewest places to go).
    fn drain(&mut self, stuck: &mut Vec<Stuck>) {
        let w = &self.w;
        let max_cap = w
            .cap
            .iter()
            .fold([1.0f64; 2], |m, c| [m[0].max(c[0]), m[1].max(c[1])]);
        let mut order: Vec<u32> = (0..w.hosts())
            .filter(|&h| w.cloud.hosts[h].state == HostState::Draining)
            .flat_map(|h| w.movable[h].iter().copied())
            .collect();
        let size = |i: u32| {
            let d = w.demand(i);
            d[0] / max_cap[0] + d[1] / max_cap[1]
        };
        order.sort_by(|&a, &b| size(b).total_cmp(&size(a)).then(a.cmp(&b)));
        for i in order {
            let mut cands: Vec<Candidate> = self
                .targets([false; 2])
                .into_iter()
                .filter_map(|t| self.consider(i, t, true))
                .collect();
            if cands.is_empty() {
                // The candidates are the hosts the balance wants filled; a
                // big instance may fit only somewhere else.
                cands = (0..self.w.hosts())
                    .filter_map(|t| self.consider(i, t, true))
                    .collect();
            }
            match Self::pick(&cands) {
                Some(c) => self.apply(c, MoveReason::Drain),
                None => stuck.push(Stuck {
                    instance: i,
                    reason: StuckReason::NoTarget,
                }),
            }
        }
    }

    fn balance(&mut self) {
        let mut set_aside = Vec::new();
        for _ in 0..PASSES {
            let moves_before = self.moves.len();
            loop {
                if let Some(s) = self.over.top() {
                    if let Some(c) = self.best_from(s) {
                        self.apply(c, MoveReason::Balance);
                    } else if let Some((out, into)) = self.best_swap(s) {
                        self.apply(out, MoveReason::Balance);
                        self.apply(into, MoveReason::Balance);
                    } else {
                        self.over.set(s, None);
                        set_aside.push(s);
                    }
                } else if let Some(t) = self.under.top() {
                    if let Some(c) = self.best_into(t) {
                        self.apply(c, MoveReason::Balance);
                    } else if let Some((out, into)) = self.best_swap(t) {
                        self.apply(out, MoveReason::Balance);
                        self.apply(into, MoveReason::Balance);
                    } else {
                        self.under.set(t, None);
                        set_aside.push(t);
                    }
                } else {
                    break;
                }
            }
            if self.moves.len() == moves_before || set_aside.is_empty() {
                break;
            }
            for h in std::mem::take(&mut set_aside) {
                self.rank(h);
            }
        }
    }

    /// The best move off the over-loaded host `s`.
    fn best_from(&self, s: usize) -> Option<Candidate> {
        let e = self.w.excess(s, self.w.alloc[s]);
        let targets = self.targets([e[0] > TOL, e[1] > TOL]);
        let mut cands = Vec::new();
        for &i in &self.w.movable[s] {
            cands.extend(targets.iter().filter_map(|&t| self.consider(i, t, false)));
        }
        Self::pick(&cands)
    }

    /// The best move onto the under-loaded host `t`.
    fn best_into(&self, t: usize) -> Option<Candidate> {
        let f = self.w.deficit(t, self.w.alloc[t]);
        let mut sources: Vec<usize> = Vec::new();
        for k in (0..3).filter(|&k| k == 2 || f[k] > TOL) {
            for s in self.surplus[k].highest(self.candidates) {
                if s != t && !sources.contains(&s) {
                    sources.push(s);
                }
            }
        }
        let mut cands = Vec::new();
        for s in sources {
            for &i in &self.w.movable[s] {
                cands.extend(self.consider(i, t, false));
            }
        }
        // Every size that closes some of the gap without pushing `t` over,
        // from the donors that can best spare one.
        let w = &self.w;
        let share = w.share(t, w.alloc[t]);
        for (fl, d) in w.flavors.iter().enumerate() {
            let after = [0, 1].map(|k| share[k] + d[k] / w.cap[t][k]);
            let helps = (0..2).any(|k| f[k] > TOL && d[k] > 0.0);
            if !helps || (0..2).any(|k| after[k] > w.upper[k] + TOL) {
                continue;
            }
            for s in self.donors[fl].highest(2).filter(|&s| s != t) {
                let i = w.movable[s]
                    .iter()
                    .find(|&&i| w.flavor_of[i as usize] == fl as u32);
                cands.extend(i.and_then(|&i| self.consider(i, t, false)));
            }
        }
        Self::pick(&cands)
    }

    /// Two moves that fix `h` where no single one can: an instance leaves
    /// `h` (to the host where that costs least), then one arrives from a
    /// donor. A host under in RAM whose vCPU is near the upper edge needs
    /// this: every RAM-heavy instance would push its vCPU over until a
    /// vCPU-heavy one has left. The pair must lower the distance outside
    /// the band by [`MIN_SPILL_GAIN`] together; each move is checked
    /// against capacity and anti-affinity in the state it runs in.
    fn best_swap(&mut self, h: usize) -> Option<(Candidate, Candidate)> {
        let mut best: Option<(f64, Candidate, Candidate)> = None;
        let outs = self.w.movable[h].clone();
        let targets = self.targets([true, true]);
        for j in outs {
            let cands: Vec<Candidate> = targets
                .iter()
                .filter_map(|&u| self.consider(j, u, true))
                .collect();
            let Some(out) = Self::pick(&cands) else {
                continue;
            };
            // Tried in the state after `out`, then undone.
            self.w.apply(j, out.to);
            let f = self.w.deficit(h, self.w.alloc[h]);
            let mut donors: Vec<usize> = Vec::new();
            for k in (0..3).filter(|&k| k == 2 || f[k] > TOL) {
                for s in self.surplus[k].highest(self.candidates) {
                    if s != h && !donors.contains(&s) {
                        donors.push(s);
                    }
                }
            }
            for s in donors {
                for &i in self.w.movable[s].iter().filter(|&&i| i != j) {
                    if let Some(into) = self.consider(i, h, true) {
                        let gain = out.gain + into.gain;
                        if gain > MIN_SPILL_GAIN && best.as_ref().is_none_or(|b| gain > b.0) {
                            best = Some((gain, out, into));
                        }
                    }
                }
            }
            self.w.apply(j, h);
        }
        best.map(|(_, out, into)| (out, into))
    }
}
