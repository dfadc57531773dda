//! A minimal iSCSI initiator that sends the CDBs libiscsi's tools have no
//! command for (PERSISTENT RESERVE IN) and keeps one session open across
//! volume spec changes, to see what the target does to a live I_T nexus.
//! Login without CHAP, no digests, immediate data; one command at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use iscsi::pdu::{self, Bhs, LoginRequest, ScsiCommand, BHS_LEN};
use iscsi::text::{self, TextBuilder};

pub struct Session {
    stream: TcpStream,
    cmdsn: u32,
    exp_statsn: u32,
    itt: u32,
}

/// What one command came back with. `None` from [`Session::command`]
/// means the target closed the connection (or said nothing in time).
#[derive(Debug)]
pub struct Reply {
    pub status: u8,
    pub data: Vec<u8>,
}

fn send(stream: &mut TcpStream, bhs: &Bhs, data: &[u8]) -> std::io::Result<()> {
    let mut hdr = [0u8; BHS_LEN];
    bhs.write(0, data.len() as u32, &mut hdr);
    let mut buf = hdr.to_vec();
    buf.extend_from_slice(data);
    buf.resize(pdu::padded(buf.len()), 0);
    stream.write_all(&buf)
}

fn recv(stream: &mut TcpStream) -> Option<(Bhs, Vec<u8>)> {
    let mut hdr = [0u8; BHS_LEN];
    stream.read_exact(&mut hdr).ok()?;
    let (ahs, len) = pdu::segment_lengths(&hdr).ok()?;
    let mut rest = vec![0u8; ahs + pdu::padded(len as usize)];
    stream.read_exact(&mut rest).ok()?;
    let data = rest[ahs..ahs + len as usize].to_vec();
    Some((Bhs::parse(&hdr).ok()?, data))
}

fn pairs(p: &[(&str, &str)]) -> Vec<u8> {
    let mut b = TextBuilder::new();
    for (k, v) in p {
        b.add(k, v);
    }
    b.into_bytes()
}

impl Session {
    /// Logs in to `target` at `portal` as `initiator` with `isid`; the
    /// login response's (class, detail) on refusal.
    pub fn login(
        portal: &str,
        initiator: &str,
        target: &str,
        isid: [u8; 6],
    ) -> Result<Session, (u8, u8)> {
        let io = (0xff, 0xff);
        let mut stream = TcpStream::connect(portal).map_err(|_| io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|_| io)?;
        let keys = [
            ("InitiatorName", initiator),
            ("AuthMethod", "None"),
            ("TargetName", target),
        ];
        let req = LoginRequest {
            transit: true,
            csg: 0,
            nsg: 1,
            isid,
            itt: 1,
            cmdsn: 1,
            ..Default::default()
        };
        send(&mut stream, &Bhs::LoginRequest(req), &pairs(&keys)).map_err(|_| io)?;
        let Some((Bhs::LoginResponse(r), _)) = recv(&mut stream) else {
            return Err(io);
        };
        if r.status_class != 0 {
            return Err((r.status_class, r.status_detail));
        }
        let req = LoginRequest {
            transit: true,
            csg: 1,
            nsg: 3,
            isid,
            itt: 1,
            cmdsn: 1,
            exp_statsn: r.statsn.wrapping_add(1),
            ..Default::default()
        };
        let op = pairs(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "65536"),
        ]);
        send(&mut stream, &Bhs::LoginRequest(req), &op).map_err(|_| io)?;
        let Some((Bhs::LoginResponse(r), data)) = recv(&mut stream) else {
            return Err(io);
        };
        if r.status_class != 0 || !r.transit || r.nsg != 3 {
            return Err((r.status_class, r.status_detail));
        }
        text::parse(&data).map_err(|_| io)?;
        Ok(Session {
            stream,
            cmdsn: 1,
            exp_statsn: r.statsn.wrapping_add(1),
            itt: 100,
        })
    }

    /// Runs one command on LUN 0: `data_out` goes as immediate data (keep
    /// it within one PDU), `read` is the expected Data-In length.
    pub fn command(&mut self, cdb: &[u8], data_out: &[u8], read: u32) -> Option<Reply> {
        let mut full = [0u8; 16];
        full[..cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        let sc = ScsiCommand {
            final_: true,
            read: read > 0,
            write: !data_out.is_empty(),
            attr: 1,
            itt: self.itt,
            edtl: if data_out.is_empty() {
                read
            } else {
                data_out.len() as u32
            },
            cmdsn: self.cmdsn,
            exp_statsn: self.exp_statsn,
            cdb: full,
            ..Default::default()
        };
        self.cmdsn = self.cmdsn.wrapping_add(1);
        send(&mut self.stream, &Bhs::ScsiCommand(sc), data_out).ok()?;
        let mut data = Vec::new();
        loop {
            match recv(&mut self.stream)? {
                (Bhs::DataIn(d), seg) if d.itt == self.itt => {
                    data.extend_from_slice(&seg);
                    if d.status_present {
                        self.exp_statsn = d.statsn.wrapping_add(1);
                        return Some(Reply {
                            status: d.status,
                            data,
                        });
                    }
                }
                (Bhs::ScsiResponse(r), _) if r.itt == self.itt => {
                    self.exp_statsn = r.statsn.wrapping_add(1);
                    return Some(Reply {
                        status: r.status,
                        data,
                    });
                }
                // NOP-In pings and anything else: not this command's answer.
                _ => {}
            }
        }
    }

    /// How long a command may go unanswered before it counts as lost.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set a read timeout");
    }

    /// SYNCHRONIZE CACHE (10) of the whole unit.
    pub fn synchronize_cache(&mut self) -> Option<Reply> {
        self.command(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
    }

    /// TEST UNIT READY until GOOD, consuming the unit attentions a new
    /// nexus (or a preempted one) has pending; panics after a few.
    pub fn settle(&mut self) {
        for _ in 0..4 {
            let r = self
                .command(&[0; 6], &[], 0)
                .expect("TEST UNIT READY answered");
            if r.status == 0 {
                return;
            }
        }
        panic!("TEST UNIT READY never came back GOOD");
    }

    /// PERSISTENT RESERVE IN, READ KEYS: (generation, keys).
    pub fn read_keys(&mut self) -> (u32, Vec<u64>) {
        let r = self
            .command(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[], 0x1000)
            .expect("READ KEYS answered");
        assert_eq!(r.status, 0, "READ KEYS failed: {r:?}");
        assert!(r.data.len() >= 8, "short READ KEYS data: {:02x?}", r.data);
        let generation = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
        let keys = r.data[8..]
            .chunks_exact(8)
            .map(|c| c.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
            .collect();
        (generation, keys)
    }

    /// WRITE (10) of one 512-byte block at `lba`.
    pub fn write_block(&mut self, lba: u32, block: &[u8; 512]) -> Option<Reply> {
        let mut cdb = vec![0x2a, 0];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.extend_from_slice(&[0, 0, 1, 0]);
        self.command(&cdb, block, 0)
    }

    /// READ (10) of one 512-byte block at `lba`.
    pub fn read_block(&mut self, lba: u32) -> Option<Reply> {
        let mut cdb = vec![0x28, 0];
        cdb.extend_from_slice(&lba.to_be_bytes());
        cdb.extend_from_slice(&[0, 0, 1, 0]);
        self.command(&cdb, &[], 512)
    }
}
