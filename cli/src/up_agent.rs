//! The agents of `strato up`: a hypervisor agent and a storage agent on
//! this machine, enrolled with the local stack manager, plus what a first
//! VM needs — the tiny guest image built locally by
//! `scripts/guest-images.sh`, registered as a public image, and a `default`
//! network.
//!
//! Files in the state directory, per agent (`hypervisor-agent`,
//! `storage-agent`):
//!
//! ```text
//! <agent>.toml   config written by `strato up`
//! <agent>.log    its stdout and stderr
//! <agent>.pid    its process id
//! ```
//!
//! Each agent's own state (credential, caches, instances or volumes) lives
//! in its own directory: the hypervisor's in `--agent-state-dir`, by
//! default `/var/lib/strato/hypervisor`, because QEMU must reach it, which
//! a home directory usually forbids.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use api::ids::HostId;
use api::resources::*;
use api::Client;
use serde::Deserialize;

use crate::process::{
    find_binary, read_pid, running_as, spawn_detached, stop_process, tail, toml_str,
};
use crate::wait::spinner;

/// The first start probes KVM (up to 10 s) before enrolling.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// One kind of agent `strato up` runs.
pub struct Agent {
    /// Its binary, and the stem of its files in the state directory.
    pub binary: &'static str,
    /// How messages name it.
    pub what: &'static str,
    pub kind: HostKind,
}

pub const HYPERVISOR: Agent = Agent {
    binary: "hypervisor-agent",
    what: "hypervisor agent",
    kind: HostKind::Hypervisor,
};

pub const STORAGE: Agent = Agent {
    binary: "storage-agent",
    what: "storage agent",
    kind: HostKind::Storage,
};
pub const IMAGE_NAME: &str = "tiny";
pub const NETWORK_NAME: &str = "default";
const DEFAULT_CIDR: &str = "10.213.0.0/24";

pub struct AgentPaths {
    pub config: PathBuf,
    pub log: PathBuf,
    pub pid: PathBuf,
    pub state: PathBuf,
}

impl AgentPaths {
    pub fn new(agent: &Agent, state: &Path, agent_state: &Path) -> Self {
        Self {
            config: state.join(format!("{}.toml", agent.binary)),
            log: state.join(format!("{}.log", agent.binary)),
            pid: state.join(format!("{}.pid", agent.binary)),
            state: agent_state.to_path_buf(),
        }
    }
}

#[derive(Deserialize)]
struct Identity {
    host_id: HostId,
}

fn identity(p: &AgentPaths) -> Option<HostId> {
    let text = fs::read_to_string(p.state.join("identity.json")).ok()?;
    serde_json::from_str::<Identity>(&text)
        .ok()
        .map(|i| i.host_id)
}

fn write_config(
    p: &AgentPaths,
    internal_url: &str,
    listen: SocketAddr,
    token: Option<&str>,
    image_cache: &Path,
    extra: &str,
) -> Result<()> {
    let mut text = format!(
        "# Written by `strato up`; rewritten on every `strato up`.\n\
         stack_manager_url = {}\nlisten = {}\nstate_dir = {}\n\
         image_roots = [{}, {}]\n",
        toml_str(internal_url),
        toml_str(&listen.to_string()),
        toml_str(&p.state.display().to_string()),
        toml_str("/var/lib/strato/images"),
        toml_str(&image_cache.display().to_string()),
    );
    text.push_str(extra);
    if let Some(t) = token {
        text.push_str(&format!("enrollment_token = {}\n", toml_str(t)));
    }
    crate::config::write_private(&p.config, text.as_bytes())
        .with_context(|| format!("cannot write {}", p.config.display()))
}

fn spawn(bin: &Path, p: &AgentPaths) -> Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(&p.config);
    spawn_detached(cmd, &p.log, &p.pid)
}

