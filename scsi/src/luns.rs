//! REPORT LUNS and the answers for a LUN that does not exist.

use crate::cdb::{op, Cdb, CmdResult};
use crate::sense::{self, Sense};
use crate::Response;

/// Every target built on this crate exposes one logical unit, LUN 0.
pub(crate) fn report_luns(cdb: &Cdb) -> CmdResult {
    let select = cdb.u8(2);
    let alloc = cdb.be32(6);
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None).into());
    }
    let with_lun0 = match select {
        // 0: all but well-known; 2: all; 0x10/0x12: administrative LU forms, LUN 0 is top level.
        0x00 | 0x02 | 0x10 | 0x12 => true,
        // 1 and 0x11: well-known LUs only, of which there are none.
        0x01 | 0x11 => false,
        _ => return Err(Sense::invalid_cdb_field(2, None).into()),
    };
    let mut d = vec![0u8; 8];
    if with_lun0 {
        d.extend_from_slice(&[0u8; 8]);
    }
    let list_len = (d.len() - 8) as u32;
    d[0..4].copy_from_slice(&list_len.to_be_bytes());
    d.truncate(alloc as usize);
    Ok(d)
}

/// The response for a command addressed to a LUN that does not exist: INQUIRY answers with
/// peripheral qualifier 011b / device type 0x1f, REPORT LUNS lists LUN 0, REQUEST SENSE returns
/// LOGICAL UNIT NOT SUPPORTED as data, everything else is CHECK CONDITION ILLEGAL REQUEST /
/// LOGICAL UNIT NOT SUPPORTED (25/00).
pub fn lun_not_supported(cdb: &[u8], allocation: u32) -> Response {
    let result = match cdb.first().copied() {
        Some(op::INQUIRY) => Cdb::parse(cdb)
            .map_err(Into::into)
            .and_then(|c| absent_inquiry(&c)),
        Some(op::REPORT_LUNS) => Cdb::parse(cdb)
            .map_err(Into::into)
            .and_then(|c| report_luns(&c)),
        Some(op::REQUEST_SENSE) => Cdb::parse(cdb).map_err(Into::into).map(|c| {
            let mut d = sense::LUN_NOT_SUPPORTED.encode(c.u8(1) & 0x01 != 0);
            d.truncate(usize::from(c.u8(4)));
            d
        }),
        _ => Err(sense::LUN_NOT_SUPPORTED.into()),
    };
    match result {
        Ok(d) => Response::good(d, allocation),
        Err(crate::cdb::Failure::Check(s)) => Response::check(&s, false),
        Err(crate::cdb::Failure::ReservationConflict) => Response::reservation_conflict(),
    }
}

fn absent_inquiry(cdb: &Cdb) -> CmdResult {
    let alloc = usize::from(cdb.be16(3));
    // Peripheral qualifier 011b, device type 1Fh: no logical unit here.
    let mut d = if cdb.u8(1) & 0x01 != 0 {
        vec![0x7f, cdb.u8(2), 0, 0]
    } else {
        let mut d = vec![0u8; 36];
        d[0] = 0x7f;
        d[2] = 0x06;
        d[3] = 0x02;
        d[4] = 31;
        d
    };
    d.truncate(alloc);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_lun_answers() {
        let r = lun_not_supported(&[0x12, 0, 0, 0, 96, 0], 96);
        assert_eq!(r.status, 0);
        assert_eq!(r.data[0], 0x7f);
        assert_eq!(r.data.len(), 36);

        let r = lun_not_supported(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
        assert_eq!(r.status, 0);
        assert_eq!(&r.data[..4], &[0, 0, 0, 8]);
        assert_eq!(r.data.len(), 16);

        let r = lun_not_supported(&[0x03, 0, 0, 0, 252, 0], 252);
        assert_eq!(r.status, 0);
        assert_eq!((r.data[12], r.data[13]), (0x25, 0x00));

        let r = lun_not_supported(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512);
        assert_eq!(r.status, 2);
        assert_eq!((r.sense[2], r.sense[12], r.sense[13]), (5, 0x25, 0));

        let r = lun_not_supported(&[], 0);
        assert_eq!(r.status, 2);
        let r = lun_not_supported(&[0xa0, 0, 0], 0);
        assert_eq!(r.status, 2);
    }

    #[test]
    fn report_luns_allocation_and_select() {
        let c = Cdb::parse(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).unwrap();
        assert!(report_luns(&c).is_err());
        let c = Cdb::parse(&[0xa0, 0, 1, 0, 0, 0, 0, 0, 0, 16, 0, 0]).unwrap();
        assert_eq!(report_luns(&c).unwrap(), vec![0u8; 8]);
        let c = Cdb::parse(&[0xa0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 0, 0]).unwrap();
        assert!(report_luns(&c).is_err());
    }
}
