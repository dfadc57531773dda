//! Several real hosts on one machine: one stack manager, N hypervisor
//! agents each in its own network namespace with its own state directory,
//! host name and initiator IQN, and optionally one storage agent, all
//! sharing this machine's libvirtd and QEMU.
//!
//! Addressing: each fleet gets a private /24 `10.251.X.0/24` on a bridge
//! `sfl<tag>br` in the root namespace (the stack manager's internal API
//! listens on `10.251.X.1`); host `i` sits in namespace `strato-fl<tag>-h<i>`
//! at `10.251.X.(10+i)`, joined to the bridge by a veth pair whose root
//! side (`sfl<tag>h<i>`) is the host's "cable". Nothing outside the
//! namespaces and links the fleet created carries its traffic.
//!
//! QEMU runs under libvirtd in the root namespace, so guests' iSCSI
//! traffic to the storage agent (root namespace, loopback portal) never
//! crosses an agent's namespace: [`Fleet::partition`] cuts an agent off
//! from the stack manager while its VMs keep running and writing, as a
//! failed top-of-rack link would. Tenant bridges live in the root
//! namespace too (agents get `bridge_netns`), shared by every host: one L2
//! segment, like a real fabric.
//!
//! Everything is torn down on drop, also after a panic; namespaces and
//! links left by a test process that was killed are swept at the next
//! start (their tag names the dead process).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use api::ids::{HostId, InstanceId};
use api::resources::{HostHealth, HostKind};
use testkit::StorageAgent;

use super::*;

pub struct FleetOptions {
    pub hypervisors: usize,
    pub storage: bool,
    /// TOML merged over the fleet's stack-manager defaults (tables merge
    /// key by key), e.g. `"[hosts]\ndown_after_secs = 4\n"`.
    pub stack_manager_toml: String,
}

/// What a test may want to know about host `i`.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub host_id: HostId,
    pub name: String,
    /// `None` while the agent is not running.
    pub agent_pid: Option<u32>,
    pub netns: String,
    pub address: Ipv4Addr,
    pub initiator_iqn: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

struct FleetHost {
    info: HostInfo,
    config: PathBuf,
    /// Root-namespace end of the host's veth pair.
    cable: String,
    agent: Option<Child>,
}

/// The fleet's links and namespaces; removed on drop.
struct FleetNet {
    tag: String,
    subnet: u8,
    bridge: String,
    /// The root namespace under a name, for the agents' `bridge_netns`.
    root_ns: String,
    namespaces: Vec<String>,
}

/// Fields drop in this order after [`Fleet`]'s own drop stopped the
/// agents and domains: tenant bridges, the stack manager, the storage
/// agent, links and namespaces, and last the files.
pub struct Fleet {
    pub api: Api,
    sm: testkit::StackManager,
    pub storage: Option<StorageAgent>,
    hosts: Vec<FleetHost>,
    net: FleetNet,
    pub public_url: String,
    /// The stack manager's internal API, as agents reach it.
    pub internal_url: String,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for Fleet {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

const SM_DEFAULTS: &str = "[scheduler]\ncpu_allocation_ratio = 32.0\ndisk_allocation_ratio = 8.0\n\
     [hosts]\nheartbeat_interval_secs = 1\ndown_after_secs = 10\nresync_interval_secs = 5\n";

/// `extra` over `base`, tables merged key by key.
fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut t: toml::Table = base.parse().expect("fleet defaults are TOML");
    let e: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("stack_manager_toml is not TOML: {e}\n{extra}"));
    merge(&mut t, e);
    toml::to_string(&t).expect("serialize stack manager TOML")
}

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is iproute2 installed?)"))
}

