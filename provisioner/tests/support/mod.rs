//! A rack in a box for the provisioner's end-to-end test and benchmark: a
//! private L2 segment (a bridge inside a network namespace created here),
//! the provisioner binary on it as the only DHCP server, and QEMU VMs with
//! empty disks that network-boot through their firmware's iPXE. Nothing
//! leaves the namespace; it is removed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NET: &str = "10.77.0";
/// The subnet behind the DHCP relay (`RelayedSegment`).
pub const RELAYED: &str = "10.78.0";
/// Debian's OVMF build (package ovmf) with its firmware's own iPXE.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn image_cache() -> PathBuf {
    std::env::var_os("STRATO_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/strato/images"))
}

/// The namespace with its bridge; removed (with everything in it) on drop.
pub struct Segment {
    pub ns: String,
    children: Vec<Child>,
}

impl Segment {
    pub fn new() -> Segment {
        let ns = format!("pv{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        sh(&["ip", "netns", "add", &ns]);
        let seg = Segment {
            ns,
            children: Vec::new(),
        };
        seg.ip(&["link", "set", "lo", "up"]);
        seg.ip(&["link", "add", "br0", "type", "bridge"]);
        seg.ip(&["addr", "add", &format!("{NET}.1/24"), "dev", "br0"]);
        seg.ip(&["link", "set", "br0", "up"]);
        seg
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.ns];
        all.extend_from_slice(args);
        sh(&all)
    }

    pub fn spawn(&mut self, args: &[&str], log: &Path) -> usize {
        let f = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("fd"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn running(&mut self, i: usize) -> bool {
        matches!(self.children[i].try_wait(), Ok(None))
    }

    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// The provisioner's API, called from inside the namespace.
    pub fn api(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.api_at(&format!("http://{NET}.1:8080"), token, method, path, body)
    }

    /// An HTTP JSON API at `base` (inside the namespace).
    pub fn api_at(
        &self,
        base: &str,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns.clone(),
            "curl".into(),
            "-s".into(),
            "-o".into(),
            "/dev/stdout".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "-X".into(),
            method.into(),
            "-H".into(),
            format!("Authorization: Bearer {token}"),
        ];
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "Content-Type: application/json".into(),
                "-d".into(),
                b.into(),
            ]);
        }
        args.push(format!("{base}{path}"));
        let out = Command::new("ip").args(&args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let v = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        (code.trim().parse().unwrap_or(0), v)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

pub struct Vm {
    pub memory_mib: u32,
    pub console: PathBuf,
    pub disk: PathBuf,
    pub mac: String,
    pub tap: String,
}

impl Vm {
    pub fn new(dir: &Path, seg: &Segment, n: u8) -> Vm {
        let disk = dir.join(format!("vm{n}.raw"));
        let f = std::fs::File::create(&disk).expect("disk");
        f.set_len(2 << 30).expect("sparse disk");
        let tap = format!("tap{n}");
        seg.ip(&["tuntap", "add", &tap, "mode", "tap"]);
        seg.ip(&["link", "set", &tap, "master", "br0", "up"]);
        Vm {
            memory_mib: 384,
            console: dir.join(format!("vm{n}.console")),
            disk,
            mac: format!("52:54:00:77:00:{n:02x}"),
            tap,
        }
    }

    /// Powers it on: network first, then its disk (as a rack's machines are
    /// set up), with SeaBIOS or, when `uefi`, OVMF.
    pub fn boot(&self, seg: &mut Segment, dir: &Path) -> usize {
        self.boot_with(seg, dir, false)
    }

    pub fn boot_with(&self, seg: &mut Segment, dir: &Path, uefi: bool) -> usize {
        let drive = format!("file={},if=virtio,format=raw", self.disk.display());
        let netdev = format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap);
        let nic = format!("virtio-net-pci,netdev=n0,mac={}", self.mac);
        let serial = format!("file:{}", self.console.display());
        let memory = self.memory_mib.to_string();
        let mut args = vec![
            "qemu-system-x86_64",
            "-machine",
            "pc,accel=tcg",
            "-m",
            &memory,
            "-smp",
            "2",
            "-display",
            "none",
            "-serial",
            &serial,
            "-netdev",
            &netdev,
            "-device",
            &nic,
            "-drive",
            &drive,
            "-boot",
            "order=nc,reboot-timeout=5000",
        ];
        if uefi {
            args.extend(["-bios", OVMF]);
        }
        seg.spawn(&args, &dir.join(format!("qemu-{}.log", self.tap)))
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }
}

