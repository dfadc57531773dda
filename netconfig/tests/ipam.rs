//! Behaviour of the public API as the stack manager and rack planner use it.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use netconfig::{AddressRange, Allocator, IpNet, IpamError, SubnetPlan};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn range(a: &str, b: &str) -> AddressRange {
    AddressRange::new(ip(a), ip(b)).unwrap()
}

fn plan(cidr: &str) -> SubnetPlan {
    SubnetPlan::new(net(cidr), None, vec![], vec![]).unwrap()
}

fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| ip(a)).collect()
}

// ---------------------------------------------------------------- defaults

#[test]
fn v4_slash24_defaults() {
    let p = plan("10.0.0.0/24");
    assert_eq!(p.cidr(), net("10.0.0.0/24"));
    assert_eq!(p.prefix_len(), 24);
    assert_eq!(p.gateway(), ip("10.0.0.1"));
    assert_eq!(p.pools(), &[range("10.0.0.1", "10.0.0.254")]);
    assert!(p.reserved().is_empty());
    assert_eq!(p.capacity(), 253);
    assert_eq!(p.first_free(&BTreeSet::new()), Ok(ip("10.0.0.2")));
    assert!(!p.is_allocatable(ip("10.0.0.0")));
    assert!(!p.is_allocatable(ip("10.0.0.1")));
    assert!(p.is_allocatable(ip("10.0.0.2")));
    assert!(p.is_allocatable(ip("10.0.0.254")));
    assert!(!p.is_allocatable(ip("10.0.0.255")));
    assert!(!p.is_allocatable(ip("10.0.1.2")));
    assert!(!p.is_allocatable(ip("::a00:2")));
}

#[test]
fn v4_slash30_has_one_host() {
    let p = plan("192.168.7.4/30");
    assert_eq!(p.gateway(), ip("192.168.7.5"));
    assert_eq!(p.capacity(), 1);
    assert_eq!(p.first_free(&BTreeSet::new()), Ok(ip("192.168.7.6")));
    assert_eq!(
        p.first_free(&set(&["192.168.7.6"])),
        Err(IpamError::Exhausted {
            cidr: net("192.168.7.4/30")
        })
    );
}

#[test]
fn v4_slash31_and_slash32_are_too_small() {
    for cidr in [
        "10.0.0.0/31",
        "10.0.0.0/32",
        "255.255.255.255/32",
        "0.0.0.0/32",
    ] {
        let err = SubnetPlan::new(net(cidr), None, vec![], vec![]).unwrap_err();
        assert_eq!(err, IpamError::SubnetTooSmall { cidr: net(cidr) });
    }
    assert_eq!(
        SubnetPlan::new(net("10.0.0.0/31"), None, vec![], vec![])
            .unwrap_err()
            .to_string(),
        "subnet 10.0.0.0/31 is too small: nothing is left for hosts once the network \
         address, broadcast address and the gateway are set aside"
    );
}

#[test]
fn v6_slash127_and_slash128_are_too_small() {
    for cidr in [
        "2001:db8::/127",
        "2001:db8::/128",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
    ] {
        let err = SubnetPlan::new(net(cidr), None, vec![], vec![]).unwrap_err();
        assert_eq!(err, IpamError::SubnetTooSmall { cidr: net(cidr) });
    }
}

