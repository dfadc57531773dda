//! The Strato stack manager: tenant/operator REST API, metadata store,
//! scheduler, and the reconcilers that push desired state to agents.

pub mod audit;
pub mod auth;
pub mod caller;
pub mod config;
pub mod db;
pub mod desired;
pub mod error;
pub mod health;
pub mod http;
pub mod internal;
pub mod lease;
pub mod lifecycle;
pub mod metrics;
pub mod moves;
pub mod openapi;
pub mod power;
pub mod reconciler;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod statistics;
pub mod store;
pub mod tasks;
