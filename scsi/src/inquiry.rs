//! INQUIRY: standard data and the vital product data pages.

use crate::cdb::{Cdb, CmdResult};
use crate::lu::{
    LogicalUnit, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
    OPTIMAL_GRANULARITY_BYTES,
};
use crate::sense::Sense;
use crate::Nexus;

const SUPPORTED_VPD: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// Version descriptors: SAM-5, SPC-4, SBC-3 (no version claimed). libiscsi keys its
/// SBC-3 expectations (60-byte block limits page) on the SBC-3 descriptor.
const VERSION_DESCRIPTORS: [u16; 3] = [0x00a0, 0x0460, 0x04c0];

/// iSCSI protocol identifier, used with PIV=1 in target port designators.
const PROTOCOL_ISCSI: u8 = 0x5;

pub(crate) fn inquiry(lu: &LogicalUnit, nexus: &Nexus, cdb: &Cdb) -> CmdResult {
    let evpd = cdb.u8(1) & 0x01 != 0;
    if cdb.u8(1) & 0x02 != 0 {
        // CMDDT is obsolete.
        return Err(Sense::invalid_cdb_field(1, Some(1)).into());
    }
    let page = cdb.u8(2);
    let alloc = usize::from(cdb.be16(3));
    let mut data = if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb_field(2, None).into());
        }
        standard(lu)
    } else {
        match page {
            0x00 => page_data(0x00, SUPPORTED_VPD.to_vec()),
            0x80 => page_data(0x80, lu.info.serial.as_bytes().to_vec()),
            0x83 => page_data(0x83, device_identification(lu, nexus)),
            0xb0 => page_data(0xb0, block_limits(lu)),
            0xb1 => page_data(0xb1, block_device_characteristics()),
            0xb2 => page_data(0xb2, logical_block_provisioning()),
            _ => return Err(Sense::invalid_cdb_field(2, None).into()),
        }
    };
    data.truncate(alloc);
    Ok(data)
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    // Only printable ASCII is allowed in these fields (SPC-4 4.4.1).
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..=0x7e).contains(&b) { b } else { b' ' })
        .take(len)
        .collect();
    v.resize(len, b' ');
    v
}

fn standard(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // connected direct-access block device
    d[1] = 0x00; // not removable
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP=1, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x00; // no ALUA, no 3PC, no protection
    d[6] = 0x00;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&padded(&lu.info.vendor, 8));
    d[16..32].copy_from_slice(&padded(&lu.info.product, 16));
    d[32..36].copy_from_slice(&padded(&lu.info.revision, 4));
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn page_data(code: u8, body: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut d = Vec::with_capacity(4 + body.len());
    d.push(0x00);
    d.push(code);
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&body[..usize::from(len)]);
    d
}

fn designator(out: &mut Vec<u8>, code_set: u8, piv_assoc_type: u8, protocol: u8, id: &[u8]) {
    out.push((protocol << 4) | code_set);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&id[..id.len().min(255)]);
}

/// SCSI name strings are null-terminated and padded to a multiple of 4 bytes.
fn name_string(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(251).collect();
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn device_identification(lu: &LogicalUnit, nexus: &Nexus) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA IEEE Registered Extended, binary, associated with the logical unit.
    designator(&mut d, 0x1, 0x03, 0, &lu.info.naa);
    // T10 vendor ID based: vendor followed by the unit serial number.
    let mut t10 = padded(&lu.info.vendor, 8);
    t10.extend(
        lu.info
            .serial
            .bytes()
            .filter(|b| (0x20..=0x7e).contains(b))
            .take(200),
    );
    designator(&mut d, 0x2, 0x01, 0, &t10);
    if !nexus.target_port.is_empty() {
        // Relative target port 1, target port association (01b), PIV=1.
        designator(
            &mut d,
            0x1,
            0x80 | 0x10 | 0x04,
            PROTOCOL_ISCSI,
            &[0, 0, 0, 1],
        );
        // SCSI name string of the target port, UTF-8.
        designator(
            &mut d,
            0x3,
            0x80 | 0x10 | 0x08,
            PROTOCOL_ISCSI,
            &name_string(&nexus.target_port),
        );
        // The target device name is the port name without its ",t,<tpgt>" suffix.
        let device = nexus.target_port.split(",t,").next().unwrap_or_default();
        if !device.is_empty() {
            designator(
                &mut d,
                0x3,
                0x80 | 0x20 | 0x08,
                PROTOCOL_ISCSI,
                &name_string(device),
            );
        }
    }
    d
}

fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    let b = |i: usize| i - 4;
    d[b(4)] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused
    d[b(5)] = u8::try_from(MAX_COMPARE_AND_WRITE_BLOCKS).unwrap_or(u8::MAX);
    let gran = (OPTIMAL_GRANULARITY_BYTES >> lu.block_shift).max(1) as u16;
    d[b(6)..b(8)].copy_from_slice(&gran.to_be_bytes());
    let max_xfer = lu.max_transfer_blocks() as u32;
    d[b(8)..b(12)].copy_from_slice(&max_xfer.to_be_bytes());
    d[b(12)..b(16)].copy_from_slice(&max_xfer.to_be_bytes());
    d[b(20)..b(24)].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
    d[b(24)..b(28)].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    d[b(28)..b(32)].copy_from_slice(&u32::from(gran).to_be_bytes());
    d[b(32)] = 0x80; // UGAVALID, alignment 0
    d[b(36)..b(44)].copy_from_slice(&lu.max_write_same_blocks().to_be_bytes());
    d
}

fn block_device_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[1] = 0x01; // medium rotation rate 1: non-rotating
    d
}

fn logical_block_provisioning() -> Vec<u8> {
    // Threshold exponent 0; LBPU, LBPWS, LBPWS10, LBPRZ=001b; no anchors, no
    // provisioning group descriptor; provisioning type 010b: thin.
    vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
}
