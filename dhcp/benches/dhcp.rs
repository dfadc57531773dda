//! Load benchmark: full DISCOVER/OFFER/REQUEST/ACK exchanges per second
//! against Strato's server and dnsmasq, in the same run, over veth inside
//! network namespaces this bench creates.
//!
//! The generator acts as a relay agent (giaddr set, listening on port 67 in
//! its own namespace) so both servers answer it by unicast and thousands
//! of distinct MACs can be simulated from one socket.
//!
//!   CARGO_TARGET_DIR=target-dhcp cargo bench -p strato-dhcp --bench dhcp
//!
//! Env: BENCH_N (exchanges, default 40000), BENCH_WINDOW (in flight, 256).
//! Needs root, iproute2 and dnsmasq.

use std::collections::VecDeque;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dhcp::{Config, NoHooks, Server, Subnet};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const GIADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns(String);

impl Netns {
    fn new(tag: &str, id: &str) -> Netns {
        let n = Netns(format!("strato-dhcpb-{tag}-{id}"));
        run(&["ip", "netns", "add", &n.0]);
        n.ip(&["link", "set", "lo", "up"]);
        n
    }
    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0, "ip"];
        v.extend_from_slice(args);
        run(&v);
    }
    fn enter(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.0)).expect("netns handle");
        // SAFETY: valid fd; affects only the calling thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn packet(i: u32, msg_type: u8, requested: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[3] = 1; // hops: we are a relay
    p[4..8].copy_from_slice(&i.to_be_bytes());
    p[24..28].copy_from_slice(&GIADDR.octets());
    p[28..34].copy_from_slice(&[
        0x02,
        0x42,
        (i >> 24) as u8,
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ]);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, msg_type]);
    if let Some((ip, sid)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&ip.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&sid.octets());
    }
    p.extend_from_slice(&[55, 3, 1, 3, 6, 255]);
    p
}

/// (xid, message type, yiaddr, server id)
fn parse(b: &[u8]) -> Option<(u32, u8, Ipv4Addr, Option<Ipv4Addr>)> {
    if b.len() < 240 || b[0] != 2 {
        return None;
    }
    let xid = u32::from_be_bytes(b[4..8].try_into().ok()?);
    let yiaddr = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let (mut ty, mut sid, mut i) = (0, None, 240);
    while i + 1 < b.len() {
        let (code, len) = (b[i], b[i + 1] as usize);
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let data = b.get(i + 2..i + 2 + len)?;
        match code {
            53 if len == 1 => ty = data[0],
            54 if len == 4 => sid = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            _ => {}
        }
        i += 2 + len;
    }
    Some((xid, ty, yiaddr, sid))
}

struct Outcome {
    done: u64,
    failed: u64,
    secs: f64,
}

