//! The logical unit: state, command dispatch and the management entry points.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockWriteGuard};

use crate::backing::{FileMedium, Medium};
use crate::cdb::{op, Cdb, CmdResult, Failure};
use crate::mode::ModeState;
use crate::reservations::Reservations;
use crate::sense::{self, Sense};
use crate::unit_attention::UnitAttentions;
use crate::{DataDirection, DeviceInfo, Error, Nexus, Response};

/// Largest single READ/WRITE/VERIFY; bounds the per-command allocation. libiscsi
/// writes 65536 blocks of 512 bytes in one command without consulting the limit.
pub(crate) const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// Reported optimal granularity: the page size, so initiators align to it.
pub(crate) const OPTIMAL_GRANULARITY_BYTES: u64 = 4096;
pub(crate) const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 256;
pub(crate) const MAX_WRITE_SAME_BYTES: u64 = 1 << 30;
pub(crate) const MAX_COMPARE_AND_WRITE_BLOCKS: u32 = 255;

pub struct LogicalUnit {
    pub(crate) medium: Arc<dyn Medium>,
    pub(crate) info: DeviceInfo,
    pub(crate) block_shift: u32,
    /// Device size in bytes, always a multiple of the block size.
    size: AtomicU64,
    /// Writers hold it shared; quiesce, COMPARE AND WRITE and resize hold it
    /// exclusively so they observe (and produce) a state no write is racing with.
    pub(crate) write_gate: RwLock<()>,
    pub(crate) ua: UnitAttentions,
    pub(crate) pr: Reservations,
    pub(crate) mode: ModeState,
}

/// While alive, no command writes to the backing file.
pub struct QuiesceGuard<'a> {
    _gate: RwLockWriteGuard<'a, ()>,
}

