//! Tests through the public entry points: every command's happy and error paths,
//! persistent reservation scenarios with two nexuses, unit attentions, resize,
//! quiesce, and a fuzz-style sweep of random CDBs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sense::status;
use crate::{DataDirection, DeviceInfo, LogicalUnit, Nexus, Response};

const BLOCKS: u64 = 16384;
const BS: usize = 512;

struct Fixture {
    lu: LogicalUnit,
    _dir: tempfile::TempDir,
}

fn info(block_size: u32) -> DeviceInfo {
    DeviceInfo {
        vendor: "STRATO".into(),
        product: "VOLUME".into(),
        revision: "0001".into(),
        serial: "vol-1234".into(),
        naa: [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        block_size,
    }
}

fn fixture_with(block_size: u32, pr: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(BLOCKS * u64::from(block_size)).unwrap();
    let pr_state = pr.then(|| dir.path().join("pr.json"));
    let lu = LogicalUnit::open(&path, info(block_size), pr_state).unwrap();
    Fixture { lu, _dir: dir }
}

fn fixture() -> Fixture {
    fixture_with(512, true)
}

fn nx(i: &str) -> Nexus {
    Nexus {
        initiator_port: format!("iqn.2000-01.test:{i},i,0x000000000001"),
        target_port: "iqn.2026-11.io.strato:vol,t,0x0001".into(),
    }
}

fn exec(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], out: &[u8]) -> Response {
    lu.execute(n, cdb, out, 1 << 24)
}

fn good(r: &Response) {
    assert_eq!(r.status, status::GOOD, "sense {:02x?}", r.sense);
}

/// (key, asc, ascq) from fixed or descriptor sense.
fn sense_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION, "status {:#x}", r.status);
    match r.sense.first() {
        Some(0x70) | Some(0xf0) => (r.sense[2] & 0xf, r.sense[12], r.sense[13]),
        Some(0x72) => (r.sense[1] & 0xf, r.sense[2], r.sense[3]),
        _ => panic!("bad sense {:02x?}", r.sense),
    }
}

fn check(r: &Response, want: (u8, u8, u8)) {
    assert_eq!(sense_of(r), want, "sense {:02x?}", r.sense);
}

const INVALID_FIELD: (u8, u8, u8) = (5, 0x24, 0);
const LBA_OOB: (u8, u8, u8) = (5, 0x21, 0);
const INVALID_OPCODE: (u8, u8, u8) = (5, 0x20, 0);
const MISCOMPARE: (u8, u8, u8) = (0xe, 0x1d, 0);
const PARAM_LEN: (u8, u8, u8) = (5, 0x1a, 0);
const INVALID_PARAM: (u8, u8, u8) = (5, 0x26, 0);

fn read10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = vec![0x28, flags, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = read10(lba, blocks, flags);
    c[0] = 0x2a;
    c
}

fn cdb16(opcode: u8, flags: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn read(lu: &LogicalUnit, n: &Nexus, lba: u64, blocks: u32) -> Vec<u8> {
    let r = exec(lu, n, &cdb16(0x88, 0, lba, blocks), &[]);
    good(&r);
    r.data
}

fn write(lu: &LogicalUnit, n: &Nexus, lba: u64, data: &[u8]) {
    let r = exec(lu, n, &cdb16(0x8a, 0, lba, (data.len() / BS) as u32), data);
    good(&r);
}

/// A logged-in nexus whose login unit attention has been consumed.
fn login(lu: &LogicalUnit, name: &str) -> Nexus {
    let n = nx(name);
    lu.nexus_added(&n);
    check(&exec(lu, &n, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x29, 0));
    good(&exec(lu, &n, &[0, 0, 0, 0, 0, 0], &[]));
    n
}

#[test]
fn test_unit_ready_and_unknown_opcodes() {
    let f = fixture();
    let a = login(&f.lu, "a");
    good(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]));
    for opcode in [
        0x01u8, 0x04, 0x07, 0x3b, 0x7f, 0xc0, 0xff, 0x16, 0x17, 0x56, 0x57,
    ] {
        check(
            &exec(
                &f.lu,
                &a,
                &[opcode, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                &[],
            ),
            INVALID_OPCODE,
        );
    }
    check(&exec(&f.lu, &a, &[], &[]), INVALID_OPCODE);
    // Short CDB for a known opcode.
    check(&exec(&f.lu, &a, &[0x28, 0, 0], &[]), INVALID_FIELD);
}

#[test]
fn inquiry_standard_and_vpd() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let r = exec(&f.lu, &a, &[0x12, 0, 0, 1, 0, 0], &[]);
    good(&r);
    let d = &r.data;
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0);
    assert_eq!(d[1] & 0x80, 0);
    assert_eq!(d[2], 6);
    assert_eq!(d[3] & 0x0f, 2);
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"STRATO  ");
    assert_eq!(&d[58..64], &[0x00, 0xa0, 0x04, 0x60, 0x04, 0xc0]);
    // Allocation lengths truncate, and are consistent.
    for alloc in 5u16..=255 {
        let r = exec(
            &f.lu,
            &a,
            &[0x12, 0, 0, (alloc >> 8) as u8, alloc as u8, 0],
            &[],
        );
        good(&r);
        assert_eq!(r.data.len(), usize::from(alloc).min(96));
    }
    // Page code without EVPD.
    check(&exec(&f.lu, &a, &[0x12, 0, 1, 1, 0, 0], &[]), INVALID_FIELD);
    // Supported pages, each of which answers.
    let r = exec(&f.lu, &a, &[0x12, 1, 0, 0, 255, 0], &[]);
    good(&r);
    let pages = r.data[4..].to_vec();
    assert_eq!(pages, vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    for p in pages {
        let r = exec(&f.lu, &a, &[0x12, 1, p, 1, 0, 0], &[]);
        good(&r);
        assert_eq!(r.data[1], p);
        assert_eq!(
            usize::from(u16::from_be_bytes([r.data[2], r.data[3]])),
            r.data.len() - 4
        );
    }
    check(
        &exec(&f.lu, &a, &[0x12, 1, 0x89, 1, 0, 0], &[]),
        INVALID_FIELD,
    );
    // Block limits: SBC-3 length, WSNZ, unmap limits.
    let r = exec(&f.lu, &a, &[0x12, 1, 0xb0, 1, 0, 0], &[]);
    let d = &r.data;
    assert_eq!(d[3], 0x3c);
    assert_eq!(d[4] & 1, 1);
    assert_eq!(d[5], 255);
    let max_unmap = u32::from_be_bytes([d[20], d[21], d[22], d[23]]);
    assert!(max_unmap > 0 && max_unmap <= 1 << 20);
    // Provisioning: LBPU, LBPWS, LBPWS10, LBPRZ, thin.
    let r = exec(&f.lu, &a, &[0x12, 1, 0xb2, 1, 0, 0], &[]);
    assert_eq!(r.data[5] & 0xe0, 0xe0);
    assert_eq!(r.data[5] & 0x1c, 0x04);
    assert_eq!(r.data[6] & 0x07, 0x02);
    // Serial.
    let r = exec(&f.lu, &a, &[0x12, 1, 0x80, 1, 0, 0], &[]);
    assert_eq!(&r.data[4..], b"vol-1234");
    // Device identification: NAA first, then the port designators.
    let r = exec(&f.lu, &a, &[0x12, 1, 0x83, 1, 0, 0], &[]);
    let d = &r.data;
    assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 16]);
    assert_eq!(&d[8..24], &info(512).naa);
    assert!(d.windows(6).any(|w| w == b"vol,t,"));
}

