//! Randomised checks against a brute-force reference model.
//!
//! A tiny seeded PRNG stands in for proptest: the cases are cheap to generate
//! by hand, runs are reproducible (the seed is in every assertion message),
//! and it keeps the crate's dependency tree at what production needs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netconfig::{AddressRange, IpNet, IpamError, SubnetPlan};

/// SplitMix64: tiny, fast, and good enough to spread test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in lo..=hi (modulo bias is irrelevant here).
    fn between(&mut self, lo: u128, hi: u128) -> u128 {
        let span = hi - lo;
        let r = (u128::from(self.next()) << 64) | u128::from(self.next());
        if span == u128::MAX {
            r
        } else {
            lo + r % (span + 1)
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn addr(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap()))
    }
}

fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Independent restatement of the allocation rules, written for clarity
/// rather than speed.
struct Model {
    pools: Vec<(u128, u128)>,
    reserved: Vec<(u128, u128)>,
    gateway: u128,
}

impl Model {
    fn allocatable(&self, x: u128) -> bool {
        self.pools.iter().any(|&(lo, hi)| lo <= x && x <= hi)
            && x != self.gateway
            && !self.reserved.iter().any(|&(lo, hi)| lo <= x && x <= hi)
    }
}

/// A small valid plan (4..=256 addresses), sometimes at the very top of the
/// address space to exercise overflow paths.
fn random_plan(rng: &mut Rng) -> (SubnetPlan, Model, u128, u128, bool) {
    let v6 = rng.chance(50);
    let width: u32 = if v6 { 128 } else { 32 };
    let host_bits = rng.between(2, 8) as u32;
    let space_max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    let raw = if rng.chance(15) {
        space_max
    } else if rng.chance(10) {
        0
    } else {
        rng.between(0, space_max)
    };
    let net = raw >> host_bits << host_bits;
    let last = net | ((1u128 << host_bits) - 1);
    let prefix = (width - host_bits) as u8;
    let cidr = IpNet::new(addr(net, v6), prefix).unwrap();
    let (ulo, uhi) = (net + 1, if v6 { last } else { last - 1 });

    let gateway = rng.chance(50).then(|| rng.between(ulo, uhi));

    let mut pools = Vec::new();
    if rng.chance(70) {
        let mut cur = ulo;
        while cur <= uhi && pools.len() < 4 {
            let start = cur.saturating_add(rng.between(0, 4));
            let end = start.saturating_add(rng.between(0, 12)).min(uhi);
            if start > end {
                break;
            }
            pools.push((start, end));
            cur = match end.checked_add(1) {
                Some(c) => c,
                None => break,
            };
        }
        if rng.chance(50) {
            pools.reverse();
        }
    }

    let reserved: Vec<(u128, u128)> = (0..rng.between(0, 4))
        .map(|_| {
            let a = rng.between(net, last);
            let b = rng.between(a, a.saturating_add(10).min(last));
            (a, b)
        })
        .collect();

    let to_ranges = |v: &[(u128, u128)]| -> Vec<AddressRange> {
        v.iter()
            .map(|&(a, b)| AddressRange::new(addr(a, v6), addr(b, v6)).unwrap())
            .collect()
    };
    let plan = SubnetPlan::new(
        cidr,
        gateway.map(|g| addr(g, v6)),
        to_ranges(&pools),
        to_ranges(&reserved),
    )
    .unwrap_or_else(|e| panic!("valid random plan rejected: {e} ({cidr}, {pools:?})"));

    let model = Model {
        pools: if pools.is_empty() {
            vec![(ulo, uhi)]
        } else {
            pools
        },
        reserved,
        gateway: gateway.unwrap_or(ulo),
    };
    (plan, model, net, last, v6)
}

#[test]
fn plan_matches_brute_force_model() {
    for seed in 0..400u64 {
        let mut rng = Rng(seed);
        let (plan, model, net, last, v6) = random_plan(&mut rng);
        let ctx = format!("seed {seed}, plan {plan:?}");
        let empty = BTreeSet::new();

        let mut count = 0u64;
        for x in net..=last {
            let a = addr(x, v6);
            let expected = model.allocatable(x);
            assert_eq!(plan.is_allocatable(a), expected, "{a}: {ctx}");
            assert_eq!(
                plan.check_specific(a, &empty).is_ok(),
                expected,
                "{a}: {ctx}"
            );
            count += u64::from(expected);
        }
        assert_eq!(plan.capacity(), count, "{ctx}");
        assert_eq!(addr(bits(plan.gateway()), v6), plan.gateway());
        assert!(!plan.is_allocatable(plan.gateway()), "{ctx}");

        for density in [0, 10, 50, 90, 100] {
            let mut allocated: BTreeSet<IpAddr> = (net..=last)
                .filter(|_| rng.chance(density))
                .map(|x| addr(x, v6))
                .collect();
            // Noise the stack manager might pass along: other family, other subnets.
            allocated.insert(addr(rng.between(0, u128::from(u32::MAX)), false));
            allocated.insert(addr(rng.between(0, u128::MAX), true));

            let expected =
                (net..=last).find(|&x| model.allocatable(x) && !allocated.contains(&addr(x, v6)));
            match (plan.first_free(&allocated), expected) {
                (Ok(got), Some(want)) => {
                    assert_eq!(got, addr(want, v6), "density {density}: {ctx}");
                    assert!(plan.is_allocatable(got));
                    assert!(!allocated.contains(&got));
                    assert_eq!(plan.check_specific(got, &allocated), Ok(()));
                }
                (Err(IpamError::Exhausted { cidr }), None) => assert_eq!(cidr, plan.cidr()),
                (got, want) => panic!("first_free {got:?}, expected {want:?}: {ctx}"),
            }
        }
    }
}

