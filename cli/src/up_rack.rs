//! `strato up --rack N`: a demo rack on this machine. A private bridge
//! (the host takes `.1` of its /24 and nothing is routed or NATed beyond
//! it), the provisioner serving DHCP and HTTP boot on it, and N empty
//! libvirt domains that network-boot. The provisioner powers them through
//! its libvirt driver, commissions them, deploys the Debian guest image
//! (`auto_deploy`) and takes them over SSH until their storage agent
//! enrolls in this stack manager: the whole bare-metal path, on VMs.
//!
//! Storage nodes, because the Debian image carries no libvirt for a
//! hypervisor agent. The domains run under TCG (`type='qemu'`): nested
//! KVM is not something to assume on the machine a demo runs on.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use api::provision::{MachineAction, MachineCreate, MachineState, PowerSpec};
use api::resources::{HostKind, RackCreate};
use api::{Client, ProvisionerClient};

use crate::process::{
    find_binary, read_pid, running_as, spawn_detached, stop_process, tail, toml_str,
};

pub const LIBVIRT_URI: &str = "qemu:///system";
const RACK_NAME: &str = "demo-rack";
const IMAGE: &str = "debian.raw";
const PROVISIONER_PORT: u16 = 8080;

/// What `strato up --rack` needs to know.
pub struct RackSpec<'a> {
    pub machines: u8,
    pub bridge: &'a str,
    /// The host's address on the bridge; the rack is its /24.
    pub address: Ipv4Addr,
    /// Disks, consoles, images and the provisioner's state (QEMU must be
    /// able to enter it).
    pub dir: &'a Path,
    /// `strato up`'s state directory: config, log and pid file.
    pub state: &'a Path,
    pub image_cache: &'a Path,
    pub public_url: &'a str,
    pub internal_url: &'a str,
    pub admin_token: &'a str,
}

pub struct RackUp {
    pub provisioner_url: String,
    pub token_file: PathBuf,
    pub pid: u32,
    pub machines: Vec<String>,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge, with the host's address on it; must exist before the stack
/// manager binds its internal API there.
pub fn ensure_bridge(bridge: &str, address: Ipv4Addr) -> Result<()> {
    if !Path::new("/sys/class/net").join(bridge).exists() {
        run("ip", &["link", "add", bridge, "type", "bridge"])?;
    }
    let cidr = format!("{address}/24");
    let shown = run("ip", &["-4", "-o", "addr", "show", "dev", bridge])?;
    if !shown.contains(&format!("inet {cidr}")) {
        run("ip", &["addr", "add", &cidr, "dev", bridge])?;
    }
    run("ip", &["link", "set", bridge, "up"])?;
    Ok(())
}

fn paths(state: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        state.join("provisioner.toml"),
        state.join("provisioner.log"),
        state.join("provisioner.pid"),
    )
}

fn domain_name(bridge: &str, i: u8) -> String {
    format!("{bridge}-node-{i}")
}

fn subnet_of(a: Ipv4Addr) -> [u8; 3] {
    let o = a.octets();
    [o[0], o[1], o[2]]
}

