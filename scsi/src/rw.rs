//! READ, WRITE, WRITE AND VERIFY, VERIFY and COMPARE AND WRITE.

use crate::cdb::{op, Cdb, CmdResult};
use crate::lu::{LogicalUnit, MAX_COMPARE_AND_WRITE_BLOCKS};
use crate::sense::{self, Sense};

/// The addressing fields common to the READ/WRITE/VERIFY families.
struct Access {
    lba: u64,
    blocks: u64,
    /// CDB byte 1 (protection, DPO, FUA, BYTCHK); zero for the 6-byte forms.
    flags: u8,
}

impl Access {
    fn fua(&self) -> bool {
        self.flags & 0x08 != 0
    }
}

fn access(cdb: &Cdb) -> Access {
    match cdb.opcode() {
        op::READ_6 | op::WRITE_6 => {
            let len = u64::from(cdb.u8(4));
            Access {
                lba: u64::from(cdb.be24(1) & 0x1f_ffff),
                // SBC-3: a zero length in the 6-byte forms means 256 blocks.
                blocks: if len == 0 { 256 } else { len },
                flags: 0,
            }
        }
        op::READ_10 | op::WRITE_10 | op::WRITE_VERIFY_10 | op::VERIFY_10 => Access {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be16(7)),
            flags: cdb.u8(1),
        },
        op::READ_12 | op::WRITE_12 | op::WRITE_VERIFY_12 | op::VERIFY_12 => Access {
            lba: u64::from(cdb.be32(2)),
            blocks: u64::from(cdb.be32(6)),
            flags: cdb.u8(1),
        },
        _ => Access {
            lba: cdb.be64(2),
            blocks: u64::from(cdb.be32(10)),
            flags: cdb.u8(1),
        },
    }
}

/// Where the transfer length lives, for the field pointer of "too long".
fn length_field(opcode: u8) -> u16 {
    match opcode {
        op::READ_6 | op::WRITE_6 => 4,
        op::READ_10 | op::WRITE_10 | op::WRITE_VERIFY_10 | op::VERIFY_10 => 7,
        op::READ_12 | op::WRITE_12 | op::WRITE_VERIFY_12 | op::VERIFY_12 => 6,
        _ => 10,
    }
}