#[test]
fn v6_slash64_defaults() {
    let p = plan("2001:db8:1:2::/64");
    assert_eq!(p.gateway(), ip("2001:db8:1:2::1"));
    assert_eq!(
        p.pools(),
        &[range("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff")]
    );
    // 2^64 addresses minus the network address minus the gateway.
    assert_eq!(p.capacity(), u64::MAX - 1);
    assert_eq!(p.first_free(&BTreeSet::new()), Ok(ip("2001:db8:1:2::2")));
    // The last address is usable in IPv6: there is no broadcast.
    assert!(p.is_allocatable(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
    assert!(!p.is_allocatable(ip("2001:db8:1:2::")));
    assert!(!p.is_allocatable(ip("10.0.0.2")));
}

#[test]
fn v6_bigger_than_slash64_saturates_capacity() {
    assert_eq!(plan("2001:db8::/48").capacity(), u64::MAX);
    assert_eq!(plan("::/0").capacity(), u64::MAX);
}

#[test]
fn v6_slash120() {
    let p = plan("fd00::/120");
    assert_eq!(p.gateway(), ip("fd00::1"));
    assert_eq!(p.capacity(), 254);
    assert_eq!(
        p.first_free(&set(&["fd00::2", "fd00::3"])),
        Ok(ip("fd00::4"))
    );
    let all: BTreeSet<IpAddr> = (2..=255u8).map(|i| ip(&format!("fd00::{i:x}"))).collect();
    assert_eq!(
        p.first_free(&all),
        Err(IpamError::Exhausted {
            cidr: net("fd00::/120")
        })
    );
}

#[test]
fn first_free_is_fast_on_huge_v6_pools() {
    // Would take ~forever if first_free scanned the pool instead of the set.
    let base: std::net::Ipv6Addr = "2001:db8::".parse().unwrap();
    let at = |offset: u128| IpAddr::from(std::net::Ipv6Addr::from(u128::from(base) + offset));
    let p = plan("2001:db8::/32");
    let allocated: BTreeSet<IpAddr> = (2..100_002).map(at).collect();
    assert_eq!(p.first_free(&allocated), Ok(at(100_002)));
}

// ------------------------------------------------- edges of address spaces

#[test]
fn top_of_v4_space() {
    let p = plan("255.255.255.0/24");
    assert_eq!(p.capacity(), 253);
    assert!(!p.is_allocatable(ip("255.255.255.255")));
    let all: BTreeSet<IpAddr> = (2..=254u8)
        .map(|i| ip(&format!("255.255.255.{i}")))
        .collect();
    assert!(matches!(
        p.first_free(&all),
        Err(IpamError::Exhausted { .. })
    ));
    let whole = plan("0.0.0.0/0");
    assert_eq!(whole.capacity(), (1u64 << 32) - 3);
    assert_eq!(whole.first_free(&BTreeSet::new()), Ok(ip("0.0.0.2")));
    assert!(!whole.is_allocatable(ip("255.255.255.255")));
    assert!(whole.is_allocatable(ip("255.255.255.254")));
}

#[test]
fn top_of_v6_space_does_not_overflow() {
    let top = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let p = SubnetPlan::new(
        net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"),
        None,
        vec![range("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", top)],
        vec![],
    )
    .unwrap();
    assert_eq!(p.capacity(), 2);
    assert_eq!(
        p.first_free(&set(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"])),
        Ok(ip(top))
    );
    assert!(matches!(
        p.first_free(&set(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", top])),
        Err(IpamError::Exhausted { .. })
    ));
    // Reserved range running to the very last address.
    let p = SubnetPlan::new(
        net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"),
        None,
        vec![],
        vec![range("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff02", top)],
    )
    .unwrap();
    assert_eq!(p.capacity(), 0);
    assert!(matches!(
        p.first_free(&BTreeSet::new()),
        Err(IpamError::Exhausted { .. })
    ));
    let whole = plan("::/0");
    assert!(whole.is_allocatable(ip(top)));
    assert_eq!(whole.first_free(&set(&["::2", "::3"])), Ok(ip("::4")));
}

// ------------------------------------------- pools, reserved and gateway

#[test]
fn pools_reserved_and_gateway_interplay() {
    let p = SubnetPlan::new(
        net("10.0.0.0/24"),
        Some(ip("10.0.0.254")),
        // Given out of order on purpose: the plan sorts them.
        vec![
            range("10.0.0.200", "10.0.0.254"),
            range("10.0.0.10", "10.0.0.19"),
        ],
        vec![
            range("10.0.0.10", "10.0.0.12"),
            AddressRange::single(ip("10.0.0.15")),
            // Outside every pool: harmless and does not affect capacity.
            range("10.0.0.100", "10.0.0.110"),
            // Overlaps the previous reserved range.
            range("10.0.0.105", "10.0.0.120"),
        ],
    )
    .unwrap();
    assert_eq!(p.gateway(), ip("10.0.0.254"));
    assert_eq!(
        p.pools(),
        &[
            range("10.0.0.10", "10.0.0.19"),
            range("10.0.0.200", "10.0.0.254")
        ]
    );
    assert_eq!(p.reserved().len(), 4);
    assert_eq!(p.reserved()[0], range("10.0.0.10", "10.0.0.12"));
    // Pool 1: 10 addresses - 3 - 1 reserved; pool 2: 55 addresses - gateway.
    assert_eq!(p.capacity(), 6 + 54);

    assert_eq!(p.first_free(&BTreeSet::new()), Ok(ip("10.0.0.13")));
    assert_eq!(p.first_free(&set(&["10.0.0.13"])), Ok(ip("10.0.0.14")));
    // Skips the reserved .15 after a taken .14.
    assert_eq!(
        p.first_free(&set(&["10.0.0.13", "10.0.0.14"])),
        Ok(ip("10.0.0.16"))
    );
    // Crosses into the second pool once the first is full; unrelated
    // addresses in the set (outside pools, other family) are ignored.
    let full_first = set(&[
        "10.0.0.1",
        "10.0.0.13",
        "10.0.0.14",
        "10.0.0.16",
        "10.0.0.17",
        "10.0.0.18",
        "10.0.0.19",
        "10.0.0.50",
        "2001:db8::1",
    ]);
    assert_eq!(p.first_free(&full_first), Ok(ip("10.0.0.200")));

    assert!(!p.is_allocatable(ip("10.0.0.1"))); // not in a pool
    assert!(!p.is_allocatable(ip("10.0.0.11"))); // reserved
    assert!(!p.is_allocatable(ip("10.0.0.254"))); // gateway
    assert!(p.is_allocatable(ip("10.0.0.253")));
}

#[test]
fn gateway_outside_pools_is_fine_and_stays_unallocatable() {
    let p = SubnetPlan::new(
        net("10.1.0.0/24"),
        None,
        vec![range("10.1.0.100", "10.1.0.199")],
        vec![],
    )
    .unwrap();
    assert_eq!(p.gateway(), ip("10.1.0.1"));
    assert_eq!(p.capacity(), 100);
    assert_eq!(p.first_free(&BTreeSet::new()), Ok(ip("10.1.0.100")));
}

#[test]
fn fully_reserved_plan_is_valid_but_exhausted() {
    let p = SubnetPlan::new(
        net("10.0.0.0/29"),
        None,
        vec![],
        vec![range("10.0.0.0", "10.0.0.7")],
    )
    .unwrap();
    assert_eq!(p.capacity(), 0);
    assert_eq!(
        p.first_free(&BTreeSet::new()).unwrap_err().to_string(),
        "subnet 10.0.0.0/29 has no free address left"
    );
}

#[test]
fn exhaustion_error_message() {
    let p = plan("10.0.0.0/24");
    let all: BTreeSet<IpAddr> = (2..=254u8).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    let err = p.first_free(&all).unwrap_err();
    assert_eq!(
        err,
        IpamError::Exhausted {
            cidr: net("10.0.0.0/24")
        }
    );
    assert_eq!(
        err.to_string(),
        "subnet 10.0.0.0/24 has no free address left"
    );
}

// -------------------------------------------------------- plan validation

#[test]
fn cidr_with_host_bits_is_rejected() {
    let err = SubnetPlan::new(net("10.0.0.5/24"), None, vec![], vec![]).unwrap_err();
    assert_eq!(
        err,
        IpamError::NotNetworkAddress {
            cidr: net("10.0.0.5/24")
        }
    );
    assert_eq!(
        err.to_string(),
        "10.0.0.5/24 is not a network address because host bits are set; did you mean 10.0.0.0/24?"
    );
}

#[test]
fn gateway_validation() {
    let cidr = net("10.0.0.0/24");
    let err = SubnetPlan::new(cidr, Some(ip("10.0.1.1")), vec![], vec![]).unwrap_err();
    assert_eq!(err.to_string(), "gateway 10.0.1.1 is outside 10.0.0.0/24");

    let err = SubnetPlan::new(cidr, Some(ip("2001:db8::1")), vec![], vec![]).unwrap_err();
    assert!(matches!(err, IpamError::FamilyMismatch { .. }));
    assert_eq!(
        err.to_string(),
        "gateway 2001:db8::1 is IPv6 but subnet 10.0.0.0/24 is IPv4"
    );

    let err = SubnetPlan::new(cidr, Some(ip("10.0.0.0")), vec![], vec![]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid gateway 10.0.0.0: the network address 10.0.0.0 of 10.0.0.0/24, \
         which cannot be assigned to a router"
    );
    let err = SubnetPlan::new(cidr, Some(ip("10.0.0.255")), vec![], vec![]).unwrap_err();
    assert!(matches!(err, IpamError::InvalidGateway { .. }));
    assert!(err.to_string().contains("broadcast address"));

    // The last v6 address is a perfectly good gateway.
    let p = SubnetPlan::new(net("fd00::/120"), Some(ip("fd00::ff")), vec![], vec![]).unwrap();
    assert_eq!(p.capacity(), 254);
    assert!(!p.is_allocatable(ip("fd00::ff")));
}

#[test]
fn reversed_range_in_plan_is_rejected() {
    let reversed = AddressRange {
        start: ip("10.0.0.9"),
        end: ip("10.0.0.1"),
    };
    for (pools, reserved) in [(vec![reversed], vec![]), (vec![], vec![reversed])] {
        let err = SubnetPlan::new(net("10.0.0.0/24"), None, pools, reserved).unwrap_err();
        assert!(matches!(err, IpamError::InvalidRange { .. }), "{err}");
    }
}

#[test]
fn mixed_family_ranges_are_rejected() {
    assert!(matches!(
        AddressRange::new(ip("10.0.0.1"), ip("::1")),
        Err(IpamError::InvalidRange { .. })
    ));
    let err = SubnetPlan::new(
        net("10.0.0.0/24"),
        None,
        vec![range("2001:db8::1", "2001:db8::9")],
        vec![],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool 2001:db8::1-2001:db8::9 is IPv6 but subnet 10.0.0.0/24 is IPv4"
    );
    let err = SubnetPlan::new(
        net("2001:db8::/64"),
        None,
        vec![],
        vec![AddressRange::single(ip("10.0.0.1"))],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "reserved range 10.0.0.1 is IPv4 but subnet 2001:db8::/64 is IPv6"
    );
}

#[test]
fn ranges_outside_cidr_are_rejected() {
    let cidr = net("10.0.0.0/24");
    let err = SubnetPlan::new(cidr, None, vec![range("10.0.1.5", "10.0.1.9")], vec![]).unwrap_err();
    assert_eq!(
        err,
        IpamError::OutsideSubnet {
            what: "pool 10.0.1.5-10.0.1.9".into(),
            address: ip("10.0.1.5"),
            cidr
        }
    );
    assert_eq!(
        err.to_string(),
        "pool 10.0.1.5-10.0.1.9 is outside 10.0.0.0/24"
    );

    let err =
        SubnetPlan::new(cidr, None, vec![range("10.0.0.250", "10.0.1.5")], vec![]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "end of pool 10.0.0.250-10.0.1.5 is outside 10.0.0.0/24"
    );
    let err =
        SubnetPlan::new(cidr, None, vec![], vec![range("9.255.255.250", "10.0.0.5")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "start of reserved range 9.255.255.250-10.0.0.5 is outside 10.0.0.0/24"
    );
    assert!(matches!(
        err,
        IpamError::OutsideSubnet { address, .. } if address == ip("9.255.255.250")
    ));
}

#[test]
fn pools_may_not_cover_network_or_broadcast() {
    let cidr = net("10.0.0.0/24");
    let err = SubnetPlan::new(cidr, None, vec![range("10.0.0.0", "10.0.0.9")], vec![]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid address range 10.0.0.0-10.0.0.9: pool includes the network address \
         10.0.0.0 of 10.0.0.0/24, which cannot be assigned to a host"
    );
    let err =
        SubnetPlan::new(cidr, None, vec![range("10.0.0.250", "10.0.0.255")], vec![]).unwrap_err();
    assert!(
        err.to_string().contains("broadcast address 10.0.0.255"),
        "{err}"
    );
    // Reserved ranges may cover them, though: reserving the whole subnet
    // except a pool is a common way to write a plan.
    SubnetPlan::new(cidr, None, vec![], vec![range("10.0.0.0", "10.0.0.255")]).unwrap();
}

#[test]
fn overlapping_pools_are_rejected() {
    let a = range("10.0.0.10", "10.0.0.20");
    let b = range("10.0.0.20", "10.0.0.30");
    let c = range("10.0.0.100", "10.0.0.110");
    let err = SubnetPlan::new(net("10.0.0.0/24"), None, vec![c, b, a], vec![]).unwrap_err();
    assert_eq!(err, IpamError::OverlappingPools { a, b });
    assert_eq!(
        err.to_string(),
        "pools 10.0.0.10-10.0.0.20 and 10.0.0.20-10.0.0.30 overlap; \
         an address may belong to at most one pool"
    );
    // Adjacent but disjoint is fine.
    let p = SubnetPlan::new(
        net("10.0.0.0/24"),
        None,
        vec![
            range("10.0.0.10", "10.0.0.19"),
            range("10.0.0.20", "10.0.0.30"),
        ],
        vec![],
    )
    .unwrap();
    assert_eq!(p.capacity(), 21);
    // Identical pools overlap too.
    assert!(matches!(
        SubnetPlan::new(net("10.0.0.0/24"), None, vec![a, a], vec![]),
        Err(IpamError::OverlappingPools { .. })
    ));
}

#[test]
fn plans_compare_equal_regardless_of_range_order() {
    let a = range("10.0.0.10", "10.0.0.19");
    let b = range("10.0.0.50", "10.0.0.59");
    let p1 = SubnetPlan::new(net("10.0.0.0/24"), None, vec![a, b], vec![b, a]).unwrap();
    let p2 = SubnetPlan::new(net("10.0.0.0/24"), None, vec![b, a], vec![a, b]).unwrap();
    assert_eq!(p1, p2);
}

// ---------------------------------------------------------- check_specific

#[test]
fn check_specific_errors() {
    let p = SubnetPlan::new(
        net("10.0.0.0/24"),
        None,
        vec![range("10.0.0.10", "10.0.0.99")],
        vec![range("10.0.0.20", "10.0.0.29")],
    )
    .unwrap();
    let taken = set(&["10.0.0.10"]);
    let reason = |a: &str| match p.check_specific(ip(a), &taken) {
        Err(IpamError::NotAllocatable { address, reason }) => {
            assert_eq!(address, ip(a));
            reason
        }
        other => panic!("{a}: expected NotAllocatable, got {other:?}"),
    };
    assert_eq!(
        reason("10.0.0.0"),
        "the network address 10.0.0.0 of 10.0.0.0/24"
    );
    assert_eq!(
        reason("10.0.0.255"),
        "the broadcast address 10.0.0.255 of 10.0.0.0/24"
    );
    assert_eq!(reason("10.0.0.1"), "it is the gateway of 10.0.0.0/24");
    assert_eq!(
        reason("10.0.0.25"),
        "it is in reserved range 10.0.0.20-10.0.0.29"
    );
    assert_eq!(
        reason("10.0.0.100"),
        "it is not in any allocation pool of 10.0.0.0/24"
    );
    assert_eq!(
        p.check_specific(ip("10.0.0.25"), &taken)
            .unwrap_err()
            .to_string(),
        "10.0.0.25 cannot be allocated: it is in reserved range 10.0.0.20-10.0.0.29"
    );

    assert_eq!(
        p.check_specific(ip("10.0.0.10"), &taken),
        Err(IpamError::AlreadyAllocated {
            address: ip("10.0.0.10")
        })
    );
    assert_eq!(
        p.check_specific(ip("10.0.1.10"), &taken)
            .unwrap_err()
            .to_string(),
        "address 10.0.1.10 is outside 10.0.0.0/24"
    );
    assert!(matches!(
        p.check_specific(ip("::a00:b"), &taken),
        Err(IpamError::FamilyMismatch { .. })
    ));
    assert_eq!(p.check_specific(ip("10.0.0.11"), &taken), Ok(()));
}

// --------------------------------------------------------------- allocator

#[test]
fn allocate_release_reallocate() {
    let alloc = Allocator::new(plan("10.0.0.0/29")); // hosts .1-.6, gateway .1
    assert_eq!(alloc.plan().capacity(), 5);
    let got: Vec<IpAddr> = (0..5).map(|_| alloc.allocate().unwrap()).collect();
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
    );
    assert_eq!(alloc.allocated(), 5);
    assert!(matches!(alloc.allocate(), Err(IpamError::Exhausted { .. })));

    assert!(alloc.release(ip("10.0.0.4")));
    assert!(
        !alloc.release(ip("10.0.0.4")),
        "double release reports false"
    );
    assert!(
        !alloc.release(ip("10.0.0.1")),
        "gateway was never allocated"
    );
    assert_eq!(alloc.allocated(), 4);
    // The lowest hole is reused.
    assert_eq!(alloc.allocate(), Ok(ip("10.0.0.4")));
    assert!(matches!(alloc.allocate(), Err(IpamError::Exhausted { .. })));
}

#[test]
fn allocate_specific_then_first_free_skips_it() {
    let alloc = Allocator::new(plan("10.0.0.0/24"));
    alloc.allocate_specific(ip("10.0.0.2")).unwrap();
    assert_eq!(
        alloc.allocate_specific(ip("10.0.0.2")),
        Err(IpamError::AlreadyAllocated {
            address: ip("10.0.0.2")
        })
    );
    assert!(matches!(
        alloc.allocate_specific(ip("10.0.0.1")),
        Err(IpamError::NotAllocatable { .. })
    ));
    assert_eq!(alloc.allocate(), Ok(ip("10.0.0.3")));
    assert_eq!(alloc.allocated(), 2);
}

#[test]
fn no_duplicates_under_concurrency() {
    let alloc = Allocator::new(plan("10.20.0.0/22"));
    let capacity = alloc.plan().capacity();
    assert_eq!(capacity, 1024 - 3);
    let results: Mutex<Vec<IpAddr>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    match alloc.allocate() {
                        Ok(a) => mine.push(a),
                        Err(IpamError::Exhausted { .. }) => break,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                results.lock().unwrap().extend(mine);
            });
        }
    });
    let all = results.into_inner().unwrap();
    let unique: HashSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an address was handed out twice");
    assert_eq!(all.len() as u64, capacity);
    assert_eq!(alloc.allocated() as u64, capacity);
    assert!(all.iter().all(|a| alloc.plan().is_allocatable(*a)));
}

#[test]
fn concurrent_allocate_and_release() {
    let alloc = Allocator::new(plan("10.0.0.0/26"));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..500 {
                    if let Ok(a) = alloc.allocate() {
                        assert!(alloc.release(a), "someone else released {a}");
                    }
                }
            });
        }
    });
    assert_eq!(alloc.allocated(), 0);
}

