use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::IpamError;
use crate::range::{from_bits, same_family, to_bits, AddressRange};

/// Inclusive interval of address bits; the plan's internal currency, because
/// comparisons and `+ 1` on `u128` work identically for both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    lo: u128,
    hi: u128,
}

impl Span {
    fn of(r: &AddressRange) -> Self {
        Span {
            lo: to_bits(r.start),
            hi: to_bits(r.end),
        }
    }
}

/// A subnet's addressing rules, validated once so that allocation can be a
/// cheap, infallible-in-practice walk.
///
/// It is deliberately stateless with respect to allocations: the stack
/// manager's database is the source of truth for what is taken (guarded by a
/// UNIQUE(subnet, address) constraint), and it passes in what a call needs:
/// the allocated set, or a cursor whose candidates it checks itself. That
/// keeps this type pure and trivially shareable; concurrent allocations are
/// serialized by the database, not by locking here.
///
/// Serialises as `{cidr, gateway, pools, reserved}`; deserialisation re-runs
/// [`SubnetPlan::new`], so a stored plan cannot bypass validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PlanSpec", into = "PlanSpec")]
pub struct SubnetPlan {
    cidr: IpNet,
    gateway: IpAddr,
    /// Sorted by start and pairwise disjoint.
    pools: Vec<AddressRange>,
    /// Sorted by start; may overlap each other, the pools and the gateway.
    reserved: Vec<AddressRange>,
    /// Reserved ranges plus the gateway, merged into sorted disjoint spans, so
    /// allocation can skip them in one forward pass.
    blocked: Vec<Span>,
    /// Cached because it needs a pass over every range.
    capacity: u128,
}

/// Wire form of [`SubnetPlan`].
#[derive(Serialize, Deserialize)]
struct PlanSpec {
    cidr: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    pools: Vec<AddressRange>,
    #[serde(default)]
    reserved: Vec<AddressRange>,
}

impl TryFrom<PlanSpec> for SubnetPlan {
    type Error = IpamError;

    fn try_from(spec: PlanSpec) -> Result<Self, Self::Error> {
        SubnetPlan::new(spec.cidr, spec.gateway, spec.pools, spec.reserved)
    }
}

impl From<SubnetPlan> for PlanSpec {
    fn from(plan: SubnetPlan) -> Self {
        PlanSpec {
            cidr: plan.cidr,
            gateway: Some(plan.gateway),
            pools: plan.pools,
            reserved: plan.reserved,
        }
    }
}

