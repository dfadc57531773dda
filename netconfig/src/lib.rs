//! IP address management for Strato subnets.
//!
//! Pure logic, no I/O: the stack manager stores each subnet's plan, its
//! allocated addresses and its allocation cursor in its database. Under the
//! subnet's row lock it checks the window [`SubnetPlan::next_candidates`]
//! gives after the cursor against what is taken, and only when that window
//! is full reads the whole allocated set for [`SubnetPlan::first_free_after`].
//! Keeping the library free of state and storage lets the database arbitrate
//! concurrent allocations across stack-manager replicas, and lets the same
//! code back the in-memory [`Allocator`] used by tests, simulations and the
//! rack planner.
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