/// Runs `ip args`, panicking with its error unless it succeeds.
fn ip(args: &[&str]) {
    let out = sh("ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Best effort, for teardown.
fn ip_quiet(args: &[&str]) {
    let _ = sh("ip", args);
}

static FLEETS: AtomicU32 = AtomicU32::new(0);
static SUBNETS: Mutex<()> = Mutex::new(());

/// A fleet's tag: this process's pid in hex and a one-digit counter, so a
/// later run can tell which process a leftover belongs to.
fn new_tag() -> String {
    let n = FLEETS.fetch_add(1, Ordering::Relaxed);
    assert!(n < 16, "at most 16 fleets per test process");
    format!("{:x}{n:x}", std::process::id())
}

fn tag_alive(tag: &str) -> bool {
    tag.get(..tag.len().saturating_sub(1))
        .and_then(|p| u32::from_str_radix(p, 16).ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes namespaces (with the agents still in them) and bridges of
/// fleets whose test process is gone.
fn sweep_dead_fleets() {
    let list = String::from_utf8_lossy(&sh("ip", &["netns", "list"]).stdout).into_owned();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix("strato-fl") else {
            continue;
        };
        let Some((tag, what)) = rest.split_once('-') else {
            continue;
        };
        if tag_alive(tag) {
            continue;
        }
        // A host namespace holds that test's agents only; the `-root` name
        // is this machine's own namespace, whose processes are everyone's.
        if what.starts_with('h') {
            let pids =
                String::from_utf8_lossy(&sh("ip", &["netns", "pids", ns]).stdout).into_owned();
            for pid in pids.split_whitespace() {
                let _ = sh("kill", &["-9", pid]);
            }
        }
        eprintln!("removing namespace {ns} left by a dead test process");
        ip_quiet(&["netns", "delete", ns]);
    }
    let links = String::from_utf8_lossy(&sh("ip", &["-o", "link", "show"]).stdout).into_owned();
    for name in links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
    {
        if let Some(tag) = name.strip_prefix("sfl").and_then(|r| r.strip_suffix("br")) {
            if !tag_alive(tag) {
                ip_quiet(&["link", "del", "dev", &name]);
            }
        }
    }
}

impl FleetNet {
    fn create(hosts: usize) -> FleetNet {
        assert!(hosts < 10, "a fleet has at most 9 hypervisors");
        sweep_dead_fleets();
        let tag = new_tag();
        let _guard = SUBNETS.lock().unwrap_or_else(|p| p.into_inner());
        let addrs =
            String::from_utf8_lossy(&sh("ip", &["-o", "-4", "addr", "show"]).stdout).into_owned();
        let subnet = (1..=254u8)
            .find(|x| !addrs.contains(&format!("10.251.{x}.")))
            .expect("a free 10.251.X.0/24 for the fleet");
        let mut net = FleetNet {
            bridge: format!("sfl{tag}br"),
            root_ns: format!("strato-fl{tag}-root"),
            tag,
            subnet,
            namespaces: Vec::new(),
        };
        ip(&["link", "add", "name", &net.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", "dev", &net.bridge, "up"]);
        // The root namespace by name: `ip -n` (the agents' bridge_netns)
        // only takes names under /run/netns.
        ip(&[
            "netns",
            "attach",
            &net.root_ns,
            &std::process::id().to_string(),
        ]);
        for i in 0..hosts {
            net.add_host(i);
        }
        net
    }

    /// Host `i`'s namespace, with its address, and its cable into the bridge.
    fn add_host(&mut self, i: usize) {
        assert!(i < 10, "a fleet has at most 9 hypervisors");
        let ns = format!("strato-fl{}-h{i}", self.tag);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let (cable, inner) = (self.cable(i), format!("sfl{}n{i}", self.tag));
        ip(&[
            "link", "add", &cable, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ]);
        ip(&["link", "set", "dev", &cable, "master", &self.bridge, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.host_address(i)),
            "dev",
            &inner,
        ]);
        ip(&["-n", &ns, "link", "set", "dev", &inner, "up"]);
        ip(&["-n", &ns, "link", "set", "dev", "lo", "up"]);
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.subnet, 1)
    }

    fn host_address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.subnet, 10 + i as u8)
    }

    fn cable(&self, i: usize) -> String {
        format!("sfl{}h{i}", self.tag)
    }
}

impl Drop for FleetNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair.
        for ns in &self.namespaces {
            ip_quiet(&["netns", "delete", ns]);
        }
        ip_quiet(&["link", "del", "dev", &self.bridge]);
        // Only unmounts the name; the root namespace lives on.
        ip_quiet(&["netns", "delete", &self.root_ns]);
    }
}

