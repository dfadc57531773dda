//! Planning at the scale the stack manager is built for: 500 racks × 40
//! hosts, 100,000 instances.
//!
//! - growth: 400 racks hold every instance, 100 racks are new and empty
//!   (20 % of the capacity added);
//! - the same growth with general-purpose flavors only (vCPU and RAM in
//!   the hosts' proportion);
//! - drain: every rack holds instances, one host is draining.
//!
//! The clouds are synthetic (a simulation, named as such): hosts of 48
//! cores at a 2.0 CPU ratio and 384 GiB, mixed general, compute and memory
//! flavors, a fifth of the instances in anti-affinity groups of 3–5, 2 %
//! pinned (`never`), placed by a spread scheduler (the less loaded of two
//! random hosts that fit, members of a group on distinct hosts and, where it
//! can, distinct racks) from a fixed seed.
//!
//! `cargo bench -p strato-rebalance` prints, per scenario, the plan time
//! over several runs and the plan's figures. `PLAN_CANDIDATES=n` sets
//! [`Options::candidates`]; `PLAN_DIAG=1` also counts the hosts left
//! outside the band by how they are outside (vCPU, RAM).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rebalance::{plan, Cloud, Host, HostState, Instance, MoveReason, Options, Relocation};

const RACKS: u32 = 500;
const HOSTS_PER_RACK: u32 = 40;
const INSTANCES: usize = 100_000;
const RUNS: usize = 5;

/// splitmix64, so every run plans the same cloud.
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
}

/// (vCPUs, GiB, weight): general purpose at 4 GiB per vCPU, compute at 2,
/// memory at 8.
const MIXED: &[(u32, u64, u64)] = &[
    (4, 16, 20),
    (8, 32, 20),
    (16, 64, 15),
    (32, 128, 8),
    (8, 16, 8),
    (16, 32, 8),
    (32, 64, 4),
    (4, 32, 7),
    (8, 64, 6),
    (16, 128, 4),
];

/// General purpose only: vCPU and RAM in the hosts' proportion, so the
/// two dimensions move together.
const GENERAL: &[(u32, u64, u64)] = &[(4, 16, 30), (8, 32, 30), (16, 64, 25), (32, 128, 15)];

fn flavor(rng: &mut Rng, mix: &[(u32, u64, u64)]) -> (u32, u64) {
    let total: u64 = mix.iter().map(|f| f.2).sum();
    let mut x = rng.below(total);
    for &(v, g, w) in mix {
        if x < w {
            return (v, g * 1024);
        }
        x -= w;
    }
    unreachable!("weights sum to total")
}

/// A cloud whose instances all sit in the first `used_racks` racks.
fn cloud(seed: u64, used_racks: u32, mix: &[(u32, u64, u64)]) -> Cloud {
    let mut rng = Rng(seed);
    let hosts: Vec<Host> = (0..RACKS * HOSTS_PER_RACK)
        .map(|h| Host {
            rack: h / HOSTS_PER_RACK,
            vcpus: 48,
            ram_mib: 384 * 1024,
            cpu_ratio: 2.0,
            ram_ratio: 1.0,
            state: HostState::Active,
        })
        .collect();
    let used = (used_racks * HOSTS_PER_RACK) as u64;
    let cap = [96.0, 384.0 * 1024.0];
    let mut alloc = vec![[0.0f64; 2]; hosts.len()];
    let mut instances = Vec::with_capacity(INSTANCES);
    let mut group = 0u32;
    while instances.len() < INSTANCES {
        let (members, g) = if rng.below(100) < 20 {
            group += 1;
            (3 + rng.below(3) as usize, Some(group))
        } else {
            (1, None)
        };
        let (vcpus, ram_mib) = flavor(&mut rng, mix);
        let mut taken: HashSet<u64> = HashSet::new();
        let mut racks: HashSet<u32> = HashSet::new();
        for _ in 0..members.min(INSTANCES - instances.len()) {
            let fits = |h: u64, alloc: &[[f64; 2]]| {
                let a = alloc[h as usize];
                a[0] + vcpus as f64 <= cap[0] && a[1] + ram_mib as f64 <= cap[1]
            };
            let mut best: Option<u64> = None;
            let mut seen = 0;
            for attempt in 0..200 {
                let h = rng.below(used);
                let rack = (h / HOSTS_PER_RACK as u64) as u32;
                if taken.contains(&h) || (attempt < 50 && racks.contains(&rack)) || !fits(h, &alloc)
                {
                    continue;
                }
                let load = |h: u64| {
                    let a = alloc[h as usize];
                    (a[0] / cap[0]).max(a[1] / cap[1])
                };
                best = match best {
                    Some(b) if load(b) <= load(h) => Some(b),
                    _ => Some(h),
                };
                seen += 1;
                if seen == 2 {
                    break;
                }
            }
            let Some(h) = best else {
                // The cloud is full for this flavor; the next is likely
                // smaller.
                break;
            };
            taken.insert(h);
            racks.insert((h / HOSTS_PER_RACK as u64) as u32);
            alloc[h as usize][0] += vcpus as f64;
            alloc[h as usize][1] += ram_mib as f64;
            instances.push(Instance {
                host: h as u32,
                vcpus,
                ram_mib,
                group: g,
                policy: if rng.below(100) < 2 {
                    Relocation::Never
                } else {
                    Relocation::Allow
                },
            });
        }
    }
    Cloud { hosts, instances }
}

