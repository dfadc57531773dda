//! Mode parameters: MODE SENSE (6/10) and MODE SELECT (6/10).
//!
//! Pages: Caching (08h), Control (0Ah), Informational Exceptions Control (1Ch).
//! Parameters are shared by all I_T nexuses and cannot be saved.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::cdb::{at, be16_at, be32_at, op, Cdb, CmdResult, Failure};
use crate::sense::{self, Sense};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;

/// Page images as sent on the wire (page code, length, parameters).
#[derive(Clone, PartialEq, Eq)]
struct Pages {
    caching: [u8; 20],
    control: [u8; 12],
    info_exceptions: [u8; 12],
}

impl Pages {
    fn defaults() -> Pages {
        let mut caching = [0u8; 20];
        caching[0] = CACHING;
        caching[1] = 0x12;
        caching[2] = 0x04; // WCE: the page cache is a write-back cache

        let mut control = [0u8; 12];
        control[0] = CONTROL;
        control[1] = 0x0a;
        control[2] = 0x02; // GLTSD: no log parameters are saved
        control[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
        control[8] = 0xff; // busy timeout period: unlimited
        control[9] = 0xff;

        let mut info_exceptions = [0u8; 12];
        info_exceptions[0] = INFO_EXCEPTIONS;
        info_exceptions[1] = 0x0a;
        info_exceptions[2] = 0x08; // DEXCPT: no failure prediction to report

        Pages {
            caching,
            control,
            info_exceptions,
        }
    }

    /// Bits MODE SELECT may change: WCE, and D_SENSE (descriptor-format sense).
    fn changeable() -> Pages {
        let mut p = Pages {
            caching: [0; 20],
            control: [0; 12],
            info_exceptions: [0; 12],
        };
        p.caching[0] = CACHING;
        p.caching[1] = 0x12;
        p.caching[2] = 0x04;
        p.control[0] = CONTROL;
        p.control[1] = 0x0a;
        p.control[2] = 0x04;
        p.info_exceptions[0] = INFO_EXCEPTIONS;
        p.info_exceptions[1] = 0x0a;
        p
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        match code {
            CACHING => Some(&self.caching),
            CONTROL => Some(&self.control),
            INFO_EXCEPTIONS => Some(&self.info_exceptions),
            _ => None,
        }
    }

    fn get_mut(&mut self, code: u8) -> Option<&mut [u8]> {
        match code {
            CACHING => Some(&mut self.caching),
            CONTROL => Some(&mut self.control),
            INFO_EXCEPTIONS => Some(&mut self.info_exceptions),
            _ => None,
        }
    }
}

pub struct ModeState {
    pages: Mutex<Pages>,
    /// Mirrors of the bits the I/O path consults on every command.
    d_sense: AtomicBool,
    wce: AtomicBool,
}

impl ModeState {
    pub fn new() -> ModeState {
        ModeState {
            pages: Mutex::new(Pages::defaults()),
            d_sense: AtomicBool::new(false),
            wce: AtomicBool::new(true),
        }
    }

    pub fn d_sense(&self) -> bool {
        self.d_sense.load(Ordering::Relaxed)
    }

    pub fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        let mut p = self.pages.lock();
        *p = Pages::defaults();
        self.mirror(&p);
    }

    fn mirror(&self, p: &Pages) {
        self.d_sense
            .store(p.control[2] & 0x04 != 0, Ordering::Relaxed);
        self.wce.store(p.caching[2] & 0x04 != 0, Ordering::Relaxed);
    }

    pub fn sense(&self, cdb: &Cdb, blocks: u64, block_size: u64) -> CmdResult {
        let ten = cdb.opcode() == op::MODE_SENSE_10;
        let dbd = cdb.u8(1) & 0x08 != 0;
        let llbaa = ten && cdb.u8(1) & 0x10 != 0;
        let pc = cdb.u8(2) >> 6;
        let page = cdb.u8(2) & 0x3f;
        let subpage = cdb.u8(3);
        let alloc = if ten {
            usize::from(cdb.be16(7))
        } else {
            usize::from(cdb.u8(4))
        };

        let source = match pc {
            0 => self.pages.lock().clone(),
            1 => Pages::changeable(),
            2 => Pages::defaults(),
            _ => return Err(sense::SAVING_PARAMETERS_NOT_SUPPORTED.into()),
        };
        // None of our pages has subpages: subpage 0 asks for the page, FFh for the
        // page and all its subpages, which is the same thing here.
        if subpage != 0x00 && subpage != 0xff {
            return Err(Sense::invalid_cdb_field(3, None).into());
        }
        let mut body = Vec::new();
        if page == ALL_PAGES {
            body.extend_from_slice(&source.caching);
            body.extend_from_slice(&source.control);
            body.extend_from_slice(&source.info_exceptions);
        } else if let Some(p) = source.get(page) {
            body.extend_from_slice(p);
        } else {
            return Err(Sense::invalid_cdb_field(2, Some(5)).into());
        }

        // DPOFUA: DPO and FUA are honoured.
        let device_specific = 0x10;
        let descriptor = if dbd {
            Vec::new()
        } else if llbaa {
            let mut b = vec![0u8; 16];
            b[0..8].copy_from_slice(&blocks.to_be_bytes());
            b[12..16].copy_from_slice(&(block_size as u32).to_be_bytes());
            b
        } else {
            let mut b = vec![0u8; 8];
            let n = u32::try_from(blocks).unwrap_or(u32::MAX);
            b[0..4].copy_from_slice(&n.to_be_bytes());
            b[5..8].copy_from_slice(&(block_size as u32).to_be_bytes()[1..4]);
            b
        };

        let mut d = if ten {
            let total = 8 + descriptor.len() + body.len();
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
            h[3] = device_specific;
            h[4] = u8::from(llbaa && !dbd);
            h[6..8].copy_from_slice(&(descriptor.len() as u16).to_be_bytes());
            h
        } else {
            let total = 4 + descriptor.len() + body.len();
            vec![
                (total - 1) as u8,
                0,
                device_specific,
                descriptor.len() as u8,
            ]
        };
        d.extend_from_slice(&descriptor);
        d.extend_from_slice(&body);
        d.truncate(alloc);
        Ok(d)
    }

