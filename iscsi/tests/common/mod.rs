//! Test scaffolding: an in-memory disk speaking just enough SCSI (TEST UNIT
//! READY, INQUIRY, READ CAPACITY 10/16, READ/WRITE 10/12/16, WRITE AND
//! VERIFY, REPORT LUNS, MODE SENSE, SYNCHRONIZE CACHE) to drive the
//! transport with real initiators. Not an emulator: the real one is the
//! scsi crate.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iscsi::{Auth, Config, Nexus, Registry, ScsiOutcome, Server, Target, TmFunction, TmResponse};

pub const BLOCK: usize = 512;

pub struct MemTarget {
    pub name: String,
    pub auth: Auth,
    /// None admits every initiator.
    pub acl: Option<Vec<String>>,
    pub data: Mutex<Vec<u8>>,
    pub opened: AtomicUsize,
    pub closed: AtomicUsize,
    pub resets: AtomicUsize,
}

impl MemTarget {
    pub fn new(name: &str, blocks: usize) -> Self {
        MemTarget {
            name: name.into(),
            auth: Auth::None,
            acl: None,
            data: Mutex::new(vec![0u8; blocks * BLOCK]),
            opened: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            resets: AtomicUsize::new(0),
        }
    }
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    pub fn with_acl(mut self, acl: &[&str]) -> Self {
        self.acl = Some(acl.iter().map(|s| s.to_string()).collect());
        self
    }
    fn blocks(&self) -> u64 {
        (self.data.lock().unwrap().len() / BLOCK) as u64
    }
}

fn sense(key: u8, asc: u8, ascq: u8) -> ScsiOutcome {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    ScsiOutcome {
        status: 0x02,
        sense: s,
        data: Vec::new(),
    }
}

fn good(data: Vec<u8>) -> ScsiOutcome {
    ScsiOutcome {
        status: 0,
        sense: Vec::new(),
        data,
    }
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, x| (a << 8) | *x as u64)
}

/// (is_write, lba, blocks) of a READ/WRITE-family CDB.
fn rw(cdb: &[u8]) -> Option<(bool, u64, u64)> {
    let op = *cdb.first()?;
    let r = match op {
        0x28 | 0x2a | 0x2e => (op != 0x28, be(cdb.get(2..6)?), be(cdb.get(7..9)?)),
        0xa8 | 0xaa | 0xae => (op != 0xa8, be(cdb.get(2..6)?), be(cdb.get(6..10)?)),
        0x88 | 0x8a | 0x8e => (op != 0x88, be(cdb.get(2..10)?), be(cdb.get(10..14)?)),
        _ => return None,
    };
    Some(r)
}

fn truncate(mut d: Vec<u8>, alloc: usize) -> Vec<u8> {
    d.truncate(alloc);
    d
}

impl Target for MemTarget {
    fn name(&self) -> &str {
        &self.name
    }
    fn auth(&self) -> Auth {
        self.auth.clone()
    }
    fn allows(&self, initiator: &str) -> bool {
        match &self.acl {
            None => true,
            Some(a) => a.iter().any(|x| x == initiator),
        }
    }
    fn execute(
        &self,
        _nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        _expected: u32,
    ) -> ScsiOutcome {
        let op = cdb[0];
        if lun != 0 && op != 0x12 && op != 0xa0 {
            return sense(0x05, 0x25, 0x00);
        }
        if let Some((write, lba, n)) = rw(cdb) {
            if cdb[1] & 0xe0 != 0 {
                // No protection information on this disk.
                return sense(0x05, 0x24, 0x00);
            }
            if lba + n > self.blocks() {
                return sense(0x05, 0x21, 0x00);
            }
            let start = lba as usize * BLOCK;
            let len = n as usize * BLOCK;
            let mut disk = self.data.lock().unwrap();
            if write {
                let m = len.min(data_out.len());
                disk[start..start + m].copy_from_slice(&data_out[..m]);
                return good(Vec::new());
            }
            return good(disk[start..start + len].to_vec());
        }
        match op {
            0x00 | 0x35 | 0x91 => good(Vec::new()),
            0x03 => {
                let mut s = vec![0u8; 18];
                s[0] = 0x70;
                s[7] = 10;
                good(truncate(s, cdb[4] as usize))
            }
            0x12 => {
                let alloc = be(&cdb[3..5]) as usize;
                let qualifier = if lun == 0 { 0x00 } else { 0x7f };
                if cdb[1] & 1 == 0 {
                    let mut d = vec![0u8; 36];
                    d[0] = qualifier;
                    d[2] = 0x06;
                    d[3] = 0x02;
                    d[4] = 31;
                    d[7] = 0x02;
                    d[8..16].copy_from_slice(b"STRATO  ");
                    d[16..32].copy_from_slice(b"TEST DISK       ");
                    d[32..36].copy_from_slice(b"0001");
                    return good(truncate(d, alloc));
                }
                match cdb[2] {
                    0x00 => good(truncate(
                        vec![qualifier, 0x00, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
                        alloc,
                    )),
                    0x80 => {
                        let mut d = vec![qualifier, 0x80, 0, 8];
                        d.extend_from_slice(b"SN000001");
                        good(truncate(d, alloc))
                    }
                    0x83 => {
                        let id = format!("{:<16}", "strato-test");
                        let mut d = vec![
                            qualifier,
                            0x83,
                            0,
                            (4 + id.len()) as u8,
                            0x02,
                            0x01,
                            0x00,
                            id.len() as u8,
                        ];
                        d.extend_from_slice(id.as_bytes());
                        good(truncate(d, alloc))
                    }
                    0xb0 => {
                        let mut d = vec![0u8; 64];
                        d[0] = qualifier;
                        d[1] = 0xb0;
                        d[3] = 0x3c;
                        good(truncate(d, alloc))
                    }
                    0xb1 => {
                        let mut d = vec![0u8; 64];
                        d[0] = qualifier;
                        d[1] = 0xb1;
                        d[3] = 0x3c;
                        d[5] = 1;
                        good(truncate(d, alloc))
                    }
                    0xb2 => {
                        let mut d = vec![0u8; 8];
                        d[0] = qualifier;
                        d[1] = 0xb2;
                        d[3] = 4;
                        good(truncate(d, alloc))
                    }
                    _ => sense(0x05, 0x24, 0x00),
                }
            }
            0x25 => {
                let last = (self.blocks() - 1).min(0xffff_ffff) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                good(d)
            }
            0x9e if cdb[1] & 0x1f == 0x10 => {
                let alloc = be(&cdb[10..14]) as usize;
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&(self.blocks() - 1).to_be_bytes());
                d[8..12].copy_from_slice(&(BLOCK as u32).to_be_bytes());
                good(truncate(d, alloc))
            }
            0xa0 => {
                let alloc = be(&cdb[6..10]) as usize;
                let mut d = vec![0u8; 16];
                d[3] = 8;
                good(truncate(d, alloc))
            }
            0x1a => good(truncate(vec![3, 0, 0x10, 0], cdb[4] as usize)),
            0x5a => good(truncate(
                vec![0, 6, 0, 0x10, 0, 0, 0, 0],
                be(&cdb[7..9]) as usize,
            )),
            _ => sense(0x05, 0x20, 0x00),
        }
    }
    fn transfer_length(&self, _lun: u64, cdb: &[u8]) -> Option<u32> {
        rw(cdb).map(|(_, _, n)| (n as usize * BLOCK) as u32)
    }
    fn task_management(&self, _nexus: &Nexus, _lun: u64, _f: TmFunction) -> TmResponse {
        self.resets.fetch_add(1, Ordering::Relaxed);
        TmResponse::Complete
    }
    fn session_opened(&self, _nexus: &Nexus) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    fn session_closed(&self, _nexus: &Nexus) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct MemRegistry {
    pub targets: Vec<Arc<MemTarget>>,
}

impl Registry for MemRegistry {
    fn discover(&self, initiator: &str) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.allows(initiator))
            .map(|t| t.name.clone())
            .collect()
    }
    fn target(&self, name: &str) -> Option<Arc<dyn Target>> {
        self.targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.clone() as Arc<dyn Target>)
    }
}

