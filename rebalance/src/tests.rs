//! The planner judged by replaying its plans (in order, and concurrently as
//! `depends_on` allows), and its bound and move counts judged by exhaustive
//! search on tiny clouds.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::*;

/// splitmix64: a fixed seed gives the same cases on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Shape {
    hosts: usize,
    racks: u32,
    instances: usize,
    groups: u32,
    /// Percent of hosts in a state other than active, and of instances
    /// with `never`.
    odd_hosts: u64,
    never: u64,
}

fn host(rng: &mut Rng, rack: u32, state: HostState) -> Host {
    Host {
        rack,
        vcpus: rng.pick(&[8, 16, 32]),
        ram_mib: rng.pick(&[16_384, 32_768, 65_536]),
        cpu_ratio: rng.pick(&[1.0, 2.0, 4.0]),
        ram_ratio: rng.pick(&[1.0, 1.5]),
        state,
    }
}

/// A random cloud whose first placement respects capacity and
/// anti-affinity (instances that fit nowhere are left out).
fn cloud(rng: &mut Rng, shape: &Shape) -> Cloud {
    let hosts: Vec<Host> = (0..shape.hosts)
        .map(|h| {
            let state = if rng.chance(shape.odd_hosts) {
                rng.pick(&[HostState::Disabled, HostState::Draining, HostState::Down])
            } else {
                HostState::Active
            };
            host(rng, h as u32 % shape.racks, state)
        })
        .collect();
    let mut c = Cloud {
        hosts,
        instances: Vec::new(),
    };
    // New hosts of a growing cloud: some start empty.
    let empty: HashSet<usize> = (0..shape.hosts).filter(|_| rng.chance(25)).collect();
    for _ in 0..shape.instances {
        let inst = Instance {
            host: 0,
            vcpus: rng.pick(&[1, 2, 4, 8]),
            ram_mib: rng.pick(&[1024, 2048, 4096, 8192, 16_384]),
            group: if shape.groups > 0 && rng.chance(30) {
                Some(rng.below(shape.groups as u64) as u32)
            } else {
                None
            },
            policy: if rng.chance(shape.never) {
                Relocation::Never
            } else {
                Relocation::Allow
            },
        };
        for _ in 0..10 {
            let h = rng.below(shape.hosts as u64) as usize;
            if empty.contains(&h) && empty.len() < shape.hosts {
                continue;
            }
            let mut probe = inst.clone();
            probe.host = h as u32;
            if State::new(&c).fits(&c, &probe, h) {
                c.instances.push(probe);
                break;
            }
        }
    }
    c
}

/// Allocation and membership as an executor would see them.
struct State {
    alloc: Vec<[f64; 2]>,
    members: HashMap<(u32, usize), u32>,
}

impl State {
    fn new(c: &Cloud) -> Self {
        let mut s = State {
            alloc: vec![[0.0; 2]; c.hosts.len()],
            members: HashMap::new(),
        };
        for inst in c
            .instances
            .iter()
            .filter(|i| (i.host as usize) < c.hosts.len())
        {
            s.add(inst, inst.host as usize);
        }
        s
    }
    fn add(&mut self, inst: &Instance, h: usize) {
        self.alloc[h][0] += inst.vcpus as f64;
        self.alloc[h][1] += inst.ram_mib as f64;
        if let Some(g) = inst.group {
            *self.members.entry((g, h)).or_insert(0) += 1;
        }
    }
    fn remove(&mut self, inst: &Instance, h: usize) {
        self.alloc[h][0] -= inst.vcpus as f64;
        self.alloc[h][1] -= inst.ram_mib as f64;
        if let Some(g) = inst.group {
            *self.members.get_mut(&(g, h)).expect("member counted") -= 1;
        }
    }
    fn fits(&self, c: &Cloud, inst: &Instance, h: usize) -> bool {
        let host = &c.hosts[h];
        self.alloc[h][0] + inst.vcpus as f64 <= host.vcpus as f64 * host.cpu_ratio + 1e-6
            && self.alloc[h][1] + inst.ram_mib as f64 <= host.ram_mib as f64 * host.ram_ratio + 1e-6
            && inst
                .group
                .is_none_or(|g| self.members.get(&(g, h)).copied().unwrap_or(0) == 0)
    }
}