impl Fleet {
    /// Starts the stack manager, the storage agent (if asked) and the
    /// hypervisors, and waits until every one has enrolled and heartbeated.
    pub async fn start(opts: FleetOptions) -> Fleet {
        require_libvirt();
        let dir = tempfile::tempdir().expect("temp dir");
        // QEMU runs as libvirt-qemu and must reach the agents' files.
        set_mode(dir.path(), 0o755);
        let net = FleetNet::create(opts.hypervisors);
        let sm = testkit::StackManager::start_on(
            &sibling_bin("stack-manager"),
            dir.path(),
            IpAddr::V4(net.gateway()),
            &merge_toml(SM_DEFAULTS, &opts.stack_manager_toml),
        )
        .await;
        let logs = (0..opts.hypervisors)
            .map(|i| {
                dir.path()
                    .join(format!("h{i}"))
                    .join("hypervisor-agent.log")
            })
            .collect();
        let mut fleet = Fleet {
            api: Api::new(sm.admin.clone(), logs),
            public_url: sm.public_url.clone(),
            internal_url: sm.internal_url.clone(),
            sm,
            storage: None,
            hosts: Vec::new(),
            net,
            dir,
        };
        if opts.storage {
            fleet.storage = Some(
                super::storage::start_storage(
                    &fleet.api.admin,
                    &fleet.internal_url,
                    &fleet.dir.path().join("storage"),
                )
                .await,
            );
        }
        for i in 0..opts.hypervisors {
            fleet.add_host(i).await;
        }
        fleet
    }

    /// A new hypervisor joins the running fleet, as a rack added to a
    /// cloud: its namespace and cable, its agent enrolled and heartbeating.
    /// Returns its index.
    pub async fn grow(&mut self) -> usize {
        let i = self.hosts.len();
        self.net.add_host(i);
        self.api.logs.push(
            self.dir
                .path()
                .join(format!("h{i}"))
                .join("hypervisor-agent.log"),
        );
        self.add_host(i).await;
        i
    }

    async fn add_host(&mut self, i: usize) {
        let hdir = self.dir.path().join(format!("h{i}"));
        std::fs::create_dir_all(&hdir).expect("host dir");
        set_mode(&hdir, 0o755);
        let name = format!("fleet-{}-h{i}", self.net.tag);
        let iqn = format!("iqn.2026-11.io.strato:{name}");
        let address = self.net.host_address(i);
        let netns = self.net.namespaces[i].clone();
        let token = enrollment_token(&self.admin, HostKind::Hypervisor).await;
        let config = hdir.join("hypervisor-agent.toml");
        let state_dir = hdir.join("state");
        write_agent_config(
            &config,
            &AgentConfig {
                internal_url: &self.internal_url,
                token: &token,
                name: &name,
                // Inside its namespace only this host's address exists;
                // any port is free there.
                listen: SocketAddr::from((address, 7200)),
                state_dir: &state_dir,
                virt_type: "qemu",
                image_dir: self.dir.path(),
                extra: format!(
                    "initiator_iqn = \"{iqn}\"\nbridge_netns = \"{}\"\n",
                    self.net.root_ns
                ),
            },
        );
        let log = hdir.join("hypervisor-agent.log");
        let agent = spawn_agent(&config, &log, Some(&netns));
        let pid = agent.id();
        let host = wait_enrolled(&self.admin, &name, &log).await;
        self.hosts.push(FleetHost {
            info: HostInfo {
                host_id: host.id,
                name,
                agent_pid: Some(pid),
                netns,
                address,
                initiator_iqn: iqn,
                state_dir,
                log,
            },
            config,
            cable: self.net.cable(i),
            agent: Some(agent),
        });
    }

