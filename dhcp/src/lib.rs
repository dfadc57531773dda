//! Strato's DHCPv4 server for provisioning networks.
//!
//! One instance runs per rack controller and PXE-boots machines:
//!
//! * **Authoritative** mode serves addresses on the provisioning subnets:
//!   static reservations per MAC, a discovery pool for unknown machines,
//!   RFC 2131 DISCOVER/REQUEST/RELEASE/DECLINE/INFORM handling, and a
//!   lease journal that survives restarts.
//! * **Proxy** mode adds only PXE boot information next to someone else's
//!   DHCP server (ports 67 and 4011).
//!
//! Relayed requests (giaddr) are answered to the relay and option 82 is
//! recorded per lease. Boot file selection from client arch / user class
//! lives in [`boot::select`]. The provisioner observes machines through
//! [`Hooks`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use dhcp::{Config, Server, Subnet, NoHooks};
//! let config = Config {
//!     server_ip: "10.0.0.1".parse().unwrap(),
//!     subnets: vec![Subnet::new("10.0.0.0/24".parse().unwrap(),
//!                               "10.0.0.100".parse().unwrap(),
//!                               "10.0.0.200".parse().unwrap())],
//!     ..Config::default()
//! };
//! let server = Server::bind(config, NoHooks).await?;
//! let s = server.clone();
//! tokio::spawn(async move { s.run().await });
//! // ... later
//! server.shutdown();
//! # Ok(()) }
//! ```

pub mod boot;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod hooks;
pub mod leases;
pub mod mac;
pub mod proxy;
pub mod relay;
pub mod reply;
pub mod reservations;
pub mod server;
pub mod store;

pub use config::{BootConfig, Config, Mode, Pool, Reservation, Subnet};
pub use engine::{Engine, Listener, RecvCtx};
pub use error::Error;
pub use hooks::{Event, Hooks, NoHooks, UnknownClient};
pub use leases::Lease;
pub use mac::Mac;
pub use relay::RelayAgent;
pub use reply::Reply;
pub use server::Server;

/// The wire-format crate, re-exported so callers and tests build messages
/// with the same version we parse them with.
pub use dhcproto;
