//! Shared test helpers: a server on a temp root, external client runners,
//! and a minimal windowsize-capable client for what the real clients cannot
//! provoke (loss, wrong TIDs, exact OACK contents).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tempfile::TempDir;
use tftp::packet::{self, Packet};
use tftp::{Config, RunningServer, Server};
use tokio::net::UdpSocket;

pub struct Fixture {
    pub root: TempDir,
    pub server: RunningServer,
    pub out: TempDir,
}

impl Fixture {
    pub async fn new() -> Fixture {
        Fixture::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let root = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            root: root.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        let server = Server::bind(config).await.expect("bind").spawn();
        Fixture {
            root,
            server,
            out: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn port(&self) -> String {
        self.addr().port().to_string()
    }

    /// Writes a file of `len` pseudo-random bytes under the root.
    pub fn put(&self, name: &str, len: usize) -> Vec<u8> {
        let data = pseudo_random(len, name.len() as u64 + len as u64);
        let path = self.root.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, &data).expect("write");
        data
    }

    pub fn out_path(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }
}

/// Deterministic bytes; xorshift is enough to defeat any accidental
/// pattern-dependent success and is fast for tens of MiB.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fails loudly: these tests exist to check real clients, so a missing tool
/// is a broken environment, not a reason to skip.
pub fn require_tool(bin: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` not found in PATH: install the Debian package `{package}` (apt-get install -y {package})"
    );
}

async fn run(mut cmd: tokio::process::Command, limit: Duration) -> Output {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let child = cmd.output();
    match tokio::time::timeout(limit, child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {cmd:?}: {e}"),
        Err(_) => panic!("{cmd:?} did not finish within {limit:?}"),
    }
}

/// tftp-hpa's client: no options, 512-byte lockstep.
pub async fn tftp_hpa_get(addr: SocketAddr, remote: &str, local: &Path, mode: &str) -> Output {
    require_tool("tftp", "tftp-hpa");
    let mut cmd = tokio::process::Command::new("tftp");
    cmd.arg("-m")
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg("-c")
        .arg("get")
        .arg(remote)
        .arg(local);
    run(cmd, Duration::from_secs(120)).await
}

pub async fn tftp_hpa_put(addr: SocketAddr, local: &Path, remote: &str) -> Output {
    require_tool("tftp", "tftp-hpa");
    let mut cmd = tokio::process::Command::new("tftp");
    cmd.arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg("-c")
        .arg("put")
        .arg(local)
        .arg(remote);
    run(cmd, Duration::from_secs(30)).await
}

/// atftp's client with `--option` pairs such as `"blksize 1468"`.
pub async fn atftp_get(addr: SocketAddr, remote: &str, local: &Path, options: &[&str]) -> Output {
    require_tool("atftp", "atftp");
    let mut cmd = tokio::process::Command::new("atftp");
    cmd.arg("-g").arg("-r").arg(remote).arg("-l").arg(local);
    for o in options {
        cmd.arg("--option").arg(o);
    }
    cmd.arg("--trace")
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    run(cmd, Duration::from_secs(120)).await
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A minimal RFC 7440 client.
#[derive(Default)]
pub struct Client {
    pub mode: &'static str,
    pub options: Vec<(String, String)>,
    /// Block indexes (1-based, never wrapped) to drop the first time they
    /// arrive, to exercise partial-ACK recovery.
    pub drop_once: Vec<u64>,
    /// Receive this many bytes then stop acknowledging.
    pub stop_after: Option<u64>,
}

#[derive(Debug)]
pub struct Download {
    pub data: Vec<u8>,
    pub oack: Option<HashMap<String, String>>,
    pub server_tid: SocketAddr,
    pub acks_sent: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientError {
    Tftp { code: u16, message: String },
    Timeout,
    Protocol(String),
}

impl Client {
    pub fn option(mut self, name: &str, value: &str) -> Client {
        self.options.push((name.into(), value.into()));
        self
    }

    pub async fn get(&self, server: SocketAddr, file: &str) -> Result<Download, ClientError> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let mut req = Vec::new();
        Packet::Rrq(packet::Request {
            filename: file,
            mode: if self.mode.is_empty() {
                "octet"
            } else {
                self.mode
            },
            options: self
                .options
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
        })
        .encode(&mut req);
        socket.send_to(&req, server).await.expect("send rrq");

        let windowsize: u64 = self
            .options
            .iter()
            .find(|(n, _)| n == "windowsize")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        let mut blksize = 512usize;
        let mut window = 1u64;
        let mut buf = vec![0u8; 70000];
        let mut data = Vec::new();
        let mut oack = None;
        let mut tid: Option<SocketAddr> = None;
        let mut expected: u64 = 1;
        let mut in_window = 0u64;
        let mut dropped: Vec<u64> = Vec::new();
        let mut acks_sent = 0u64;
        let mut silent_rounds = 0;
        let mut gap_acked = false;
        loop {
            let (n, from) = match tokio::time::timeout(
                Duration::from_secs(2),
                socket.recv_from(&mut buf),
            )
            .await
            {
                Ok(r) => r.expect("recv"),
                Err(_) => {
                    silent_rounds += 1;
                    if silent_rounds > 5 || tid.is_none() {
                        return Err(ClientError::Timeout);
                    }
                    // Like a real client: re-ACK the last good block.
                    let t = tid.expect("tid");
                    socket
                        .send_to(&packet::ack((expected - 1) as u16), t)
                        .await
                        .expect("send");
                    acks_sent += 1;
                    continue;
                }
            };
            silent_rounds = 0;
            let t = *tid.get_or_insert(from);
            if from != t {
                return Err(ClientError::Protocol(format!("reply from {from}, TID {t}")));
            }
            match Packet::parse(&buf[..n]) {
                Ok(Packet::Oack { options }) if expected == 1 && oack.is_none() => {
                    let map: HashMap<String, String> = options
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    if let Some(b) = map.get("blksize") {
                        blksize = b.parse().expect("blksize");
                    }
                    if let Some(w) = map.get("windowsize") {
                        window = w.parse().expect("windowsize");
                        assert!(window <= windowsize.max(1), "server raised windowsize");
                    }
                    oack = Some(map);
                    socket.send_to(&packet::ack(0), t).await.expect("send");
                    acks_sent += 1;
                }
                Ok(Packet::Oack { .. }) => {
                    // A retransmitted OACK: our ACK 0 was lost or late.
                    socket.send_to(&packet::ack(0), t).await.expect("send");
                    acks_sent += 1;
                }
                Ok(Packet::Data { block, data: d }) => {
                    let index_wire = expected as u16;
                    if block == index_wire {
                        if self.drop_once.contains(&expected) && !dropped.contains(&expected) {
                            dropped.push(expected);
                            continue;
                        }
                        data.extend_from_slice(d);
                        gap_acked = false;
                        in_window += 1;
                        let last = d.len() < blksize;
                        if let Some(limit) = self.stop_after {
                            if data.len() as u64 >= limit {
                                return Err(ClientError::Timeout);
                            }
                        }
                        if last || in_window >= window {
                            socket.send_to(&packet::ack(block), t).await.expect("send");
                            acks_sent += 1;
                            in_window = 0;
                        }
                        expected += 1;
                        if last {
                            return Ok(Download {
                                data,
                                oack,
                                server_tid: t,
                                acks_sent,
                            });
                        }
                    } else if block == (expected as u16).wrapping_sub(1) {
                        // Duplicate of what we have; ignore.
                    } else {
                        // Gap: RFC 7440 says ACK the last in-order block so
                        // the server restarts the window from there.
                        // Only once per gap, or every straggler of the window
                        // would ask for yet another resend.
                        if !gap_acked {
                            socket
                                .send_to(&packet::ack((expected - 1) as u16), t)
                                .await
                                .expect("send");
                            acks_sent += 1;
                            gap_acked = true;
                        }
                        in_window = 0;
                    }
                }
                Ok(Packet::Error { code, message }) => {
                    return Err(ClientError::Tftp {
                        code,
                        message: message.to_string(),
                    })
                }
                other => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            }
        }
    }
}