#[test]
fn read_capacity() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let r = exec(&f.lu, &a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    good(&r);
    assert_eq!(
        r.data,
        [
            &((BLOCKS - 1) as u32).to_be_bytes()[..],
            &512u32.to_be_bytes()
        ]
        .concat()
    );
    check(
        &exec(&f.lu, &a, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[]),
        INVALID_FIELD,
    );
    let mut c = cdb16(0x9e, 0x10, 0, 32);
    let r = exec(&f.lu, &a, &c, &[]);
    good(&r);
    assert_eq!(r.data.len(), 32);
    assert_eq!(&r.data[0..8], &(BLOCKS - 1).to_be_bytes());
    assert_eq!(r.data[12], 0);
    assert_eq!(r.data[13], 0);
    assert_eq!(r.data[14] & 0xc0, 0xc0);
    for alloc in 0..16u8 {
        c[13] = alloc;
        let r = exec(&f.lu, &a, &c, &[]);
        good(&r);
        assert_eq!(r.data.len(), usize::from(alloc));
    }
    // Unknown SERVICE ACTION IN: field pointer on byte 1.
    let r = exec(&f.lu, &a, &cdb16(0x9e, 0x11, 0, 32), &[]);
    check(&r, INVALID_FIELD);
    assert_eq!(&r.sense[15..18], &[0xcc, 0, 1]);
}

#[test]
fn read_write_roundtrip_all_sizes() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let data: Vec<u8> = (0..4 * BS).map(|i| (i % 251) as u8).collect();
    // WRITE(10)/READ(10)
    good(&exec(&f.lu, &a, &write10(10, 4, 0), &data));
    let r = exec(&f.lu, &a, &read10(10, 4, 0), &[]);
    good(&r);
    assert_eq!(r.data, data);
    // WRITE(6)/READ(6), 0 means 256 blocks.
    let big = vec![0x5a; 256 * BS];
    good(&exec(&f.lu, &a, &[0x0a, 0, 0, 100, 0, 0], &big));
    let r = exec(&f.lu, &a, &[0x08, 0, 0, 100, 0, 0], &[]);
    good(&r);
    assert_eq!(r.data.len(), 256 * BS);
    assert!(r.data.iter().all(|&b| b == 0x5a));
    // WRITE(12)/READ(12)
    let mut w12 = vec![0xaa, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0];
    good(&exec(&f.lu, &a, &w12, &data[..BS]));
    w12[0] = 0xa8;
    let r = exec(&f.lu, &a, &w12, &[]);
    assert_eq!(r.data, &data[..BS]);
    // FUA / DPO accepted.
    good(&exec(&f.lu, &a, &write10(0, 1, 0x18), &data[..BS]));
    good(&exec(&f.lu, &a, &read10(0, 1, 0x18), &[]));
    // Zero blocks.
    good(&exec(&f.lu, &a, &read10(0, 0, 0), &[]));
    good(&exec(&f.lu, &a, &write10(0, 0, 0), &[]));
    // Last blocks of the device.
    write(&f.lu, &a, BLOCKS - 2, &data[..2 * BS]);
    assert_eq!(read(&f.lu, &a, BLOCKS - 2, 2), &data[..2 * BS]);
}

#[test]
fn read_write_errors() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let blk = vec![0u8; BS];
    for lba in [BLOCKS as u32, BLOCKS as u32 + 1, 0x8000_0000, u32::MAX] {
        check(&exec(&f.lu, &a, &read10(lba, 1, 0), &[]), LBA_OOB);
        check(&exec(&f.lu, &a, &read10(lba, 0, 0), &[]), LBA_OOB);
        check(&exec(&f.lu, &a, &write10(lba, 1, 0), &blk), LBA_OOB);
    }
    check(
        &exec(&f.lu, &a, &read10(BLOCKS as u32 - 1, 2, 0), &[]),
        LBA_OOB,
    );
    // READ(16) LBAs whose byte offset overflows.
    for lba in [1u64 << 55, 1 << 63, u64::MAX] {
        check(&exec(&f.lu, &a, &cdb16(0x88, 0, lba, 1), &[]), LBA_OOB);
        check(&exec(&f.lu, &a, &cdb16(0x8a, 0, lba, 1), &blk), LBA_OOB);
    }
    // READ(6) beyond the end.
    check(
        &exec(&f.lu, &a, &[0x08, 0x1f, 0xff, 0xff, 1, 0], &[]),
        LBA_OOB,
    );
    // Protection fields.
    for p in 1..8u8 {
        let r = exec(&f.lu, &a, &read10(0, 1, p << 5), &[]);
        check(&r, INVALID_FIELD);
        assert_eq!(&r.sense[15..18], &[0xcf, 0, 1]);
        check(
            &exec(&f.lu, &a, &write10(0, 1, p << 5), &blk),
            INVALID_FIELD,
        );
        check(
            &exec(&f.lu, &a, &cdb16(0x88, p << 5, 0, 1), &[]),
            INVALID_FIELD,
        );
    }
    // Transfer length beyond the maximum.
    check(
        &exec(&f.lu, &a, &cdb16(0x88, 0, 0, 1 << 20), &[]),
        INVALID_FIELD,
    );
}

#[test]
fn short_and_long_data_out() {
    let f = fixture();
    let a = login(&f.lu, "a");
    write(&f.lu, &a, 0, &vec![b'a'; 2 * BS]);
    // CDB says 2 blocks, initiator sent one: only that block is written.
    good(&exec(&f.lu, &a, &write10(0, 2, 0), &vec![b'b'; BS]));
    let d = read(&f.lu, &a, 0, 2);
    assert!(d[..BS].iter().all(|&b| b == b'b'));
    assert!(d[BS..].iter().all(|&b| b == b'a'));
    // More data than the CDB asks for: the excess is ignored.
    good(&exec(&f.lu, &a, &write10(0, 1, 0), &vec![b'c'; 10000]));
    let d = read(&f.lu, &a, 0, 2);
    assert!(d[..BS].iter().all(|&b| b == b'c'));
    assert!(d[BS..].iter().all(|&b| b == b'a'));
    // Partial block: nothing written, still GOOD.
    good(&exec(&f.lu, &a, &write10(0, 1, 0), &[b'd'; 200]));
    assert_eq!(read(&f.lu, &a, 0, 1)[0], b'c');
    // Allocation truncates READ data.
    let r = f.lu.execute(&a, &read10(0, 1, 0), &[], 200);
    good(&r);
    assert_eq!(r.data.len(), 200);
    let r = f.lu.execute(&a, &read10(0, 1, 0), &[], 0);
    good(&r);
    assert!(r.data.is_empty());
}

