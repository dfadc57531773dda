//! Protocol behaviour the stock initiators do not exercise, driven by a
//! minimal raw initiator: CmdSN ordering, R2T, aborting a task waiting for
//! data, rejects, keepalive, logout, fencing and session reinstatement.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{login, recv, send, Conn};
use common::{config, MemRegistry, MemTarget};
use iscsi::pdu::*;
use iscsi::Server;

const DISK: &str = "iqn.2024-01.org.strato.test:disk";
const USER: &str = "iqn.2024-01.org.strato.test:user";
const ISID: [u8; 6] = [0x80, 0, 0, 0, 0, 1];

fn server_with(cfg: iscsi::Config) -> (Server, Arc<MemTarget>) {
    let disk = Arc::new(MemTarget::new(DISK, 4096));
    let s = Server::bind(
        cfg,
        Arc::new(MemRegistry {
            targets: vec![disk.clone()],
        }),
    )
    .unwrap();
    (s, disk)
}

fn server() -> (Server, Arc<MemTarget>) {
    server_with(config())
}

fn cmd(c: &mut Conn, cdb: &[u8], read: bool, write: bool, edtl: u32) -> ScsiCommand {
    let mut full = [0u8; 16];
    full[..cdb.len()].copy_from_slice(cdb);
    c.itt += 1;
    let sc = ScsiCommand {
        final_: true,
        read,
        write,
        attr: 1,
        itt: c.itt,
        edtl,
        cmdsn: c.cmdsn,
        exp_statsn: c.exp_statsn,
        cdb: full,
        ..Default::default()
    };
    c.cmdsn = c.cmdsn.wrapping_add(1);
    sc
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = vec![0x2a, 0];
    cdb.extend_from_slice(&lba.to_be_bytes());
    cdb.push(0);
    cdb.extend_from_slice(&blocks.to_be_bytes());
    cdb.push(0);
    cdb
}

fn expect_status(c: &mut Conn, itt: u32, status: u8) {
    match recv(&mut c.stream) {
        Some((Bhs::ScsiResponse(r), _)) => {
            assert_eq!((r.itt, r.status), (itt, status));
            c.exp_statsn = r.statsn.wrapping_add(1);
        }
        other => panic!("expected a SCSI Response, got {other:?}"),
    }
}

#[test]
fn commands_ahead_of_their_cmdsn_wait_for_the_gap() {
    let (s, _) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let first = cmd(&mut c, &[0], false, false, 0);
    let second = cmd(&mut c, &[0], false, false, 0);
    send(&mut c.stream, &Bhs::ScsiCommand(second), &[]).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(recv(&mut c.stream).is_none(), "the later command must wait");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    send(&mut c.stream, &Bhs::ScsiCommand(first), &[]).unwrap();
    expect_status(&mut c, first.itt, 0);
    expect_status(&mut c, second.itt, 0);
}

#[test]
fn writes_beyond_immediate_data_are_solicited_with_r2t() {
    let (s, disk) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let w = cmd(&mut c, &write10(8, 16), false, true, 8192);
    send(&mut c.stream, &Bhs::ScsiCommand(w), &[7u8; 1024]).unwrap();
    let Some((Bhs::R2t(r), _)) = recv(&mut c.stream) else {
        panic!("expected an R2T")
    };
    assert_eq!(
        (r.itt, r.buffer_offset, r.desired_length, r.r2tsn),
        (w.itt, 1024, 7168, 0)
    );
    let d = DataOut {
        final_: true,
        itt: w.itt,
        ttt: r.ttt,
        datasn: 0,
        buffer_offset: 1024,
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::DataOut(d), &[9u8; 7168]).unwrap();
    expect_status(&mut c, w.itt, 0);
    let data = disk.data.lock().unwrap();
    assert!(data[8 * 512..9 * 512].iter().all(|b| *b == 7));
    assert!(data[11 * 512..24 * 512].iter().all(|b| *b == 9));
}

