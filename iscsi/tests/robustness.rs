//! Random and mutated input against the parser, the login machine, the
//! full-feature session and a live server: nothing may panic, and the
//! server must keep serving. Seeded, so failures reproduce.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::{config, MemRegistry, MemTarget};
use iscsi::login::{Login, LoginEnv, SessionType};
use iscsi::negotiation::{OperationalParams, TargetLimits};
use iscsi::pdu::*;
use iscsi::session::{Session, SessionSetup};
use iscsi::wire::{Digests, Out, Reader};
use iscsi::{text, Nexus, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DISK: &str = "iqn.2024-01.org.strato.test:disk";

fn serialize(bhs: &Bhs, ahs: &[u8], data: &[u8]) -> Vec<u8> {
    let mut hdr = [0u8; BHS_LEN];
    bhs.write(ahs.len(), data.len() as u32, &mut hdr);
    let mut v = hdr.to_vec();
    v.extend_from_slice(ahs);
    v.extend_from_slice(data);
    v.resize(padded(v.len()), 0);
    v
}

/// One well-formed PDU of every initiator opcode, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let read = ScsiCommand {
        final_: true,
        read: true,
        edtl: 4096,
        cdb: [0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        itt: 1,
        ..Default::default()
    };
    let write = ScsiCommand {
        final_: true,
        write: true,
        edtl: 8192,
        cdb: [0x2a, 0, 0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0],
        itt: 2,
        ..Default::default()
    };
    let mut ext = Vec::new();
    write_ahs(
        &Ahs {
            extended_cdb: Some(&[1, 2, 3, 4]),
            bidi_read_length: Some(512),
        },
        &mut ext,
    );
    vec![
        serialize(&Bhs::ScsiCommand(read), &[], &[]),
        serialize(&Bhs::ScsiCommand(write), &[], &[0xab; 512]),
        serialize(&Bhs::ScsiCommand(read), &ext, &[]),
        serialize(&Bhs::DataOut(DataOut { final_: true, itt: 2, ttt: RESERVED_TAG, buffer_offset: 512, ..Default::default() }), &[], &[1; 512]),
        serialize(&Bhs::NopOut(NopOut { immediate: true, itt: 5, ttt: RESERVED_TAG, ..Default::default() }), &[], b"ping"),
        serialize(&Bhs::TaskMgmtRequest(TaskMgmtRequest { immediate: true, function: 1, itt: 6, rtt: 2, ..Default::default() }), &[], &[]),
        serialize(&Bhs::TaskMgmtRequest(TaskMgmtRequest { immediate: true, function: 5, itt: 7, ..Default::default() }), &[], &[]),
        serialize(&Bhs::TextRequest(TextRequest { immediate: true, final_: true, itt: 8, ttt: RESERVED_TAG, ..Default::default() }), &[], b"SendTargets=All\0"),
        serialize(&Bhs::LogoutRequest(LogoutRequest { immediate: true, itt: 9, ..Default::default() }), &[], &[]),
        serialize(&Bhs::SnackRequest(SnackRequest::default()), &[], &[]),
        serialize(
            &Bhs::LoginRequest(LoginRequest { transit: true, csg: 0, nsg: 1, isid: [0x80, 0, 0, 0, 0, 1], ..Default::default() }),
            &[],
            b"InitiatorName=iqn.x\0TargetName=iqn.2024-01.org.strato.test:disk\0AuthMethod=CHAP,None\0CHAP_A=5\0",
        ),
    ]
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        match rng.gen_range(0..6) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            2 => v.truncate(rng.gen_range(0..=v.len())),
            3 => v.extend((0..rng.gen_range(0..64)).map(|_| rng.gen::<u8>())),
            4 if v.len() >= 8 => {
                // Lengths are where parsers break.
                v[4] = rng.gen_range(0..4);
                let len: u32 = rng.gen_range(0..20000);
                v[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
            }
            _ => {
                if v.len() >= 44 {
                    let sn: u32 = rng.gen();
                    let at = [24usize, 36, 40][rng.gen_range(0..3)];
                    v[at..at + 4].copy_from_slice(&sn.to_be_bytes());
                }
            }
        }
    }
    v
}

