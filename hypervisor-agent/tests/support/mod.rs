//! A real all-in-one cloud for end-to-end tests: the `stack-manager` and
//! `hypervisor-agent` binaries as processes, the machine's libvirtd and
//! QEMU, and the tiny guest image built by `scripts/guest-images.sh`.
//! Nothing is simulated; a missing prerequisite fails the test loudly.
//! [`Cloud`] is one host; [`fleet::Fleet`] is several, each agent in its own
//! network namespace. Both reach the stack manager through [`Api`].

#![allow(dead_code)]

pub mod fleet;
pub mod storage;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api::ids::{HostId, InstanceId, NetworkId};
use api::resources::*;
use api::Client;

pub const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g test@strato";

pub use testkit::{free_port, wait_async};

/// The agents' `shutdown_timeout_secs`: how long a stop waits for the
/// guest to power off after ACPI before destroying it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

pub fn sibling_bin(name: &str) -> PathBuf {
    testkit::workspace_bin(env!("CARGO_BIN_EXE_hypervisor-agent"), name)
}

fn bin(name: &str) -> PathBuf {
    sibling_bin(name)
}

pub fn image_cache() -> PathBuf {
    std::env::var_os("STRATO_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/strato/images"))
}

/// A guest image built by `scripts/guest-images.sh`, with its sha256.
pub fn guest_image(file: &str) -> (PathBuf, String) {
    let path = image_cache().join(file);
    let sha = std::fs::read_to_string(path.with_file_name(format!("{file}.sha256")));
    match sha {
        Ok(sha) if path.exists() => (
            path,
            sha.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        _ => panic!(
            "guest image {} is missing: build it with `bash scripts/guest-images.sh` \
             (scripts/test.sh does this before the suite)",
            path.display()
        ),
    }
}

/// Panics with a clear message unless libvirtd answers on qemu:///system;
/// prints the libvirt and QEMU versions the test runs against.
pub fn require_libvirt() {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .expect("virsh is not installed: run the suite with `bash scripts/test.sh` (it installs libvirt)");
    assert!(
        out.status.success(),
        "libvirtd is not running: {} (scripts/test.sh starts it)",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "peers:\n{}",
        String::from_utf8_lossy(&out.stdout).trim_end()
    );
}

pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("run virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct AgentOptions {
    pub virt_type: &'static str,
    /// Interface carrying tenant VLANs.
    pub uplink: Option<&'static str>,
}

/// One hypervisor agent's config file, as the harnesses write it.
pub struct AgentConfig<'a> {
    pub internal_url: &'a str,
    pub token: &'a str,
    pub name: &'a str,
    pub listen: SocketAddr,
    pub state_dir: &'a Path,
    pub virt_type: &'a str,
    /// A directory images may also be registered from.
    pub image_dir: &'a Path,
    /// More TOML lines (`uplink`, `bridge_netns`, ...).
    pub extra: String,
}

pub fn write_agent_config(path: &Path, c: &AgentConfig) {
    std::fs::write(
        path,
        format!(
            "stack_manager_url = \"{}\"\nenrollment_token = \"{}\"\nname = \"{}\"\n\
             listen = \"{}\"\nstate_dir = \"{}\"\nvirt_type = \"{}\"\n\
             kvm_probe_timeout_secs = 8\nshutdown_timeout_secs = {}\nheartbeat_interval_secs = 1\n\
             reserved_ram_mib = 0\nlog = \"info,hypervisor_agent=debug\"\n\
             image_roots = [\"{}\", \"{}\"]\n{}",
            c.internal_url,
            c.token,
            c.name,
            c.listen,
            c.state_dir.display(),
            c.virt_type,
            SHUTDOWN_TIMEOUT.as_secs(),
            image_cache().display(),
            c.image_dir.display(),
            c.extra,
        ),
    )
    .expect("write agent config");
}

/// Starts the hypervisor agent with `config`, output appended to `log`,
/// inside network namespace `netns` when given (`ip netns exec` execs the
/// agent, so the child's pid is the agent's).
pub fn spawn_agent(config: &Path, log: &Path, netns: Option<&str>) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("agent log");
    let agent = env!("CARGO_BIN_EXE_hypervisor-agent");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, agent]);
            c
        }
        None => Command::new(agent),
    };
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .expect("start hypervisor-agent")
}

