//! Strato's wire contracts: every type that crosses a process boundary, and
//! typed clients for each API. Services and the CLI depend on this crate and
//! never on each other.

pub mod client;
pub mod error;
pub mod ids;
pub mod internal;
pub mod provision;
pub mod replication;
pub mod resources;

pub use client::{AgentClient, Client, ClientError, InternalClient, ProvisionerClient};
pub use error::{ErrorBody, ErrorCode};