pub fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A running provisioner on its own segment: (segment, its process index,
/// temp dir, image dir, API token).
pub struct Rack {
    pub seg: Segment,
    pub prov: usize,
    pub dir: tempfile::TempDir,
    pub images: PathBuf,
    /// With post-install: the stack manager in the namespace.
    pub stack_manager: Option<StackManagerInNs>,
}

/// A real stack manager process inside the namespace, listening on the
/// bridge's address, where installed machines enroll.
pub struct StackManagerInNs {
    pub url: String,
    pub internal_url: String,
    pub admin_token: String,
    /// The operator's SSH key that post-install installs on every machine.
    pub operator_key: PathBuf,
    pub log: PathBuf,
}

pub const TOKEN: &str = "test-token-0123456789";

/// A workspace binary next to this test's provisioner binary.
pub fn sibling_bin(name: &str) -> PathBuf {
    testkit::workspace_bin(env!("CARGO_BIN_EXE_provisioner"), name)
}

impl Rack {
    pub fn start() -> Rack {
        Rack::start_with(false)
    }

    /// `post_install`: a stack manager runs in the namespace too, and the
    /// provisioner takes deployed machines over SSH until their agent
    /// enrolls there.
    pub fn start_with(post_install: bool) -> Rack {
        let boot_env = image_cache().join("boot-env");
        for f in ["vmlinuz", "initrd.img"] {
            assert!(
                boot_env.join(f).exists(),
                "{} is missing: run `bash scripts/boot-env.sh` (scripts/test.sh does)",
                boot_env.join(f).display()
            );
        }
        let tiny = image_cache().join("tiny.raw");
        assert!(
            tiny.exists(),
            "{} is missing: run `bash scripts/guest-images.sh`",
            tiny.display()
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let images = state.join("images");
        std::fs::create_dir_all(&images).expect("image dir");
        std::fs::copy(&tiny, images.join("tiny.raw")).expect("image");
        let config = dir.path().join("provisioner.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nhttp_listen = \"{NET}.1:8080\"\nhttp_url = \"http://{NET}.1:8080\"\n\
                 api_token = \"{TOKEN}\"\nboot_env_dir = \"{}\"\nsweep_interval_secs = 1\n\
                 commissioning_timeout_secs = 300\ndeploying_timeout_secs = 900\nlog = \"info,provisioner=debug,dhcp=debug\"\n\
                 [dhcp]\nlisten = \"0.0.0.0:67\"\ninterface = \"br0\"\nserver_ip = \"{NET}.1\"\n\
                 [[dhcp.subnets]]\nnetwork = \"{NET}.0/24\"\npool = {{ start = \"{NET}.100\", end = \"{NET}.150\" }}\n\
                 routers = [\"{NET}.1\"]\n\
                 [[dhcp.subnets]]\nnetwork = \"{RELAYED}.0/24\"\npool = {{ start = \"{RELAYED}.100\", end = \"{RELAYED}.150\" }}\n\
                 routers = [\"{RELAYED}.1\"]\n",
                state.display(),
                boot_env.display(),
            ),
        )
        .expect("config");
        let mut seg = Segment::new();
        let stack_manager = post_install.then(|| {
            // The image post-install needs: sshd and cloud-init, as raw.
            let debian = image_cache().join("debian.qcow2");
            assert!(
                debian.exists(),
                "{} is missing: run `bash scripts/guest-images.sh`",
                debian.display()
            );
            sh(&[
                "qemu-img",
                "convert",
                "-O",
                "raw",
                &debian.display().to_string(),
                &images.join("debian.raw").display().to_string(),
            ]);
            let sm = start_stack_manager(&mut seg, dir.path());
            let agents = dir.path().join("agents");
            std::fs::create_dir_all(&agents).expect("agent dir");
            // Debug symbols are most of a test build's size; the machine
            // gets what an operator would ship.
            sh(&[
                "strip",
                "-o",
                &agents.join("storage-agent").display().to_string(),
                &sibling_bin("storage-agent").display().to_string(),
            ]);
            std::fs::write(
                &config,
                format!(
                    "{}[post_install]\nstack_manager_url = \"{}\"\nagent_stack_manager_url = \"{}\"\n\
                     admin_token = \"{}\"\nauthorized_keys_file = \"{}.pub\"\nagent_dir = \"{}\"\n\
                     enroll_timeout_secs = 240\n",
                    std::fs::read_to_string(&config).expect("config"),
                    sm.url,
                    sm.internal_url,
                    sm.admin_token,
                    sm.operator_key.display(),
                    agents.display()
                ),
            )
            .expect("config");
            sm
        });
        let bin = env!("CARGO_BIN_EXE_provisioner");
        let cfg = config.display().to_string();
        let prov = seg.spawn(
            &[bin, "run", "--config", &cfg],
            &dir.path().join("provisioner.log"),
        );
        wait("the provisioner to answer", 30, || {
            (seg.api(TOKEN, "GET", "/v1/machines", None).0 == 200).then_some(())
        });
        Rack {
            seg,
            prov,
            dir,
            images,
            stack_manager,
        }
    }

    /// The stack manager's API (admin), from inside the namespace.
    pub fn stack_manager_api(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let sm = self
            .stack_manager
            .as_ref()
            .expect("a rack with post-install");
        self.seg
            .api_at(&sm.url, &sm.admin_token, method, path, None)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provisioner.log")).unwrap_or_default()
    }

    /// Waits until the machine with `mac` reaches `state`, failing fast on `failed`.
    pub fn wait_state(
        &mut self,
        mac: &str,
        state: &str,
        failed: &str,
        secs: u64,
        console: impl Fn() -> String,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            assert!(
                self.seg.running(self.prov),
                "the provisioner exited:\n{}",
                self.log()
            );
            let (_, list) = self.seg.api(TOKEN, "GET", "/v1/machines", None);
            let m = list
                .as_array()
                .and_then(|l| l.iter().find(|m| m["mac"] == mac).cloned());
            if let Some(m) = m {
                assert_ne!(m["state"], failed, "{m}\n{}", console());
                if m["state"] == state {
                    return m;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {mac} to be {state}\n--- console ---\n{}\n--- provisioner ---\n{}",
                console(),
                self.log().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn start_stack_manager(seg: &mut Segment, dir: &Path) -> StackManagerInNs {
    let bin = sibling_bin("stack-manager");
    let state = dir.join("sm");
    let admin_token = testkit::init_stack_manager(&bin, &state);
    let config = dir.join("stack-manager.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{NET}.1:7100\"\ninternal_listen = \"{NET}.1:7101\"\nstate_dir = \"{}\"\nlog = \"info\"\n",
            state.display()
        ),
    )
    .expect("stack manager config");
    let log = dir.join("stack-manager.log");
    seg.spawn(
        &[
            &bin.display().to_string(),
            "serve",
            "--config",
            &config.display().to_string(),
        ],
        &log,
    );
    let url = format!("http://{NET}.1:7100");
    wait("the stack manager to answer", 30, || {
        (seg.api_at(&url, &admin_token, "GET", "/v1/hosts", None).0 == 200).then_some(())
    });
    let operator_key = dir.join("operator_ed25519");
    sh(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "operator@strato-test",
        "-f",
        &operator_key.display().to_string(),
    ]);
    StackManagerInNs {
        url,
        internal_url: format!("http://{NET}.1:7101"),
        admin_token,
        operator_key,
        log,
    }
}

/// A second L2 segment behind a router that relays DHCP to the provisioner
/// (isc-dhcp-relay, adding option 82), as on a rack whose provisioner sits
/// on another subnet. The router is its own namespace; its downstream
/// bridge is extended by a veth to an address-less bridge in the host
/// namespace, where libvirt can plug its domains. Removed on drop.
pub struct RelayedSegment {
    pub router: String,
    /// The host-namespace bridge libvirt domains attach to.
    pub host_bridge: String,
    relay: Child,
    pub relay_log: PathBuf,
}

impl RelayedSegment {
    pub fn new(seg: &Segment, dir: &Path) -> RelayedSegment {
        let id = &seg.ns[2..];
        let router = format!("pr{id}");
        let host_bridge = format!("sb{id}");
        let (up, up_peer) = (format!("ru{id}"), format!("rp{id}"));
        let (down, down_peer) = (format!("hv{id}"), format!("hr{id}"));
        sh(&["ip", "netns", "add", &router]);
        let r = |args: &[&str]| {
            let mut all = vec!["ip", "-n", &router];
            all.extend_from_slice(args);
            sh(&all)
        };
        r(&["link", "set", "lo", "up"]);
        // Upstream: a leg on the provisioner's bridge.
        sh(&[
            "ip", "link", "add", &up, "type", "veth", "peer", "name", &up_peer,
        ]);
        sh(&["ip", "link", "set", &up, "netns", &router]);
        sh(&["ip", "link", "set", &up_peer, "netns", &seg.ns]);
        seg.ip(&["link", "set", &up_peer, "master", "br0", "up"]);
        r(&["addr", "add", &format!("{NET}.254/24"), "dev", &up]);
        r(&["link", "set", &up, "up"]);
        // Downstream: the relayed subnet's bridge, routed.
        r(&["link", "add", "br1", "type", "bridge"]);
        r(&["addr", "add", &format!("{RELAYED}.1/24"), "dev", "br1"]);
        r(&["link", "set", "br1", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        seg.ip(&[
            "route",
            "add",
            &format!("{RELAYED}.0/24"),
            "via",
            &format!("{NET}.254"),
        ]);
        // The host bridge: no address, so the host stack takes no part.
        sh(&["ip", "link", "add", &host_bridge, "type", "bridge"]);
        let _ = Command::new("sysctl")
            .args([
                "-qw",
                &format!("net.ipv6.conf.{host_bridge}.disable_ipv6=1"),
            ])
            .output();
        sh(&["ip", "link", "set", &host_bridge, "up"]);
        sh(&[
            "ip", "link", "add", &down, "type", "veth", "peer", "name", &down_peer,
        ]);
        sh(&["ip", "link", "set", &down, "master", &host_bridge, "up"]);
        sh(&["ip", "link", "set", &down_peer, "netns", &router]);
        r(&["link", "set", &down_peer, "master", "br1", "up"]);
        let relay_log = dir.join("dhcrelay.log");
        let f = std::fs::File::create(&relay_log).expect("relay log");
        let relay = Command::new("ip")
            .args(["netns", "exec", &router, "dhcrelay", "-4", "-d", "-a"])
            .args(["-id", "br1", "-iu", &up, &format!("{NET}.1")])
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("fd"))
            .stderr(f)
            .spawn()
            .expect("dhcrelay (Debian's isc-dhcp-relay)");
        RelayedSegment {
            router,
            host_bridge,
            relay,
            relay_log,
        }
    }
}

impl Drop for RelayedSegment {
    fn drop(&mut self) {
        let _ = self.relay.kill();
        let _ = self.relay.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_bridge])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.router])
            .output();
    }
}