impl LogicalUnit {
    /// Protection information is not supported, so any RD/WR/VRPROTECT value is refused;
    /// then the length limit, then the LBA range (the order libiscsi and SBC expect).
    fn validate(&self, cdb: &Cdb, a: &Access) -> Result<(), Sense> {
        if a.flags & 0xe0 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(7)));
        }
        if a.blocks > self.max_transfer_blocks() {
            return Err(Sense::invalid_cdb_field(length_field(cdb.opcode()), None));
        }
        self.check_range(a.lba, a.blocks)
    }

    pub(crate) fn cmd_read(&self, cdb: &Cdb, allocation: u32) -> CmdResult {
        let a = access(cdb);
        self.validate(cdb, &a)?;
        let len = (a.blocks << self.block_shift) as usize;
        // A transport that will truncate anyway lets us read less.
        let len = len.min(allocation as usize);
        let mut data = vec![0u8; len];
        self.medium
            .read_at(&mut data, a.lba << self.block_shift)
            .map_err(|e| sense::from_io(&e, false))?;
        Ok(data)
    }

    /// Writes the whole blocks the initiator actually sent: a Data-Out shorter than
    /// the CDB asks for writes only its complete blocks (the transport reports the
    /// residual), longer Data-Out is ignored past the CDB's length.
    fn write_blocks(&self, a: &Access, data_out: &[u8]) -> Result<(), Sense> {
        let _gate = self.write_gate.read();
        // Re-checked under the gate: a concurrent shrink holds it exclusively.
        self.check_range(a.lba, a.blocks)?;
        let wanted = (a.blocks << self.block_shift) as usize;
        let have = data_out.len() >> self.block_shift << self.block_shift;
        let n = wanted.min(have);
        if n > 0 {
            self.medium
                .write_at(&data_out[..n], a.lba << self.block_shift)
                .map_err(|e| sense::from_io(&e, true))?;
        }
        Ok(())
    }

    pub(crate) fn cmd_write(&self, cdb: &Cdb, data_out: &[u8]) -> CmdResult {
        let a = access(cdb);
        self.validate(cdb, &a)?;
        self.write_blocks(&a, data_out)?;
        self.persist(a.fua())?;
        Ok(Vec::new())
    }

    /// The verify step is the flush: once fdatasync returns the medium holds the
    /// data, and comparing it against what was just written cannot fail.
    pub(crate) fn cmd_write_verify(&self, cdb: &Cdb, data_out: &[u8]) -> CmdResult {
        let a = access(cdb);
        if a.flags & 0x04 != 0 {
            // BYTCHK 1xb is reserved for WRITE AND VERIFY.
            return Err(Sense::invalid_cdb_field(1, Some(2)).into());
        }
        self.validate(cdb, &a)?;
        self.write_blocks(&a, data_out)?;
        self.persist(true)?;
        Ok(Vec::new())
    }

    /// BYTCHK 00b: medium verification only (the file is always readable, so GOOD);
    /// 01b: compare Data-Out with the medium; 11b: compare one Data-Out block with each block.
    pub(crate) fn cmd_verify(&self, cdb: &Cdb, data_out: &[u8]) -> CmdResult {
        let a = access(cdb);
        let bytchk = (a.flags >> 1) & 0x03;
        if bytchk == 0b10 {
            return Err(Sense::invalid_cdb_field(1, Some(2)).into());
        }
        self.validate(cdb, &a)?;
        if bytchk == 0 || a.blocks == 0 {
            return Ok(Vec::new());
        }
        let bs = self.block_size() as usize;
        let len = (a.blocks << self.block_shift) as usize;
        let mut medium = vec![0u8; len];
        self.medium
            .read_at(&mut medium, a.lba << self.block_shift)
            .map_err(|e| sense::from_io(&e, false))?;
        let mismatch = if bytchk == 0b01 {
            let n = len.min(data_out.len());
            first_difference(&medium[..n], &data_out[..n])
        } else {
            let pattern = data_out.get(..bs).unwrap_or(data_out);
            medium.chunks(bs).enumerate().find_map(|(i, blk)| {
                let n = blk.len().min(pattern.len());
                first_difference(&blk[..n], &pattern[..n]).map(|o| i * bs + o)
            })
        };
        match mismatch {
            Some(offset) => Err(sense::MISCOMPARE_DURING_VERIFY
                .with_info(offset as u64)
                .into()),
            None => Ok(Vec::new()),
        }
    }

    /// Atomic with respect to every other write: the exclusive gate keeps writers
    /// out between the compare and the write.
    pub(crate) fn cmd_compare_and_write(&self, cdb: &Cdb, data_out: &[u8]) -> CmdResult {
        let flags = cdb.u8(1);
        if flags & 0xe0 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(7)).into());
        }
        let lba = cdb.be64(2);
        let blocks = cdb.u8(13);
        if u32::from(blocks) > MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        let half = usize::from(blocks) << self.block_shift;
        // The Data-Out must be exactly the verify and write instances; anything else
        // means the CDB and the transfer disagree about what is being swapped.
        if data_out.len() != 2 * half {
            return Err(Sense::invalid_cdb_field(13, None).into());
        }
        self.check_range(lba, u64::from(blocks))?;
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let (expected, new) = data_out.split_at(half);
        let _gate = self.write_gate.write();
        self.check_range(lba, u64::from(blocks))?;
        let mut medium = vec![0u8; half];
        let offset = lba << self.block_shift;
        self.medium
            .read_at(&mut medium, offset)
            .map_err(|e| sense::from_io(&e, false))?;
        if let Some(at) = first_difference(&medium, expected) {
            return Err(sense::MISCOMPARE_DURING_VERIFY.with_info(at as u64).into());
        }
        self.medium
            .write_at(new, offset)
            .map_err(|e| sense::from_io(&e, true))?;
        self.persist(flags & 0x08 != 0)?;
        Ok(Vec::new())
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