#[test]
fn verify_and_write_verify() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let data: Vec<u8> = (0..8 * BS).map(|i| (i * 7 % 256) as u8).collect();
    write(&f.lu, &a, 40, &data);
    let mut v = vec![0x2f, 0x02, 0, 0, 0, 40, 0, 0, 8, 0];
    good(&exec(&f.lu, &a, &v, &data));
    let mut bad = data.clone();
    bad[1234] ^= 0x58;
    let r = exec(&f.lu, &a, &v, &bad);
    check(&r, MISCOMPARE);
    assert_eq!(r.sense[0], 0xf0);
    assert_eq!(&r.sense[3..7], &1234u32.to_be_bytes());
    // BYTCHK=0: no comparison.
    v[1] = 0;
    good(&exec(&f.lu, &a, &v, &[]));
    v[1] = 0x10;
    good(&exec(&f.lu, &a, &v, &[]));
    // BYTCHK=11b: one block compared against each.
    write(&f.lu, &a, 60, &vec![9u8; 4 * BS]);
    good(&exec(
        &f.lu,
        &a,
        &[0x2f, 0x06, 0, 0, 0, 60, 0, 0, 4, 0],
        &vec![9u8; BS],
    ));
    let r = exec(
        &f.lu,
        &a,
        &[0x2f, 0x06, 0, 0, 0, 59, 0, 0, 4, 0],
        &vec![9u8; BS],
    );
    check(&r, MISCOMPARE);
    // BYTCHK=10b reserved, VRPROTECT, range.
    check(
        &exec(&f.lu, &a, &[0x2f, 0x04, 0, 0, 0, 0, 0, 0, 1, 0], &[]),
        INVALID_FIELD,
    );
    check(
        &exec(
            &f.lu,
            &a,
            &[0x2f, 0x22, 0, 0, 0, 0, 0, 0, 1, 0],
            &data[..BS],
        ),
        INVALID_FIELD,
    );
    check(
        &exec(&f.lu, &a, &cdb16(0x8f, 0x02, BLOCKS + 1, 0), &[]),
        LBA_OOB,
    );
    check(
        &exec(
            &f.lu,
            &a,
            &cdb16(0x8f, 0x02, BLOCKS - 1, 2),
            &data[..2 * BS],
        ),
        LBA_OOB,
    );
    // VERIFY(16) and (12).
    good(&exec(&f.lu, &a, &cdb16(0x8f, 0x02, 40, 8), &data));
    good(&exec(
        &f.lu,
        &a,
        &[0xaf, 0x02, 0, 0, 0, 40, 0, 0, 0, 8, 0, 0],
        &data,
    ));
    // WRITE AND VERIFY.
    let w = vec![0x2e, 0x02, 0, 0, 0, 80, 0, 0, 1, 0];
    good(&exec(&f.lu, &a, &w, &vec![3u8; BS]));
    assert!(read(&f.lu, &a, 80, 1).iter().all(|&b| b == 3));
    good(&exec(&f.lu, &a, &cdb16(0x8e, 0, 81, 1), &vec![4u8; BS]));
    good(&exec(
        &f.lu,
        &a,
        &[0xae, 0x10, 0, 0, 0, 82, 0, 0, 0, 1, 0, 0],
        &vec![5u8; BS],
    ));
    check(
        &exec(
            &f.lu,
            &a,
            &[0x2e, 0x20, 0, 0, 0, 80, 0, 0, 1, 0],
            &vec![3u8; BS],
        ),
        INVALID_FIELD,
    );
    check(&exec(&f.lu, &a, &cdb16(0x8e, 0, u64::MAX, 0), &[]), LBA_OOB);
}

#[test]
fn compare_and_write() {
    let f = fixture();
    let a = login(&f.lu, "a");
    write(&f.lu, &a, 5, &vec![b'A'; 2 * BS]);
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[9] = 5;
    c[13] = 2;
    let mut buf = vec![b'A'; 2 * BS];
    buf.extend(vec![b'B'; 2 * BS]);
    good(&exec(&f.lu, &a, &c, &buf));
    assert!(read(&f.lu, &a, 5, 2).iter().all(|&b| b == b'B'));
    // Miscompare: the information field is the first differing offset.
    let mut buf = vec![b'B'; 2 * BS];
    buf[BS + 3] = b'C';
    buf.extend(vec![b'D'; 2 * BS]);
    let r = exec(&f.lu, &a, &c, &buf);
    check(&r, MISCOMPARE);
    assert_eq!(r.sense[0] & 0x80, 0x80);
    assert_eq!(&r.sense[3..7], &((BS + 3) as u32).to_be_bytes());
    assert!(read(&f.lu, &a, 5, 2).iter().all(|&b| b == b'B'));
    // Data-Out size must match the CDB (NUMBER OF BLOCKS 0 with data is refused).
    check(&exec(&f.lu, &a, &c, &buf[..3 * BS]), INVALID_FIELD);
    c[13] = 0;
    check(&exec(&f.lu, &a, &c, &buf), INVALID_FIELD);
    good(&exec(&f.lu, &a, &c, &[]));
    // Protection, range.
    c[13] = 1;
    c[1] = 0x20;
    check(&exec(&f.lu, &a, &c, &buf[..2 * BS]), INVALID_FIELD);
    c[1] = 0x18;
    c[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    check(&exec(&f.lu, &a, &c, &buf[..2 * BS]), LBA_OOB);
}

#[test]
fn compare_and_write_is_atomic() {
    let f = Arc::new(fixture());
    let a = login(&f.lu, "a");
    write(&f.lu, &a, 0, &0u64.to_be_bytes().repeat(BS / 8));
    // Several threads increment a counter block with CAW; no increment may be lost.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let f = Arc::clone(&f);
            let a = a.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                while done < 50 {
                    let cur = read(&f.lu, &a, 0, 1);
                    let v = u64::from_be_bytes(cur[..8].try_into().unwrap());
                    let mut buf = cur.clone();
                    buf.extend((v + 1).to_be_bytes().repeat(BS / 8));
                    let mut c = vec![0u8; 16];
                    c[0] = 0x89;
                    c[13] = 1;
                    let r = exec(&f.lu, &a, &c, &buf);
                    if r.status == status::GOOD {
                        done += 1;
                    } else {
                        check(&r, MISCOMPARE);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = u64::from_be_bytes(read(&f.lu, &a, 0, 1)[..8].try_into().unwrap());
    assert_eq!(v, 200);
}

#[test]
fn write_same() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let pattern = vec![0x42u8; BS];
    good(&exec(
        &f.lu,
        &a,
        &[0x41, 0, 0, 0, 0, 10, 0, 0, 20, 0],
        &pattern,
    ));
    assert!(read(&f.lu, &a, 10, 20).iter().all(|&b| b == 0x42));
    // UNMAP with zero data deallocates and reads back zeros.
    good(&exec(
        &f.lu,
        &a,
        &[0x41, 0x08, 0, 0, 0, 10, 0, 0, 20, 0],
        &vec![0; BS],
    ));
    assert!(read(&f.lu, &a, 10, 20).iter().all(|&b| b == 0));
    // UNMAP with non-zero data writes the data.
    good(&exec(
        &f.lu,
        &a,
        &[0x41, 0x08, 0, 0, 0, 10, 0, 0, 1, 0],
        &pattern,
    ));
    assert!(read(&f.lu, &a, 10, 1).iter().all(|&b| b == 0x42));
    // WRITE SAME(16), NDOB.
    good(&exec(&f.lu, &a, &cdb16(0x93, 0, BLOCKS - 4, 4), &pattern));
    assert!(read(&f.lu, &a, BLOCKS - 4, 4).iter().all(|&b| b == 0x42));
    good(&exec(&f.lu, &a, &cdb16(0x93, 0x09, BLOCKS - 4, 4), &[]));
    assert!(read(&f.lu, &a, BLOCKS - 4, 4).iter().all(|&b| b == 0));
    // Errors: zero blocks (WSNZ), ANCHOR, protection, bad Data-Out size, range, too long.
    check(
        &exec(&f.lu, &a, &[0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0], &pattern),
        INVALID_FIELD,
    );
    check(
        &exec(&f.lu, &a, &[0x41, 0x10, 0, 0, 0, 0, 0, 0, 1, 0], &pattern),
        INVALID_FIELD,
    );
    check(
        &exec(&f.lu, &a, &[0x41, 0x18, 0, 0, 0, 0, 0, 0, 1, 0], &pattern),
        INVALID_FIELD,
    );
    for p in 1..8u8 {
        check(
            &exec(&f.lu, &a, &[0x41, p << 5, 0, 0, 0, 0, 0, 0, 1, 0], &pattern),
            INVALID_FIELD,
        );
    }
    check(
        &exec(
            &f.lu,
            &a,
            &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &pattern[..BS / 2],
        ),
        (5, 0x24, 0),
    );
    check(
        &exec(
            &f.lu,
            &a,
            &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &vec![0; 2 * BS],
        ),
        (5, 0x24, 0),
    );
    check(
        &exec(&f.lu, &a, &cdb16(0x93, 0, BLOCKS - 1, 2), &pattern),
        LBA_OOB,
    );
    check(
        &exec(&f.lu, &a, &cdb16(0x93, 0, u64::MAX, 1), &pattern),
        LBA_OOB,
    );
    check(
        &exec(&f.lu, &a, &cdb16(0x93, 0, 0, u32::MAX), &pattern),
        INVALID_FIELD,
    );
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    l[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    l[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    for (lba, n) in descs {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[test]
fn unmap_and_get_lba_status() {
    let f = fixture();
    let a = login(&f.lu, "a");
    write(&f.lu, &a, 0, &vec![b'a'; 256 * BS]);
    let gls = |lba: u64| {
        let r = exec(&f.lu, &a, &cdb16(0x9e, 0x12, lba, 24), &[]);
        good(&r);
        assert_eq!(r.data.len(), 24);
        let d = r.data;
        (
            u64::from_be_bytes(d[8..16].try_into().unwrap()),
            u32::from_be_bytes(d[16..20].try_into().unwrap()),
            d[20],
        )
    };
    assert_eq!(gls(0).0, 0);
    assert_eq!(gls(0).2, 0);
    let l = unmap_list(&[(0, 128)]);
    good(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l));
    assert!(read(&f.lu, &a, 0, 128).iter().all(|&b| b == 0));
    assert!(read(&f.lu, &a, 128, 1).iter().all(|&b| b == b'a'));
    let (lba, n, state) = gls(0);
    assert_eq!((lba, n, state), (0, 128, 1));
    let (lba, _, state) = gls(129);
    assert_eq!((lba, state), (129, 0));
    // Past the written area the file is a hole: deallocated to the end.
    let (lba, n, state) = gls(256);
    assert_eq!((lba, u64::from(n), state), (256, BLOCKS - 256, 1));
    check(
        &exec(&f.lu, &a, &cdb16(0x9e, 0x12, BLOCKS, 24), &[]),
        LBA_OOB,
    );
    check(
        &exec(&f.lu, &a, &cdb16(0x9e, 0x12, u64::MAX, 24), &[]),
        LBA_OOB,
    );
    // Header parameter data length.
    let r = exec(&f.lu, &a, &cdb16(0x9e, 0x12, 0, 1000), &[]);
    let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, r.data.len() - 4);
    assert_eq!((r.data.len() - 8) % 16, 0);

    // Zero-length descriptors, up to the end of the medium.
    for d in [vec![(0, 0)], vec![(BLOCKS, 0)], vec![], vec![(1, 0); 200]] {
        let l = unmap_list(&d);
        good(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l));
    }
    good(&exec(&f.lu, &a, &unmap_cdb(0), &[]));
    // Range and list errors.
    let l = unmap_list(&[(BLOCKS - 1, 2)]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l), LBA_OOB);
    let l = unmap_list(&[(BLOCKS + 1, 0)]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l), LBA_OOB);
    let l = unmap_list(&[(u64::MAX, 1)]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l), LBA_OOB);
    let l = unmap_list(&[(0, 2 << 20)]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l), INVALID_PARAM);
    let l = unmap_list(&vec![(0, 1); 257]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l), INVALID_PARAM);
    check(&exec(&f.lu, &a, &unmap_cdb(4), &[0; 4]), PARAM_LEN);
    let l = unmap_list(&[(0, 1)]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l[..10]), PARAM_LEN);
    let mut l2 = l.clone();
    l2[2..4].copy_from_slice(&64u16.to_be_bytes());
    check(&exec(&f.lu, &a, &unmap_cdb(l2.len()), &l2), INVALID_PARAM);
    let mut c = unmap_cdb(l.len());
    c[1] = 1;
    check(&exec(&f.lu, &a, &c, &l), INVALID_FIELD);
    // A bad descriptor after a good one leaves the good range mapped.
    write(&f.lu, &a, 300, &vec![b'z'; BS]);
    let l = unmap_list(&[(300, 1), (BLOCKS, 1)]);
    check(&exec(&f.lu, &a, &unmap_cdb(l.len()), &l), LBA_OOB);
    assert_eq!(read(&f.lu, &a, 300, 1)[0], b'z');
}