fn run(name: &str, cloud: &Cloud) {
    let mut options = Options::default();
    if let Some(c) = std::env::var("PLAN_CANDIDATES")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        options.candidates = c;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let p = plan(cloud, &options);
        times.push(start.elapsed());
        last = Some(p);
    }
    let p = last.expect("at least one run");
    times.sort();
    let drains = p
        .moves
        .iter()
        .filter(|m| m.reason == MoveReason::Drain)
        .count();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("scenario {name}");
    println!(
        "  hosts {}, instances {}",
        cloud.hosts.len(),
        cloud.instances.len()
    );
    println!(
        "  band: mean vCPU {:.3} RAM {:.3}, ±{:.2}",
        p.band.mean.vcpu, p.band.mean.ram, options.band
    );
    println!(
        "  plan time p50 {:.0} ms, max {:.0} ms ({RUNS} runs)",
        ms(times[RUNS / 2]),
        ms(times[RUNS - 1])
    );
    println!(
        "  moves {} ({} drain, {} balance), lower bound {}, ratio {:.3}",
        p.moves.len(),
        drains,
        p.moves.len() - drains,
        p.lower_bound,
        p.moves.len() as f64 / p.lower_bound.max(1) as f64
    );
    println!(
        "  hosts outside band before {}, after {}; within band: {}; stuck {}",
        p.hosts_outside_before,
        p.hosts_outside_after,
        p.within_band,
        p.stuck.len()
    );
    if std::env::var_os("PLAN_DIAG").is_some() {
        let mut kinds = std::collections::BTreeMap::new();
        for r in &p.hosts {
            if r.standing_after == rebalance::Standing::Outside {
                let c = |x: f64, lo: f64, up: f64| {
                    if x > up {
                        "over"
                    } else if x < lo {
                        "under"
                    } else {
                        "in"
                    }
                };
                let k = (
                    c(r.after.vcpu, p.band.lower.vcpu, p.band.upper.vcpu),
                    c(r.after.ram, p.band.lower.ram, p.band.upper.ram),
                );
                *kinds.entry(k).or_insert(0) += 1;
            }
        }
        println!("  outside after (vcpu, ram): {kinds:?}");
    }
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args;
    // only a real `cargo bench` (which passes --bench) does the work.
    if !std::env::args().any(|a| a == "--bench") {
        println!("plan benchmark: run with `cargo bench -p strato-rebalance`");
        return;
    }
    let growth = cloud(14, 400, MIXED);
    run("growth: 400 full racks, 100 new", &growth);

    let general = cloud(16, 400, GENERAL);
    run("growth, general-purpose flavors only", &general);

    let mut drain = cloud(15, RACKS, MIXED);
    drain.hosts[12_345].state = HostState::Draining;
    run("drain: one host among 20,000", &drain);
}
