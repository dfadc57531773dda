//! The supported-command table: REPORT SUPPORTED OPERATION CODES, opcode
//! support checks and per-CDB transfer sizes.

use crate::cdb::{op, Cdb, CmdResult};
use crate::sense::Sense;
use crate::DataDirection;

/// One supported command: its service action (when the opcode has them) and the
/// CDB usage data, whose set bits are the bits the device server evaluates.
struct Command {
    opcode: u8,
    service_action: Option<u8>,
    usage: &'static [u8],
}

const fn cmd(opcode: u8, usage: &'static [u8]) -> Command {
    Command {
        opcode,
        service_action: None,
        usage,
    }
}

const fn sa(opcode: u8, action: u8, usage: &'static [u8]) -> Command {
    Command {
        opcode,
        service_action: Some(action),
        usage,
    }
}

// For service-action commands the usage data carries the service action value in
// the SERVICE ACTION field's position (SPC-4 6.35.3).
const COMMANDS: &[Command] = &[
    cmd(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0]),
    cmd(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, 0xff, 0]),
    cmd(op::READ_6, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]),
    cmd(op::WRITE_6, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]),
    cmd(op::INQUIRY, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]),
    cmd(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, 0xff, 0]),
    cmd(op::MODE_SENSE_6, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]),
    cmd(op::START_STOP_UNIT, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),
    cmd(op::PREVENT_ALLOW, &[0x1e, 0, 0, 0, 0x03, 0]),
    cmd(
        op::READ_CAPACITY_10,
        &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0],
    ),
    cmd(
        op::READ_10,
        &[0x28, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::WRITE_10,
        &[0x2a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::WRITE_VERIFY_10,
        &[0x2e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::VERIFY_10,
        &[0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::WRITE_SAME_10,
        &[0x41, 0xfe, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(op::UNMAP, &[0x42, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    cmd(
        op::MODE_SELECT_10,
        &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::MODE_SENSE_10,
        &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0x00,
        &[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0x01,
        &[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0x02,
        &[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0x03,
        &[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x00,
        &[0x5f, 0x00, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x01,
        &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x02,
        &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x03,
        &[0x5f, 0x03, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x04,
        &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x05,
        &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0x06,
        &[0x5f, 0x06, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    cmd(
        op::READ_16,
        &[
            0x88, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    cmd(
        op::COMPARE_AND_WRITE,
        &[
            0x89, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0, 0,
        ],
    ),
    cmd(
        op::WRITE_16,
        &[
            0x8a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    cmd(
        op::WRITE_VERIFY_16,
        &[
            0x8e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    cmd(
        op::VERIFY_16,
        &[
            0x8f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    cmd(
        op::WRITE_SAME_16,
        &[
            0x93, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SAI_READ_CAPACITY_16,
        &[
            0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SAI_GET_LBA_STATUS,
        &[
            0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ),
    cmd(
        op::REPORT_LUNS,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    sa(
        op::MAINTENANCE_IN,
        op::MI_REPORT_SUPPORTED_OPCODES,
        &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    cmd(
        op::READ_12,
        &[
            0xa8, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    cmd(
        op::WRITE_12,
        &[
            0xaa, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    cmd(
        op::WRITE_VERIFY_12,
        &[
            0xae, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    cmd(
        op::VERIFY_12,
        &[
            0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
];

/// Nominal and recommended command timeouts, in seconds, for the RCTD descriptor.
fn timeouts(opcode: u8) -> (u32, u32) {
    match opcode {
        op::SYNCHRONIZE_CACHE_10
        | op::SYNCHRONIZE_CACHE_16
        | op::WRITE_SAME_10
        | op::WRITE_SAME_16
        | op::UNMAP => (5, 60),
        _ => (1, 30),
    }
}

fn timeouts_descriptor(opcode: u8) -> [u8; 12] {
    let (nominal, recommended) = timeouts(opcode);
    let mut d = [0u8; 12];
    d[1] = 0x0a;
    d[4..8].copy_from_slice(&nominal.to_be_bytes());
    d[8..12].copy_from_slice(&recommended.to_be_bytes());
    d
}

/// Per-opcode support bitmap built at compile time, so the I/O path's check is one load.
const SUPPORTED: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < COMMANDS.len() {
        t[COMMANDS[i].opcode as usize] = true;
        i += 1;
    }
    t
};

pub(crate) fn is_supported(opcode: u8) -> bool {
    SUPPORTED[usize::from(opcode)]
}

fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

pub(crate) fn report_supported_opcodes(cdb: &Cdb) -> CmdResult {
    let rctd = cdb.u8(2) & 0x80 != 0;
    let options = cdb.u8(2) & 0x07;
    let opcode = cdb.u8(3);
    let action = cdb.be16(4);
    let alloc = cdb.be32(6) as usize;
    // Field pointers here must not be byte 1: initiators read "INVALID FIELD at
    // byte 1" on MAINTENANCE IN as "command not implemented".
    let bad_option = || Sense::invalid_cdb_field(2, Some(2));
    let mut d = match options {
        0 => all_commands(rctd),
        1 => {
            if has_service_actions(opcode) {
                return Err(bad_option().into());
            }
            one_command(COMMANDS.iter().find(|c| c.opcode == opcode), rctd)
        }
        2 => {
            if is_supported(opcode) && !has_service_actions(opcode) {
                return Err(bad_option().into());
            }
            one_command(find_action(opcode, action), rctd)
        }
        3 => {
            let found = if has_service_actions(opcode) {
                find_action(opcode, action)
            } else if action == 0 {
                COMMANDS.iter().find(|c| c.opcode == opcode)
            } else {
                None
            };
            one_command(found, rctd)
        }
        _ => return Err(bad_option().into()),
    };
    d.truncate(alloc);
    Ok(d)
}

fn find_action(opcode: u8, action: u16) -> Option<&'static Command> {
    COMMANDS
        .iter()
        .find(|c| c.opcode == opcode && c.service_action.map(u16::from) == Some(action))
}

fn all_commands(rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for c in COMMANDS {
        d.push(c.opcode);
        d.push(0);
        d.extend_from_slice(&u16::from(c.service_action.unwrap_or(0)).to_be_bytes());
        d.push(0);
        d.push(u8::from(c.service_action.is_some()) | if rctd { 0x02 } else { 0 });
        d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
        if rctd {
            d.extend_from_slice(&timeouts_descriptor(c.opcode));
        }
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d
}

fn one_command(c: Option<&Command>, rctd: bool) -> Vec<u8> {
    let Some(c) = c else {
        // SUPPORT 001b: not supported, no usage data.
        return vec![0, 0x01, 0, 0];
    };
    let mut d = vec![0, 0x03 | if rctd { 0x80 } else { 0 }];
    d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
    d.extend_from_slice(c.usage);
    if rctd {
        d.extend_from_slice(&timeouts_descriptor(c.opcode));
    }
    d
}

/// The Data-In or Data-Out size a CDB implies. Transfers past the device's
/// maximum are reported as none: the command will be refused before any data
/// moves, and a transport must not solicit gigabytes for it.
pub(crate) fn transfer(raw: &[u8], block_size: u64, max_blocks: u64) -> DataDirection {
    let Ok(cdb) = Cdb::parse(raw) else {
        return DataDirection::None;
    };
    let blocks = |n: u64| -> Option<u32> {
        if n > max_blocks {
            None
        } else {
            u32::try_from(n * block_size).ok()
        }
    };
    let in_blocks = |n: u64| blocks(n).map_or(DataDirection::None, DataDirection::In);
    let out_blocks = |n: u64| blocks(n).map_or(DataDirection::None, DataDirection::Out);
    let bytchk = (cdb.u8(1) >> 1) & 0x03;
    match cdb.opcode() {
        op::READ_6 => in_blocks(match cdb.u8(4) {
            0 => 256,
            n => u64::from(n),
        }),
        op::WRITE_6 => out_blocks(match cdb.u8(4) {
            0 => 256,
            n => u64::from(n),
        }),
        op::READ_10 => in_blocks(u64::from(cdb.be16(7))),
        op::READ_12 => in_blocks(u64::from(cdb.be32(6))),
        op::READ_16 => in_blocks(u64::from(cdb.be32(10))),
        op::WRITE_10 | op::WRITE_VERIFY_10 => out_blocks(u64::from(cdb.be16(7))),
        op::WRITE_12 | op::WRITE_VERIFY_12 => out_blocks(u64::from(cdb.be32(6))),
        op::WRITE_16 | op::WRITE_VERIFY_16 => out_blocks(u64::from(cdb.be32(10))),
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            let n = match cdb.opcode() {
                op::VERIFY_10 => u64::from(cdb.be16(7)),
                op::VERIFY_12 => u64::from(cdb.be32(6)),
                _ => u64::from(cdb.be32(10)),
            };
            match bytchk {
                0b01 => out_blocks(n),
                0b11 if n > 0 => out_blocks(1),
                _ => DataDirection::None,
            }
        }
        op::WRITE_SAME_10 => out_blocks(1),
        op::WRITE_SAME_16 if cdb.u8(1) & 0x01 != 0 => DataDirection::None,
        op::WRITE_SAME_16 => out_blocks(1),
        op::COMPARE_AND_WRITE => out_blocks(2 * u64::from(cdb.u8(13))),
        op::UNMAP | op::MODE_SELECT_10 => out(u32::from(cdb.be16(7))),
        op::MODE_SELECT_6 => out(u32::from(cdb.u8(4))),
        op::PERSISTENT_RESERVE_OUT => out(cdb.be32(5)),
        op::INQUIRY => inn(u32::from(cdb.be16(3))),
        op::REQUEST_SENSE | op::MODE_SENSE_6 => inn(u32::from(cdb.u8(4))),
        op::MODE_SENSE_10 | op::PERSISTENT_RESERVE_IN => inn(u32::from(cdb.be16(7))),
        op::READ_CAPACITY_10 => inn(8),
        op::SERVICE_ACTION_IN_16 => match cdb.service_action() {
            op::SAI_READ_CAPACITY_16 | op::SAI_GET_LBA_STATUS => inn(cdb.be32(10)),
            _ => DataDirection::None,
        },
        op::REPORT_LUNS => inn(cdb.be32(6)),
        op::MAINTENANCE_IN => inn(cdb.be32(6)),
        _ => DataDirection::None,
    }
}

fn inn(n: u32) -> DataDirection {
    if n == 0 {
        DataDirection::None
    } else {
        DataDirection::In(n)
    }
}

fn out(n: u32) -> DataDirection {
    if n == 0 {
        DataDirection::None
    } else {
        DataDirection::Out(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsoc(options: u8, opcode: u8, action: u16) -> Vec<u8> {
        let mut c = [0xa3, 0x0c, options, opcode, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        c[4..6].copy_from_slice(&action.to_be_bytes());
        match report_supported_opcodes(&Cdb::parse(&c).unwrap()) {
            Ok(d) => d,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn usage_data_lengths_match_groups() {
        for c in COMMANDS {
            assert_eq!(
                Some(c.usage.len()),
                crate::cdb::group_len(c.opcode),
                "{:#x}",
                c.opcode
            );
            assert_eq!(c.usage[0], c.opcode);
            if let Some(a) = c.service_action {
                assert_eq!(c.usage[1] & 0x1f, a);
            }
        }
    }

    #[test]
    fn all_commands_format() {
        let d = rsoc(0, 0, 0);
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
        assert_eq!((d.len() - 4) / 8, COMMANDS.len());
        let d = rsoc(0x80, 0, 0);
        assert_eq!((d.len() - 4) / 20, COMMANDS.len());
        assert_eq!(d[4 + 5] & 0x02, 0x02);
        assert_eq!(&d[12..14], &[0x00, 0x0a]);
    }

    #[test]
    fn one_command_forms() {
        let d = rsoc(1, op::READ_10, 0);
        assert_eq!(d[1] & 0x07, 3);
        assert_eq!(&d[2..4], &[0, 10]);
        assert_eq!(d[4], op::READ_10);
        assert_eq!(d[5] & 0x18, 0x18);
        let d = rsoc(1, 0xff, 0);
        assert_eq!(d, vec![0, 1, 0, 0]);
        let d = rsoc(2, op::SERVICE_ACTION_IN_16, 0x10);
        assert_eq!(d[1] & 0x07, 3);
        assert_eq!(d[5], 0x10);
        let d = rsoc(3, op::READ_16, 0);
        assert_eq!(d[1] & 0x07, 3);
        let d = rsoc(3, op::PERSISTENT_RESERVE_OUT, 6);
        assert_eq!(d[5], 6);

        let c = [
            0xa3,
            0x0c,
            1,
            op::SERVICE_ACTION_IN_16,
            0,
            0x10,
            0,
            0,
            0xff,
            0xff,
            0,
            0,
        ];
        let e = report_supported_opcodes(&Cdb::parse(&c).unwrap()).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb_field(2, Some(2)).into());
        let c = [0xa3, 0x0c, 2, op::READ_10, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        assert!(report_supported_opcodes(&Cdb::parse(&c).unwrap()).is_err());
        let c = [0xa3, 0x0c, 7, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        assert!(report_supported_opcodes(&Cdb::parse(&c).unwrap()).is_err());
    }

    #[test]
    fn transfers() {
        let t = |c: &[u8]| transfer(c, 512, 16384);
        assert_eq!(t(&[0x08, 0, 0, 0, 0, 0]), DataDirection::In(256 * 512));
        assert_eq!(
            t(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
            DataDirection::In(4096)
        );
        assert_eq!(
            t(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
            DataDirection::Out(4096)
        );
        assert_eq!(t(&[0x2f, 0, 0, 0, 0, 0, 0, 0, 8, 0]), DataDirection::None);
        assert_eq!(
            t(&[0x2f, 2, 0, 0, 0, 0, 0, 0, 8, 0]),
            DataDirection::Out(4096)
        );
        assert_eq!(
            t(&[0x2f, 6, 0, 0, 0, 0, 0, 0, 8, 0]),
            DataDirection::Out(512)
        );
        let mut big = [0u8; 16];
        big[0] = 0x88;
        big[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(t(&big), DataDirection::None);
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[13] = 2;
        assert_eq!(t(&caw), DataDirection::Out(2048));
        assert_eq!(t(&[0x12, 0, 0, 0, 96, 0]), DataDirection::In(96));
        assert_eq!(
            t(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
            DataDirection::Out(24)
        );
        assert_eq!(t(&[]), DataDirection::None);
        assert_eq!(t(&[0x00, 0, 0, 0, 0, 0]), DataDirection::None);
    }
}