#[test]
fn synchronize_cache() {
    let f = fixture();
    let a = login(&f.lu, "a");
    good(&exec(&f.lu, &a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    good(&exec(&f.lu, &a, &[0x35, 2, 0, 0, 0, 10, 0, 0, 10, 0], &[]));
    good(&exec(&f.lu, &a, &cdb16(0x91, 0, 0, 0), &[]));
    check(&exec(&f.lu, &a, &cdb16(0x91, 0, BLOCKS, 0), &[]), LBA_OOB);
}

#[test]
fn mode_sense_select_through_lu() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    let r = exec(&f.lu, &a, &[0x1a, 0, 0x3f, 0, 255, 0], &[]);
    good(&r);
    assert_eq!(r.data[2] & 0x10, 0x10);
    assert_eq!(r.data[2] & 0x80, 0);
    // Saved values are not supported.
    check(
        &exec(&f.lu, &a, &[0x1a, 0, 0xc8, 0, 255, 0], &[]),
        (5, 0x39, 0),
    );
    // Turning on D_SENSE switches the sense format and tells the other nexus.
    let r = exec(&f.lu, &a, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[]);
    let mut page = r.data[4..].to_vec();
    page[2] |= 0x04;
    let mut list = vec![0, 0, 0, 0];
    list.extend_from_slice(&page);
    good(&exec(
        &f.lu,
        &a,
        &[0x15, 0x10, 0, 0, list.len() as u8, 0],
        &list,
    ));
    let r = exec(&f.lu, &a, &cdb16(0x88, 0, u64::MAX, 1), &[]);
    assert_eq!(r.sense[0], 0x72);
    check(&r, LBA_OOB);
    check(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x01));
    // A LUN reset restores the defaults.
    f.lu.lun_reset(&a);
    check(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x29, 0x03));
    let r = exec(&f.lu, &a, &cdb16(0x88, 0, u64::MAX, 1), &[]);
    assert_eq!(r.sense[0], 0x70);
    // Write cache off: writes still work (and are synchronous).
    let r = exec(&f.lu, &a, &[0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0], &[]);
    good(&r);
    let mut page = r.data[8..].to_vec();
    page[2] &= !0x04;
    let mut list = vec![0u8; 8];
    list.extend_from_slice(&page);
    good(&exec(
        &f.lu,
        &a,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, list.len() as u8, 0],
        &list,
    ));
    write(&f.lu, &a, 0, &vec![1u8; BS]);
    // A non-changeable bit is refused with the parameter's position.
    let mut bad = list.clone();
    bad[8 + 3] ^= 0x01;
    let r = exec(
        &f.lu,
        &a,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, bad.len() as u8, 0],
        &bad,
    );
    check(&r, INVALID_PARAM);
    assert_eq!(&r.sense[15..18], &[0x80, 0, 11]);
}