/// Replays the plan in order and checks every rule at every step, then
/// the report against the replayed state.
fn check(c: &Cloud, p: &Plan) {
    let mut s = State::new(c);
    let mut at: Vec<usize> = c.instances.iter().map(|i| i.host as usize).collect();
    for (k, m) in p.moves.iter().enumerate() {
        let inst = &c.instances[m.instance as usize];
        assert_eq!(
            at[m.instance as usize], m.from as usize,
            "move {k}: wrong source"
        );
        assert_eq!(
            inst.policy,
            Relocation::Allow,
            "move {k}: a never instance moved"
        );
        assert!(
            matches!(
                c.hosts[m.from as usize].state,
                HostState::Active | HostState::Draining
            ),
            "move {k}: off a {:?} host",
            c.hosts[m.from as usize].state
        );
        assert_eq!(
            c.hosts[m.to as usize].state,
            HostState::Active,
            "move {k}: onto a host that takes no work"
        );
        s.remove(inst, m.from as usize);
        assert!(
            s.fits(c, inst, m.to as usize),
            "move {k}: capacity or anti-affinity broken"
        );
        s.add(inst, m.to as usize);
        at[m.instance as usize] = m.to as usize;
        assert!(
            m.depends_on.iter().all(|&d| d < k),
            "move {k}: depends on a later move"
        );
    }
    let stuck: HashSet<u32> = p.stuck.iter().map(|s| s.instance).collect();
    for (i, inst) in c.instances.iter().enumerate() {
        if c.hosts.get(inst.host as usize).map(|h| h.state) == Some(HostState::Draining) {
            assert!(
                c.hosts[at[i]].state != HostState::Draining || stuck.contains(&(i as u32)),
                "instance {i} left on a draining host and not reported"
            );
        }
    }
    for (h, r) in p.hosts.iter().enumerate() {
        let host = &c.hosts[h];
        let cap = [
            host.vcpus as f64 * host.cpu_ratio,
            host.ram_mib as f64 * host.ram_ratio,
        ];
        if r.standing_after != Standing::NotCounted {
            assert!(
                (r.after.vcpu - s.alloc[h][0] / cap[0]).abs() < 1e-9,
                "host {h}: reported vCPU share"
            );
            assert!(
                (r.after.ram - s.alloc[h][1] / cap[1]).abs() < 1e-9,
                "host {h}: reported RAM share"
            );
        }
    }
    assert_eq!(p.within_band, p.hosts_outside_after == 0);
    if p.within_band && p.stuck.is_empty() {
        assert!(
            p.moves.len() >= p.lower_bound,
            "{} moves under the bound {}",
            p.moves.len(),
            p.lower_bound
        );
    }
}

/// Runs the plan with moves in flight at once, started in a random order
/// that honours `depends_on`, a migrating instance holding its resources on
/// both hosts until it completes; every start must fit.
fn check_concurrent(c: &Cloud, p: &Plan, rng: &mut Rng) {
    let mut s = State::new(c);
    let n = p.moves.len();
    let (mut started, mut done) = (vec![false; n], vec![false; n]);
    let mut flight: Vec<usize> = Vec::new();
    let mut completed = 0;
    while completed < n {
        let ready: Vec<usize> = (0..n)
            .filter(|&k| !started[k] && p.moves[k].depends_on.iter().all(|&d| done[d]))
            .collect();
        if !ready.is_empty() && (flight.is_empty() || rng.chance(60)) {
            let k = rng.pick(&ready);
            let m = &p.moves[k];
            let inst = &c.instances[m.instance as usize];
            assert!(
                s.fits(c, inst, m.to as usize),
                "move {k} started concurrently does not fit"
            );
            s.add(inst, m.to as usize);
            started[k] = true;
            flight.push(k);
        } else {
            assert!(!flight.is_empty(), "nothing ready, nothing in flight");
            let k = flight.swap_remove(rng.below(flight.len() as u64) as usize);
            let m = &p.moves[k];
            s.remove(&c.instances[m.instance as usize], m.from as usize);
            done[k] = true;
            completed += 1;
        }
    }
}

fn within(c: &Cloud, band: &Band, alloc: &[[f64; 2]]) -> bool {
    c.hosts.iter().enumerate().all(|(h, host)| {
        let cap = [
            host.vcpus as f64 * host.cpu_ratio,
            host.ram_mib as f64 * host.ram_ratio,
        ];
        if host.state != HostState::Active || cap[0] <= 0.0 || cap[1] <= 0.0 {
            return true;
        }
        let s = [alloc[h][0] / cap[0], alloc[h][1] / cap[1]];
        let (lo, up) = (
            [band.lower.vcpu, band.lower.ram],
            [band.upper.vcpu, band.upper.ram],
        );
        (0..2).all(|d| s[d] >= lo[d] - 1e-9 && s[d] <= up[d] + 1e-9)
    })
}

