//! Address state: who holds which address, until when, and finding a free
//! one. Times are Unix milliseconds passed in by the caller so tests can
//! move the clock without sleeping.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::Pool;
use crate::mac::Mac;
use crate::relay::RelayAgent;

/// A bound lease, as persisted and as reported to the provisioner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Unix ms when the lease was (last) bound.
    pub bound_ms: u64,
    /// Unix ms when it runs out.
    pub expires_ms: u64,
    /// Option 93 (or arch from option 60), useful for picking an OS image.
    #[serde(default)]
    pub arch: Option<u16>,
    /// Relay and option 82 data: the machine's switch port.
    #[serde(default)]
    pub relay: Option<RelayAgent>,
}

/// What an address is doing right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Offered, waiting for the client's REQUEST.
    Offered {
        mac: Mac,
        until_ms: u64,
    },
    Bound(Lease),
    /// DECLINEd: something else on the wire answers ARP for it.
    Quarantined {
        until_ms: u64,
    },
}

impl Slot {
    fn owner(&self) -> Option<Mac> {
        match self {
            Slot::Offered { mac, .. } => Some(*mac),
            Slot::Bound(l) => Some(l.mac),
            Slot::Quarantined { .. } => None,
        }
    }

    fn live(&self, now_ms: u64) -> bool {
        match self {
            Slot::Offered { until_ms, .. } | Slot::Quarantined { until_ms } => *until_ms > now_ms,
            Slot::Bound(l) => l.expires_ms > now_ms,
        }
    }
}