#[test]
fn request_sense_returns_and_clears_ua() {
    let f = fixture();
    let a = nx("a");
    f.lu.nexus_added(&a);
    // INQUIRY does not consume the UA.
    good(&exec(&f.lu, &a, &[0x12, 0, 0, 0, 36, 0], &[]));
    let r = exec(&f.lu, &a, &[0x03, 0, 0, 0, 252, 0], &[]);
    good(&r);
    assert_eq!((r.data[2], r.data[12], r.data[13]), (6, 0x29, 0));
    let r = exec(&f.lu, &a, &[0x03, 0, 0, 0, 252, 0], &[]);
    good(&r);
    assert_eq!((r.data[2], r.data[12], r.data[13]), (0, 0, 0));
    let r = exec(&f.lu, &a, &[0x03, 1, 0, 0, 252, 0], &[]);
    assert_eq!(r.data, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    good(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn report_luns_and_rsoc() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let r = exec(&f.lu, &a, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    good(&r);
    assert_eq!(r.data, [&[0, 0, 0, 8, 0, 0, 0, 0][..], &[0u8; 8]].concat());
    check(
        &exec(&f.lu, &a, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], &[]),
        INVALID_FIELD,
    );
    let r = exec(
        &f.lu,
        &a,
        &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        &[],
    );
    good(&r);
    // Every reported command answers its one-command query, and is dispatched.
    let d = r.data;
    for desc in d[4..].chunks(8) {
        let (opcode, sa, servactv) = (
            desc[0],
            u16::from_be_bytes([desc[2], desc[3]]),
            desc[5] & 1 != 0,
        );
        let option = if servactv { 2 } else { 1 };
        let mut c = vec![0xa3, 0x0c, option, opcode, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        let r = exec(&f.lu, &a, &c, &[]);
        good(&r);
        assert_eq!(r.data[1] & 7, 3);
        assert_eq!(r.data[4], opcode);
        c[2] = if servactv { 1 } else { 2 };
        let r = exec(&f.lu, &a, &c, &[]);
        check(&r, INVALID_FIELD);
        // Never field pointer 1: that would read as "not implemented".
        assert_ne!(&r.sense[15..18], &[0xc0, 0, 1]);
    }
    // Unknown MAINTENANCE IN service action: "not implemented" form.
    let r = exec(
        &f.lu,
        &a,
        &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0],
        &[],
    );
    check(&r, INVALID_FIELD);
    assert_eq!(&r.sense[15..18], &[0xcc, 0, 1]);
}

#[test]
fn start_stop_and_prevent_allow() {
    let f = fixture();
    let a = login(&f.lu, "a");
    for b4 in [0x00u8, 0x01, 0x02, 0x03, 0x10, 0x31, 0xa0, 0xb1] {
        good(&exec(&f.lu, &a, &[0x1b, 1, 0, 0, b4, 0], &[]));
    }
    check(
        &exec(&f.lu, &a, &[0x1b, 0, 0, 0, 0x41, 0], &[]),
        INVALID_FIELD,
    );
    good(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]));
    good(&exec(&f.lu, &a, &[0x1e, 0, 0, 0, 1, 0], &[]));
    good(&exec(&f.lu, &a, &[0x1e, 0, 0, 0, 0, 0], &[]));
    check(&exec(&f.lu, &a, &[0x1e, 0, 0, 0, 2, 0], &[]), INVALID_FIELD);
}

// ---- persistent reservations ----

fn prout(
    lu: &LogicalUnit,
    n: &Nexus,
    sa: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
    flags: u8,
) -> Response {
    let mut list = vec![0u8; 24];
    list[0..8].copy_from_slice(&key.to_be_bytes());
    list[8..16].copy_from_slice(&sa_key.to_be_bytes());
    list[20] = flags;
    exec(lu, n, &[0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0], &list)
}

fn prin(lu: &LogicalUnit, n: &Nexus, sa: u8) -> Vec<u8> {
    let r = exec(lu, n, &[0x5e, sa, 0, 0, 0, 0, 0, 0x40, 0, 0], &[]);
    good(&r);
    r.data
}

fn keys(lu: &LogicalUnit, n: &Nexus) -> (u32, Vec<u64>) {
    let d = prin(lu, n, 0);
    let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, d.len() - 8);
    (
        gen,
        d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

/// (key, type) of the current reservation.
fn reservation(lu: &LogicalUnit, n: &Nexus) -> Option<(u64, u8)> {
    let d = prin(lu, n, 1);
    if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
        return None;
    }
    Some((
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        d[21] & 0x0f,
    ))
}

fn rc(r: &Response) {
    assert_eq!(
        r.status,
        status::RESERVATION_CONFLICT,
        "sense {:02x?}",
        r.sense
    );
}

#[test]
fn pr_register_unregister() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let (g0, k) = keys(&f.lu, &a);
    assert!(k.is_empty());
    good(&prout(&f.lu, &a, 6, 0, 0, 0x1111, 0));
    assert_eq!(keys(&f.lu, &a), (g0 + 1, vec![0x1111]));
    // Re-register with the wrong reservation key conflicts.
    rc(&prout(&f.lu, &a, 0, 0, 0, 0x2222, 0));
    rc(&prout(&f.lu, &a, 0, 0, 0x9999, 0x2222, 0));
    good(&prout(&f.lu, &a, 0, 0, 0x1111, 0x2222, 0));
    assert_eq!(keys(&f.lu, &a).1, vec![0x2222]);
    good(&prout(&f.lu, &a, 0, 0, 0x2222, 0, 0));
    assert_eq!(keys(&f.lu, &a), (g0 + 3, vec![]));
    // Unregistered, zero key: nothing happens.
    good(&prout(&f.lu, &a, 0, 0, 0, 0, 0));
    assert_eq!(keys(&f.lu, &a).0, g0 + 3);
    // Truncated READ KEYS still reports the full length.
    good(&prout(&f.lu, &a, 6, 0, 0, 0x1, 0));
    let r = exec(&f.lu, &a, &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[]);
    assert_eq!(r.data.len(), 8);
    assert_eq!(u32::from_be_bytes(r.data[4..8].try_into().unwrap()), 8);
}

#[test]
fn pr_parameter_and_field_errors() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let short = exec(&f.lu, &a, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 20, 0], &[0; 20]);
    check(&short, PARAM_LEN);
    check(
        &exec(&f.lu, &a, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 10]),
        PARAM_LEN,
    );
    check(&prout(&f.lu, &a, 7, 0, 0, 1, 0), INVALID_FIELD);
    check(&prout(&f.lu, &a, 6, 0, 0, 1, 0x08), INVALID_PARAM);
    good(&prout(&f.lu, &a, 6, 0, 0, 1, 0));
    check(&prout(&f.lu, &a, 1, 0x02, 1, 0, 0), INVALID_FIELD);
    check(&prout(&f.lu, &a, 1, 0x11, 1, 0, 0), INVALID_FIELD);
    for sa in 4..0x20u8 {
        let r = exec(&f.lu, &a, &[0x5e, sa, 0, 0, 0, 0, 0, 0x40, 0, 0], &[]);
        check(&r, INVALID_FIELD);
    }
    for sa in 0..4u8 {
        prin(&f.lu, &a, sa);
    }
    // Report capabilities.
    let d = prin(&f.lu, &a, 2);
    assert_eq!(&d[0..2], &[0, 8]);
    assert_eq!(d[2] & 0x05, 0x05);
    assert_eq!(d[3] & 0x80, 0x80);
    assert_eq!((d[3] >> 4) & 7, 0);
    assert_eq!(&d[4..6], &[0xea, 0x01]);
    // No PTPL without a state file.
    let g = fixture_with(512, false);
    let a = login(&g.lu, "a");
    check(&prout(&g.lu, &a, 6, 0, 0, 1, 0x01), INVALID_PARAM);
    assert_eq!(prin(&g.lu, &a, 2)[2] & 0x01, 0);
}