/// Fewest moves to a state within the band with the draining hosts empty
/// of movable instances, by breadth-first search over every assignment;
/// `None` if none is reachable.
fn optimum(c: &Cloud, band: &Band) -> Option<usize> {
    let first: Vec<u8> = c.instances.iter().map(|i| i.host as u8).collect();
    let goal = |at: &[u8]| {
        let mut s = State::new(c);
        for (i, inst) in c.instances.iter().enumerate() {
            s.remove(inst, inst.host as usize);
            s.add(inst, at[i] as usize);
        }
        let drained = c.instances.iter().enumerate().all(|(i, inst)| {
            inst.policy == Relocation::Never || c.hosts[at[i] as usize].state != HostState::Draining
        });
        drained && within(c, band, &s.alloc)
    };
    let mut seen = HashSet::from([first.clone()]);
    let mut queue = VecDeque::from([(first, 0)]);
    while let Some((at, depth)) = queue.pop_front() {
        if goal(&at) {
            return Some(depth);
        }
        let mut s = State::new(c);
        for (i, inst) in c.instances.iter().enumerate() {
            s.remove(inst, inst.host as usize);
            s.add(inst, at[i] as usize);
        }
        for (i, inst) in c.instances.iter().enumerate() {
            let from = at[i] as usize;
            let movable = inst.policy == Relocation::Allow
                && matches!(c.hosts[from].state, HostState::Active | HostState::Draining);
            if !movable {
                continue;
            }
            s.remove(inst, from);
            for to in 0..c.hosts.len() {
                if to != from && c.hosts[to].state == HostState::Active && s.fits(c, inst, to) {
                    let mut next = at.clone();
                    next[i] = to as u8;
                    if seen.insert(next.clone()) {
                        queue.push_back((next, depth + 1));
                    }
                }
            }
            s.add(inst, from);
        }
    }
    None
}

#[test]
fn bound_is_sound_and_greedy_is_near_optimal_on_tiny_clouds() {
    let mut rng = Rng(14);
    let (mut reachable, mut reached, mut optimal, mut extra) = (0, 0, 0, 0);
    for case in 0..400 {
        let shape = Shape {
            hosts: 3 + rng.below(2) as usize,
            racks: 2,
            instances: 2 + rng.below(5) as usize,
            groups: 2,
            odd_hosts: 15,
            never: 10,
        };
        let c = cloud(&mut rng, &shape);
        let options = Options {
            band: rng.pick(&[0.05, 0.10, 0.20, 0.30]),
            ..Options::default()
        };
        let p = plan(&c, &options);
        check(&c, &p);
        check_concurrent(&c, &p, &mut rng);
        let best = optimum(&c, &p.band);
        if let Some(best) = best {
            reachable += 1;
            assert!(
                best >= p.lower_bound,
                "case {case}: optimum {best} under the bound {}: {c:?}",
                p.lower_bound
            );
            if p.within_band && p.stuck.is_empty() {
                reached += 1;
                assert!(p.moves.len() >= best, "case {case}: better than optimal?");
                if p.moves.len() == best {
                    optimal += 1;
                }
                extra += p.moves.len() - best;
            }
        } else {
            assert!(
                !p.within_band || !p.stuck.is_empty(),
                "case {case}: the search found no way, the plan did"
            );
        }
    }
    eprintln!("tiny clouds: {reachable} reachable, greedy reached {reached}, optimal in {optimal}, {extra} extra moves in all");
    // What a greedy of this kind achieves on these cases (measured: see the
    // numbers printed above); a regression shows as a drop.
    assert!(
        reached * 10 >= reachable * 8,
        "greedy reached the band in {reached} of {reachable}"
    );
    assert!(
        optimal * 10 >= reached * 8,
        "greedy optimal in {optimal} of {reached}"
    );
}

#[test]
fn every_plan_keeps_the_rules_at_every_step() {
    let mut rng = Rng(7);
    for _ in 0..60 {
        let shape = Shape {
            hosts: 5 + rng.below(50) as usize,
            racks: 1 + rng.below(6) as u32,
            instances: 10 + rng.below(300) as usize,
            groups: rng.below(20) as u32,
            odd_hosts: rng.below(30),
            never: rng.below(30),
        };
        let c = cloud(&mut rng, &shape);
        let options = Options {
            band: rng.pick(&[0.02, 0.05, 0.10, 0.20]),
            candidates: 1 + rng.below(10) as usize,
        };
        let p = plan(&c, &options);
        check(&c, &p);
        check_concurrent(&c, &p, &mut rng);
    }
}

fn active(vcpus: u32, ram_mib: u64, rack: u32) -> Host {
    Host {
        rack,
        vcpus,
        ram_mib,
        cpu_ratio: 1.0,
        ram_ratio: 1.0,
        state: HostState::Active,
    }
}

fn vm(host: HostIx, vcpus: u32, ram_mib: u64) -> Instance {
    Instance {
        host,
        vcpus,
        ram_mib,
        group: None,
        policy: Relocation::Allow,
    }
}