/// Lease state for all subnets.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Slot>,
    /// Each MAC's current (or most recent) address, so a returning machine
    /// gets the same one back.
    by_mac: HashMap<Mac, Ipv4Addr>,
    /// Next-fit cursor per pool: O(1) allocation while the pool has room,
    /// and recently released addresses are reused last.
    cursors: HashMap<(Ipv4Addr, Ipv4Addr), u32>,
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        self.by_ip.get(&ip)
    }

    /// The address this MAC holds or last held.
    pub fn address_of(&self, mac: Mac) -> Option<Ipv4Addr> {
        self.by_mac.get(&mac).copied()
    }

    /// The live bound lease of `mac`, if any.
    pub fn bound(&self, mac: Mac, now_ms: u64) -> Option<&Lease> {
        let ip = self.by_mac.get(&mac)?;
        match self.by_ip.get(ip)? {
            Slot::Bound(l) if l.mac == mac && l.expires_ms > now_ms => Some(l),
            _ => None,
        }
    }

    /// Whether `mac` may take `ip`: nobody else holds it right now.
    pub fn available_to(&self, ip: Ipv4Addr, mac: Mac, now_ms: u64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(s) => s.owner() == Some(mac) || !s.live(now_ms),
        }
    }

    /// Live holder of `ip` other than `mac`.
    pub fn held_by_other(&self, ip: Ipv4Addr, mac: Mac, now_ms: u64) -> bool {
        !self.available_to(ip, mac, now_ms)
    }

    /// Next free pool address for `mac`, skipping addresses `excluded`
    /// says are off limits (reservations, router, server).
    pub fn allocate(
        &mut self,
        pool: Pool,
        mac: Mac,
        now_ms: u64,
        excluded: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let start = u32::from(pool.start);
        let size = u32::from(pool.end).checked_sub(start)?.checked_add(1)?;
        let cursor = self.cursors.entry((pool.start, pool.end)).or_insert(0);
        // First pass takes never-used addresses so expired leases stay
        // available to their old owners as long as possible; second pass
        // reclaims expired ones.
        for reclaim in [false, true] {
            for step in 0..size {
                let off = (*cursor + step) % size;
                let ip = Ipv4Addr::from(start + off);
                if excluded(ip) {
                    continue;
                }
                let free = match self.by_ip.get(&ip) {
                    None => true,
                    Some(s) => reclaim && (s.owner() == Some(mac) || !s.live(now_ms)),
                };
                if free {
                    *cursor = (off + 1) % size;
                    return Some(ip);
                }
            }
        }
        None
    }

    /// Puts `slot` on `ip`, keeping the MAC index consistent: the previous
    /// holder of `ip` forgets it, and the new owner's previous pending
    /// offer elsewhere is dropped so it cannot hold two addresses.
    fn set(&mut self, ip: Ipv4Addr, slot: Slot) {
        if let Some(old) = self.by_ip.get(&ip).and_then(Slot::owner) {
            if self.by_mac.get(&old) == Some(&ip) {
                self.by_mac.remove(&old);
            }
        }
        if let Some(mac) = slot.owner() {
            if let Some(prev) = self.by_mac.insert(mac, ip) {
                if prev != ip {
                    if let Some(s) = self.by_ip.get(&prev) {
                        if s.owner() == Some(mac) {
                            self.by_ip.remove(&prev);
                        }
                    }
                }
            }
        }
        self.by_ip.insert(ip, slot);
    }

    pub fn offer(&mut self, ip: Ipv4Addr, mac: Mac, until_ms: u64) {
        self.set(ip, Slot::Offered { mac, until_ms });
    }

    /// Binds and returns the previous live lease of the same MAC, so the
    /// caller can tell a new binding from a renewal.
    pub fn bind(&mut self, lease: Lease) -> Option<Lease> {
        let prev = self.bound(lease.mac, lease.bound_ms).cloned();
        self.set(lease.ip, Slot::Bound(lease));
        prev
    }

    /// Ends the lease now but keeps it as history so the MAC gets the same
    /// address next time if nobody else took it.
    pub fn release(&mut self, ip: Ipv4Addr, mac: Mac, now_ms: u64) -> bool {
        match self.by_ip.get_mut(&ip) {
            Some(Slot::Bound(l)) if l.mac == mac => {
                l.expires_ms = l.expires_ms.min(now_ms);
                true
            }
            Some(Slot::Offered { mac: m, .. }) if *m == mac => {
                self.by_ip.remove(&ip);
                self.by_mac.remove(&mac);
                true
            }
            _ => false,
        }
    }

    pub fn quarantine(&mut self, ip: Ipv4Addr, until_ms: u64) {
        self.set(ip, Slot::Quarantined { until_ms });
    }

    /// Drops dead offers and quarantines so memory stays proportional to
    /// the pool, not to the number of MACs ever seen. Expired leases stay
    /// as history until their address is reused.
    pub fn sweep(&mut self, now_ms: u64) {
        let dead: Vec<Ipv4Addr> = self
            .by_ip
            .iter()
            .filter(|(_, s)| !matches!(s, Slot::Bound(_)) && !s.live(now_ms))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in dead {
            if let Some(mac) = self.by_ip.remove(&ip).and_then(|s| s.owner()) {
                if self.by_mac.get(&mac) == Some(&ip) {
                    self.by_mac.remove(&mac);
                }
            }
        }
    }

    /// All bound leases, expired ones included (the journal keeps history).
    pub fn all_bound(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values().filter_map(|s| match s {
            Slot::Bound(l) => Some(l),
            _ => None,
        })
    }

    /// Live quarantines, for persisting.
    pub fn quarantines(&self, now_ms: u64) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.by_ip.iter().filter_map(move |(ip, s)| match s {
            Slot::Quarantined { until_ms } if *until_ms > now_ms => Some((*ip, *until_ms)),
            _ => None,
        })
    }

    /// Addresses with any state, history included.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Addresses held right now by offers, leases or quarantine.
    pub fn live_count(&self, now_ms: u64) -> usize {
        self.by_ip.values().filter(|s| s.live(now_ms)).count()
    }

    pub fn offered_count(&self, now_ms: u64) -> usize {
        self.by_ip
            .values()
            .filter(|s| matches!(s, Slot::Offered { .. }) && s.live(now_ms))
            .count()
    }
}
