//! A transport-independent SCSI block device (SBC-3 / SPC-4) over a sparse file.
//!
//! A transport (iSCSI, vhost, ...) hands each command's CDB and Data-Out bytes to
//! [`LogicalUnit::execute`] and sends back the [`Response`]. The device is a
//! non-removable, thin-provisioned disk (LBPME=1, LBPRZ=1) with a write-back cache
//! (the page cache): FUA, WRITE AND VERIFY and SYNCHRONIZE CACHE reach stable storage.
//!
//! Concurrency: `execute` may be called from many threads at once. Reads and
//! writes go straight to `pread`/`pwrite`; writers share a read guard that
//! [`LogicalUnit::quiesce`], COMPARE AND WRITE and resize take exclusively.

// The workspace's minimum Rust (1.80) predates is_multiple_of / is_none_or.
#![allow(clippy::manual_is_multiple_of, clippy::unnecessary_map_or)]

mod backing;
mod capacity;
mod cdb;
mod inquiry;
mod lu;
mod luns;
mod mode;
mod opcodes;
mod provisioning;
mod reservations;
mod rw;
pub mod sense;
mod simple;
mod unit_attention;

#[cfg(test)]
mod tests;

pub use backing::{completion_deferred, defer_completion, FileMedium, Medium};
pub use lu::{LogicalUnit, QuiesceGuard};
pub use luns::lun_not_supported;

/// An I_T nexus, as SPC names it: the persistent reservation and unit attention bookkeeping key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// e.g. "iqn.1993-08.org.debian:01:abc,i,0x23d000000001" (iSCSI initiator port name)
    pub initiator_port: String,
    /// e.g. "iqn.2026-11.io.strato:vol-xyz,t,0x0001" (iSCSI target port name)
    pub target_port: String,
}

/// Identity reported in INQUIRY and VPD pages.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// ≤ 8 chars, padded with spaces on the wire
    pub vendor: String,
    /// ≤ 16
    pub product: String,
    /// ≤ 4
    pub revision: String,
    /// unit serial number (VPD 0x80)
    pub serial: String,
    /// 16-byte NAA IEEE Registered Extended (NAA 6) identifier, unique per volume, for VPD 0x83.
    pub naa: [u8; 16],
    /// 512 in practice; 512 and 4096 are supported
    pub block_size: u32,
}

/// What the CDB asks the transport to move, in bytes (so the transport can compute residuals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    In(u32),
    Out(u32),
}

/// The outcome of one command.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// SAM status: 0x00 GOOD, 0x02 CHECK CONDITION, 0x18 RESERVATION CONFLICT, 0x08 BUSY, ...
    pub status: u8,
    /// Data-In (already truncated to the allocation length)
    pub data: Vec<u8>,
    /// sense data (fixed format 0x70, or descriptor 0x72 when D_SENSE is set in the
    /// control mode page); empty when none
    pub sense: Vec<u8>,
}

impl Response {
    pub(crate) fn good(mut data: Vec<u8>, allocation: u32) -> Response {
        data.truncate(allocation as usize);
        Response {
            status: sense::status::GOOD,
            data,
            sense: Vec::new(),
        }
    }

    pub(crate) fn check(s: &sense::Sense, descriptor: bool) -> Response {
        Response {
            status: sense::status::CHECK_CONDITION,
            data: Vec::new(),
            sense: s.encode(descriptor),
        }
    }

    pub(crate) fn reservation_conflict() -> Response {
        Response {
            status: sense::status::RESERVATION_CONFLICT,
            data: Vec::new(),
            sense: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backing file: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported block size {0} (512 or 4096)")]
    BlockSize(u32),
    #[error("device size {size} is not a non-zero multiple of the block size {block_size}")]
    Size { size: u64, block_size: u32 },
    #[error("persistent reservation state {path}: {reason}")]
    PrState {
        path: std::path::PathBuf,
        reason: String,
    },
}