#[test]
fn an_empty_cloud_and_a_level_one_need_nothing() {
    let p = plan(&Cloud::default(), &Options::default());
    assert!(p.moves.is_empty() && p.within_band && p.lower_bound == 0);
    let c = Cloud {
        hosts: vec![active(8, 8192, 0), active(8, 8192, 1)],
        instances: vec![vm(0, 4, 4096), vm(1, 4, 4096)],
    };
    let p = plan(&c, &Options::default());
    assert!(p.moves.is_empty() && p.within_band && p.lower_bound == 0);
}

#[test]
fn a_new_host_is_filled_and_the_bound_is_met() {
    // Two full hosts, two new ones: mean 50 %, band 40–60 %: each full
    // host sheds two 2-vCPU instances, each new host takes two.
    let mut c = Cloud {
        hosts: (0..4).map(|h| active(8, 8192, h)).collect(),
        instances: Vec::new(),
    };
    for h in 0..2 {
        for _ in 0..4 {
            c.instances.push(vm(h, 2, 2048));
        }
    }
    let p = plan(&c, &Options::default());
    check(&c, &p);
    assert!(p.within_band);
    assert_eq!(p.lower_bound, 4);
    assert_eq!(p.moves.len(), 4);
    assert_eq!(p.hosts_outside_before, 4);
}

#[test]
fn a_drain_that_fills_an_empty_host_is_one_move_and_the_bound_says_so() {
    let mut drained = active(8, 8192, 0);
    drained.state = HostState::Draining;
    let c = Cloud {
        hosts: vec![drained, active(8, 8192, 1)],
        instances: vec![vm(0, 4, 4096)],
    };
    let p = plan(&c, &Options::default());
    check(&c, &p);
    assert_eq!(p.moves.len(), 1);
    assert_eq!(p.moves[0].reason, MoveReason::Drain);
    assert_eq!(p.lower_bound, 1);
    assert!(p.within_band);
}

#[test]
fn never_instances_stay_and_are_reported_on_a_draining_host() {
    let mut drained = active(8, 8192, 0);
    drained.state = HostState::Draining;
    let mut pinned = vm(0, 2, 2048);
    pinned.policy = Relocation::Never;
    let c = Cloud {
        hosts: vec![drained, active(8, 8192, 1), active(8, 8192, 2)],
        instances: vec![pinned, vm(0, 2, 2048), vm(7, 1, 1)],
    };
    let p = plan(&c, &Options::default());
    check(&c, &p);
    assert_eq!(
        p.stuck,
        vec![
            Stuck {
                instance: 0,
                reason: StuckReason::RelocationNever
            },
            Stuck {
                instance: 2,
                reason: StuckReason::UnknownHost
            },
        ]
    );
    assert!(p.moves.iter().all(|m| m.instance != 0));
    assert!(p.moves.iter().any(|m| m.instance == 1));
}

#[test]
fn anti_affinity_holds_even_when_it_leaves_the_cloud_unbalanced() {
    // Both members of a group on host 0 and 1; host 2 is empty but host 0
    // is the one over: its member may go to host 2, never to host 1.
    let mut a = vm(0, 4, 4096);
    a.group = Some(9);
    let mut b = vm(1, 4, 4096);
    b.group = Some(9);
    let c = Cloud {
        hosts: vec![active(8, 8192, 0), active(8, 8192, 0), active(8, 8192, 1)],
        instances: vec![a, b, vm(0, 2, 2048), vm(0, 2, 2048)],
    };
    let p = plan(&c, &Options::default());
    check(&c, &p);
    assert!(p.moves.iter().all(|m| !(m.instance == 0 && m.to == 1)));
}

#[test]
fn rack_spread_decides_between_equal_targets() {
    // Group members on racks 0 and 1; the two empty targets are equal but
    // for their racks: rack 1 already holds a member, rack 2 none.
    let mut a = vm(0, 4, 4096);
    a.group = Some(1);
    let mut b = vm(1, 2, 2048);
    b.group = Some(1);
    let c = Cloud {
        hosts: vec![
            active(8, 8192, 0),
            active(8, 8192, 1),
            active(8, 8192, 1),
            active(8, 8192, 2),
        ],
        instances: vec![
            a,
            b,
            Instance {
                policy: Relocation::Never,
                ..vm(0, 4, 4096)
            },
        ],
    };
    let p = plan(
        &c,
        &Options {
            band: 0.3,
            ..Options::default()
        },
    );
    check(&c, &p);
    let m = p
        .moves
        .iter()
        .find(|m| m.instance == 0)
        .expect("the group member moves");
    assert_eq!(m.to, 3, "moved to rack {}", c.hosts[m.to as usize].rack);
}
