//! The Strato storage agent: one per storage node. It serves tenant
//! volumes — thin sparse files with point-in-time snapshots and clones —
//! over Strato's own iSCSI target (`iscsi` for the transport, `scsi` for
//! the block device), each volume its own target with a CHAP account and an
//! initiator ACL that follows the volume's attachment. The stack manager
//! drives it through idempotent PUT/DELETE of complete `VolumeSpec`s.

pub mod agent;
pub mod config;
pub mod error;
pub mod exports;
pub mod pool;
pub mod regions;
pub mod replication;
pub mod server;
pub mod volumes;