/// The access matrix libiscsi checks: (type, registered can read, write, unregistered can read, write).
#[test]
fn pr_access_matrix() {
    let cases = [
        (3u8, false, false, false, false),
        (1, true, false, true, false),
        (6, true, true, false, false),
        (5, true, true, true, false),
        (8, true, true, false, false),
        (7, true, true, true, false),
    ];
    for (kind, reg_r, reg_w, unreg_r, unreg_w) in cases {
        let f = fixture();
        let a = login(&f.lu, "a");
        let b = login(&f.lu, "b");
        good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
        good(&prout(&f.lu, &b, 6, 0, 0, 0xb, 0));
        good(&prout(&f.lu, &a, 1, kind, 0xa, 0, 0));
        let expect_key = if kind >= 7 { 0 } else { 0xa };
        assert_eq!(reservation(&f.lu, &b), Some((expect_key, kind)));
        let blk = vec![0u8; BS];
        good(&exec(&f.lu, &a, &read10(1, 1, 0), &[]));
        good(&exec(&f.lu, &a, &write10(1, 1, 0), &blk));
        let can = |r: Response, ok: bool| if ok { good(&r) } else { rc(&r) };
        can(exec(&f.lu, &b, &read10(1, 1, 0), &[]), reg_r);
        can(exec(&f.lu, &b, &write10(1, 1, 0), &blk), reg_w);
        good(&prout(&f.lu, &b, 0, 0, 0xb, 0, 0));
        can(exec(&f.lu, &b, &read10(1, 1, 0), &[]), unreg_r);
        can(exec(&f.lu, &b, &write10(1, 1, 0), &blk), unreg_w);
        // Always allowed.
        good(&exec(&f.lu, &b, &[0x12, 0, 0, 0, 36, 0], &[]));
        good(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]));
        good(&exec(&f.lu, &b, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
        rc(&exec(&f.lu, &b, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
        // Wrong type on release is refused; the right one releases.
        if kind != 1 {
            check(&prout(&f.lu, &a, 2, 1, 0xa, 0, 0), (5, 0x26, 0x04));
        }
        good(&prout(&f.lu, &a, 2, kind, 0xa, 0, 0));
        assert_eq!(reservation(&f.lu, &a), None);
        good(&exec(&f.lu, &b, &write10(1, 1, 0), &blk));
    }
}

#[test]
fn pr_reserve_rules() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    // Not registered.
    rc(&prout(&f.lu, &a, 1, 1, 0, 0, 0));
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&f.lu, &b, 6, 0, 0, 0xb, 0));
    // Wrong key.
    rc(&prout(&f.lu, &a, 1, 1, 0xb, 0, 0));
    good(&prout(&f.lu, &a, 1, 1, 0xa, 0, 0));
    // Same holder, same type: GOOD; different type or other nexus: conflict.
    good(&prout(&f.lu, &a, 1, 1, 0xa, 0, 0));
    rc(&prout(&f.lu, &a, 1, 3, 0xa, 0, 0));
    rc(&prout(&f.lu, &b, 1, 1, 0xb, 0, 0));
    // A non-holder's RELEASE is a no-op.
    good(&prout(&f.lu, &b, 2, 1, 0xb, 0, 0));
    assert_eq!(reservation(&f.lu, &a), Some((0xa, 1)));
    // Key change keeps the reservation with the new key.
    good(&prout(&f.lu, &a, 0, 0, 0xa, 0xaa, 0));
    assert_eq!(reservation(&f.lu, &a), Some((0xaa, 1)));
    // Unregistering the holder of a WE reservation releases it, without UA.
    good(&prout(&f.lu, &a, 0, 0, 0xaa, 0, 0));
    assert_eq!(reservation(&f.lu, &b), None);
    assert_eq!(f.lu.pending_unit_attentions(&b), 0);
}

#[test]
fn pr_ownership_ro_and_ar() {
    // Registrants-only: the holder unregistering releases and tells the others.
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&f.lu, &b, 6, 0, 0, 0xb, 0));
    good(&prout(&f.lu, &a, 1, 5, 0xa, 0, 0));
    good(&prout(&f.lu, &a, 0, 0, 0xa, 0, 0));
    assert_eq!(reservation(&f.lu, &a), None);
    check(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x04));
    good(&prout(&f.lu, &b, 0, 0, 0xb, 0, 0));

    // All-registrants: survives one registrant leaving; any registrant releases.
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&f.lu, &b, 6, 0, 0, 0xb, 0));
    good(&prout(&f.lu, &a, 1, 8, 0xa, 0, 0));
    good(&prout(&f.lu, &b, 1, 8, 0xb, 0, 0));
    good(&prout(&f.lu, &a, 0, 0, 0xa, 0, 0));
    assert_eq!(reservation(&f.lu, &a), Some((0, 8)));
    good(&prout(&f.lu, &b, 2, 8, 0xb, 0, 0));
    assert_eq!(reservation(&f.lu, &a), None);
    good(&prout(&f.lu, &b, 0, 0, 0xb, 0, 0));
    assert_eq!(keys(&f.lu, &a).1, Vec::<u64>::new());
}

#[test]
fn pr_clear() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&f.lu, &b, 6, 0, 0, 0xb, 0));
    good(&prout(&f.lu, &a, 1, 3, 0xa, 0, 0));
    let (g, _) = keys(&f.lu, &a);
    rc(&prout(&f.lu, &a, 3, 0, 0xb, 0, 0));
    good(&prout(&f.lu, &a, 3, 0, 0xa, 0, 0));
    assert_eq!(keys(&f.lu, &a), (g + 1, vec![]));
    assert_eq!(reservation(&f.lu, &a), None);
    check(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x03));
    good(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn pr_preempt_fencing() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    // No reservation: remove a registration.
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&f.lu, &b, 6, 0, 0, 0xb, 0));
    let (g, _) = keys(&f.lu, &a);
    good(&prout(&f.lu, &b, 4, 3, 0xb, 0xa, 0));
    assert_eq!(keys(&f.lu, &b), (g + 1, vec![0xb]));
    check(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x05));
    good(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]));
    // Preempting a key nobody holds conflicts; zero SA key without reservation is invalid.
    rc(&prout(&f.lu, &b, 4, 3, 0xb, 0x77, 0));
    check(&prout(&f.lu, &b, 4, 3, 0xb, 0, 0), INVALID_PARAM);

    // Fencing: a holds WE-RO, b preempts a's key and takes an EA reservation.
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&f.lu, &a, 1, 5, 0xa, 0, 0));
    good(&prout(&f.lu, &b, 5, 3, 0xb, 0xa, 0));
    assert_eq!(reservation(&f.lu, &b), Some((0xb, 3)));
    assert_eq!(keys(&f.lu, &b).1, vec![0xb]);
    check(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x05));
    rc(&exec(&f.lu, &a, &write10(0, 1, 0), &vec![0; BS]));
    rc(&exec(&f.lu, &a, &read10(0, 1, 0), &[]));
    // The fenced host cannot re-register over the key it lost, only freshly.
    rc(&prout(&f.lu, &a, 0, 0, 0xa, 0xa, 0));
    good(&prout(&f.lu, &a, 6, 0, 0, 0xc, 0));
    rc(&exec(&f.lu, &a, &write10(0, 1, 0), &vec![0; BS]));

    // All-registrants with zero SA key: everyone else goes, the preemptor holds.
    let g2 = fixture();
    let a = login(&g2.lu, "a");
    let b = login(&g2.lu, "b");
    good(&prout(&g2.lu, &a, 6, 0, 0, 0xa, 0));
    good(&prout(&g2.lu, &b, 6, 0, 0, 0xb, 0));
    good(&prout(&g2.lu, &a, 1, 7, 0xa, 0, 0));
    good(&prout(&g2.lu, &b, 4, 1, 0xb, 0, 0));
    assert_eq!(reservation(&g2.lu, &b), Some((0xb, 1)));
    assert_eq!(keys(&g2.lu, &b).1, vec![0xb]);
}

