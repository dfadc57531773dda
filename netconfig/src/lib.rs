//! IP address management for Strato subnets.
//!
//! Pure logic, no I/O: the stack manager stores each subnet's plan and its
//! allocated addresses in its database, asks [`SubnetPlan::first_free`] for a
//! candidate, and inserts it under a UNIQUE(subnet, address) constraint,
//! retrying on conflict. Keeping the library free of state and storage lets
//! the database arbitrate concurrent allocations across stack-manager
//! replicas, and lets the same code back the in-memory [`Allocator`] used by
//! tests, simulations and the rack planner.
//!
//! IPv4 and IPv6 share one code path: addresses are handled as `u128`
//! internally, with checked arithmetic at the top of each address space.

mod allocator;
mod error;
mod mac;
mod plan;
mod range;

pub use allocator::Allocator;
pub use error::IpamError;
pub use ipnet::IpNet;
pub use mac::derive_mac;
pub use plan::SubnetPlan;
pub use range::AddressRange;
