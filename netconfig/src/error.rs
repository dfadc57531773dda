use std::net::IpAddr;

use ipnet::IpNet;

use crate::range::AddressRange;

/// Everything that can go wrong when validating a subnet plan or taking an
/// address from it.
///
/// Messages are written for operators: they end up verbatim in API error
/// bodies and CLI output, so each one names the offending value and says what
/// is wrong with it rather than which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Reversed ends, or ends of different address families.
    #[error("invalid address range {start}-{end}: {reason}")]
    InvalidRange {
        start: IpAddr,
        end: IpAddr,
        reason: String,
    },

    /// Rejected rather than silently truncated: "10.0.0.5/24" is more often a
    /// typo for a gateway or a host than a deliberate way to say "10.0.0.0/24",
    /// and storing the un-normalised form would make two equal plans compare
    /// unequal.
    #[error(
        "{cidr} is not a network address because host bits are set; did you mean {}?",
        .cidr.trunc()
    )]
    NotNetworkAddress { cidr: IpNet },

    /// `what` describes the offending item (e.g. "pool 10.0.1.5-10.0.1.9",
    /// "end of reserved range 10.0.0.250-10.0.1.5") and `address` is the
    /// first address of it found outside the subnet.
    #[error("{what} is outside {cidr}")]
    OutsideSubnet {
        what: String,
        address: IpAddr,
        cidr: IpNet,
    },

    /// An IPv4 item in an IPv6 subnet or the other way round.
    #[error(
        "{what} is {} but subnet {cidr} is {}",
        crate::range::family_name(.address),
        crate::range::family_name(&.cidr.addr())
    )]
    FamilyMismatch {
        what: String,
        address: IpAddr,
        cidr: IpNet,
    },

    /// Pools must be disjoint so that "which pool does this address come
    /// from" has a single answer and capacity is not double counted.
    #[error("pools {a} and {b} overlap; an address may belong to at most one pool")]
    OverlappingPools { a: AddressRange, b: AddressRange },

    /// The subnet cannot hold a gateway plus at least one host (IPv4 /31 and
    /// /32, IPv6 /127 and /128).
    #[error(
        "subnet {cidr} is too small: nothing is left for hosts once the network address{} and the gateway are set aside",
        if .cidr.addr().is_ipv4() { ", broadcast address" } else { "" }
    )]
    SubnetTooSmall { cidr: IpNet },

    /// The gateway is explicitly given but cannot be a host address.
    #[error("invalid gateway {gateway}: {reason}")]
    InvalidGateway { gateway: IpAddr, reason: String },

    /// Every allocatable address is taken.
    #[error("subnet {cidr} has no free address left")]
    Exhausted { cidr: IpNet },

    /// The address exists in the subnet but the plan never hands it out
    /// (gateway, reserved, network/broadcast, or not in any pool).
    #[error("{address} cannot be allocated: {reason}")]
    NotAllocatable { address: IpAddr, reason: String },

    /// Kept apart from [`IpamError::NotAllocatable`] because it is a
    /// conflict with current state (HTTP 409, may clear up after a release),
    /// not a property of the plan (HTTP 400, will never succeed).
    #[error("{address} is already allocated")]
    AlreadyAllocated { address: IpAddr },
}