#[test]
fn abort_task_drops_a_write_waiting_for_data() {
    let (s, disk) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let w = cmd(&mut c, &write10(0, 8), false, true, 4096);
    send(&mut c.stream, &Bhs::ScsiCommand(w), &[]).unwrap();
    let Some((Bhs::R2t(r), _)) = recv(&mut c.stream) else {
        panic!("expected an R2T")
    };
    let tmf = TaskMgmtRequest {
        immediate: true,
        function: 1,
        itt: 999,
        rtt: w.itt,
        cmdsn: c.cmdsn,
        ref_cmdsn: w.cmdsn,
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::TaskMgmtRequest(tmf), &[]).unwrap();
    match recv(&mut c.stream) {
        Some((Bhs::TaskMgmtResponse(t), _)) => assert_eq!((t.itt, t.response), (999, 0)),
        other => panic!("expected a TMF response, got {other:?}"),
    }
    // Late data for the aborted task is discarded, not executed.
    let d = DataOut {
        final_: true,
        itt: w.itt,
        ttt: r.ttt,
        datasn: 0,
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::DataOut(d), &[5u8; 4096]).unwrap();
    let tur = cmd(&mut c, &[0], false, false, 0);
    send(&mut c.stream, &Bhs::ScsiCommand(tur), &[]).unwrap();
    expect_status(&mut c, tur.itt, 0);
    assert!(disk.data.lock().unwrap()[..4096].iter().all(|b| *b == 0));
    // An unknown task outside the window does not exist.
    let tmf = TaskMgmtRequest {
        immediate: true,
        function: 1,
        itt: 1000,
        rtt: 4242,
        cmdsn: c.cmdsn,
        ref_cmdsn: c.cmdsn.wrapping_sub(5),
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::TaskMgmtRequest(tmf), &[]).unwrap();
    match recv(&mut c.stream) {
        Some((Bhs::TaskMgmtResponse(t), _)) => assert_eq!(t.response, 1),
        other => panic!("expected a TMF response, got {other:?}"),
    }
}

#[test]
fn snack_and_unknown_opcodes_are_rejected() {
    let (s, _) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    send(
        &mut c.stream,
        &Bhs::SnackRequest(SnackRequest {
            itt: 5,
            ..Default::default()
        }),
        &[],
    )
    .unwrap();
    match recv(&mut c.stream) {
        Some((Bhs::Reject(r), data)) => {
            assert_eq!(r.reason, reject::PROTOCOL_ERROR);
            assert_eq!(data.len(), BHS_LEN);
            assert_eq!(data[0] & 0x3f, opcode::SNACK_REQUEST);
        }
        other => panic!("expected a Reject, got {other:?}"),
    }
    let mut raw = [0u8; BHS_LEN];
    raw[0] = 0x1c;
    std::io::Write::write_all(&mut c.stream, &raw).unwrap();
    match recv(&mut c.stream) {
        Some((Bhs::Reject(r), _)) => assert_eq!(r.reason, reject::COMMAND_NOT_SUPPORTED),
        other => panic!("expected a Reject, got {other:?}"),
    }
}

#[test]
fn logout_closes_the_session() {
    let (s, disk) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let l = LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 77,
        cmdsn: c.cmdsn,
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::LogoutRequest(l), &[]).unwrap();
    match recv(&mut c.stream) {
        Some((Bhs::LogoutResponse(r), _)) => assert_eq!((r.itt, r.response), (77, 0)),
        other => panic!("expected a Logout Response, got {other:?}"),
    }
    assert!(recv(&mut c.stream).is_none());
    wait_for(|| disk.closed.load(Ordering::SeqCst) == 1);
}