impl SubnetPlan {
    /// Validates everything up front so that a bad plan is refused when the
    /// operator creates the subnet, not when the first VM fails to boot.
    ///
    /// - `cidr` must have no host bits set ([`IpamError::NotNetworkAddress`]).
    /// - `gateway` defaults to the first host address because that is the
    ///   overwhelmingly common convention and what DHCP-less guests expect.
    /// - Empty `pools` means "the whole usable range" (IPv4: network+1 ..=
    ///   broadcast-1; IPv6: network+1 ..= last address). Explicit pools must
    ///   not include the network address (nor, for IPv4, the broadcast
    ///   address): hosts could not use them, and accepting them silently
    ///   would overstate capacity.
    /// - `reserved` ranges only need to lie inside the subnet; they may
    ///   overlap pools (reserved wins), each other, and the gateway, which is
    ///   always treated as reserved anyway.
    ///
    /// Pools and reserved ranges are stored sorted by start address, so two
    /// plans listing the same ranges in different orders compare equal.
    pub fn new(
        cidr: IpNet,
        gateway: Option<IpAddr>,
        pools: Vec<AddressRange>,
        reserved: Vec<AddressRange>,
    ) -> Result<Self, IpamError> {
        if cidr.addr() != cidr.network() {
            return Err(IpamError::NotNetworkAddress { cidr });
        }
        let v6 = cidr.addr().is_ipv6();
        let net = to_bits(cidr.network());
        let last = to_bits(cidr.broadcast());

        // A gateway and at least one host need two usable addresses: IPv4
        // loses network and broadcast, IPv6 only the network (subnet-router
        // anycast) address, so both need at least two host bits.
        let host_bits = cidr.max_prefix_len().saturating_sub(cidr.prefix_len());
        if host_bits < 2 {
            return Err(IpamError::SubnetTooSmall { cidr });
        }
        let too_small = || IpamError::SubnetTooSmall { cidr };
        let usable = Span {
            lo: net.checked_add(1).ok_or_else(too_small)?,
            hi: if v6 {
                last
            } else {
                last.checked_sub(1).ok_or_else(too_small)?
            },
        };

        let gateway = match gateway {
            None => from_bits(usable.lo, v6),
            Some(g) => {
                let what = format!("gateway {g}");
                if !same_family(g, cidr.addr()) {
                    return Err(IpamError::FamilyMismatch {
                        what,
                        address: g,
                        cidr,
                    });
                }
                if !cidr.contains(&g) {
                    return Err(IpamError::OutsideSubnet {
                        what,
                        address: g,
                        cidr,
                    });
                }
                if let Some(reason) = non_host_reason(cidr, to_bits(g)) {
                    return Err(IpamError::InvalidGateway {
                        gateway: g,
                        reason: format!("{reason}, which cannot be assigned to a router"),
                    });
                }
                g
            }
        };

        let mut pools = if pools.is_empty() {
            vec![AddressRange {
                start: from_bits(usable.lo, v6),
                end: from_bits(usable.hi, v6),
            }]
        } else {
            let mut checked = Vec::with_capacity(pools.len());
            for pool in pools {
                let pool = check_inside(cidr, "pool", pool)?;
                for bits in [to_bits(pool.start), to_bits(pool.end)] {
                    if let Some(reason) = non_host_reason(cidr, bits) {
                        return Err(IpamError::InvalidRange {
                            start: pool.start,
                            end: pool.end,
                            reason: format!(
                                "pool includes {reason}, which cannot be assigned to a host"
                            ),
                        });
                    }
                }
                checked.push(pool);
            }
            checked
        };
        pools.sort_by_key(|p| (p.start, p.end));
        // Sorted by start, any overlapping pair implies an overlapping
        // neighbour pair, so checking neighbours is enough.
        for pair in pools.windows(2) {
            if let [a, b] = pair {
                if b.start <= a.end {
                    return Err(IpamError::OverlappingPools { a: *a, b: *b });
                }
            }
        }

        let mut reserved = reserved
            .into_iter()
            .map(|r| check_inside(cidr, "reserved range", r))
            .collect::<Result<Vec<_>, _>>()?;
        reserved.sort_by_key(|r| (r.start, r.end));

        let gw_bits = to_bits(gateway);
        let blocked = merge(
            reserved
                .iter()
                .map(Span::of)
                .chain(std::iter::once(Span {
                    lo: gw_bits,
                    hi: gw_bits,
                }))
                .collect(),
        );
        let capacity = count_free(&pools, &blocked);

        Ok(SubnetPlan {
            cidr,
            gateway,
            pools,
            reserved,
            blocked,
            capacity,
        })
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// Sorted by start address and pairwise disjoint.
    pub fn pools(&self) -> &[AddressRange] {
        &self.pools
    }

    /// Sorted by start address, as given (not merged), so that what the
    /// operator configured is what they read back.
    pub fn reserved(&self) -> &[AddressRange] {
        &self.reserved
    }

    pub fn prefix_len(&self) -> u8 {
        self.cidr.prefix_len()
    }

    /// Saturates to `u64::MAX` because an IPv6 /64 alone holds ~2^64
    /// addresses; callers use this for quotas and "percent used" displays,
    /// where "effectively unlimited" is the right answer.
    pub fn capacity(&self) -> u64 {
        u64::try_from(self.capacity).unwrap_or(u64::MAX)
    }

    /// The boolean twin of [`SubnetPlan::check_specific`] for hot loops and
    /// filters, where building an error message per address would be waste.
    pub fn is_allocatable(&self, a: IpAddr) -> bool {
        // Pools are validated to lie inside the cidr and to exclude network
        // and broadcast, so pool membership covers those checks too.
        if !same_family(a, self.gateway) {
            return false;
        }
        let x = to_bits(a);
        self.pool_containing(x).is_some() && !self.is_blocked(x)
    }

    /// Cost is O(|allocated ∩ pools| + number of ranges), independent of pool
    /// size: pools, blocked spans and the allocated set are all sorted, so
    /// one merged forward pass finds the first gap. This is what makes a huge
    /// IPv6 pool as cheap to allocate from as a /24.
    ///
    /// Entries of `allocated` that are outside the pools or of the other
    /// family are ignored, so the caller can pass whatever its database holds
    /// without filtering.
    pub fn first_free(&self, allocated: &BTreeSet<IpAddr>) -> Result<IpAddr, IpamError> {
        let exhausted = || IpamError::Exhausted { cidr: self.cidr };
        let (Some(first), Some(last)) = (self.pools.first(), self.pools.last()) else {
            return Err(exhausted());
        };
        // Pools are sorted and non-empty, so first.start <= last.end and
        // `range` cannot panic.
        let mut taken = allocated
            .range(first.start..=last.end)
            .map(|a| to_bits(*a))
            .peekable();
        let mut blocked = self.blocked.iter().peekable();
        let v6 = self.cidr.addr().is_ipv6();

        for pool in &self.pools {
            let Span { lo: mut c, hi } = Span::of(pool);
            // Invariant: c <= hi. Every iteration either returns, moves c
            // forward past a blocked span or a taken address (consuming it),
            // or leaves the pool.
            loop {
                while blocked.next_if(|b| b.hi < c).is_some() {}
                if let Some(b) = blocked.peek() {
                    if b.lo <= c {
                        match b.hi.checked_add(1) {
                            Some(next) if next <= hi => {
                                c = next;
                                continue;
                            }
                            _ => break,
                        }
                    }
                }
                while taken.next_if(|&t| t < c).is_some() {}
                if taken.next_if_eq(&c).is_some() {
                    match c.checked_add(1) {
                        Some(next) if next <= hi => {
                            c = next;
                            continue;
                        }
                        _ => break,
                    }
                }
                return Ok(from_bits(c, v6));
            }
        }
        Err(exhausted())
    }

    /// Up to `n` allocatable addresses in pool order, starting just after
    /// `after` and wrapping around to the first pool once; `None` (or an
    /// address of the other family) starts at the first pool. No address
    /// comes twice, and `after` itself comes last, if at all.
    ///
    /// This is the rotating allocator's window: the caller checks these few
    /// addresses against what is taken (key lookups) instead of reading the
    /// subnet's whole allocated set, and a released address is handed out
    /// again when the rotation next reaches it, not to the very next
    /// instance, which might inherit the old one's DNS names, firewall rules
    /// or ARP entries. When every candidate is taken the caller falls back
    /// to [`SubnetPlan::first_free_after`].
    pub fn next_candidates(&self, after: Option<IpAddr>, n: usize) -> Vec<IpAddr> {
        let v6 = self.cidr.addr().is_ipv6();
        let Some(first) = self.pools.first().map(|p| to_bits(p.start)) else {
            return Vec::new();
        };
        let start = after
            .filter(|a| same_family(*a, self.gateway))
            .and_then(|a| to_bits(a).checked_add(1))
            .unwrap_or(first);
        let mut out = Vec::with_capacity(n.min(64));
        let mut c = start;
        let mut wrapped = false;
        while out.len() < n {
            match self.next_allocatable(c) {
                // After the wrap, stop on reaching where the walk began.
                Some(x) if wrapped && x >= start => break,
                Some(x) => {
                    out.push(from_bits(x, v6));
                    match x.checked_add(1) {
                        Some(next) => c = next,
                        None if wrapped || start == first => break,
                        None => {
                            c = first;
                            wrapped = true;
                        }
                    }
                }
                None if wrapped || start == first => break,
                None => {
                    c = first;
                    wrapped = true;
                }
            }
        }
        out
    }

    /// The first free address after `after` in rotation order: the lowest
    /// free one above it, or else the lowest free one at all (wrapping round
    /// the pools). `None` starts at the first pool, like
    /// [`SubnetPlan::first_free`]. This is the rotating allocator's answer
    /// when every address of its window was taken: it keeps the rotation
    /// instead of jumping back to the lowest hole.
    ///
    /// Cost is O(taken addresses after `after`, times log of the set), then
    /// that of [`SubnetPlan::first_free`] when it wraps.
    pub fn first_free_after(
        &self,
        after: Option<IpAddr>,
        allocated: &BTreeSet<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        let v6 = self.cidr.addr().is_ipv6();
        let start = after
            .filter(|a| same_family(*a, self.gateway))
            .and_then(|a| to_bits(a).checked_add(1));
        if let Some(mut c) = start {
            // Every step either returns or passes one taken address, so the
            // walk is bounded by the allocated set.
            while let Some(x) = self.next_allocatable(c) {
                let a = from_bits(x, v6);
                if !allocated.contains(&a) {
                    return Ok(a);
                }
                match x.checked_add(1) {
                    Some(next) => c = next,
                    None => break,
                }
            }
        }
        self.first_free(allocated)
    }

    /// The lowest allocatable address at or above `x`.
    fn next_allocatable(&self, x: u128) -> Option<u128> {
        let i = self.pools.partition_point(|p| to_bits(p.end) < x);
        for pool in self.pools[i..].iter().map(Span::of) {
            let mut c = x.max(pool.lo);
            loop {
                let j = self.blocked.partition_point(|b| b.hi < c);
                match self.blocked.get(j) {
                    Some(b) if b.lo <= c => match b.hi.checked_add(1) {
                        Some(next) if next <= pool.hi => c = next,
                        _ => break,
                    },
                    _ => return Some(c),
                }
            }
        }
        None
    }

    /// Used for user-requested fixed IPs, so the error says precisely why
    /// the address is refused instead of a bare "no".
    pub fn check_specific(&self, a: IpAddr, allocated: &BTreeSet<IpAddr>) -> Result<(), IpamError> {
        let cidr = self.cidr;
        if !same_family(a, cidr.addr()) {
            return Err(IpamError::FamilyMismatch {
                what: format!("address {a}"),
                address: a,
                cidr,
            });
        }
        if !cidr.contains(&a) {
            return Err(IpamError::OutsideSubnet {
                what: format!("address {a}"),
                address: a,
                cidr,
            });
        }
        let x = to_bits(a);
        let refuse = |reason: String| Err(IpamError::NotAllocatable { address: a, reason });
        if let Some(reason) = non_host_reason(cidr, x) {
            return refuse(reason);
        }
        if a == self.gateway {
            return refuse(format!("it is the gateway of {cidr}"));
        }
        if let Some(r) = self.reserved.iter().find(|r| r.contains(a)) {
            return refuse(format!("it is in reserved range {r}"));
        }
        if self.pool_containing(x).is_none() {
            return refuse(format!("it is not in any allocation pool of {cidr}"));
        }
        if allocated.contains(&a) {
            return Err(IpamError::AlreadyAllocated { address: a });
        }
        Ok(())
    }

    fn pool_containing(&self, x: u128) -> Option<&AddressRange> {
        let i = self.pools.partition_point(|p| to_bits(p.end) < x);
        self.pools.get(i).filter(|p| to_bits(p.start) <= x)
    }

    fn is_blocked(&self, x: u128) -> bool {
        let i = self.blocked.partition_point(|b| b.hi < x);
        self.blocked.get(i).is_some_and(|b| b.lo <= x)
    }
}

/// Describes why an address of `cidr` can never be a host address, if so.
fn non_host_reason(cidr: IpNet, bits: u128) -> Option<String> {
    if bits == to_bits(cidr.network()) {
        Some(format!("the network address {} of {cidr}", cidr.network()))
    } else if cidr.addr().is_ipv4() && bits == to_bits(cidr.broadcast()) {
        Some(format!(
            "the broadcast address {} of {cidr}",
            cidr.broadcast()
        ))
    } else {
        None
    }
}

/// Re-validates a (possibly hand-built) range and checks it lies in `cidr`.
/// The error names which end is out when only one is, since "pool X is
/// outside" would be misleading for a range that straddles the boundary.
fn check_inside(cidr: IpNet, kind: &str, r: AddressRange) -> Result<AddressRange, IpamError> {
    let r = AddressRange::new(r.start, r.end)?;
    if !same_family(r.start, cidr.addr()) {
        return Err(IpamError::FamilyMismatch {
            what: format!("{kind} {r}"),
            address: r.start,
            cidr,
        });
    }
    let (what, address) = match (cidr.contains(&r.start), cidr.contains(&r.end)) {
        (true, true) => return Ok(r),
        (false, false) => (format!("{kind} {r}"), r.start),
        (true, false) => (format!("end of {kind} {r}"), r.end),
        (false, true) => (format!("start of {kind} {r}"), r.start),
    };
    Err(IpamError::OutsideSubnet {
        what,
        address,
        cidr,
    })
}

/// Sorts and coalesces overlapping or touching spans.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.lo, s.hi));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            // saturating_add: a span ending at the very last address absorbs
            // everything after it, which is exactly right.
            Some(cur) if s.lo <= cur.hi.saturating_add(1) => cur.hi = cur.hi.max(s.hi),
            _ => out.push(s),
        }
    }
    out
}

/// Addresses in `pools` not covered by `blocked` (both sorted, each
/// internally disjoint).
fn count_free(pools: &[AddressRange], blocked: &[Span]) -> u128 {
    let mut total: u128 = 0;
    for p in pools.iter().map(Span::of) {
        let mut n = (p.hi - p.lo).saturating_add(1);
        let first = blocked.partition_point(|b| b.hi < p.lo);
        for b in blocked[first..].iter().take_while(|b| b.lo <= p.hi) {
            let overlap = (b.hi.min(p.hi) - b.lo.max(p.lo)).saturating_add(1);
            n = n.saturating_sub(overlap);
        }
        total = total.saturating_add(n);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_coalesces_touching_and_overlapping() {
        let s = |lo, hi| Span { lo, hi };
        assert_eq!(
            merge(vec![s(10, 12), s(1, 3), s(4, 5), s(11, 20), s(30, 30)]),
            vec![s(1, 5), s(10, 20), s(30, 30)]
        );
        assert_eq!(
            merge(vec![s(u128::MAX - 1, u128::MAX), s(u128::MAX, u128::MAX)]),
            vec![s(u128::MAX - 1, u128::MAX)]
        );
    }
}