    /// Applies a MODE SELECT parameter list; returns whether anything changed.
    pub fn select(&self, cdb: &Cdb, data_out: &[u8], block_size: u64) -> Result<bool, Failure> {
        let ten = cdb.opcode() == op::MODE_SELECT_10;
        let pf = cdb.u8(1) & 0x10 != 0;
        let sp = cdb.u8(1) & 0x01 != 0;
        let len = if ten {
            usize::from(cdb.be16(7))
        } else {
            usize::from(cdb.u8(4))
        };
        if sp {
            return Err(Sense::invalid_cdb_field(1, Some(0)).into());
        }
        if len == 0 {
            return Ok(false);
        }
        // Only SPC-format pages exist here.
        if !pf {
            return Err(Sense::invalid_cdb_field(1, Some(4)).into());
        }
        if data_out.len() < len {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let list = &data_out[..len];
        let (header_len, bd_len, long_lba) = if ten {
            (
                8usize,
                usize::from(be16_at(list, 6)),
                at(list, 4) & 0x01 != 0,
            )
        } else {
            (4usize, usize::from(at(list, 3)), false)
        };
        if list.len() < header_len {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        let bd_size = if long_lba { 16 } else { 8 };
        if bd_len != 0 && bd_len != bd_size {
            return Err(Sense::invalid_param_field(if ten { 6 } else { 3 } as u16, None).into());
        }
        if list.len() < header_len + bd_len {
            return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        if bd_len != 0 {
            // The block size cannot change; the descriptor may only restate it.
            let bl_at = header_len + if long_lba { 12 } else { 4 };
            let bl = if long_lba {
                be32_at(list, bl_at)
            } else {
                be32_at(list, bl_at) & 0x00ff_ffff
            };
            if u64::from(bl) != block_size {
                let field = header_len + if long_lba { 12 } else { 5 };
                return Err(Sense::invalid_param_field(field as u16, None).into());
            }
        }

        let current = self.pages.lock().clone();
        let mut new = current.clone();
        let mask = Pages::changeable();
        let mut pos = header_len + bd_len;
        while pos < list.len() {
            let code = at(list, pos) & 0x3f;
            if at(list, pos) & 0x80 != 0 {
                // PS is reserved in MODE SELECT.
                return Err(Sense::invalid_param_field(pos as u16, Some(7)).into());
            }
            if at(list, pos) & 0x40 != 0 {
                return Err(Sense::invalid_param_field(pos as u16, Some(6)).into());
            }
            let (Some(cur), Some(m)) = (new.get_mut(code), mask.get(code)) else {
                return Err(Sense::invalid_param_field(pos as u16, None).into());
            };
            if pos + 2 > list.len() {
                return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
            }
            let plen = usize::from(at(list, pos + 1)) + 2;
            if plen != cur.len() {
                return Err(Sense::invalid_param_field((pos + 1) as u16, None).into());
            }
            let Some(page) = list.get(pos..pos + plen) else {
                return Err(sense::PARAMETER_LIST_LENGTH_ERROR.into());
            };
            for i in 2..plen {
                if (page[i] ^ cur[i]) & !m[i] != 0 {
                    return Err(Sense::invalid_param_field((pos + i) as u16, None).into());
                }
            }
            cur[2..].copy_from_slice(&page[2..]);
            pos += plen;
        }
        let changed = new != current;
        if changed {
            let mut p = self.pages.lock();
            *p = new;
            self.mirror(&p);
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(b: &[u8]) -> Cdb {
        Cdb::parse(b).unwrap()
    }

    #[test]
    fn sense6_all_pages_with_descriptor() {
        let m = ModeState::new();
        let d = m
            .sense(&cdb(&[0x1a, 0, 0x3f, 0, 255, 0]), 1000, 512)
            .unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[2], 0x10);
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &1000u32.to_be_bytes());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d[12], CACHING);
        assert_eq!(d[14] & 0x04, 0x04);
        assert_eq!(d[32], CONTROL);
        assert_eq!(d[44], INFO_EXCEPTIONS);
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
    }

    #[test]
    fn sense10_llbaa_and_dbd() {
        let m = ModeState::new();
        let d = m
            .sense(&cdb(&[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 1, 0, 0]), 1 << 40, 512)
            .unwrap();
        assert_eq!(d[4], 1);
        assert_eq!(be16_at(&d, 6), 16);
        assert_eq!(&d[8..16], &(1u64 << 40).to_be_bytes());
        assert_eq!(d[24], CONTROL);
        let d = m
            .sense(&cdb(&[0x5a, 0x08, 0x0a, 0, 0, 0, 0, 1, 0, 0]), 10, 512)
            .unwrap();
        assert_eq!(be16_at(&d, 6), 0);
        assert_eq!(d[8], CONTROL);
        assert_eq!(be16_at(&d, 0) as usize, d.len() - 2);
    }

    #[test]
    fn sense_errors() {
        let m = ModeState::new();
        let e = m
            .sense(&cdb(&[0x1a, 0, 0xc8, 0, 255, 0]), 10, 512)
            .unwrap_err();
        assert_eq!(e, Failure::Check(sense::SAVING_PARAMETERS_NOT_SUPPORTED));
        let e = m
            .sense(&cdb(&[0x1a, 0, 0x19, 0, 255, 0]), 10, 512)
            .unwrap_err();
        assert_eq!(e, Failure::Check(Sense::invalid_cdb_field(2, Some(5))));
        let e = m
            .sense(&cdb(&[0x1a, 0, 0x08, 1, 255, 0]), 10, 512)
            .unwrap_err();
        assert_eq!(e, Failure::Check(Sense::invalid_cdb_field(3, None)));
        assert!(m
            .sense(&cdb(&[0x1a, 0, 0x3f, 0xff, 255, 0]), 10, 512)
            .is_ok());
        let d = m.sense(&cdb(&[0x1a, 0, 0x3f, 0, 4, 0]), 10, 512).unwrap();
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn select_changes_d_sense_and_wce() {
        let m = ModeState::new();
        let mut list = vec![0u8, 0, 0, 0];
        let mut control = Pages::defaults().control.to_vec();
        control[2] |= 0x04;
        list.extend_from_slice(&control);
        let c = cdb(&[0x15, 0x10, 0, 0, list.len() as u8, 0]);
        assert_eq!(m.select(&c, &list, 512), Ok(true));
        assert!(m.d_sense());
        assert_eq!(m.select(&c, &list, 512), Ok(false));

        let mut list = vec![0u8, 0, 0, 0];
        let mut caching = Pages::defaults().caching.to_vec();
        caching[2] &= !0x04;
        list.extend_from_slice(&caching);
        let c = cdb(&[0x15, 0x10, 0, 0, list.len() as u8, 0]);
        assert_eq!(m.select(&c, &list, 512), Ok(true));
        assert!(!m.write_cache_enabled());
        m.reset();
        assert!(m.write_cache_enabled());
        assert!(!m.d_sense());
    }

    #[test]
    fn select_rejects() {
        let m = ModeState::new();
        let mut control = Pages::defaults().control.to_vec();
        control[4] |= 0x08; // SWP is not changeable
        let mut list = vec![0u8, 0, 0, 0];
        list.extend_from_slice(&control);
        let c = cdb(&[0x15, 0x10, 0, 0, list.len() as u8, 0]);
        assert_eq!(
            m.select(&c, &list, 512),
            Err(Sense::invalid_param_field(8, None).into())
        );
        // Saving is not supported.
        let c = cdb(&[0x15, 0x11, 0, 0, list.len() as u8, 0]);
        assert_eq!(
            m.select(&c, &list, 512),
            Err(Sense::invalid_cdb_field(1, Some(0)).into())
        );
        // Short Data-Out.
        let c = cdb(&[0x15, 0x10, 0, 0, 40, 0]);
        assert_eq!(
            m.select(&c, &list, 512),
            Err(sense::PARAMETER_LIST_LENGTH_ERROR.into())
        );
        // Unknown page.
        let list = [0u8, 0, 0, 0, 0x19, 2, 0, 0];
        let c = cdb(&[0x15, 0x10, 0, 0, 8, 0]);
        assert_eq!(
            m.select(&c, &list, 512),
            Err(Sense::invalid_param_field(4, None).into())
        );
        // Wrong block length in the descriptor.
        let list = [0u8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        let c = cdb(&[0x15, 0x10, 0, 0, 12, 0]);
        assert_eq!(
            m.select(&c, &list, 512),
            Err(Sense::invalid_param_field(9, None).into())
        );
        // Matching block length is fine.
        let list = [0u8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0];
        assert_eq!(m.select(&c, &list, 512), Ok(false));
        // Truncated page.
        let list = [0u8, 0, 0, 0, 0x0a, 0x0a, 0, 0];
        let c = cdb(&[0x15, 0x10, 0, 0, 8, 0]);
        assert_eq!(
            m.select(&c, &list, 512),
            Err(sense::PARAMETER_LIST_LENGTH_ERROR.into())
        );
    }
}
