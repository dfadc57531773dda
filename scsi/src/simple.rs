//! Commands with little state: REQUEST SENSE, START STOP UNIT, PREVENT ALLOW
//! MEDIUM REMOVAL and SYNCHRONIZE CACHE.

use crate::cdb::{op, Cdb, CmdResult};
use crate::lu::LogicalUnit;
use crate::sense::{self, Sense};
use crate::Nexus;

impl LogicalUnit {
    /// Returns (and clears) the nexus' oldest unit attention, else NO SENSE; the
    /// DESC bit picks the format regardless of D_SENSE.
    pub(crate) fn cmd_request_sense(&self, nexus: &Nexus, cdb: &Cdb) -> CmdResult {
        let descriptor = cdb.u8(1) & 0x01 != 0;
        let alloc = usize::from(cdb.u8(4));
        let s = self.ua.take(nexus).unwrap_or(sense::NO_SENSE);
        let mut data = s.encode(descriptor);
        data.truncate(alloc);
        Ok(data)
    }

    /// The medium is not removable and always spun up, so START/STOP only
    /// validates its fields; a virtual disk refusing to stop would break
    /// initiators that stop devices on shutdown.
    pub(crate) fn cmd_start_stop_unit(&self, cdb: &Cdb) -> CmdResult {
        let power_condition = cdb.u8(4) >> 4;
        // SBC-3 table 105: ACTIVE, IDLE, STANDBY, LU_CONTROL, FORCE_IDLE_0, FORCE_STANDBY_0.
        if !matches!(power_condition, 0x0 | 0x1 | 0x2 | 0x3 | 0x7 | 0xa | 0xb) {
            return Err(Sense::invalid_cdb_field(4, Some(7)).into());
        }
        Ok(Vec::new())
    }

    /// Nothing can be removed; only the obsolete PREVENT values are refused.
    pub(crate) fn cmd_prevent_allow(&self, cdb: &Cdb) -> CmdResult {
        if cdb.u8(4) & 0x03 > 1 {
            return Err(Sense::invalid_cdb_field(4, Some(1)).into());
        }
        Ok(Vec::new())
    }

    /// Flushes the whole file even for a sub-range: fdatasync has no cheaper form,
    /// and IMMED is honoured by simply finishing before replying.
    pub(crate) fn cmd_synchronize_cache(&self, cdb: &Cdb) -> CmdResult {
        let (lba, blocks) = if cdb.opcode() == op::SYNCHRONIZE_CACHE_10 {
            (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)))
        } else {
            (cdb.be64(2), u64::from(cdb.be32(10)))
        };
        // Zero blocks means "to the end of the medium"; only the start must be valid.
        self.check_range(lba, blocks)?;
        self.medium.sync().map_err(|e| sense::from_io(&e, true))?;
        Ok(Vec::new())
    }
}