/// Runs `n` exchanges with at most `window` in flight. Single-threaded so
/// the server under test gets the other core.
fn generate(n: u32, window: u32, base: u32) -> Outcome {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 67))
        .expect("bind relay port 67 in generator namespace");
    sock.set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let server = SocketAddr::from((SERVER_IP, 67));
    let mut state = vec![0u8; n as usize]; // 0 idle, 1 discover sent, 2 request sent, 3 done, 4 failed
    let mut started: VecDeque<(u32, Instant)> = VecDeque::new();
    let (mut next, mut inflight, mut done, mut failed) = (0u32, 0u32, 0u64, 0u64);
    let mut buf = [0u8; 1500];
    let t0 = Instant::now();
    while (done + failed) < u64::from(n) && t0.elapsed() < Duration::from_secs(60) {
        while inflight < window && next < n {
            let _ = sock.send_to(&packet(base + next, 1, None), server);
            state[next as usize] = 1;
            started.push_back((next, Instant::now()));
            next += 1;
            inflight += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => {
                let Some((xid, ty, yiaddr, sid)) = parse(&buf[..len]) else {
                    continue;
                };
                let Some(idx) = xid.checked_sub(base).filter(|i| *i < n) else {
                    continue;
                };
                let st = &mut state[idx as usize];
                match (ty, *st) {
                    (2, 1) => {
                        *st = 2;
                        let _ = sock.send_to(
                            &packet(xid, 3, Some((yiaddr, sid.unwrap_or(SERVER_IP)))),
                            server,
                        );
                    }
                    (5, 2) => {
                        *st = 3;
                        done += 1;
                        inflight -= 1;
                    }
                    (6, 1 | 2) => {
                        *st = 4;
                        failed += 1;
                        inflight -= 1;
                    }
                    _ => {}
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("generator recv: {e}"),
        }
        // Lost packets must not shrink the window forever.
        while let Some(&(idx, at)) = started.front() {
            let s = state[idx as usize];
            if s >= 3 {
                started.pop_front();
            } else if at.elapsed() > EXCHANGE_TIMEOUT {
                state[idx as usize] = 4;
                failed += 1;
                inflight -= 1;
                started.pop_front();
            } else {
                break;
            }
        }
    }
    Outcome {
        done,
        failed,
        secs: t0.elapsed().as_secs_f64(),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass
    // nothing useful, so only run when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "benchmark needs root for network namespaces"
    );
    let n: u32 = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let window: u32 = std::env::var("BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    assert!(n <= 60_000, "pool holds ~65k addresses");

    let id = format!("{:05x}", std::process::id() & 0xfffff);
    let srv = Netns::new("srv", &id);
    let gen = Netns::new("gen", &id);
    let (s_if, g_if) = (format!("bs{id}"), format!("bg{id}"));
    srv.ip(&[
        "link", "add", &s_if, "type", "veth", "peer", "name", &g_if, "netns", &gen.0,
    ]);
    srv.ip(&["link", "set", &s_if, "up"]);
    gen.ip(&["link", "set", &g_if, "up"]);
    srv.ip(&["addr", "add", "10.98.0.1/24", "dev", &s_if]);
    gen.ip(&["addr", "add", "10.98.0.2/24", "dev", &g_if]);
    gen.ip(&["addr", "add", "10.99.0.1/16", "dev", &g_if]);
    srv.ip(&["route", "add", "10.99.0.0/16", "via", &GEN_IP.to_string()]);
    let dir = tempfile::tempdir().expect("tempdir");

    let mut results = Vec::new();

    // --- Strato ---
    {
        let mut subnet = Subnet::new(
            "10.99.0.0/16".parse().unwrap(),
            Ipv4Addr::new(10, 99, 1, 0),
            Ipv4Addr::new(10, 99, 255, 254),
        );
        subnet.routers = vec![GIADDR];
        let cfg = Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 67)),
            server_ip: SERVER_IP,
            subnets: vec![subnet],
            lease_db: Some(dir.path().join("strato.leases")),
            ..Config::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let srv_name = srv.0.clone();
        let thread = std::thread::spawn(move || {
            Netns(srv_name.clone()).enter_forget();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let s = Server::bind(cfg, NoHooks).await.expect("bind strato");
                tx.send(s.clone()).unwrap();
                s.run().await.unwrap();
            });
        });
        let server = rx.recv().expect("strato started");
        let out = in_ns(&gen, move || {
            warm_up(0x00f0_0000);
            generate(n, window, 0)
        });
        server.shutdown();
        thread.join().unwrap();
        results.push(("strato-dhcp", out));
    }

    // --- dnsmasq: default (lease file rewritten on every change), and with
    // --leasefile-ro to show its in-memory speed ---
    for (label, base, extra) in [
        ("dnsmasq", 0x0100_0000u32, None),
        ("dnsmasq -ro", 0x0200_0000, Some("--leasefile-ro")),
    ] {
        let lease = dir.path().join(format!("dnsmasq-{base:x}.leases"));
        let log = File::create(dir.path().join(format!("dnsmasq-{base:x}.log"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &srv.0,
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--user=root",
            "--pid-file=",
            "--conf-file=/dev/null",
        ])
        .arg(format!("--interface={s_if}"))
        .arg("--dhcp-range=10.99.1.0,10.99.255.254,255.255.0.0,1h")
        .arg(format!("--dhcp-leasefile={}", lease.display()))
        .args([
            "--dhcp-authoritative",
            "--dhcp-lease-max=100000",
            "--no-ping",
            "--quiet-dhcp",
        ]);
        if let Some(x) = extra {
            cmd.arg(x);
        }
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("dnsmasq (apt-get install -y dnsmasq)");
        let _dnsmasq = Proc(child);
        std::thread::sleep(Duration::from_millis(500));
        let out = in_ns(&gen, move || {
            warm_up(base + 0x00f0_0000);
            generate(n, window, base)
        });
        results.push((label, out));
    }

    println!();
    println!("DHCP exchanges (DISCOVER/OFFER/REQUEST/ACK via relay, {n} distinct MACs, window {window}, veth in netns)");
    println!(
        "{:<14} {:>10} {:>8} {:>9} {:>14}",
        "server", "completed", "failed", "seconds", "exchanges/s"
    );
    for (name, o) in &results {
        println!(
            "{:<14} {:>10} {:>8} {:>9.2} {:>14.0}",
            name,
            o.done,
            o.failed,
            o.secs,
            o.done as f64 / o.secs
        );
    }
}

/// One exchange before timing, so ARP is resolved both ways and the first
/// window is not lost to the neighbour queue.
fn warm_up(base: u32) {
    for _ in 0..5 {
        if generate(1, 1, base).done == 1 {
            return;
        }
    }
    panic!("server does not answer");
}

fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = ns.0.clone();
    std::thread::spawn(move || {
        Netns(name).enter_forget();
        f()
    })
    .join()
    .expect("generator thread")
}

impl Netns {
    /// Enters without taking ownership of deletion.
    fn enter_forget(self) {
        self.enter();
        std::mem::forget(self);
    }
}
