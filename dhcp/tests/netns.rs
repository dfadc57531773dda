//! End-to-end with real ISC clients inside network namespaces this test
//! creates (never the host's interfaces):
//!
//! * `dhclient` on one end of a veth pair gets a reserved address, boot
//!   file and hostname from the server on the other end, then RELEASEs it;
//! * `dhcrelay -a` between two segments: the server answers the relay,
//!   serves the client's subnet from giaddr and records option 82.
//!
//! Needs root, `ip`, `dhclient` (isc-dhcp-client) and `dhcrelay`
//! (isc-dhcp-relay). Missing pieces fail the test loudly.

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dhcp::{Config, Mac, NoHooks, Reservation, Server, Subnet};

fn require_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(name).is_file()
        || Path::new("/sbin").join(name).is_file();
    assert!(
        found,
        "{name} not found: install it with `apt-get install -y {package}`"
    );
}

fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "network-namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    );
    require_tool("ip", "iproute2");
    require_tool("dhclient", "isc-dhcp-client");
    require_tool("dhcrelay", "isc-dhcp-relay");
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn suffix() -> String {
    format!("{:05x}", rand::random::<u32>() & 0xfffff)
}

/// A namespace deleted on drop, also when the test panics.
struct Netns(String);

impl Netns {
    fn new(tag: &str, id: &str) -> Netns {
        let name = format!("strato-dhcp-{tag}-{id}");
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0, "ip"];
        v.extend_from_slice(args);
        run(&v);
    }

    fn mac_of(&self, iface: &str) -> Mac {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "cat",
                &format!("/sys/class/net/{iface}/address"),
            ])
            .output()
            .expect("read mac");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("mac")
    }

    fn spawn(&self, args: &[&str], log: &Path) -> Proc {
        let f = File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .stdout(Stdio::from(f.try_clone().expect("dup")))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        Proc(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// veth pair created directly inside the two namespaces.
fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.0,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A child killed by PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server running on its own thread inside `ns`; shut down on drop.
struct NsServer {
    server: Server,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsServer {
    fn start(ns: &Netns, cfg: Config) -> NsServer {
        let path = format!("/var/run/netns/{}", ns.0);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = File::open(&path).expect("netns handle");
            // SAFETY: valid fd; setns only affects this thread, so sockets
            // it creates live in the test namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                match Server::bind(cfg, NoHooks).await {
                    Ok(s) => {
                        let _ = tx.send(Ok(s.clone()));
                        let _ = s.run().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
        let server = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server thread started")
            .unwrap_or_else(|e| panic!("server failed to start in namespace: {e}"));
        NsServer {
            server,
            thread: Some(thread),
        }
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, log: &Path, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out waiting for {what}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn dhclient_conf(dir: &Path) -> String {
    let p = dir.join("dhclient.conf");
    std::fs::write(
        &p,
        "send vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n\
         request subnet-mask, routers, domain-name-servers, domain-name, host-name;\n",
    )
    .expect("write dhclient.conf");
    p.display().to_string()
}

#[test]
fn dhclient_gets_reserved_address_and_boot_file_then_releases() {
    preflight();
    let id = suffix();
    let srv = Netns::new("srv", &id);
    let cli = Netns::new("cli", &id);
    let (s_if, c_if) = (format!("ds{id}"), format!("dc{id}"));
    veth(&srv, &s_if, &cli, &c_if);
    srv.ip(&["addr", "add", "10.77.0.1/24", "dev", &s_if]);
    let client_mac = cli.mac_of(&c_if);

    let mut subnet = Subnet::new(
        "10.77.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 77, 0, 100),
        Ipv4Addr::new(10, 77, 0, 150),
    );
    subnet.routers = vec![Ipv4Addr::new(10, 77, 0, 1)];
    subnet.domain_name = Some("prov.test".into());
    let cfg = Config {
        listen: SocketAddr::from(([0, 0, 0, 0], 67)),
        interface: Some(s_if.clone()),
        server_ip: Ipv4Addr::new(10, 77, 0, 1),
        subnets: vec![subnet],
        reservations: vec![Reservation {
            mac: client_mac,
            ip: Ipv4Addr::new(10, 77, 0, 42),
            hostname: Some("e2e-node".into()),
        }],
        ..Config::default()
    };
    let server = NsServer::start(&srv, cfg);

    let dir = tempfile::tempdir().unwrap();
    let conf = dhclient_conf(dir.path());
    let lease = dir.path().join("dhclient.leases");
    let pid = dir.path().join("dhclient.pid");
    let log = dir.path().join("dhclient.log");
    let (lf, pf) = (lease.display().to_string(), pid.display().to_string());
    let client = cli.spawn(
        &[
            "dhclient",
            "-4",
            "-d",
            "-v",
            "-1",
            "-cf",
            &conf,
            "-lf",
            &lf,
            "-pf",
            &pf,
            "-sf",
            "/bin/true",
            &c_if,
        ],
        &log,
    );
    wait_for("dhclient lease", Duration::from_secs(30), &log, || {
        std::fs::read_to_string(&lease).is_ok_and(|s| s.contains("fixed-address 10.77.0.42;"))
    });
    let text = std::fs::read_to_string(&lease).unwrap();
    assert!(text.contains("filename \"undionly.kpxe\";"), "{text}");
    assert!(text.contains("option host-name \"e2e-node\";"), "{text}");
    assert!(text.contains("option routers 10.77.0.1;"), "{text}");
    assert!(
        text.contains("option dhcp-server-identifier 10.77.0.1;"),
        "{text}"
    );

    let leases = server.server.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(
        (leases[0].mac, leases[0].ip),
        (client_mac, Ipv4Addr::new(10, 77, 0, 42))
    );
    assert_eq!(
        leases[0].arch,
        Some(0),
        "arch parsed from the PXEClient vendor class"
    );

    // Release through the real client. It unicasts from the leased address,
    // so configure it as the (disabled) client script would have.
    drop(client);
    cli.ip(&["addr", "add", "10.77.0.42/24", "dev", &c_if]);
    let rlog = dir.path().join("release.log");
    let mut rel = cli.spawn(
        &[
            "dhclient",
            "-4",
            "-r",
            "-v",
            "-cf",
            &conf,
            "-lf",
            &lf,
            "-pf",
            &pf,
            "-sf",
            "/bin/true",
            &c_if,
        ],
        &rlog,
    );
    let _ = rel.0.wait();
    wait_for("release processed", Duration::from_secs(10), &rlog, || {
        server.server.leases().is_empty()
    });
}

#[test]
fn dhcrelay_with_option_82() {
    preflight();
    let id = suffix();
    let srv = Netns::new("srv", &id);
    let rly = Netns::new("rly", &id);
    let cli = Netns::new("cli", &id);
    let (s_if, up_if, down_if, c_if) = (
        format!("rs{id}"),
        format!("ru{id}"),
        format!("rd{id}"),
        format!("rc{id}"),
    );
    veth(&srv, &s_if, &rly, &up_if);
    veth(&rly, &down_if, &cli, &c_if);
    srv.ip(&["addr", "add", "10.78.1.1/24", "dev", &s_if]);
    srv.ip(&["route", "add", "10.78.2.0/24", "via", "10.78.1.2"]);
    rly.ip(&["addr", "add", "10.78.1.2/24", "dev", &up_if]);
    rly.ip(&["addr", "add", "10.78.2.1/24", "dev", &down_if]);
    let client_mac = cli.mac_of(&c_if);

    let mut client_net = Subnet::new(
        "10.78.2.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 78, 2, 100),
        Ipv4Addr::new(10, 78, 2, 150),
    );
    client_net.routers = vec![Ipv4Addr::new(10, 78, 2, 1)];
    let mut server_net = Subnet::new(
        "10.78.1.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 78, 1, 100),
        Ipv4Addr::new(10, 78, 1, 150),
    );
    server_net.pool = None;
    let cfg = Config {
        listen: SocketAddr::from(([0, 0, 0, 0], 67)),
        interface: Some(s_if.clone()),
        server_ip: Ipv4Addr::new(10, 78, 1, 1),
        subnets: vec![server_net, client_net],
        ..Config::default()
    };
    let server = NsServer::start(&srv, cfg);

    let dir = tempfile::tempdir().unwrap();
    let relay_log = dir.path().join("dhcrelay.log");
    let _relay = rly.spawn(
        &[
            "dhcrelay",
            "-4",
            "-d",
            "-a",
            "--no-pid",
            "-id",
            &down_if,
            "-iu",
            &up_if,
            "10.78.1.1",
        ],
        &relay_log,
    );
    std::thread::sleep(Duration::from_millis(500));

    let conf = dhclient_conf(dir.path());
    let lease = dir.path().join("dhclient.leases");
    let log = dir.path().join("dhclient.log");
    let (lf, pf) = (
        lease.display().to_string(),
        dir.path().join("pid").display().to_string(),
    );
    let _client = cli.spawn(
        &[
            "dhclient",
            "-4",
            "-d",
            "-v",
            "-1",
            "-cf",
            &conf,
            "-lf",
            &lf,
            "-pf",
            &pf,
            "-sf",
            "/bin/true",
            &c_if,
        ],
        &log,
    );
    wait_for("relayed lease", Duration::from_secs(30), &log, || {
        std::fs::read_to_string(&lease).is_ok_and(|s| s.contains("fixed-address 10.78.2."))
    });
    let text = std::fs::read_to_string(&lease).unwrap();
    assert!(text.contains("option routers 10.78.2.1;"), "{text}");

    let leases = server.server.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let l = &leases[0];
    assert_eq!(l.mac, client_mac);
    let relay = l.relay.as_ref().expect("relay data recorded");
    assert_eq!(
        relay.giaddr,
        Ipv4Addr::new(10, 78, 2, 1),
        "giaddr is the relay's downstream address"
    );
    assert_eq!(
        relay.circuit_id_lossy().as_deref(),
        Some(down_if.as_str()),
        "dhcrelay -a puts the interface name in circuit-id"
    );
    // dhcrelay only forwards a reply whose option 82 it recognises, so the
    // client having a lease proves the echo was correct.
}
