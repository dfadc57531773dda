//! CDB access that cannot panic, operation codes, and the internal command result type.

use crate::sense::{self, Sense};

pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;

    /// SERVICE ACTION IN(16) service actions.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const SAI_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
}

/// Why a command did not complete with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Check(Sense),
    ReservationConflict,
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Failure {
        Failure::Check(s)
    }
}

pub type CmdResult<T = Vec<u8>> = Result<T, Failure>;

/// CDB length implied by the operation code's group (SPC-4 4.2.5.1); None for
/// the variable-length and vendor-specific groups, none of which this device implements.
pub fn group_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// A CDB copied into a zero-padded buffer so field reads never index out of bounds.
#[derive(Clone, Copy)]
pub struct Cdb {
    bytes: [u8; 16],
    len: usize,
}

impl Cdb {
    /// Validates that the CDB is long enough for its group and that NACA, which
    /// this device does not support, is clear.
    pub fn parse(raw: &[u8]) -> Result<Cdb, Sense> {
        let Some(&opcode) = raw.first() else {
            return Err(sense::INVALID_OPCODE);
        };
        let Some(len) = group_len(opcode) else {
            return Err(sense::INVALID_OPCODE);
        };
        if raw.len() < len {
            return Err(Sense::invalid_cdb_field(raw.len() as u16, None));
        }
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&raw[..len]);
        let cdb = Cdb { bytes, len };
        if cdb.control() & 0x04 != 0 {
            return Err(Sense::invalid_cdb_field((len - 1) as u16, Some(2)));
        }
        Ok(cdb)
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn control(&self) -> u8 {
        self.u8(self.len.saturating_sub(1))
    }

    pub fn u8(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    pub fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.u8(i), self.u8(i + 1)])
    }

    pub fn be24(&self, i: usize) -> u32 {
        u32::from_be_bytes([0, self.u8(i), self.u8(i + 1), self.u8(i + 2)])
    }

    pub fn be32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.u8(i), self.u8(i + 1), self.u8(i + 2), self.u8(i + 3)])
    }

    pub fn be64(&self, i: usize) -> u64 {
        (u64::from(self.be32(i)) << 32) | u64::from(self.be32(i + 4))
    }

    /// The service action field of the 0x9E/0xA3/0x5E/0x5F families.
    pub fn service_action(&self) -> u8 {
        self.u8(1) & 0x1f
    }
}

/// Big-endian reads from parameter lists, with zero for bytes past the end so a
/// short list never panics (callers check lengths before trusting values).
pub fn be16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([at(b, i), at(b, i + 1)])
}

pub fn be32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([at(b, i), at(b, i + 1), at(b, i + 2), at(b, i + 3)])
}

pub fn be64_at(b: &[u8], i: usize) -> u64 {
    (u64::from(be32_at(b, i)) << 32) | u64::from(be32_at(b, i + 4))
}

pub fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_by_group() {
        assert_eq!(group_len(0x00), Some(6));
        assert_eq!(group_len(0x28), Some(10));
        assert_eq!(group_len(0x5a), Some(10));
        assert_eq!(group_len(0x7f), None);
        assert_eq!(group_len(0x88), Some(16));
        assert_eq!(group_len(0xa0), Some(12));
        assert_eq!(group_len(0xc0), None);
    }

    #[test]
    fn parse_rejects_short_and_empty() {
        assert_eq!(Cdb::parse(&[]).err(), Some(sense::INVALID_OPCODE));
        let e = Cdb::parse(&[0x28, 0, 0]).err().map(|s| (s.asc, s.ascq));
        assert_eq!(e, Some((0x24, 0)));
        assert_eq!(Cdb::parse(&[0x7f; 40]).err(), Some(sense::INVALID_OPCODE));
    }

    #[test]
    fn parse_rejects_naca() {
        let e = Cdb::parse(&[0, 0, 0, 0, 0, 0x04]).err();
        assert_eq!(e, Some(Sense::invalid_cdb_field(5, Some(2))));
    }

    #[test]
    fn fields() {
        let c = Cdb::parse(&[0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 1, 0, 0, 0, 99]).unwrap();
        assert_eq!(c.len(), 16);
        assert_eq!(c.be64(2), 0x0102030405060708);
        assert_eq!(c.be32(10), 256);
        assert_eq!(c.u8(40), 0);
        assert_eq!(be32_at(&[1, 2], 0), 0x01020000);
        assert_eq!(be64_at(&[], 0), 0);
    }
}