// ------------------------------------------------------------------- serde

#[test]
fn address_range_serde_validates() {
    let r = range("10.0.0.1", "10.0.0.9");
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json, r#"{"start":"10.0.0.1","end":"10.0.0.9"}"#);
    assert_eq!(serde_json::from_str::<AddressRange>(&json).unwrap(), r);
    let err = serde_json::from_str::<AddressRange>(r#"{"start":"10.0.0.9","end":"10.0.0.1"}"#)
        .unwrap_err();
    assert!(err.to_string().contains("comes after"), "{err}");
}

#[test]
fn subnet_plan_serde_round_trips_and_validates() {
    let p = SubnetPlan::new(
        net("10.0.0.0/24"),
        None,
        vec![],
        vec![AddressRange::single(ip("10.0.0.7"))],
    )
    .unwrap();
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<SubnetPlan>(&json).unwrap(), p);

    let minimal: SubnetPlan = serde_json::from_str(r#"{"cidr":"10.0.0.0/24"}"#).unwrap();
    assert_eq!(minimal, plan("10.0.0.0/24"));
    let err = serde_json::from_str::<SubnetPlan>(r#"{"cidr":"10.0.0.0/31"}"#).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn next_candidates_rotate_past_reserved_and_wrap() {
    // .1 gateway, .5-.6 reserved, .7 broadcast: .2, .3, .4 are the pool.
    let p = SubnetPlan::new(
        net("192.168.50.0/29"),
        None,
        vec![],
        vec![range("192.168.50.5", "192.168.50.6")],
    )
    .unwrap();
    let ips = |v: &[&str]| v.iter().map(|a| ip(a)).collect::<Vec<_>>();
    assert_eq!(
        p.next_candidates(None, 2),
        ips(&["192.168.50.2", "192.168.50.3"])
    );
    assert_eq!(
        p.next_candidates(Some(ip("192.168.50.3")), 10),
        ips(&["192.168.50.4", "192.168.50.2", "192.168.50.3"])
    );
    // From inside the reserved range, or the broadcast: round to the start.
    assert_eq!(
        p.next_candidates(Some(ip("192.168.50.5")), 1),
        ips(&["192.168.50.2"])
    );
    assert_eq!(
        p.next_candidates(Some(ip("192.168.50.7")), 3),
        ips(&["192.168.50.2", "192.168.50.3", "192.168.50.4"])
    );
    // An address of the other family is no position at all.
    assert_eq!(
        p.next_candidates(Some(ip("::1")), 1),
        ips(&["192.168.50.2"])
    );
}