/// A libvirt domain (TCG, OVMF, network first then disk) with an empty
/// disk on a host bridge: the machine the libvirt power driver switches.
/// Undefined on drop.
pub struct LibvirtVm {
    pub name: String,
    pub mac: String,
    pub console: PathBuf,
}

pub const LIBVIRT_URI: &str = "qemu:///system";

impl LibvirtVm {
    pub fn define(dir: &Path, bridge: &str, n: u8) -> LibvirtVm {
        // QEMU runs as libvirt's user: its files live in a directory it
        // can enter (libvirt chowns the disk itself).
        let vm_dir = dir.join(format!("libvirt-vm{n}"));
        std::fs::create_dir_all(&vm_dir).expect("vm dir");
        for d in [dir, vm_dir.as_path()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let disk = vm_dir.join("disk.raw");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(2 << 30))
            .expect("disk");
        let name = format!(
            "strato-pxe-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mac = format!("52:54:00:78:00:{n:02x}");
        let console = vm_dir.join("console.log");
        let xml = format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>384</memory>\n  <vcpu>2</vcpu>\n\
             <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <loader readonly='yes' type='rom'>{OVMF}</loader>\n\
             <boot dev='network'/>\n    <boot dev='hd'/>\n  </os>\n  <features><acpi/><apic/></features>\n\
             <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n\
             <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n\
             <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n\
             <interface type='bridge'>\n      <source bridge='{bridge}'/>\n      <mac address='{mac}'/>\n\
             <model type='virtio'/>\n    </interface>\n\
             <serial type='pty'>\n      <log file='{}' append='on'/>\n      <target port='0'/>\n    </serial>\n\
             <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n  </devices>\n</domain>\n",
            disk.display(),
            console.display()
        );
        let xml_path = vm_dir.join("domain.xml");
        std::fs::write(&xml_path, xml).expect("domain xml");
        sh(&[
            "virsh",
            "-c",
            LIBVIRT_URI,
            "define",
            &xml_path.display().to_string(),
        ]);
        LibvirtVm { name, mac, console }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    pub fn state(&self) -> String {
        sh(&["virsh", "-c", LIBVIRT_URI, "domstate", &self.name])
            .trim()
            .to_string()
    }
}

impl Drop for LibvirtVm {
    fn drop(&mut self) {
        let virsh = |verb: &str| {
            let _ = Command::new("virsh")
                .args(["-c", LIBVIRT_URI, verb, &self.name])
                .output();
        };
        virsh("destroy");
        virsh("undefine");
    }
}