#[test]
fn idle_initiators_are_pinged_and_dropped() {
    let mut cfg = config();
    cfg.nop_in_interval = Duration::from_millis(200);
    cfg.nop_in_timeout = Duration::from_millis(400);
    let (s, _) = server_with(cfg);
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    // Answering the first ping keeps the connection alive.
    let Some((Bhs::NopIn(n), _)) = recv(&mut c.stream) else {
        panic!("expected a NOP-In")
    };
    assert_eq!(n.itt, RESERVED_TAG);
    assert_ne!(n.ttt, RESERVED_TAG);
    let answer = NopOut {
        immediate: true,
        itt: RESERVED_TAG,
        ttt: n.ttt,
        cmdsn: c.cmdsn,
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::NopOut(answer), &[]).unwrap();
    let Some((Bhs::NopIn(_), _)) = recv(&mut c.stream) else {
        panic!("expected another NOP-In")
    };
    let start = Instant::now();
    assert!(
        recv(&mut c.stream).is_none(),
        "silent initiator must be dropped"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn fencing_closes_sessions_the_filter_rejects() {
    let (s, disk) = server();
    let mut kept = login(
        s.local_addr(),
        "iqn.2024-01.org.strato.test:kept",
        Some(DISK),
        ISID,
    )
    .unwrap();
    let mut gone = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    assert_eq!(s.close_sessions(DISK, &|i| i != USER), 1);
    assert!(recv(&mut gone.stream).is_none());
    assert_eq!(disk.closed.load(Ordering::SeqCst), 1);
    let tur = cmd(&mut kept, &[0], false, false, 0);
    send(&mut kept.stream, &Bhs::ScsiCommand(tur), &[]).unwrap();
    expect_status(&mut kept, tur.itt, 0);
    assert_eq!(s.close_sessions(DISK, &|_| false), 1);
    assert_eq!(s.sessions().len(), 0);
}

#[test]
fn a_second_login_with_the_same_isid_reinstates_the_session() {
    let (s, disk) = server();
    let mut old = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let mut new = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    assert!(recv(&mut old.stream).is_none());
    assert_eq!(disk.opened.load(Ordering::SeqCst), 2);
    assert_eq!(disk.closed.load(Ordering::SeqCst), 1);
    let tur = cmd(&mut new, &[0], false, false, 0);
    send(&mut new.stream, &Bhs::ScsiCommand(tur), &[]).unwrap();
    expect_status(&mut new, tur.itt, 0);
}

#[test]
fn send_targets_works_in_a_normal_session() {
    let (s, _) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let t = TextRequest {
        immediate: true,
        final_: true,
        itt: 3,
        ttt: RESERVED_TAG,
        cmdsn: c.cmdsn,
        ..Default::default()
    };
    send(&mut c.stream, &Bhs::TextRequest(t), b"SendTargets=\0").unwrap();
    let Some((Bhs::TextResponse(r), data)) = recv(&mut c.stream) else {
        panic!("expected a Text Response")
    };
    assert!(r.final_);
    let text = String::from_utf8(data).unwrap();
    assert!(text.contains(&format!("TargetName={DISK}")), "{text}");
    assert!(
        text.contains(&format!("TargetAddress={},1", s.local_addr())),
        "{text}"
    );
}

#[test]
fn read_data_is_split_at_the_initiators_segment_length() {
    let (s, _) = server();
    let mut c = login(s.local_addr(), USER, Some(DISK), ISID).unwrap();
    let r = cmd(
        &mut c,
        &[0x28, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        true,
        false,
        131072 + 1000,
    );
    send(&mut c.stream, &Bhs::ScsiCommand(r), &[]).unwrap();
    let mut offset = 0;
    loop {
        let Some((Bhs::DataIn(d), data)) = recv(&mut c.stream) else {
            panic!("expected Data-In")
        };
        assert_eq!(d.buffer_offset, offset);
        assert!(data.len() <= 65536);
        offset += data.len() as u32;
        if d.status_present {
            assert!(d.residual.underflow && d.residual.count == 1000);
            break;
        }
    }
    assert_eq!(offset, 131072);
}

fn wait_for(cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "condition not reached"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