#[test]
fn pr_all_target_ports_and_full_status() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let a2 = Nexus {
        initiator_port: a.initiator_port.clone(),
        target_port: "other,t,0x0002".into(),
    };
    f.lu.nexus_added(&a2);
    good(&prout(&f.lu, &a, 6, 0, 0, 0xa, 0x04));
    good(&prout(&f.lu, &a, 1, 3, 0xa, 0, 0));
    // The same initiator through another port is the same registrant and holder.
    let _ = exec(&f.lu, &a2, &[0, 0, 0, 0, 0, 0], &[]);
    good(&exec(&f.lu, &a2, &write10(0, 1, 0), &vec![0; BS]));
    let d = prin(&f.lu, &a, 3);
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, d.len() - 8);
    assert_eq!(&d[8..16], &0xau64.to_be_bytes());
    assert_eq!(d[20], 0x03);
    assert_eq!(d[21], 3);
    let tid_len = u32::from_be_bytes(d[28..32].try_into().unwrap()) as usize;
    assert_eq!(d[32], 0x45);
    assert_eq!(tid_len % 4, 0);
    assert_eq!(32 + tid_len, d.len());
}

#[test]
fn pr_aptpl_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let pr = dir.path().join("pr.json");
    let a = nx("a");
    {
        let lu = LogicalUnit::open(&path, info(512), Some(pr.clone())).unwrap();
        good(&prout(&lu, &a, 6, 0, 0, 0xa, 0x01));
        good(&prout(&lu, &a, 1, 3, 0xa, 0, 0));
        assert_eq!(prin(&lu, &a, 2)[3] & 1, 1);
    }
    {
        let lu = LogicalUnit::open(&path, info(512), Some(pr.clone())).unwrap();
        assert_eq!(reservation(&lu, &a), Some((0xa, 3)));
        rc(&exec(&lu, &nx("b"), &read10(0, 1, 0), &[]));
        // Dropping APTPL means the next restart forgets everything.
        good(&prout(&lu, &a, 0, 0, 0xa, 0xa, 0));
    }
    let lu = LogicalUnit::open(&path, info(512), Some(pr.clone())).unwrap();
    assert_eq!(reservation(&lu, &a), None);
    assert!(keys(&lu, &a).1.is_empty());
    // A corrupt state file is an error, not a silent reset.
    std::fs::write(&pr, b"{not json").unwrap();
    assert!(LogicalUnit::open(&path, info(512), Some(pr)).is_err());
}

// ---- unit attentions, resize, quiesce ----

#[test]
fn unit_attention_once_per_nexus() {
    let f = fixture();
    let a = nx("a");
    let b = nx("b");
    f.lu.nexus_added(&a);
    f.lu.nexus_added(&b);
    // REPORT LUNS does not consume it; the next command reports it once.
    good(&exec(
        &f.lu,
        &a,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    ));
    check(&exec(&f.lu, &a, &read10(0, 1, 0), &[]), (6, 0x29, 0));
    good(&exec(&f.lu, &a, &read10(0, 1, 0), &[]));
    check(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x29, 0));
    f.lu.nexus_removed(&b);
    assert_eq!(f.lu.pending_unit_attentions(&b), 0);
}

#[test]
fn resize_reports_capacity_change() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    f.lu.resize(2 * BLOCKS * BS as u64).unwrap();
    assert_eq!(f.lu.size_bytes(), 2 * BLOCKS * BS as u64);
    check(&exec(&f.lu, &a, &read10(0, 1, 0), &[]), (6, 0x2a, 0x09));
    check(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x09));
    let r = exec(&f.lu, &a, &cdb16(0x9e, 0x10, 0, 32), &[]);
    assert_eq!(&r.data[0..8], &(2 * BLOCKS - 1).to_be_bytes());
    write(&f.lu, &a, 2 * BLOCKS - 1, &vec![1; BS]);
    f.lu.resize(BLOCKS * BS as u64).unwrap();
    let _ = exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]);
    check(&exec(&f.lu, &a, &cdb16(0x88, 0, BLOCKS, 1), &[]), LBA_OOB);
    assert!(f.lu.resize(1000).is_err());
    assert!(f.lu.resize(0).is_err());
}