#[test]
fn next_candidates_match_brute_force_model() {
    for seed in 0..400u64 {
        let mut rng = Rng(seed ^ 0x5eed);
        let (plan, model, net, last, v6) = random_plan(&mut rng);
        let ctx = format!("seed {seed}, plan {plan:?}");
        let all: Vec<u128> = (net..=last).filter(|&x| model.allocatable(x)).collect();
        // Starting points: none, inside and around the subnet, the very
        // top of the space, and the other family.
        let mut starts: Vec<Option<IpAddr>> = vec![None];
        let top = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        for _ in 0..6 {
            let x = rng.between(net.saturating_sub(2), last.saturating_add(2).min(top));
            starts.push(Some(addr(x, v6)));
        }
        starts.push(Some(addr(top, v6)));
        starts.push(Some(addr(7, !v6)));
        for after in starts {
            // The model: every allocatable address above `after`, then the
            // ones at or below it.
            let pivot = after.filter(|a| a.is_ipv6() == v6).map(bits);
            let expected: Vec<IpAddr> = match pivot {
                None => all.clone(),
                Some(p) => all
                    .iter()
                    .filter(|&&x| x > p)
                    .chain(all.iter().filter(|&&x| x <= p))
                    .copied()
                    .collect(),
            }
            .into_iter()
            .map(|x| addr(x, v6))
            .collect();
            for n in [0, 1, 3, all.len(), all.len() + 5] {
                let got = plan.next_candidates(after, n);
                let want = &expected[..n.min(expected.len())];
                assert_eq!(got, want, "after {after:?}, n {n}: {ctx}");
            }
            // The window's fallback keeps the same order over what is free.
            for density in [0, 50, 90, 100] {
                let allocated: BTreeSet<IpAddr> = (net..=last)
                    .filter(|_| rng.chance(density))
                    .map(|x| addr(x, v6))
                    .collect();
                let want = expected.iter().find(|a| !allocated.contains(a)).copied();
                match (plan.first_free_after(after, &allocated), want) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(got, want, "after {after:?}, density {density}: {ctx}")
                    }
                    (Err(IpamError::Exhausted { .. }), None) => {}
                    (got, want) => panic!(
                        "first_free_after {got:?}, expected {want:?}, after {after:?}: {ctx}"
                    ),
                }
            }
        }
    }
}

/// Arbitrary, mostly invalid input must produce errors, never panics, and
/// whatever is accepted must still behave.
#[test]
fn arbitrary_input_never_panics() {
    for seed in 0..3000u64 {
        let mut rng = Rng(seed ^ 0xdead_beef);
        let v6 = rng.chance(50);
        let space_max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let max_prefix = if v6 { 128 } else { 32 };
        let prefix = rng.between(0, max_prefix) as u8;
        let base = rng.between(0, space_max);
        // Mostly near-valid cidrs, sometimes with host bits set.
        let base = if rng.chance(80) {
            let host_bits = u32::from(max_prefix as u8 - prefix);
            base.checked_shr(host_bits)
                .unwrap_or(0)
                .checked_shl(host_bits)
                .unwrap_or(0)
        } else {
            base
        };
        let cidr = IpNet::new(addr(base, v6), prefix).unwrap();
        let any_addr = |rng: &mut Rng| {
            let fam = if rng.chance(90) { v6 } else { !v6 };
            let max = if fam { u128::MAX } else { u128::from(u32::MAX) };
            if rng.chance(70) {
                // Near the subnet, so some inputs are valid.
                let off = rng.between(0, 300);
                let b = if rng.chance(50) {
                    base.saturating_add(off)
                } else {
                    base.saturating_sub(off)
                };
                addr(b.min(max), fam)
            } else {
                addr(rng.between(0, max), fam)
            }
        };
        let gateway = rng.chance(50).then(|| any_addr(&mut rng));
        let ranges = |rng: &mut Rng| -> Vec<AddressRange> {
            (0..rng.between(0, 3))
                .map(|_| AddressRange {
                    start: any_addr(rng),
                    end: any_addr(rng),
                })
                .collect()
        };
        let pools = ranges(&mut rng);
        let reserved = ranges(&mut rng);

        if let Ok(plan) = SubnetPlan::new(cidr, gateway, pools, reserved) {
            let _ = plan.capacity();
            let mut allocated = BTreeSet::new();
            for _ in 0..5 {
                match plan.first_free(&allocated) {
                    Ok(a) => {
                        assert!(plan.is_allocatable(a), "seed {seed}: {a} in {plan:?}");
                        assert_eq!(plan.check_specific(a, &allocated), Ok(()));
                        allocated.insert(a);
                    }
                    Err(IpamError::Exhausted { .. }) => break,
                    Err(e) => panic!("seed {seed}: unexpected {e}"),
                }
            }
            for _ in 0..5 {
                let a = any_addr(&mut rng);
                let _ = plan.is_allocatable(a);
                let _ = plan.check_specific(a, &allocated);
            }
        }
    }
}