impl LogicalUnit {
    /// Opens the backing file (created and sized by the caller). `pr_state` is where persistent
    /// reservations with APTPL are kept across restarts (write atomically: temp file, fsync, rename).
    pub fn open(
        path: &Path,
        info: DeviceInfo,
        pr_state: Option<PathBuf>,
    ) -> Result<LogicalUnit, Error> {
        if info.block_size != 512 && info.block_size != 4096 {
            return Err(Error::BlockSize(info.block_size));
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::with_medium(Arc::new(FileMedium(file)), info, pr_state)
    }

    /// Serves `medium` (a replicated one, say) instead of a plain file.
    pub fn with_medium(
        medium: Arc<dyn Medium>,
        info: DeviceInfo,
        pr_state: Option<PathBuf>,
    ) -> Result<LogicalUnit, Error> {
        let block_size = info.block_size;
        if block_size != 512 && block_size != 4096 {
            return Err(Error::BlockSize(block_size));
        }
        let len = medium.size_bytes()?;
        let size = len - len % u64::from(block_size);
        if size == 0 {
            return Err(Error::Size {
                size: len,
                block_size,
            });
        }
        let pr = Reservations::open(pr_state)?;
        Ok(LogicalUnit {
            medium,
            block_shift: block_size.trailing_zeros(),
            info,
            size: AtomicU64::new(size),
            write_gate: RwLock::new(()),
            ua: UnitAttentions::new(),
            pr,
            mode: ModeState::new(),
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn block_size(&self) -> u64 {
        1u64 << self.block_shift
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.size_bytes() >> self.block_shift
    }

    pub(crate) fn max_transfer_blocks(&self) -> u64 {
        MAX_TRANSFER_BYTES >> self.block_shift
    }

    pub(crate) fn max_write_same_blocks(&self) -> u64 {
        MAX_WRITE_SAME_BYTES >> self.block_shift
    }

    /// LBA range check shared by every medium-access command: an LBA past the last
    /// one is out of range even with zero blocks, as is any range running past the end.
    pub(crate) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let total = self.blocks();
        match lba.checked_add(blocks) {
            Some(end) if lba < total && end <= total => Ok(()),
            _ => Err(sense::LBA_OUT_OF_RANGE),
        }
    }

    /// Executes one command synchronously (blocking file I/O). `data_out` holds everything the
    /// initiator sent (its length is the transport's expected transfer length for writes);
    /// `allocation` is the transport's expected Data-In length (truncate data to it).
    pub fn execute(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8], allocation: u32) -> Response {
        let Some(&opcode) = cdb.first() else {
            return Response::check(&sense::INVALID_OPCODE, self.mode.d_sense());
        };
        // SAM-5 5.14: these three run despite a pending unit attention (REQUEST SENSE
        // reports it as its data instead).
        if !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
            if let Some(ua) = self.ua.take(nexus) {
                return Response::check(&ua, self.mode.d_sense());
            }
        }
        let result = if crate::opcodes::is_supported(opcode) {
            match Cdb::parse(cdb) {
                Ok(cdb) => {
                    if self.pr.conflicts(nexus, &cdb) {
                        Err(Failure::ReservationConflict)
                    } else {
                        self.dispatch(nexus, &cdb, data_out, allocation)
                    }
                }
                Err(s) => Err(Failure::Check(s)),
            }
        } else {
            Err(Failure::Check(sense::INVALID_OPCODE))
        };
        match result {
            Ok(data) => Response::good(data, allocation),
            Err(Failure::Check(s)) => {
                tracing::trace!(
                    opcode,
                    key = s.key,
                    asc = s.asc,
                    ascq = s.ascq,
                    "check condition"
                );
                Response::check(&s, self.mode.d_sense())
            }
            Err(Failure::ReservationConflict) => Response::reservation_conflict(),
        }
    }

    fn dispatch(&self, nexus: &Nexus, cdb: &Cdb, data_out: &[u8], allocation: u32) -> CmdResult {
        match cdb.opcode() {
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.cmd_read(cdb, allocation),
            op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
                self.cmd_write(cdb, data_out)
            }
            op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
                self.cmd_write_verify(cdb, data_out)
            }
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.cmd_verify(cdb, data_out),
            op::COMPARE_AND_WRITE => self.cmd_compare_and_write(cdb, data_out),
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.cmd_write_same(cdb, data_out),
            op::UNMAP => self.cmd_unmap(cdb, data_out),
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => self.cmd_synchronize_cache(cdb),
            op::TEST_UNIT_READY => Ok(Vec::new()),
            op::REQUEST_SENSE => self.cmd_request_sense(nexus, cdb),
            op::INQUIRY => crate::inquiry::inquiry(self, nexus, cdb),
            op::READ_CAPACITY_10 => crate::capacity::read_capacity_10(self, cdb),
            op::SERVICE_ACTION_IN_16 => match cdb.service_action() {
                op::SAI_READ_CAPACITY_16 => crate::capacity::read_capacity_16(self, cdb),
                op::SAI_GET_LBA_STATUS => self.cmd_get_lba_status(cdb),
                // Field pointer on byte 1 is how initiators recognise "not implemented".
                _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
            },
            op::MAINTENANCE_IN => match cdb.service_action() {
                op::MI_REPORT_SUPPORTED_OPCODES => crate::opcodes::report_supported_opcodes(cdb),
                _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
            },
            op::REPORT_LUNS => crate::luns::report_luns(cdb),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
                self.mode.sense(cdb, self.blocks(), self.block_size())
            }
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
                let changed = self.mode.select(cdb, data_out, self.block_size())?;
                if changed {
                    // SPC-4 7.5.1: other I_T nexuses learn that shared parameters changed.
                    self.ua
                        .establish_where(sense::UA_MODE_PARAMETERS_CHANGED, |n| n != nexus);
                }
                Ok(Vec::new())
            }
            op::START_STOP_UNIT => self.cmd_start_stop_unit(cdb),
            op::PREVENT_ALLOW => self.cmd_prevent_allow(cdb),
            op::PERSISTENT_RESERVE_IN => self.pr.persistent_reserve_in(cdb),
            op::PERSISTENT_RESERVE_OUT => self
                .pr
                .persistent_reserve_out(nexus, cdb, data_out, &self.ua),
            _ => Err(sense::INVALID_OPCODE.into()),
        }
    }

    /// Bytes the CDB wants to transfer and in which direction, without executing it.
    pub fn transfer(&self, cdb: &[u8]) -> DataDirection {
        crate::opcodes::transfer(cdb, self.block_size(), self.max_transfer_blocks())
    }

    /// A nexus logged in / went away: unit attention queues are per nexus (registrations survive).
    pub fn nexus_added(&self, nexus: &Nexus) {
        self.ua.add_nexus(nexus);
    }

    pub fn nexus_removed(&self, nexus: &Nexus) {
        self.ua.remove_nexus(nexus);
    }

    /// Management (never the wire): admits every I_T nexus of the iSCSI
    /// initiator `name`, whatever its ISID, listed under persistent
    /// reservation key `key`; from the first admission on, names not
    /// admitted get RESERVATION CONFLICT on reads, writes and PERSISTENT
    /// RESERVE OUT. See the `reservations` module for the model.
    pub fn admit(&self, name: &str, key: u64) -> Result<(), Error> {
        self.pr.admit(name, key)
    }

    /// Management: fences the initiators admitted under `key`, as a PREEMPT
    /// by the target would (their nexuses get REGISTRATIONS PREEMPTED).
    /// Returns whether any was admitted under it.
    pub fn revoke(&self, key: u64) -> Result<bool, Error> {
        self.pr.revoke(key, &self.ua)
    }

    /// Management: the admitted initiator names with their keys.
    pub fn admitted(&self) -> Vec<(String, u64)> {
        self.pr.admitted()
    }

    /// LOGICAL UNIT RESET (and TARGET/WARM RESET) task management: releases non-persistent state
    /// as SAM-5 says, queues the reset UA.
    ///
    /// Commands run synchronously, so there is no task set to abort here; persistent
    /// reservations survive by definition, mode parameters return to their defaults
    /// (nothing is saved), and every nexus learns of the reset.
    pub fn lun_reset(&self, by: &Nexus) {
        tracing::debug!(initiator = %by.initiator_port, "logical unit reset");
        self.mode.reset();
        self.ua.establish_all(sense::UA_BUS_DEVICE_RESET);
    }

    /// Grows (or shrinks) the device; every nexus then sees CAPACITY DATA HAS CHANGED (2A/09).
    pub fn resize(&self, size_bytes: u64) -> Result<(), Error> {
        let bs = self.info.block_size;
        if size_bytes == 0 || size_bytes % u64::from(bs) != 0 {
            return Err(Error::Size {
                size: size_bytes,
                block_size: bs,
            });
        }
        {
            let _gate = self.write_gate.write();
            self.medium.set_len(size_bytes)?;
            self.size.store(size_bytes, Ordering::Release);
        }
        self.ua.establish_all(sense::UA_CAPACITY_CHANGED);
        Ok(())
    }

    /// Blocks every write (after flushing) until the guard is dropped: the storage agent copies
    /// the file for a point-in-time snapshot while holding it. Reads may continue.
    pub fn quiesce(&self) -> Result<QuiesceGuard<'_>, Error> {
        let gate = self.write_gate.write();
        self.medium.sync()?;
        Ok(QuiesceGuard { _gate: gate })
    }

    /// Completes the changes this thread made with completion deferred
    /// (see [`crate::defer_completion`]); an error means they may not be
    /// on every copy, and their responses must not be sent.
    pub fn barrier(&self) -> Result<(), Error> {
        self.medium.barrier()?;
        Ok(())
    }

    /// fdatasync of the backing file.
    pub fn sync(&self) -> Result<(), Error> {
        self.medium.sync()?;
        Ok(())
    }

    /// Makes a completed write durable when the initiator asked for it (FUA) or
    /// when the initiator turned the write cache off.
    pub(crate) fn persist(&self, fua: bool) -> Result<(), Sense> {
        if fua || !self.mode.write_cache_enabled() {
            self.medium.sync().map_err(|e| sense::from_io(&e, true))?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn pending_unit_attentions(&self, nexus: &Nexus) -> usize {
        self.ua.pending_for(nexus)
    }
}