/// Starts the agent unless it runs, and waits until it heartbeats.
/// `extra` is appended to the config `strato up` writes for it.
#[allow(clippy::too_many_arguments)]
pub async fn ensure_agent(
    agent: &Agent,
    client: &Client,
    state: &Path,
    agent_state: &Path,
    internal_url: &str,
    listen: SocketAddr,
    image_cache: &Path,
    extra: &str,
) -> Result<(u32, HostId)> {
    let p = AgentPaths::new(agent, state, agent_state);
    fs::create_dir_all(&p.state).with_context(|| format!("cannot create {}", p.state.display()))?;
    let bin = find_binary(agent.binary, agent.binary)?;
    if let Some(pid) = read_pid(&p.pid).filter(|pid| running_as(*pid, agent.binary)) {
        let host = identity(&p).ok_or_else(|| {
            anyhow!(
                "the {} (pid {pid}) runs but has not enrolled; see {}",
                agent.what,
                p.log.display()
            )
        })?;
        return Ok((pid, host));
    }
    // A credential from an earlier cloud (its state directory was removed)
    // is useless here: enroll anew.
    if let Some(host) = identity(&p) {
        if client
            .host_get(host)
            .await
            .is_err_and(|e| e.status() == Some(404))
        {
            let stale = p.state.join("identity.json");
            fs::rename(&stale, p.state.join("identity.json.stale"))
                .with_context(|| format!("cannot move aside {}", stale.display()))?;
        }
    }
    // Enrolled once already: the credential in its state is reused.
    let token = match identity(&p) {
        Some(_) => None,
        None => Some(
            client
                .enrollment_token_create(&EnrollmentTokenCreate {
                    kind: agent.kind,
                    rack: None,
                    expires_in_secs: 3600,
                })
                .await
                .with_context(|| {
                    format!(
                        "cannot create an enrollment token for the local {}",
                        agent.what
                    )
                })?
                .secret,
        ),
    };
    write_config(
        &p,
        internal_url,
        listen,
        token.as_deref(),
        image_cache,
        extra,
    )?;
    let mut child = spawn(&bin, &p)?;
    let pid = child.id();
    let pb = spinner(format!("starting the {} (enrolling)", agent.what));
    let deadline = Instant::now() + AGENT_TIMEOUT;
    let result = loop {
        if let Some(host) = identity(&p) {
            if let Ok(h) = client.host_get(host).await {
                if h.last_heartbeat_at.is_some() {
                    break Ok(host);
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow!(
                "the {} exited ({status}); the end of {}:\n{}",
                agent.what,
                p.log.display(),
                tail(&p.log, 20)
            ));
        }
        if Instant::now() >= deadline {
            break Err(anyhow!(
                "the {} did not heartbeat within {} s; see {}",
                agent.what,
                AGENT_TIMEOUT.as_secs(),
                p.log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    pb.finish_and_clear();
    match result {
        Ok(host) => {
            // It runs on after `strato up` exits; `strato down` stops it.
            std::mem::forget(child);
            Ok((pid, host))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&p.pid);
            Err(e)
        }
    }
}

/// Registers the locally built tiny image once, if it was built.
pub async fn ensure_image(client: &Client, cache: &Path) -> Result<Option<String>> {
    let path = cache.join("tiny.raw");
    let Ok(sum) = fs::read_to_string(cache.join("tiny.raw.sha256")) else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    let sha = sum
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let images = client.image_list().await?;
    if let Some(existing) = images.iter().find(|i| i.name == IMAGE_NAME) {
        if existing.sha256 == sha {
            return Ok(Some(IMAGE_NAME.into()));
        }
        // Rebuilt since: replace the registration (the cache keys by sha256).
        client.image_delete(existing.id).await?;
    }
    client
        .image_create(&ImageCreate {
            name: IMAGE_NAME.into(),
            source: path.display().to_string(),
            format: ImageFormat::Raw,
            sha256: sha,
            min_disk_gib: 1,
            visibility: Visibility::Public,
        })
        .await
        .context("cannot register the tiny guest image")?;
    Ok(Some(IMAGE_NAME.into()))
}

/// A `default` network with one subnet, unless the project has networks.
pub async fn ensure_network(client: &Client) -> Result<()> {
    if !client.network_list().await?.is_empty() {
        return Ok(());
    }
    let n = client
        .network_create(&NetworkCreate {
            name: NETWORK_NAME.into(),
            vlan: None,
            mtu: 1500,
        })
        .await?;
    client
        .subnet_create(
            n.id,
            &SubnetCreate {
                name: format!("{NETWORK_NAME}-v4"),
                cidr: DEFAULT_CIDR.parse().map_err(|e| anyhow!("{e}"))?,
                gateway: None,
                pools: vec![],
                reserved: vec![],
                dns_servers: vec![],
            },
        )
        .await?;
    Ok(())
}

/// Stops the agent (SIGTERM). VMs keep running and volumes keep their
/// data; the next `strato up` adopts them.
pub async fn stop_agent(agent: &Agent, state: &Path) -> Result<Option<u32>> {
    let p = AgentPaths::new(agent, state, Path::new(""));
    stop_process(agent.binary, agent.what, &p.pid, &p.log).await
}