#[test]
fn quiesce_blocks_writers_not_readers() {
    let f = Arc::new(fixture());
    let a = login(&f.lu, "a");
    let guard = f.lu.quiesce().unwrap();
    let wrote = Arc::new(AtomicBool::new(false));
    let t = {
        let (f, a, wrote) = (Arc::clone(&f), a.clone(), Arc::clone(&wrote));
        std::thread::spawn(move || {
            write(&f.lu, &a, 0, &vec![7u8; BS]);
            wrote.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!wrote.load(Ordering::SeqCst));
    // Reads still proceed and see the pre-quiesce contents.
    assert_eq!(read(&f.lu, &a, 0, 1)[0], 0);
    drop(guard);
    t.join().unwrap();
    assert!(wrote.load(Ordering::SeqCst));
    assert_eq!(read(&f.lu, &a, 0, 1)[0], 7);
    f.lu.sync().unwrap();
}

#[test]
fn block_size_4096() {
    let f = fixture_with(4096, false);
    let a = login(&f.lu, "a");
    let r = exec(&f.lu, &a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(&r.data[4..8], &4096u32.to_be_bytes());
    let data = vec![0x11u8; 8192];
    good(&exec(&f.lu, &a, &write10(3, 2, 0), &data));
    let r = exec(&f.lu, &a, &read10(3, 2, 0), &[]);
    assert_eq!(r.data, data);
    assert_eq!(f.lu.transfer(&read10(0, 2, 0)), DataDirection::In(8192));
    let r = exec(&f.lu, &a, &[0x12, 1, 0xb0, 1, 0, 0], &[]);
    assert_eq!(&r.data[6..8], &[0, 1]);
}

#[test]
fn open_rejects_bad_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    std::fs::File::create(&path).unwrap().set_len(100).unwrap();
    assert!(LogicalUnit::open(&path, info(512), None).is_err());
    assert!(LogicalUnit::open(&path, info(1000), None).is_err());
    assert!(LogicalUnit::open(&dir.path().join("missing"), info(512), None).is_err());
}

/// Feeds random CDBs (biased towards supported opcodes) and random Data-Out to
/// execute(): no panic, and every response is well-formed.
#[test]
fn fuzz_random_cdbs() {
    let f = fixture();
    let nexuses = [login(&f.lu, "a"), login(&f.lu, "b")];
    let supported: Vec<u8> = (0..=255u8)
        .filter(|&o| crate::opcodes::is_supported(o))
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20000 {
        let len = (next() % 20) as usize;
        let mut cdb: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(first) = cdb.first_mut() {
            if i % 4 != 0 {
                *first = supported[(next() as usize) % supported.len()];
            }
        }
        // Keep lengths small so random transfers stay cheap.
        if cdb.len() >= 10 && next() % 2 == 0 {
            for b in cdb.iter_mut().skip(2).take(7) {
                *b &= 0x01;
            }
        }
        let out_len = match next() % 4 {
            0 => 0,
            1 => 24,
            2 => (next() % 4096) as usize,
            _ => 512,
        };
        let data_out: Vec<u8> = (0..out_len).map(|_| next() as u8).collect();
        let n = &nexuses[(next() % 2) as usize];
        let alloc = (next() % 70000) as u32;
        let _ = f.lu.transfer(&cdb);
        let r = f.lu.execute(n, &cdb, &data_out, alloc);
        assert!(r.data.len() <= alloc as usize);
        match r.status {
            status::GOOD => assert!(r.sense.is_empty()),
            status::CHECK_CONDITION => {
                let (key, _, _) = sense_of(&r);
                assert!(key != 0);
            }
            status::RESERVATION_CONFLICT => assert!(r.sense.is_empty()),
            s => panic!("unexpected status {s:#x}"),
        }
        let _ = crate::lun_not_supported(&cdb, alloc);
    }
}

// ---- admissions: the target's own fence ----

fn nx_isid(i: &str, isid: &str, port: &str) -> Nexus {
    Nexus {
        initiator_port: format!("iqn.2000-01.test:{i},i,0x{isid}"),
        target_port: format!("iqn.2026-11.io.strato:vol,t,0x{port}"),
    }
}

#[test]
fn admission_covers_every_isid_and_revoke_fences_reads_and_writes() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    // Unmanaged: everybody writes, as before.
    write(&f.lu, &b, 0, &vec![1; BS]);
    let (g0, _) = keys(&f.lu, &a);
    f.lu.admit("iqn.2000-01.test:a", 0xaa).unwrap();
    // Idempotent: the second admit changes nothing, not even the generation.
    f.lu.admit("iqn.2000-01.test:a", 0xaa).unwrap();
    let (g1, k) = keys(&f.lu, &a);
    assert_eq!((g1, k), (g0.wrapping_add(1), vec![0xaa]));
    // The admitted name writes through any ISID and target port.
    write(&f.lu, &a, 0, &vec![2; BS]);
    let a2 = nx_isid("a", "23d000000007", "0002");
    f.lu.nexus_added(&a2);
    let _ = exec(&f.lu, &a2, &[0, 0, 0, 0, 0, 0], &[]);
    write(&f.lu, &a2, 1, &vec![3; BS]);
    // Others may identify themselves and look at the keys, nothing more:
    // no read, no write, and registering themselves in opens nothing.
    good(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(keys(&f.lu, &b).1, vec![0xaa]);
    rc(&exec(&f.lu, &b, &write10(0, 1, 0), &vec![0; BS]));
    rc(&exec(&f.lu, &b, &read10(0, 1, 0), &[]));
    good(&prout(&f.lu, &b, 6, 0, 0, 0xbb, 0));
    rc(&exec(&f.lu, &b, &write10(0, 1, 0), &vec![0; BS]));
    good(&prout(&f.lu, &b, 0, 0, 0xbb, 0, 0));
    assert_eq!(keys(&f.lu, &b).1, vec![0xaa]);

    assert!(f.lu.revoke(0xaa).unwrap());
    assert!(!f.lu.revoke(0xaa).unwrap());
    // The preempted nexuses learn it once, then conflict.
    check(&exec(&f.lu, &a, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x05));
    rc(&exec(&f.lu, &a, &write10(0, 1, 0), &vec![0; BS]));
    rc(&exec(&f.lu, &a, &read10(0, 1, 0), &[]));
    check(&exec(&f.lu, &a2, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x05));
    rc(&exec(&f.lu, &a2, &write10(0, 1, 0), &vec![0; BS]));
    // Attached to nobody: nobody writes.
    assert!(keys(&f.lu, &b).1.is_empty());
    rc(&exec(&f.lu, &b, &write10(0, 1, 0), &vec![0; BS]));
    // The next host is admitted and writes.
    f.lu.admit("iqn.2000-01.test:b", 0xbb).unwrap();
    write(&f.lu, &b, 0, &vec![4; BS]);
    assert_eq!(read(&f.lu, &b, 0, 1), vec![4; BS]);
}

#[test]
fn wire_reservations_work_among_admitted_and_die_with_the_revoke() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    f.lu.admit("iqn.2000-01.test:a", 0xaa).unwrap();
    f.lu.admit("iqn.2000-01.test:b", 0xbb).unwrap();
    // a registers and takes Write Exclusive over the wire, as before.
    good(&prout(&f.lu, &a, 0, 0, 0, 0x1, 0));
    good(&prout(&f.lu, &a, 1, 1, 0x1, 0, 0));
    assert_eq!(reservation(&f.lu, &a), Some((0x1, 1)));
    let mut k = keys(&f.lu, &a).1;
    k.sort();
    assert_eq!(k, vec![0x1, 0xaa, 0xbb]);
    rc(&exec(&f.lu, &b, &write10(0, 1, 0), &vec![0; BS]));
    good(&exec(&f.lu, &b, &read10(0, 1, 0), &[]));
    // Fencing a removes its wire registration and the reservation it held.
    f.lu.revoke(0xaa).unwrap();
    assert_eq!(reservation(&f.lu, &b), None);
    assert_eq!(keys(&f.lu, &b).1, vec![0xbb]);
    write(&f.lu, &b, 0, &vec![5; BS]);
}

#[test]
fn admissions_show_in_full_status_and_survive_restart_without_aptpl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let pr = dir.path().join("pr.json");
    let a = nx("a");
    {
        let lu = LogicalUnit::open(&path, info(512), Some(pr.clone())).unwrap();
        lu.admit("iqn.2000-01.test:a", 0xaa).unwrap();
        // A wire registration without APTPL: forgotten at restart.
        good(&prout(&lu, &a, 0, 0, 0, 0x1, 0));
        let d = prin(&lu, &a, 3);
        // The wire registration first, then the admission.
        let first = 24 + u32::from_be_bytes(d[28..32].try_into().unwrap()) as usize;
        let e = &d[8 + first..];
        assert_eq!(&e[0..8], &0xaau64.to_be_bytes());
        assert_eq!(e[12], 0x02, "ALL_TG_PT, not a holder");
        assert_eq!(e[24], 0x05, "TransportID format 00b");
        let tid_len = u32::from_be_bytes(e[20..24].try_into().unwrap()) as usize;
        assert_eq!(8 + first + 24 + tid_len, d.len());
        assert!(e[28..].starts_with(b"iqn.2000-01.test:a\0"));
    }
    let lu = LogicalUnit::open(&path, info(512), Some(pr.clone())).unwrap();
    assert_eq!(
        lu.admitted(),
        vec![("iqn.2000-01.test:a".to_string(), 0xaa)]
    );
    assert_eq!(keys(&lu, &a).1, vec![0xaa]);
    rc(&exec(&lu, &nx("b"), &write10(0, 1, 0), &vec![0; BS]));
    lu.revoke(0xaa).unwrap();
    let lu = LogicalUnit::open(&path, info(512), Some(pr)).unwrap();
    assert!(lu.admitted().is_empty());
    // Still managed after the restart: nobody admitted, nobody writes.
    rc(&exec(&lu, &a, &write10(0, 1, 0), &vec![0; BS]));
}

#[test]
fn wire_clear_and_preempt_only_take_admissions_away() {
    let f = fixture();
    let a = login(&f.lu, "a");
    let b = login(&f.lu, "b");
    f.lu.admit("iqn.2000-01.test:a", 0xaa).unwrap();
    f.lu.admit("iqn.2000-01.test:b", 0xbb).unwrap();
    // a preempts b's admission by its key: b is out, a stays.
    good(&prout(&f.lu, &a, 0, 0, 0, 0x1, 0));
    let (g, _) = keys(&f.lu, &a);
    good(&prout(&f.lu, &a, 4, 0, 0x1, 0xbb, 0));
    let (g1, k) = keys(&f.lu, &a);
    assert_eq!((g1, sorted(k)), (g.wrapping_add(1), vec![0x1, 0xaa]));
    check(&exec(&f.lu, &b, &[0, 0, 0, 0, 0, 0], &[]), (6, 0x2a, 0x05));
    rc(&exec(&f.lu, &b, &write10(0, 1, 0), &vec![0; BS]));
    write(&f.lu, &a, 0, &vec![1; BS]);
    // CLEAR removes every registration, admissions included: nobody
    // writes until the management admits again.
    good(&prout(&f.lu, &a, 3, 0, 0x1, 0, 0));
    assert!(keys(&f.lu, &a).1.is_empty());
    rc(&exec(&f.lu, &a, &write10(0, 1, 0), &vec![0; BS]));
    f.lu.admit("iqn.2000-01.test:a", 0xaa).unwrap();
    write(&f.lu, &a, 0, &vec![2; BS]);
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}
