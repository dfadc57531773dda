//! The Strato provisioner: one per rack controller. It turns bare machines
//! into enrolled hosts: DHCP (`dhcp` crate) and TFTP (`tftp` crate) bring
//! firmware to iPXE, the HTTP server hands each machine the script its
//! lifecycle state calls for (`boot`), the ephemeral boot environment
//! reports inventory and writes images through callbacks (`http`), and the
//! inventory with its state machine (`machines`, `lifecycle`) and power
//! drivers (`power`) track and steer every machine. Post-install
//! (`postinstall`) takes a deployed machine over SSH until its agent
//! enrolls in the stack manager.

pub mod boot;
pub mod config;
pub mod error;
pub mod http;
pub mod imagemap;
pub mod lifecycle;
pub mod machines;
pub mod postinstall;
pub mod power;
pub mod server;