pub fn config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        nop_in_interval: Duration::from_secs(5),
        nop_in_timeout: Duration::from_secs(10),
        login_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

pub fn start(targets: Vec<Arc<MemTarget>>) -> Server {
    Server::bind(config(), Arc::new(MemRegistry { targets })).expect("bind")
}

/// Fails the test (never skips) if a required initiator tool is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required for this test (Debian: libiscsi-bin / qemu-utils)"
    );
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    require(cmd);
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A minimal initiator for driving the target over a socket with PDUs the
/// real initiators never send.
pub mod raw {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use iscsi::pdu::{self, Bhs, LoginRequest, BHS_LEN};
    use iscsi::text::{self, TextBuilder};

    pub struct Conn {
        pub stream: TcpStream,
        pub cmdsn: u32,
        pub exp_statsn: u32,
        pub itt: u32,
    }

    pub fn send(stream: &mut TcpStream, bhs: &Bhs, data: &[u8]) -> std::io::Result<()> {
        let mut hdr = [0u8; BHS_LEN];
        bhs.write(0, data.len() as u32, &mut hdr);
        let mut buf = hdr.to_vec();
        buf.extend_from_slice(data);
        buf.resize(pdu::padded(buf.len()), 0);
        stream.write_all(&buf)
    }

    /// Reads one PDU (no digests); None at EOF or timeout.
    pub fn recv(stream: &mut TcpStream) -> Option<(Bhs, Vec<u8>)> {
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

    /// Logs in to `target` (or a discovery session when None) with
    /// AuthMethod=None; returns the login response status on failure.
    pub fn login(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
        isid: [u8; 6],
    ) -> Result<Conn, (u8, u8)> {
        let mut stream = TcpStream::connect(addr).map_err(|_| (0xff, 0xff))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut keys = vec![("InitiatorName", initiator), ("AuthMethod", "None")];
        match target {
            Some(t) => keys.push(("TargetName", t)),
            None => keys.push(("SessionType", "Discovery")),
        }
        let req = LoginRequest {
            transit: true,
            csg: 0,
            nsg: 1,
            isid,
            itt: 1,
            cmdsn: 1,
            ..Default::default()
        };
        send(&mut stream, &Bhs::LoginRequest(req), &pairs(&keys)).map_err(|_| (0xff, 0xff))?;
        let (bhs, _) = recv(&mut stream).ok_or((0xff, 0xff))?;
        let Bhs::LoginResponse(r) = bhs else {
            return Err((0xff, 0xfe));
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
        send(&mut stream, &Bhs::LoginRequest(req), &op).map_err(|_| (0xff, 0xff))?;
        let (bhs, data) = recv(&mut stream).ok_or((0xff, 0xff))?;
        let Bhs::LoginResponse(r) = bhs else {
            return Err((0xff, 0xfe));
        };
        if r.status_class != 0 || !r.transit || r.nsg != 3 {
            return Err((r.status_class, r.status_detail));
        }
        text::parse(&data).map_err(|_| (0xff, 0xfd))?;
        Ok(Conn {
            stream,
            cmdsn: 1,
            exp_statsn: r.statsn.wrapping_add(1),
            itt: 100,
        })
    }
}