pub async fn enrollment_token(admin: &Client, kind: HostKind) -> String {
    admin
        .enrollment_token_create(&EnrollmentTokenCreate {
            kind,
            rack: None,
            expires_in_secs: 600,
        })
        .await
        .expect("enrollment token")
        .secret
}

/// Waits until the host named `name` has enrolled and heartbeated.
pub async fn wait_enrolled(admin: &Client, name: &str, log: &Path) -> Host {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(hosts) = admin.host_list().await {
            if let Some(h) = hosts
                .into_iter()
                .find(|h| h.name == name && h.last_heartbeat_at.is_some())
            {
                return h;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "agent {name} did not enroll and heartbeat within 60 s; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The stack manager's admin client and what every harness does through
/// it as a tenant. Bridges of the networks it created are removed when it
/// is dropped (after the harness stopped the agents and domains).
pub struct Api {
    pub admin: Client,
    /// Agent logs shown when an instance fails.
    logs: Vec<PathBuf>,
    networks: Mutex<Vec<NetworkId>>,
}

pub struct Cloud {
    pub dir: tempfile::TempDir,
    sm: testkit::StackManager,
    pub agent: Option<Child>,
    pub api: Api,
    pub public_url: String,
    pub internal_url: String,
    pub agent_config: PathBuf,
    pub agent_state: PathBuf,
    pub host_id: Option<HostId>,
    /// Domains a test defined by hand (not through the agent), undefined
    /// when the cloud is dropped whether the test passed or not.
    foreign_domains: Mutex<Vec<String>>,
}

impl std::ops::Deref for Cloud {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Cloud {
    /// Starts a stack manager and one enrolled hypervisor agent.
    pub async fn start(opts: AgentOptions) -> Cloud {
        Self::start_with(opts, "").await
    }

    /// [`start`](Self::start), with more TOML for the stack manager (whole
    /// tables other than `[scheduler]` and `[hosts]`).
    pub async fn start_with(opts: AgentOptions, extra_toml: &str) -> Cloud {
        require_libvirt();
        let dir = tempfile::tempdir().expect("temp dir");
        // QEMU runs as libvirt-qemu and must reach the agent's files.
        set_mode(dir.path(), 0o755);
        let sm = testkit::StackManager::start(
            &bin("stack-manager"),
            dir.path(),
            &format!(
                "[scheduler]\ncpu_allocation_ratio = 32.0\ndisk_allocation_ratio = 8.0\n\
                 [hosts]\nheartbeat_interval_secs = 1\ndown_after_secs = 10\nresync_interval_secs = 5\n{extra_toml}"
            ),
        )
        .await;
        let (admin, public_url, internal_url) = (
            sm.admin.clone(),
            sm.public_url.clone(),
            sm.internal_url.clone(),
        );
        let agent_state = dir.path().join("agent");
        let mut cloud = Cloud {
            agent_config: dir.path().join("hypervisor-agent.toml"),
            api: Api::new(admin, vec![dir.path().join("hypervisor-agent.log")]),
            dir,
            sm,
            agent: None,
            public_url,
            internal_url,
            agent_state,
            host_id: None,
            foreign_domains: Default::default(),
        };
        cloud.enroll_agent(opts).await;
        cloud
    }

    async fn enroll_agent(&mut self, opts: AgentOptions) {
        let token = enrollment_token(&self.admin, HostKind::Hypervisor).await;
        let name = format!(
            "hv-{}",
            self.dir
                .path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .replace('.', "")
                .to_lowercase()
        );
        write_agent_config(
            &self.agent_config,
            &AgentConfig {
                internal_url: &self.internal_url,
                token: &token,
                name: &name,
                listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
                state_dir: &self.agent_state,
                virt_type: opts.virt_type,
                image_dir: self.dir.path(),
                extra: opts
                    .uplink
                    .map(|u| format!("uplink = \"{u}\"\n"))
                    .unwrap_or_default(),
            },
        );
        self.start_agent();
        let log = self.dir.path().join("hypervisor-agent.log");
        let host = wait_enrolled(&self.admin, &name, &log).await;
        self.host_id = Some(host.id);
    }

    pub fn start_agent(&mut self) {
        self.agent = Some(spawn_agent(
            &self.agent_config,
            &self.dir.path().join("hypervisor-agent.log"),
            None,
        ));
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn admin_token(&self) -> String {
        self.sm.admin_token()
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hypervisor-agent.log")).unwrap_or_default()
    }

    /// Undefines the domain `name` when the cloud is dropped.
    pub fn undefine_on_drop(&self, name: &str) {
        self.foreign_domains
            .lock()
            .expect("foreign domains")
            .push(name.to_string());
    }

    /// The agent API with the host credential, as the stack manager calls it.
    pub async fn agent_client(&self) -> api::AgentClient {
        let host = self
            .admin
            .host_get(self.host_id.expect("enrolled"))
            .await
            .expect("host get");
        api::AgentClient::new(&host.agent_url, &host_credential(&self.agent_state))
    }

    /// The stack manager's internal API as this cloud's agent calls it.
    pub fn internal_client(&self) -> api::InternalClient {
        api::InternalClient::new(&self.internal_url, Some(host_credential(&self.agent_state)))
    }

    /// The libvirt name of the domain this cloud's host runs `id` in.
    pub fn domain(&self, id: InstanceId) -> String {
        domain_name(self.host_id.expect("enrolled"), id)
    }

    pub fn instance_dir(&self, id: InstanceId) -> PathBuf {
        self.agent_state.join("instances").join(id.to_string())
    }
}

impl Api {
    /// Runs the stack manager's consistency checker and fails on any
    /// drift: what the failure tests end with.
    pub async fn assert_consistent(&self) {
        testkit::assert_consistent(&self.admin).await;
    }

    pub fn new(admin: Client, logs: Vec<PathBuf>) -> Self {
        Self {
            admin,
            logs,
            networks: Default::default(),
        }
    }

    /// Every agent log this harness knows, each under its path.
    pub fn agent_logs(&self) -> String {
        self.logs
            .iter()
            .map(|p| {
                format!(
                    "==> {} <==\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A network with one subnet, a keypair and a small flavor.
    pub async fn tenant_basics(&self, net: &str, cidr: &str) -> Network {
        let n = self
            .admin
            .network_create(&NetworkCreate {
                name: net.into(),
                vlan: None,
                mtu: 1500,
            })
            .await
            .expect("network");
        self.admin
            .subnet_create(
                n.id,
                &SubnetCreate {
                    name: format!("{net}-v4"),
                    cidr: cidr.parse().expect("cidr"),
                    gateway: None,
                    pools: vec![],
                    reserved: vec![],
                    dns_servers: vec![],
                },
            )
            .await
            .expect("subnet");
        self.networks.lock().expect("networks").push(n.id);
        let keys = self.admin.keypair_list().await.expect("keypairs");
        if !keys.iter().any(|k| k.name == "test-key") {
            self.admin
                .keypair_create(&KeypairCreate {
                    name: "test-key".into(),
                    public_key: TEST_KEY.into(),
                })
                .await
                .expect("keypair");
            self.admin
                .flavor_create(&FlavorCreate {
                    name: "t1.micro".into(),
                    vcpus: 1,
                    ram_mib: 160,
                    disk_gib: 1,
                })
                .await
                .expect("flavor");
        }
        n
    }

    pub async fn register_image(
        &self,
        name: &str,
        source: &Path,
        format: ImageFormat,
        sha256: &str,
    ) -> Image {
        self.admin
            .image_create(&ImageCreate {
                name: name.into(),
                source: source.display().to_string(),
                format,
                sha256: sha256.into(),
                min_disk_gib: 1,
                visibility: Visibility::Public,
            })
            .await
            .expect("image")
    }

    pub async fn create_vm(
        &self,
        name: &str,
        image: &str,
        network: &str,
        user_data: Option<String>,
    ) -> Instance {
        self.create_vm_in(name, image, network, user_data, None)
            .await
    }

    /// [`Api::create_vm`] in anti-affinity group `group` (a name or id).
    pub async fn create_vm_in(
        &self,
        name: &str,
        image: &str,
        network: &str,
        user_data: Option<String>,
        group: Option<&str>,
    ) -> Instance {
        self.admin
            .instance_create(&InstanceCreate {
                name: name.into(),
                flavor: "t1.micro".into(),
                image: image.into(),
                networks: vec![network.into()],
                keypair: Some("test-key".into()),
                user_data,
                anti_affinity_group: group.map(str::to_string),
                start: true,
                relocation: Default::default(),
            })
            .await
            .expect("create instance")
    }

    /// Waits until the instance reports `status` (and fails fast on `error`).
    pub async fn wait_status(
        &self,
        id: InstanceId,
        status: InstanceStatus,
        timeout: Duration,
    ) -> Instance {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(i) = self.admin.instance_get(id).await {
                if i.status == InstanceStatus::Error && status != InstanceStatus::Error {
                    panic!(
                        "instance {id} went to error: {:?}\nagent logs:\n{}",
                        i.status_reason,
                        self.agent_logs()
                    );
                }
                if i.status == status {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for instance {id} to be {}",
                status.as_str()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asks for a lifecycle action and waits for the status it leads to.
    pub async fn act(&self, id: InstanceId, action: &str, then: InstanceStatus) -> Instance {
        self.admin
            .instance_action(id, action)
            .await
            .unwrap_or_else(|e| panic!("{action} {id}: {e}"));
        self.wait_status(id, then, Duration::from_secs(60)).await
    }

    pub async fn console(&self, id: InstanceId) -> String {
        self.admin
            .instance_console(id)
            .await
            .map(|c| c.data)
            .unwrap_or_default()
    }

    /// Waits until the console log contains `needle` `times` times.
    pub async fn wait_console(
        &self,
        id: InstanceId,
        needle: &str,
        times: usize,
        timeout: Duration,
    ) -> String {
        let admin = self.admin.clone();
        let needle = needle.to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let text = admin
                .instance_console(id)
                .await
                .map(|c| c.data)
                .unwrap_or_default();
            if text.matches(&needle).count() >= times {
                return text;
            }
            if Instant::now() > deadline {
                panic!("console of {id} never showed {needle:?} x{times} within {timeout:?}; it shows:\n{text}\nagent logs:\n{}", self.agent_logs());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Deletes the instances through the API and waits until none is left.
    pub async fn delete_all(&self, ids: &[InstanceId]) {
        for id in ids {
            self.admin.instance_delete(*id).await.expect("delete");
        }
        let admin = self.admin.clone();
        wait_async("instances deleted", Duration::from_secs(60), || {
            let admin = admin.clone();
            async move { admin.instance_list().await.ok().filter(|l| l.is_empty()) }
        })
        .await;
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        for n in self.networks.lock().map(|n| n.clone()).unwrap_or_default() {
            let bridge = hypervisor_agent::network::bridge_name(n);
            let _ = Command::new("ip")
                .args(["link", "del", "dev", &bridge])
                .output();
        }
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The per-host credential an agent stored in `state_dir` at enrollment.
pub fn host_credential(state_dir: &Path) -> String {
    let identity: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_dir.join("identity.json")).expect("identity.json"),
    )
    .expect("identity.json is JSON");
    identity["credential"]
        .as_str()
        .expect("credential in identity.json")
        .to_string()
}

/// The libvirt name of `host`'s domain for instance `id`.
pub fn domain_name(host: HostId, id: InstanceId) -> String {
    hypervisor_agent::domain::DomainIdentity::scoped(host, id).name
}

/// Domains created by this cloud's host, from libvirt itself.
pub fn domains_of(host: HostId) -> Vec<String> {
    virsh(&["list", "--all", "--name"])
        .lines()
        .filter(|n| n.starts_with("strato-"))
        .filter(|n| {
            virsh(&["metadata", n, "https://strato.dev/xmlns/libvirt/instance/1"])
                .contains(&host.to_string())
        })
        .map(str::to_string)
        .collect()
}

/// Destroys and undefines every domain `host` created, with its secrets.
pub fn remove_domains_of(host: HostId) {
    let secrets = virsh(&["secret-list"]);
    for d in domains_of(host) {
        virsh(&["destroy", &d]);
        virsh(&["undefine", &d, "--nvram"]);
        for line in secrets.lines().filter(|l| l.contains(&format!("{d}-"))) {
            if let Some(uuid) = line.split_whitespace().next() {
                virsh(&["secret-undefine", uuid]);
            }
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill_agent();
        // Whatever a failed test left behind must not leak into the next.
        if let Some(host) = self.host_id {
            remove_domains_of(host);
        }
        for d in self
            .foreign_domains
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
        {
            virsh(&["destroy", &d]);
            virsh(&["undefine", &d, "--nvram"]);
        }
        if std::env::var_os("STRATO_KEEP_TEST_DIRS").is_some() {
            let p = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp")).keep();
            eprintln!("kept test dir {}", p.display());
        }
    }
}