fn input(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.gen_bool(0.2) {
        (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect()
    } else {
        let i = rng.gen_range(0..seeds.len());
        mutate(rng, &seeds[i])
    }
}

#[test]
fn parsers_never_panic() {
    let mut rng = StdRng::seed_from_u64(7143);
    let seeds = seeds();
    for _ in 0..100_000 {
        let b = input(&mut rng, &seeds);
        let _ = Bhs::parse(&b);
        let _ = segment_lengths(&b);
        let _ = parse_ahs(&b[b.len().min(48)..]);
        let _ = parse_ahs(&b);
        let _ = text::parse(&b);
        let mut r = Reader::new(64);
        r.push(&b);
        let d = Digests {
            header: rng.gen(),
            data: rng.gen(),
        };
        while let Ok(Some(f)) = r.next_frame(d, 8192) {
            let _ = r.slice(f.data.clone());
        }
    }
}

fn limits() -> TargetLimits {
    TargetLimits {
        max_recv_data_segment_length: 65536,
        first_burst_length: 65536,
        max_burst_length: 262144,
        max_outstanding_r2t: 1,
    }
}

fn registry() -> Arc<MemRegistry> {
    Arc::new(MemRegistry {
        targets: vec![Arc::new(MemTarget::new(DISK, 256))],
    })
}

#[test]
fn the_login_machine_never_panics() {
    let mut rng = StdRng::seed_from_u64(3720);
    let seeds: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|s| s[0] & 0x3f == opcode::LOGIN_REQUEST)
        .collect();
    let reg = registry();
    for _ in 0..20_000 {
        let mut login = Login::new(LoginEnv {
            registry: reg.clone(),
            limits: limits(),
            tpgt: 1,
            queue_depth: 32,
            new_tsih: 1,
            session_exists: Box::new(|t, _, _| t == 3),
        });
        for _ in 0..rng.gen_range(1..6) {
            let b = mutate(&mut rng, &seeds[0]);
            let Ok(Bhs::LoginRequest(req)) = Bhs::parse(&b) else {
                continue;
            };
            let _ = login.handle(&req, b.get(BHS_LEN..).unwrap_or(&[]));
        }
    }
}

fn session(reg: Arc<MemRegistry>, rng: &mut StdRng) -> Session {
    let params = OperationalParams {
        initial_r2t: rng.gen(),
        immediate_data: rng.gen(),
        first_burst_length: 4096,
        max_burst_length: 8192,
        initiator_max_recv_dsl: 4096,
        target_max_recv_dsl: 8192,
        max_outstanding_r2t: rng.gen_range(1..4),
        ..OperationalParams::default()
    };
    let target = iscsi::Registry::target(reg.as_ref(), DISK);
    Session::new(SessionSetup {
        kind: if rng.gen_bool(0.9) {
            SessionType::Normal
        } else {
            SessionType::Discovery
        },
        nexus: Nexus {
            initiator_name: "iqn.x".into(),
            isid: [0; 6],
            target_name: DISK.into(),
            tpgt: 1,
        },
        target,
        registry: reg,
        params,
        queue_depth: 8,
        portal: "127.0.0.1:3260".parse().unwrap(),
        cid: 0,
        exp_cmdsn: 0,
        statsn: 0,
        fenced: Arc::new(AtomicBool::new(false)),
    })
}

#[test]
fn the_session_never_panics() {
    let mut rng = StdRng::seed_from_u64(9999);
    let seeds = seeds();
    let reg = registry();
    let mut s = session(reg.clone(), &mut rng);
    let mut out = Out::new();
    let mut reader = Reader::new(1024);
    for _ in 0..100_000 {
        let b = if rng.gen_bool(0.3) {
            seeds[rng.gen_range(0..seeds.len())].clone()
        } else {
            input(&mut rng, &seeds)
        };
        reader.push(&b);
        loop {
            match reader.next_frame(Digests::default(), s.max_recv()) {
                Ok(Some(f)) => {
                    let r = s.handle(
                        &f,
                        reader.slice(f.ahs.clone()),
                        reader.slice(f.data.clone()),
                        &mut out,
                    );
                    out.buf.clear();
                    if r.is_err() {
                        s = session(reg.clone(), &mut rng);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    reader = Reader::new(1024);
                    s = session(reg.clone(), &mut rng);
                    break;
                }
            }
        }
        if rng.gen_bool(0.01) {
            reader = Reader::new(1024);
        }
    }
}

#[test]
fn the_server_survives_garbage_connections() {
    let server = Server::bind(config(), registry()).unwrap();
    let addr = server.local_addr();
    let mut rng = StdRng::seed_from_u64(42);
    let seeds = seeds();
    for i in 0..30 {
        let mut stream = if i % 2 == 0 {
            match common::raw::login(addr, "iqn.x", Some(DISK), [0x80, 0, 0, 0, 0, i as u8]) {
                Ok(c) => c.stream,
                Err(e) => panic!("login failed: {e:?}"),
            }
        } else {
            TcpStream::connect(addr).unwrap()
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        for _ in 0..50 {
            let b = input(&mut rng, &seeds);
            if stream.write_all(&b).is_err() {
                break;
            }
            let mut sink = [0u8; 65536];
            let _ = stream.read(&mut sink);
        }
    }
    // Still serving.
    let mut c = common::raw::login(addr, "iqn.final", Some(DISK), [0x80, 0, 0, 0, 0, 0xff])
        .expect("login after garbage");
    let tur = ScsiCommand {
        final_: true,
        itt: 1,
        cmdsn: c.cmdsn,
        ..Default::default()
    };
    common::raw::send(&mut c.stream, &Bhs::ScsiCommand(tur), &[]).unwrap();
    match common::raw::recv(&mut c.stream) {
        Some((Bhs::ScsiResponse(r), _)) => assert_eq!(r.status, 0),
        other => panic!("expected a response, got {other:?}"),
    }
}
