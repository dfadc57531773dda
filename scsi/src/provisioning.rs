//! Logical block provisioning: UNMAP, WRITE SAME and GET LBA STATUS.
//!
//! Deallocation is a hole punched in the backing file, so the file only uses
//! space for blocks the guest has written and reads of unmapped blocks return
//! zeros (LBPRZ=1).

use crate::cdb::{at, be16_at, be32_at, be64_at, op, Cdb, CmdResult};
use crate::lu::{LogicalUnit, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS};
use crate::sense::{self, Sense};

const UNMAP_HEADER: usize = 8;
const UNMAP_DESCRIPTOR: usize = 16;
const LBA_STATUS_DESCRIPTOR: usize = 16;

impl LogicalUnit {
    pub(crate) fn cmd_unmap(&self, cdb: &Cdb, data_out: &[u8]) -> CmdResult {
        if cdb.u8(1) & 0x01 != 0 {
            // ANCHOR: anchored state is not supported (ANC_SUP=0).
            return Err(Sense::invalid_cdb_field(1, Some(0)).into());
        }
        let param_len = usize::from(cdb.be16(7));
        if param_len == 0 {
            return Ok(Vec::new());
        }
        if param_len < UNMAP_HEADER || data_out.len() < param_len {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let list = &data_out[..param_len];
        let data_len = usize::from(be16_at(list, 0));
        let desc_len = usize::from(be16_at(list, 2));
        // The lengths inside the list must fit in what was transferred.
        if data_len > param_len - 2 {
            return Err(Sense::invalid_param_field(0, None).into());
        }
        if desc_len > param_len - UNMAP_HEADER {
            return Err(Sense::invalid_param_field(2, None).into());
        }
        // SBC-3 5.28.2: a trailing partial descriptor is ignored.
        let count = desc_len / UNMAP_DESCRIPTOR;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param_field(2, None).into());
        }
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let base = UNMAP_HEADER + i * UNMAP_DESCRIPTOR;
            let lba = be64_at(list, base);
            let blocks = be32_at(list, base + 8);
            if blocks > MAX_UNMAP_BLOCKS {
                return Err(Sense::invalid_param_field((base + 8) as u16, None).into());
            }
            // Zero-length descriptors are legal anywhere up to the end of the medium.
            match lba.checked_add(u64::from(blocks)) {
                Some(end) if end <= self.blocks() => {}
                _ => return Err(sense::LBA_OUT_OF_RANGE.into()),
            }
            if blocks > 0 {
                ranges.push((lba, u64::from(blocks)));
            }
        }
        // Validate everything first so a bad descriptor leaves the medium untouched.
        let _gate = self.write_gate.read();
        for (lba, blocks) in ranges {
            if lba + blocks > self.blocks() {
                return Err(sense::LBA_OUT_OF_RANGE.into());
            }
            self.medium
                .punch_hole(lba << self.block_shift, blocks << self.block_shift)
                .map_err(|e| sense::from_io(&e, true))?;
        }
        Ok(Vec::new())
    }

    pub(crate) fn cmd_write_same(&self, cdb: &Cdb, data_out: &[u8]) -> CmdResult {
        let flags = cdb.u8(1);
        let sixteen = cdb.opcode() == op::WRITE_SAME_16;
        let (lba, blocks, len_byte) = if sixteen {
            (cdb.be64(2), u64::from(cdb.be32(10)), 10)
        } else {
            (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7)
        };
        let unmap = flags & 0x08 != 0;
        let ndob = sixteen && flags & 0x01 != 0;
        if flags & 0xe0 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(7)).into());
        }
        if flags & 0x10 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(4)).into());
        }
        // PBDATA/LBDATA need protection information or are obsolete.
        if !sixteen && flags & 0x06 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(2)).into());
        }
        // WSNZ=1: zero blocks ("to the end of the medium") is refused.
        if blocks == 0 || blocks > self.max_write_same_blocks() {
            return Err(Sense::invalid_cdb_field(len_byte, None).into());
        }
        let bs = self.block_size() as usize;
        let block: &[u8] = if ndob {
            &[]
        } else if data_out.len() == bs {
            data_out
        } else {
            return Err(Sense::invalid_cdb_field(len_byte, None).into());
        };
        self.check_range(lba, blocks)?;
        let zero = block.iter().all(|&b| b == 0);
        let offset = lba << self.block_shift;
        let len = blocks << self.block_shift;
        {
            let _gate = self.write_gate.read();
            self.check_range(lba, blocks)?;
            let r = if zero && unmap {
                self.medium.punch_hole(offset, len)
            } else if zero {
                // Without UNMAP the blocks must stay mapped: zero them in place.
                self.medium.zero_range(offset, len)
            } else {
                // Non-zero data cannot be represented by a hole, even if UNMAP was asked.
                self.medium.write_pattern(block, offset, len)
            };
            r.map_err(|e| sense::from_io(&e, true))?;
        }
        self.persist(false)?;
        Ok(Vec::new())
    }

    /// Reports runs of mapped / deallocated blocks from the requested LBA, as many
    /// as fit in the allocation length.
    pub(crate) fn cmd_get_lba_status(&self, cdb: &Cdb) -> CmdResult {
        let lba = cdb.be64(2);
        let alloc = cdb.be32(10) as usize;
        let total = self.blocks();
        if lba >= total {
            return Err(sense::LBA_OUT_OF_RANGE.into());
        }
        let max_desc = (alloc.saturating_sub(8) / LBA_STATUS_DESCRIPTOR).clamp(1, 64);
        let end = total << self.block_shift;
        let bs = self.block_size();
        let mut out = vec![0u8; 8];
        let mut pos = lba << self.block_shift;
        // Bounded so a pathologically fragmented file cannot stall the command;
        // the initiator asks again from where the answer stopped.
        let mut steps = 0;
        while pos < end && out.len() < 8 + max_desc * LBA_STATUS_DESCRIPTOR && steps < 4096 {
            steps += 1;
            let (mapped, next) = self
                .medium
                .extent_at(pos, end)
                .map_err(|e| sense::from_io(&e, false))?;
            // A block is mapped if any byte of it is, so data runs round up and holes
            // round down to block boundaries.
            let (mapped, next) = if mapped {
                (true, next.div_ceil(bs) * bs)
            } else if next / bs * bs > pos {
                (false, next / bs * bs)
            } else {
                (true, pos + bs)
            };
            let next = next.min(end).max(pos + bs);
            push_status(
                &mut out,
                pos >> self.block_shift,
                (next - pos) >> self.block_shift,
                mapped,
            );
            pos = next;
        }
        let param_len = (out.len() - 4) as u32;
        out[0..4].copy_from_slice(&param_len.to_be_bytes());
        out.truncate(alloc);
        Ok(out)
    }
}

/// Adds one LBA status descriptor, merging with the previous one when the state matches.
fn push_status(out: &mut Vec<u8>, lba: u64, blocks: u64, mapped: bool) {
    let state = if mapped { 0 } else { 1 };
    let n = out.len();
    if n >= 8 + LBA_STATUS_DESCRIPTOR {
        let prev = n - LBA_STATUS_DESCRIPTOR;
        let prev_lba = be64_at(out, prev);
        let prev_blocks = u64::from(be32_at(out, prev + 8));
        if at(out, prev + 12) == state && prev_lba + prev_blocks == lba {
            if let Ok(sum) = u32::try_from(prev_blocks + blocks) {
                out[prev + 8..prev + 12].copy_from_slice(&sum.to_be_bytes());
                return;
            }
        }
    }
    // The descriptor's count is 32 bits; longer runs are split.
    let mut lba = lba;
    let mut left = blocks;
    while left > 0 {
        let chunk = left.min(u64::from(u32::MAX));
        out.extend_from_slice(&lba.to_be_bytes());
        out.extend_from_slice(&(chunk as u32).to_be_bytes());
        out.extend_from_slice(&[state, 0, 0, 0]);
        lba += chunk;
        left -= chunk;
    }
}
