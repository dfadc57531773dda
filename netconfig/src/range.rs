use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::error::IpamError;

/// An inclusive run of addresses of one family, used both for allocation
/// pools and for reserved ranges.
///
/// Inclusive on both ends because that is how operators write ranges
/// ("10.0.0.10-10.0.0.99") and because an exclusive end cannot express a
/// range that ends at 255.255.255.255 or ffff:…:ffff.
///
/// The fields are public for ergonomic construction and pattern matching, so
/// a hand-built value may be reversed or mix families; every method tolerates
/// that without panicking, and [`crate::SubnetPlan::new`] re-validates every
/// range it is given. Deserialisation goes through [`AddressRange::new`], so
/// ranges read back from storage or an API body are always valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRange")]
pub struct AddressRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

/// Unvalidated wire form, so serde can route through [`AddressRange::new`].
#[derive(Deserialize)]
struct RawRange {
    start: IpAddr,
    end: IpAddr,
}

impl TryFrom<RawRange> for AddressRange {
    type Error = IpamError;

    fn try_from(raw: RawRange) -> Result<Self, Self::Error> {
        AddressRange::new(raw.start, raw.end)
    }
}

impl AddressRange {
    /// Rejects mixed families and reversed ends up front, so that code
    /// holding an `AddressRange` obtained here can rely on `start <= end`.
    pub fn new(start: IpAddr, end: IpAddr) -> Result<Self, IpamError> {
        if !same_family(start, end) {
            return Err(IpamError::InvalidRange {
                start,
                end,
                reason: format!(
                    "start is {} but end is {}; both ends must be of the same address family",
                    family_name(&start),
                    family_name(&end)
                ),
            });
        }
        if start > end {
            return Err(IpamError::InvalidRange {
                start,
                end,
                reason: format!("start {start} comes after end {end}"),
            });
        }
        Ok(Self { start, end })
    }

    /// A one-address range, the usual way to reserve a single host (a VIP,
    /// a second router) without a dedicated type.
    pub fn single(a: IpAddr) -> Self {
        Self { start: a, end: a }
    }

    /// Checks the family explicitly: `IpAddr` orders every IPv4 address
    /// before every IPv6 one, so a plain `start <= a <= end` would be wrong
    /// for a hand-built mixed-family range.
    pub fn contains(&self, a: IpAddr) -> bool {
        self.is_well_formed() && same_family(a, self.start) && self.start <= a && a <= self.end
    }

    /// Number of addresses. Saturates at `u128::MAX` for the one range that
    /// does not fit (all 2^128 IPv6 addresses) and is 0 for a malformed
    /// hand-built range, so callers never see a panic or a wrapped value.
    pub fn len(&self) -> u128 {
        if !self.is_well_formed() {
            return 0;
        }
        (to_bits(self.end) - to_bits(self.start)).saturating_add(1)
    }

    /// Only a malformed hand-built range is empty; anything from
    /// [`AddressRange::new`] holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_well_formed(&self) -> bool {
        same_family(self.start, self.end) && self.start <= self.end
    }
}

/// Prints a single-address range as just the address, which reads better in
/// error messages ("reserved range 10.0.0.7").
impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// All interval arithmetic is done on `u128` so one code path serves both
/// families; IPv4 values simply live in the low 32 bits.
pub(crate) fn to_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Inverse of [`to_bits`]. Callers only pass values derived from addresses of
/// the same family, so for IPv4 the truncation never drops set bits.
pub(crate) fn from_bits(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    }
}

pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub(crate) fn family_name(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn new_accepts_ordered_and_single() {
        let r = AddressRange::new(ip("10.0.0.1"), ip("10.0.0.10")).unwrap();
        assert_eq!(r.len(), 10);
        assert!(!r.is_empty());
        assert_eq!(AddressRange::new(ip("::1"), ip("::1")).unwrap().len(), 1);
        assert_eq!(AddressRange::single(ip("10.0.0.7")).len(), 1);
    }

    #[test]
    fn new_rejects_reversed() {
        let err = AddressRange::new(ip("10.0.0.9"), ip("10.0.0.1")).unwrap_err();
        assert!(matches!(err, IpamError::InvalidRange { .. }));
        assert_eq!(
            err.to_string(),
            "invalid address range 10.0.0.9-10.0.0.1: start 10.0.0.9 comes after end 10.0.0.1"
        );
    }

    #[test]
    fn new_rejects_mixed_families() {
        let err = AddressRange::new(ip("10.0.0.1"), ip("::1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid address range 10.0.0.1-::1: start is IPv4 but end is IPv6; \
             both ends must be of the same address family"
        );
    }

    #[test]
    fn contains_respects_bounds_and_family() {
        let r = AddressRange::new(ip("10.0.0.10"), ip("10.0.0.20")).unwrap();
        assert!(r.contains(ip("10.0.0.10")));
        assert!(r.contains(ip("10.0.0.20")));
        assert!(!r.contains(ip("10.0.0.9")));
        assert!(!r.contains(ip("10.0.0.21")));
        assert!(!r.contains(ip("::a00:f")));
    }

    #[test]
    fn malformed_hand_built_ranges_do_not_panic() {
        let mixed = AddressRange {
            start: ip("10.0.0.1"),
            end: ip("::1"),
        };
        assert_eq!(mixed.len(), 0);
        assert!(mixed.is_empty());
        assert!(!mixed.contains(ip("10.0.0.2")));
        assert!(!mixed.contains(ip("::")));
        let reversed = AddressRange {
            start: ip("10.0.0.9"),
            end: ip("10.0.0.1"),
        };
        assert_eq!(reversed.len(), 0);
        assert!(!reversed.contains(ip("10.0.0.5")));
    }

    #[test]
    fn len_saturates_for_whole_v6_space() {
        let all =
            AddressRange::new(ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(all.len(), u128::MAX);
        let all4 = AddressRange::new(ip("0.0.0.0"), ip("255.255.255.255")).unwrap();
        assert_eq!(all4.len(), 1 << 32);
    }

    #[test]
    fn display() {
        assert_eq!(AddressRange::single(ip("10.0.0.7")).to_string(), "10.0.0.7");
        assert_eq!(
            AddressRange::new(ip("2001:db8::5"), ip("2001:db8::9"))
                .unwrap()
                .to_string(),
            "2001:db8::5-2001:db8::9"
        );
    }

    #[test]
    fn bits_round_trip() {
        for s in ["0.0.0.0", "10.1.2.3", "255.255.255.255"] {
            assert_eq!(from_bits(to_bits(ip(s)), false), ip(s));
        }
        for s in [
            "::",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(from_bits(to_bits(ip(s)), true), ip(s));
        }
    }
}
