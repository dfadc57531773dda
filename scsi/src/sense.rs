//! Sense data (SPC-4 4.5): the value a failed command carries, and its two wire formats.

/// Sense keys used by this device.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// SAM status codes.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
}

/// Where in the CDB or parameter list a bad field sits (the sense-key specific
/// FIELD POINTER), so initiators can tell which field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// true: the CDB; false: the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte, when one bit is at fault.
    pub bit: Option<u8>,
}

/// One sense condition, independent of the format it is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (VALID=1 when present).
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }

    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit` when a single bit is refused).
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..INVALID_FIELD_IN_CDB
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the Data-Out buffer.
    pub fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..INVALID_FIELD_IN_PARAMETER_LIST
        }
    }

    /// Fixed format (response code 0x70), 18 bytes.
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        // The fixed INFORMATION field is 4 bytes; a larger value cannot be
        // reported there, so VALID stays 0 rather than reporting a truncated value.
        if let Some(info) = self.info {
            if let Ok(v) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(f) = self.field {
            s[15..18].copy_from_slice(&sks(f));
        }
        s
    }

    /// Descriptor format (response code 0x72).
    pub fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.info {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(f) = self.field {
            s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            s.extend_from_slice(&sks(f));
            s.push(0);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }

    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.descriptor()
        } else {
            self.fixed()
        }
    }
}

fn sks(f: FieldPointer) -> [u8; 3] {
    let mut b0 = 0x80u8;
    if f.in_cdb {
        b0 |= 0x40;
    }
    if let Some(bit) = f.bit {
        b0 |= 0x08 | (bit & 0x07);
    }
    let [hi, lo] = f.byte.to_be_bytes();
    [b0, hi, lo]
}

pub const NO_SENSE: Sense = Sense::new(key::NO_SENSE, 0x00, 0x00);
pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x55, 0x04);
pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x07);
pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(key::HARDWARE_ERROR, 0x44, 0x00);

// Unit attention conditions.
pub const UA_POWER_ON_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
pub const UA_BUS_DEVICE_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x03);
pub const UA_MODE_PARAMETERS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x01);
pub const UA_RESERVATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x03);
pub const UA_RESERVATIONS_RELEASED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x04);
pub const UA_REGISTRATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x05);
pub const UA_CAPACITY_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09);

/// Maps a backing-file error to the sense an initiator can act on: a full
/// filesystem is a thin-provisioning exhaustion, not a medium defect.
pub fn from_io(e: &std::io::Error, writing: bool) -> Sense {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => SPACE_ALLOCATION_FAILED,
        _ if writing => WRITE_ERROR,
        _ => UNRECOVERED_READ_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_opcode() {
        let s = INVALID_OPCODE.fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x20, 0x00));
        assert_eq!(&s[15..18], &[0, 0, 0]);
    }

    #[test]
    fn fixed_with_info_and_field_pointer() {
        let s = MISCOMPARE_DURING_VERIFY.with_info(0x1234).fixed();
        assert_eq!(s[0], 0xf0);
        assert_eq!(s[2], 0x0e);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!((s[12], s[13]), (0x1d, 0x00));

        let s = Sense::invalid_cdb_field(2, Some(5)).fixed();
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 5, 0, 2]);
        let s = Sense::invalid_param_field(300, None).fixed();
        assert_eq!(&s[15..18], &[0x80, 0x01, 0x2c]);
        assert_eq!((s[12], s[13]), (0x26, 0x00));
    }

    #[test]
    fn fixed_info_too_large_is_not_valid() {
        let s = MISCOMPARE_DURING_VERIFY.with_info(1 << 40).fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(&s[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format() {
        let s = LBA_OUT_OF_RANGE.descriptor();
        assert_eq!(s, vec![0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);
        let s = MISCOMPARE_DURING_VERIFY.with_info(7).descriptor();
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0x00, 0x0a, 0x80, 0x00]);
        assert_eq!(&s[12..20], &7u64.to_be_bytes());
        let s = Sense::invalid_cdb_field(1, None).descriptor();
        assert_eq!(&s[8..16], &[0x02, 0x06, 0, 0, 0xc0, 0x00, 0x01, 0]);
    }

    #[test]
    fn io_mapping() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(from_io(&full, true), SPACE_ALLOCATION_FAILED);
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(from_io(&eio, true), WRITE_ERROR);
        assert_eq!(from_io(&eio, false), UNRECOVERED_READ_ERROR);
    }
}
