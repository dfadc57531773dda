//! READ CAPACITY (10) and (16).

use crate::cdb::{Cdb, CmdResult};
use crate::lu::LogicalUnit;
use crate::sense::Sense;

pub(crate) fn read_capacity_10(lu: &LogicalUnit, cdb: &Cdb) -> CmdResult {
    // SBC-3: a non-zero LOGICAL BLOCK ADDRESS without PMI is invalid.
    if cdb.u8(8) & 0x01 == 0 && cdb.be32(2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    // Devices too large for 32 bits answer 0xFFFFFFFF so the initiator moves to (16).
    let last = u32::try_from(lu.blocks().saturating_sub(1)).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&(lu.block_size() as u32).to_be_bytes());
    Ok(d)
}

pub(crate) fn read_capacity_16(lu: &LogicalUnit, cdb: &Cdb) -> CmdResult {
    let alloc = cdb.be32(10) as usize;
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&(lu.block_size() as u32).to_be_bytes());
    // Byte 12: no protection. Byte 13: one logical block per physical block (LBPPBE=0).
    // Bytes 14-15: LBPME=1 (thin provisioned), LBPRZ=1 (unmapped blocks read zero),
    // lowest aligned LBA 0.
    d[14] = 0x80 | 0x40;
    d.truncate(alloc);
    Ok(d)
}