    fn h(&self, i: usize) -> &FleetHost {
        self.hosts
            .get(i)
            .unwrap_or_else(|| panic!("the fleet has no host {i}"))
    }

    fn h_mut(&mut self, i: usize) -> &mut FleetHost {
        self.hosts
            .get_mut(i)
            .unwrap_or_else(|| panic!("the fleet has no host {i}"))
    }

    pub fn hypervisors(&self) -> usize {
        self.hosts.len()
    }

    pub fn host(&self, i: usize) -> HostInfo {
        self.h(i).info.clone()
    }

    /// The index of the host with id `id`.
    pub fn index_of(&self, id: HostId) -> usize {
        self.hosts
            .iter()
            .position(|h| h.info.host_id == id)
            .unwrap_or_else(|| panic!("host {id} is not in the fleet"))
    }

    /// The libvirt name of host `i`'s domain for instance `id`.
    pub fn domain(&self, i: usize, id: InstanceId) -> String {
        domain_name(self.h(i).info.host_id, id)
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.h(i).info.log).unwrap_or_default()
    }

    pub fn stack_manager_log(&self) -> String {
        self.sm.log()
    }

    /// The agent API of host `i` with its credential, as the stack manager
    /// calls it (reachable from the root namespace unless partitioned).
    pub fn agent_client(&self, i: usize) -> api::AgentClient {
        let info = &self.h(i).info;
        api::AgentClient::new(
            &format!("http://{}:7200", info.address),
            &host_credential(&info.state_dir),
        )
    }

    /// SIGKILL of the agent alone: its VMs keep running.
    pub fn kill_agent(&mut self, i: usize) {
        let h = self.h_mut(i);
        if let Some(mut a) = h.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        h.info.agent_pid = None;
    }

    /// Power loss: the agent is SIGKILLed and every domain the host
    /// created is destroyed (left defined, as a powered-off host keeps its
    /// disks and definitions).
    pub fn kill_host(&mut self, i: usize) {
        self.kill_agent(i);
        for d in domains_of(self.h(i).info.host_id) {
            virsh(&["destroy", &d]);
        }
    }

    /// Starts host `i`'s agent again (killing it first if it runs): same
    /// config, state directory and namespace.
    pub fn restart_agent(&mut self, i: usize) {
        self.kill_agent(i);
        let h = self.h_mut(i);
        let agent = spawn_agent(&h.config, &h.info.log, Some(&h.info.netns));
        h.info.agent_pid = Some(agent.id());
        h.agent = Some(agent);
    }

    /// Unplugs host `i`'s cable: the agent keeps running but neither
    /// reaches the stack manager nor is reached by it. Its VMs, under
    /// libvirtd in the root namespace, keep running and reaching storage.
    pub fn partition(&self, i: usize) {
        ip(&["link", "set", "dev", &self.h(i).cable, "down"]);
    }

    pub fn heal(&self, i: usize) {
        ip(&["link", "set", "dev", &self.h(i).cable, "up"]);
    }

    /// Host `i`'s health as the admin API reports it.
    pub async fn health(&self, i: usize) -> HostHealth {
        self.admin
            .host_get(self.h(i).info.host_id)
            .await
            .expect("host get")
            .health
    }

    /// Waits until the admin API reports host `i` as `want`; how long it took.
    pub async fn wait_health(&self, i: usize, want: HostHealth, timeout: Duration) -> Duration {
        let since = Instant::now();
        loop {
            if self.health(i).await == want {
                return since.elapsed();
            }
            if since.elapsed() > timeout {
                panic!(
                    "host {i} was not {want:?} within {timeout:?}; stack manager log:\n{}",
                    self.sm.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill_agent(i);
        }
        for h in &self.hosts {
            remove_domains_of(h.info.host_id);
        }
        if std::env::var_os("STRATO_KEEP_TEST_DIRS").is_some() {
            let p = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp")).keep();
            eprintln!("kept test dir {}", p.display());
        }
    }
}