pub async fn start(spec: &RackSpec<'_>) -> Result<RackUp> {
    let boot_env = spec.image_cache.join("boot-env");
    for f in ["vmlinuz", "initrd.img"] {
        if !boot_env.join(f).exists() {
            bail!(
                "{} is missing: build the boot environment with `bash scripts/boot-env.sh` \
                 (`bash scripts/up.sh --rack N` does)",
                boot_env.join(f).display()
            );
        }
    }
    let debian = spec.image_cache.join("debian.qcow2");
    if !debian.exists() {
        bail!(
            "{} is missing: build it with `bash scripts/guest-images.sh debian` \
             (`bash scripts/up.sh --rack N` does)",
            debian.display()
        );
    }
    let prov_state = spec.dir.join("provisioner");
    let images = spec.dir.join("images");
    let nodes = spec.dir.join("nodes");
    for d in [spec.dir, &prov_state, &images, &nodes] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // QEMU runs as libvirt's user and must reach the disks.
    for d in [spec.dir, &nodes] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", d.display()))?;
    }
    let raw = images.join(IMAGE);
    let stale = match (fs::metadata(&raw), fs::metadata(&debian)) {
        (Ok(r), Ok(q)) => r.modified()? < q.modified()?,
        _ => true,
    };
    if stale {
        let tmp = images.join(".debian.raw.tmp");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                &debian.display().to_string(),
                &tmp.display().to_string(),
            ],
        )?;
        fs::rename(&tmp, &raw)?;
    }

    let admin = Client::new(spec.public_url, spec.admin_token).with_project(Some("admin".into()));
    if !admin.rack_list().await?.iter().any(|r| r.name == RACK_NAME) {
        admin
            .rack_create(&RackCreate {
                name: RACK_NAME.into(),
                location: "strato up --rack".into(),
            })
            .await?;
    }

    let token_file = prov_state.join("api.token");
    let token = match fs::read_to_string(&token_file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = random_token()?;
            crate::config::write_private(&token_file, t.as_bytes())?;
            t
        }
    };
    let admin_token_file = prov_state.join("stack-manager-admin.token");
    crate::config::write_private(&admin_token_file, spec.admin_token.as_bytes())?;
    let [a, b, c] = subnet_of(spec.address);
    let url = format!("http://{}:{PROVISIONER_PORT}", spec.address);
    let agent_dir = find_binary("storage-agent", "storage-agent")?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("the storage agent binary has no directory"))?;
    let (config, log, pid_file) = paths(spec.state);
    let text = format!(
        "# Written by `strato up --rack`; rewritten on every `strato up --rack`.\n\
         state_dir = {state}\nimage_dir = {images}\nhttp_listen = \"{addr}:{PROVISIONER_PORT}\"\n\
         http_url = \"{url}\"\napi_token_file = {token}\nboot_env_dir = {boot_env}\n\
         [auto_deploy]\nimage = \"{IMAGE}\"\nrole = \"storage\"\n\
         [dhcp]\nlisten = \"0.0.0.0:67\"\ninterface = \"{bridge}\"\nserver_ip = \"{addr}\"\n\
         [[dhcp.subnets]]\nnetwork = \"{a}.{b}.{c}.0/24\"\n\
         pool = {{ start = \"{a}.{b}.{c}.100\", end = \"{a}.{b}.{c}.199\" }}\nrouters = [\"{addr}\"]\n\
         [post_install]\nstack_manager_url = \"{public}\"\nagent_stack_manager_url = \"{internal}\"\n\
         admin_token_file = {admin}\nagent_dir = {agents}\n",
        state = toml_str_path(&prov_state),
        images = toml_str_path(&images),
        addr = spec.address,
        token = toml_str_path(&token_file),
        boot_env = toml_str_path(&boot_env),
        bridge = spec.bridge,
        public = spec.public_url,
        internal = spec.internal_url,
        admin = toml_str_path(&admin_token_file),
        agents = toml_str_path(&agent_dir),
    );
    crate::config::write_private(&config, text.as_bytes())?;

    let bin = find_binary("provisioner", "provisioner")?;
    let (pid, mut child) = match read_pid(&pid_file).filter(|p| running_as(*p, "provisioner")) {
        Some(p) => (p, None),
        None => {
            let mut cmd = Command::new(&bin);
            cmd.arg("run").arg("--config").arg(&config);
            let c = spawn_detached(cmd, &log, &pid_file)?;
            (c.id(), Some(c))
        }
    };
    let prov = ProvisionerClient::new(&url, &token);
    let mut answered = false;
    for _ in 0..120 {
        if prov.machine_list().await.is_ok() {
            answered = true;
            break;
        }
        // Our own child: whether it exited (its command line is not
        // reliable until exec). One started earlier: whether it runs.
        let gone = match child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !running_as(pid, "provisioner"),
        };
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !answered {
        bail!(
            "the provisioner did not answer on {url}; see {}:\n{}",
            log.display(),
            tail(&log, 20)
        );
    }

    let known = prov.machine_list().await?;
    let mut names = Vec::new();
    for i in 1..=spec.machines {
        let name = format!("node-{i}");
        let domain = domain_name(spec.bridge, i);
        let mac = format!("52:54:00:{c:02x}:00:{i:02x}");
        define_domain(&domain, &mac, spec.bridge, &nodes)?;
        let m = match known.iter().find(|m| m.name == name) {
            Some(m) => m.clone(),
            None => {
                prov.machine_create(&MachineCreate {
                    name: name.clone(),
                    mac,
                    role: HostKind::Storage,
                    rack: Some(RACK_NAME.into()),
                    power: PowerSpec::Libvirt {
                        uri: LIBVIRT_URI.into(),
                        domain: domain.clone(),
                    },
                })
                .await?
            }
        };
        if m.state == MachineState::New {
            prov.machine_act(&name, &MachineAction::Commission).await?;
        }
        names.push(name);
    }
    Ok(RackUp {
        provisioner_url: url,
        token_file,
        pid,
        machines: names,
    })
}

fn toml_str_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// 32 hex digits from the kernel's CSPRNG.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An empty VM that boots from the network first, unless defined already.
fn define_domain(name: &str, mac: &str, bridge: &str, dir: &Path) -> Result<()> {
    if run("virsh", &["-c", LIBVIRT_URI, "dominfo", name]).is_ok() {
        return Ok(());
    }
    let disk = dir.join(format!("{name}.raw"));
    if !disk.exists() {
        fs::File::create(&disk)
            .and_then(|f| f.set_len(4 << 30))
            .with_context(|| format!("cannot create {}", disk.display()))?;
    }
    let console = dir.join(format!("{name}.console"));
    let xml = format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>512</memory>\n  <vcpu>2</vcpu>\n\
         <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <boot dev='network'/>\n    <boot dev='hd'/>\n  </os>\n\
         <features><acpi/><apic/></features>\n\
         <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n\
         <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n\
         <source file='{disk}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n\
         <interface type='bridge'>\n      <source bridge='{bridge}'/>\n      <mac address='{mac}'/>\n\
         <model type='virtio'/>\n    </interface>\n\
         <serial type='pty'>\n      <log file='{console}' append='on'/>\n      <target port='0'/>\n    </serial>\n\
         <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n  </devices>\n</domain>\n",
        disk = disk.display(),
        console = console.display(),
    );
    let xml_path = dir.join(format!("{name}.xml"));
    fs::write(&xml_path, xml).with_context(|| format!("cannot write {}", xml_path.display()))?;
    run(
        "virsh",
        &["-c", LIBVIRT_URI, "define", &xml_path.display().to_string()],
    )?;
    Ok(())
}

/// `strato down`: the provisioner stops and the rack's domains power off
/// (they stay defined, so the next `strato up --rack` finds them).
pub async fn stop(state: &Path, bridge: &str) -> Result<Option<u32>> {
    let (_, log, pid_file) = paths(state);
    let stopped = stop_process("provisioner", "provisioner", &pid_file, &log).await?;
    if let Ok(list) = run("virsh", &["-c", LIBVIRT_URI, "list", "--name"]) {
        let prefix = format!("{bridge}-node-");
        for d in list
            .lines()
            .map(str::trim)
            .filter(|d| d.starts_with(&prefix))
        {
            let _ = run("virsh", &["-c", LIBVIRT_URI, "destroy", d]);
        }
    }
    Ok(stopped)
}
