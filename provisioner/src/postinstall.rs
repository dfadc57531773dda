//! Post-install: turns a machine running its freshly written image into an
//! enrolled stack manager host.
//!
//! 1. The deploy environment seeds the installed system's cloud-init with
//!    this provisioner's NoCloud endpoint (`http.rs`), whose user-data
//!    authorizes the provisioner's SSH key for root and phones home with
//!    the system's SSH host keys once cloud-init is done.
//! 2. Over SSH (russh), verifying the server against those host keys, the
//!    provisioner installs the operator's keys, uploads the agent for the
//!    machine's role, writes its config with a one-time enrollment token
//!    minted from the stack manager, and starts it under systemd.
//! 3. It watches the stack manager until a host of that name and kind is
//!    up; then the machine is deployed, with that host's id.
//!
//! Every step is idempotent, so a provisioner restart resumes machines
//! that phoned home from step 2.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::ids::HostId;
use api::provision::Machine;
use api::resources::{EnrollmentTokenCreate, HostHealth, HostKind};
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tera::{Context, Tera};

use crate::machines::Machines;

const USER_DATA: &str = include_str!("../../templates/install/user-data.yaml.tera");
const META_DATA: &str = include_str!("../../templates/install/meta-data.yaml.tera");
const SEED: &str = include_str!("../../templates/install/cloud-init-seed.cfg.tera");
const STORAGE_AGENT: &str = include_str!("../../templates/install/storage-agent.toml.tera");
const HYPERVISOR_AGENT: &str = include_str!("../../templates/install/hypervisor-agent.toml.tera");
const AGENT_UNIT: &str = include_str!("../../templates/install/strato-agent.service.tera");

/// `[post_install]` in the provisioner's config. Without it, a deployment
/// ends when the image is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostInstallConfig {
    /// The stack manager's public API, where one-time enrollment tokens are
    /// minted and hosts are watched; several replicas separated by commas.
    /// Default `http://127.0.0.1:7100`.
    pub stack_manager_url: String,
    /// The stack manager's internal (agent) API as installed machines reach
    /// it; goes into every agent's config. Default `http://127.0.0.1:7101`
    /// — set it on any real rack.
    pub agent_stack_manager_url: String,
    /// An admin API token of the stack manager. Default: none (then
    /// `admin_token_file` is required).
    pub admin_token: Option<String>,
    /// File holding that token, when `admin_token` is unset.
    pub admin_token_file: Option<PathBuf>,
    /// OpenSSH public keys (one per line) installed for root on every
    /// machine, for the operators. Default: none.
    pub authorized_keys_file: Option<PathBuf>,
    /// The provisioner's own SSH key (OpenSSH ed25519), created on first
    /// start. Default `<state_dir>/ssh/id_ed25519`.
    pub ssh_key_file: Option<PathBuf>,
    /// Default 22.
    pub ssh_port: u16,
    /// Where `storage-agent` and `hypervisor-agent` binaries are, for
    /// upload. Default: the directory of the provisioner's executable.
    pub agent_dir: Option<PathBuf>,
    /// Seconds from the phone-home until the agent must be up in the stack
    /// manager (within the deploying timeout). Default 600.
    pub enroll_timeout_secs: u64,
    /// Directory overriding the built-in install templates (any of
    /// `user-data.yaml.tera`, `meta-data.yaml.tera`,
    /// `cloud-init-seed.cfg.tera`, `storage-agent.toml.tera`,
    /// `hypervisor-agent.toml.tera`, `strato-agent.service.tera`).
    /// Default: built-in (`templates/install/`).
    pub template_dir: Option<PathBuf>,
}

impl Default for PostInstallConfig {
    fn default() -> Self {
        Self {
            stack_manager_url: "http://127.0.0.1:7100".into(),
            agent_stack_manager_url: "http://127.0.0.1:7101".into(),
            admin_token: None,
            admin_token_file: None,
            authorized_keys_file: None,
            ssh_key_file: None,
            ssh_port: 22,
            agent_dir: None,
            enroll_timeout_secs: 600,
            template_dir: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PostInstallError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("ssh: {0}")]
    Ssh(String),
    #[error("on the machine, `{step}` failed (exit {status}): {stderr}")]
    Remote {
        step: &'static str,
        status: u32,
        stderr: String,
    },
    #[error("stack manager: {0}")]
    StackManager(String),
    #[error("template {0}: {1}")]
    Template(&'static str, String),
    #[error("{0}")]
    Other(String),
}

impl From<russh::Error> for PostInstallError {
    fn from(e: russh::Error) -> Self {
        PostInstallError::Ssh(e.to_string())
    }
}

type Result<T> = std::result::Result<T, PostInstallError>;

pub struct PostInstall {
    cfg: PostInstallConfig,
    key: Arc<PrivateKey>,
    public_key: String,
    operator_keys: Vec<String>,
    stack_manager: api::Client,
    agent_dir: PathBuf,
    tera: Tera,
}

/// Files the rendered templates need from a machine.
fn context(m: &Machine) -> Context {
    let mut ctx = Context::new();
    ctx.insert("id", &m.id.to_string());
    ctx.insert("name", &m.name);
    ctx.insert("mac", &m.mac);
    ctx.insert("role", m.role.as_str());
    ctx.insert("rack", &m.rack);
    ctx.insert("address", &m.address);
    ctx
}

fn agent_binary(role: HostKind) -> &'static str {
    match role {
        HostKind::Storage => "storage-agent",
        HostKind::Hypervisor => "hypervisor-agent",
    }
}

impl PostInstall {
    pub fn load(cfg: PostInstallConfig, state_dir: &Path) -> Result<PostInstall> {
        let token = agent_support::config::enrollment_token(
            cfg.admin_token.as_deref(),
            cfg.admin_token_file.as_ref(),
        )
        .map_err(|e| PostInstallError::Config(e.to_string()))?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            PostInstallError::Config(
                "post_install needs admin_token or admin_token_file (a stack manager admin token)"
                    .into(),
            )
        })?;
        let key_file = cfg
            .ssh_key_file
            .clone()
            .unwrap_or_else(|| state_dir.join("ssh").join("id_ed25519"));
        let key = load_or_create_key(&key_file)?;
        let public_key = key
            .public_key()
            .to_openssh()
            .map_err(|e| PostInstallError::Other(format!("encoding the public key: {e}")))?;
        let public_key = format!("{public_key} strato-provisioner");
        let operator_keys = match &cfg.authorized_keys_file {
            Some(f) => read_authorized_keys(f)?,
            None => Vec::new(),
        };
        let agent_dir = match &cfg.agent_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or_else(|| {
                    PostInstallError::Config("cannot find the provisioner's directory".into())
                })?,
        };
        let mut tera = Tera::default();
        for (name, builtin) in [
            ("user-data.yaml.tera", USER_DATA),
            ("meta-data.yaml.tera", META_DATA),
            ("cloud-init-seed.cfg.tera", SEED),
            ("storage-agent.toml.tera", STORAGE_AGENT),
            ("hypervisor-agent.toml.tera", HYPERVISOR_AGENT),
            ("strato-agent.service.tera", AGENT_UNIT),
        ] {
            let text = match cfg.template_dir.as_ref().map(|d| d.join(name)) {
                Some(p) if p.exists() => std::fs::read_to_string(&p)
                    .map_err(|e| PostInstallError::Config(format!("{}: {e}", p.display())))?,
                _ => builtin.to_string(),
            };
            tera.add_raw_template(name, &text)
                .map_err(|e| PostInstallError::Config(format!("template {name}: {e}")))?;
        }
        tera.autoescape_on(vec![]);
        let stack_manager =
            api::Client::new(&cfg.stack_manager_url, &token).with_project(Some("admin".into()));
        Ok(PostInstall {
            cfg,
            key: Arc::new(key),
            public_key,
            operator_keys,
            stack_manager,
            agent_dir,
            tera,
        })
    }

    /// The provisioner's SSH public key, as an `authorized_keys` line.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    fn render(&self, template: &'static str, ctx: &Context) -> Result<String> {
        self.tera
            .render(template, ctx)
            .map_err(|e| PostInstallError::Template(template, format!("{e:?}")))
    }

    /// The cloud-init config the deploy environment drops into the
    /// installed system: where its NoCloud seed is.
    pub fn seed(&self, m: &Machine, seed_url: &str) -> Result<String> {
        let mut ctx = context(m);
        ctx.insert("seed_url", seed_url);
        self.render("cloud-init-seed.cfg.tera", &ctx)
    }

    pub fn meta_data(&self, m: &Machine) -> Result<String> {
        self.render("meta-data.yaml.tera", &context(m))
    }

    pub fn user_data(&self, m: &Machine, phone_home_url: &str) -> Result<String> {
        let mut ctx = context(m);
        ctx.insert("provisioner_key", &self.public_key);
        ctx.insert("phone_home_url", phone_home_url);
        self.render("user-data.yaml.tera", &ctx)
    }

    /// Runs post-install for `m` to the end: the host it enrolled as.
    /// Progress goes into the machine's history as it happens.
    pub async fn run(&self, machines: &Machines, m: &Machine, host_keys: &str) -> Result<HostId> {
        let address = m.address.clone().ok_or_else(|| {
            PostInstallError::Other("the machine has no address (no DHCP lease seen)".into())
        })?;
        let keys = parse_host_keys(host_keys);
        if keys.is_empty() {
            return Err(PostInstallError::Other(
                "the phone-home carried no usable SSH host key".into(),
            ));
        }
        let binary = agent_binary(m.role);
        let local = self.agent_dir.join(binary);
        let program = tokio::fs::read(&local).await.map_err(|e| {
            PostInstallError::Config(format!(
                "the {} agent to install, {}: {e}",
                m.role.as_str(),
                local.display()
            ))
        })?;
        let digest = hex::encode(Sha256::digest(&program));

        step(
            machines,
            m,
            &format!("connecting over SSH to root@{address}"),
        )
        .await?;
        let ssh = Ssh::connect(&address, self.cfg.ssh_port, self.key.clone(), keys).await?;

        if !self.operator_keys.is_empty() {
            let mut text = self.operator_keys.join("\n");
            text.push('\n');
            ssh.run(
                "install the operator's keys",
                "umask 077; mkdir -p /root/.ssh && touch /root/.ssh/authorized_keys && \
                 while IFS= read -r k; do [ -n \"$k\" ] || continue; \
                 grep -qxF -- \"$k\" /root/.ssh/authorized_keys || printf '%s\\n' \"$k\" >> /root/.ssh/authorized_keys; done",
                text.into_bytes(),
            )
            .await?;
            step(
                machines,
                m,
                &format!("installed {} operator key(s)", self.operator_keys.len()),
            )
            .await?;
        }

        let remote = format!("/usr/local/sbin/strato-{binary}");
        ssh.run(
            "upload the agent",
            &format!(
                "set -e; umask 022; cat > {remote}.new; \
                 echo '{digest}  {remote}.new' | sha256sum -c --quiet; \
                 chmod 755 {remote}.new; mv -f {remote}.new {remote}"
            ),
            program,
        )
        .await?;
        step(
            machines,
            m,
            &format!(
                "uploaded the {} agent (sha256 {})",
                m.role.as_str(),
                &digest[..12]
            ),
        )
        .await?;

        // Host names are unique in the stack manager: a host left from an
        // earlier deployment would refuse this one's enrollment, or be
        // mistaken for it below.
        let hosts = self
            .stack_manager
            .host_list()
            .await
            .map_err(|e| PostInstallError::StackManager(format!("listing hosts: {e}")))?;
        if let Some(old) = hosts.iter().find(|h| h.name == m.name) {
            return Err(PostInstallError::StackManager(format!(
                "a host named {} already exists ({}, {}); delete it (`strato host delete {}`) and deploy again",
                m.name,
                old.id,
                old.kind.as_str(),
                old.id
            )));
        }
        let token = self
            .stack_manager
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind: m.role,
                rack: m.rack.clone(),
                expires_in_secs: self.cfg.enroll_timeout_secs.max(60),
            })
            .await
            .map_err(|e| {
                PostInstallError::StackManager(format!("minting an enrollment token: {e}"))
            })?;
        let mut ctx = context(m);
        ctx.insert("address", &address);
        ctx.insert("stack_manager_url", &self.cfg.agent_stack_manager_url);
        ctx.insert("enrollment_token", &token.secret);
        ctx.insert("binary", &remote);
        let (config_template, config_name) = match m.role {
            HostKind::Storage => ("storage-agent.toml.tera", "storage-agent.toml"),
            HostKind::Hypervisor => ("hypervisor-agent.toml.tera", "hypervisor-agent.toml"),
        };
        ctx.insert("config", &format!("/etc/strato/{config_name}"));
        let config = self.render(config_template, &ctx)?;
        let unit = self.render("strato-agent.service.tera", &ctx)?;
        let unit_name = format!("strato-{binary}.service");
        ssh.run(
            "write the agent's config",
            &format!(
                "set -e; umask 077; mkdir -p /etc/strato; cat > /etc/strato/{config_name}.new; \
                 mv -f /etc/strato/{config_name}.new /etc/strato/{config_name}"
            ),
            config.into_bytes(),
        )
        .await?;
        ssh.run(
            "start the agent",
            &format!(
                "set -e; cat > /etc/systemd/system/{unit_name}.new; \
                 mv -f /etc/systemd/system/{unit_name}.new /etc/systemd/system/{unit_name}; \
                 systemctl daemon-reload; systemctl enable --quiet {unit_name}; \
                 systemctl restart {unit_name}"
            ),
            unit.into_bytes(),
        )
        .await?;
        step(
            machines,
            m,
            &format!(
                "started {unit_name}; waiting for it to enroll as host {}",
                m.name
            ),
        )
        .await?;

        let deadline = Instant::now() + Duration::from_secs(self.cfg.enroll_timeout_secs);
        loop {
            match self.stack_manager.host_list().await {
                Ok(hosts) => {
                    if let Some(h) = hosts.iter().find(|h| {
                        h.name == m.name && h.kind == m.role && h.health == HostHealth::Up
                    }) {
                        let _ = ssh.close().await;
                        return Ok(h.id);
                    }
                }
                Err(e) => {
                    tracing::warn!(machine = %m.name, error = %e, "cannot list stack manager hosts")
                }
            }
            if Instant::now() >= deadline {
                let status = ssh
                    .output(&format!(
                        "systemctl status --no-pager -n 20 {unit_name} 2>&1 | tail -n 20"
                    ))
                    .await
                    .unwrap_or_default();
                return Err(PostInstallError::Other(format!(
                    "host {} did not come up in the stack manager within {} s; {unit_name}: {}",
                    m.name,
                    self.cfg.enroll_timeout_secs,
                    status.replace('\n', " | ")
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Runs post-installs in the background, at most one per machine.
pub struct Runner {
    post_install: Arc<PostInstall>,
    machines: Arc<Machines>,
    running: std::sync::Mutex<std::collections::HashSet<api::ids::MachineId>>,
}

impl Runner {
    pub fn new(post_install: Arc<PostInstall>, machines: Arc<Machines>) -> Arc<Runner> {
        Arc::new(Runner {
            post_install,
            machines,
            running: Default::default(),
        })
    }

    pub fn post_install(&self) -> &PostInstall {
        &self.post_install
    }

    /// Starts post-install for `m` unless one is already running for it.
    pub fn start(self: &Arc<Self>, m: Machine, host_keys: String) {
        if m.state != api::provision::MachineState::Deploying {
            return;
        }
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(m.id) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let r = me.post_install.run(&me.machines, &m, &host_keys).await;
            let recorded = match r {
                Ok(host) => {
                    me.machines
                        .enrolled(
                            m.id,
                            host,
                            format!("enrolled in the stack manager as host {host}"),
                        )
                        .await
                }
                Err(e) => {
                    tracing::warn!(machine = %m.name, error = %e, "post-install failed");
                    me.machines.post_install_failed(m.id, e.to_string()).await
                }
            };
            if let Err(e) = recorded {
                // Released or timed out meanwhile: the lifecycle moved on.
                tracing::info!(machine = %m.name, error = %e, "post-install result not recorded");
            }
            me.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&m.id);
        });
    }

    /// Restarts post-install for machines that phoned home before a restart.
    pub async fn resume(self: &Arc<Self>) {
        match self.machines.awaiting_post_install().await {
            Ok(list) => {
                for (m, keys) in list {
                    tracing::info!(machine = %m.name, "resuming post-install");
                    self.start(m, keys);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list machines awaiting post-install"),
        }
    }
}

/// Records a step. A machine that left deploying meanwhile (released,
/// timed out) stops post-install: nothing more is done to it.
async fn step(machines: &Machines, m: &Machine, what: &str) -> Result<()> {
    machines
        .post_install_step(m.id, what)
        .await
        .map(drop)
        .map_err(|e| PostInstallError::Other(format!("stopped: {e}")))
}

/// OpenSSH public key lines; anything else (cloud-init's "N/A" for a key
/// type it did not generate) is skipped.
pub fn parse_host_keys(text: &str) -> Vec<PublicKey> {
    text.lines()
        .filter_map(|l| PublicKey::from_openssh(l.trim()).ok())
        .collect()
}

fn read_authorized_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PostInstallError::Config(format!("{}: {e}", path.display())))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        PublicKey::from_openssh(line).map_err(|e| {
            PostInstallError::Config(format!(
                "{} line {}: not an OpenSSH public key: {e}",
                path.display(),
                n + 1
            ))
        })?;
        keys.push(line.to_string());
    }
    Ok(keys)
}

fn load_or_create_key(path: &Path) -> Result<PrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes())
            .map_err(|e| PostInstallError::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
            let key = PrivateKey::from(pair);
            let text = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(|e| PostInstallError::Other(format!("encoding the SSH key: {e}")))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| PostInstallError::Config(format!("{}: {e}", dir.display())))?;
            }
            agent_support::fs::write_private(path, text.as_bytes())
                .map_err(|e| PostInstallError::Config(format!("{}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "created the provisioner's SSH key");
            Ok(key)
        }
        Err(e) => Err(PostInstallError::Config(format!("{}: {e}", path.display()))),
    }
}

/// Accepts exactly the host keys the installed system phoned home.
struct Verifier {
    allowed: Vec<PublicKey>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.allowed.iter().any(|k| k.key_data() == key.key_data())
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

struct Ssh {
    handle: client::Handle<Verifier>,
}

impl Ssh {
    /// Connects and authenticates, retrying for a while: sshd may still be
    /// starting when cloud-init phones home.
    async fn connect(
        address: &str,
        port: u16,
        key: Arc<PrivateKey>,
        allowed: Vec<PublicKey>,
    ) -> Result<Ssh> {
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(120)),
            keepalive_interval: Some(Duration::from_secs(15)),
            ..Default::default()
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last;
        loop {
            let attempt = async {
                let mut handle = tokio::time::timeout(
                    Duration::from_secs(30),
                    client::connect(
                        config.clone(),
                        (address, port),
                        Verifier {
                            allowed: allowed.clone(),
                        },
                    ),
                )
                .await
                .map_err(|_| PostInstallError::Ssh("connect timed out".into()))??;
                let auth = handle
                    .authenticate_publickey("root", PrivateKeyWithHashAlg::new(key.clone(), None))
                    .await?;
                if !auth.success() {
                    return Err(PostInstallError::Ssh(
                        "root refused the provisioner's key (did cloud-init apply the user-data?)"
                            .into(),
                    ));
                }
                Ok(Ssh { handle })
            };
            match attempt.await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tracing::debug!(%address, error = %last, "SSH not ready yet");
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// Runs `command` with `input` on its stdin; fails unless it exits 0.
    async fn run(&self, step: &'static str, command: &str, input: Vec<u8>) -> Result<String> {
        let (status, out, err) = self.exec(command, input).await?;
        if status != 0 {
            return Err(PostInstallError::Remote {
                step,
                status,
                stderr: String::from_utf8_lossy(&err)
                    .trim()
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn output(&self, command: &str) -> Result<String> {
        let (_, out, _) = self.exec(command, Vec::new()).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn exec(&self, command: &str, input: Vec<u8>) -> Result<(u32, Vec<u8>, Vec<u8>)> {
        let mut channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        if !input.is_empty() {
            channel.data(&input[..]).await?;
        }
        channel.eof().await?;
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    return Err(PostInstallError::Ssh(format!(
                        "`{command}` was killed by {signal_name:?}"
                    )))
                }
                _ => {}
            }
        }
        let status = status.ok_or_else(|| {
            PostInstallError::Ssh(format!("`{command}` ended without an exit status"))
        })?;
        Ok((status, out, err))
    }

    async fn close(&self) -> Result<()> {
        self.handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_parse_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(&dir.path().join("k")).unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let text = format!("N/A\n{line} root@x\n\ngarbage\n");
        let keys = parse_host_keys(&text);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_data(), key.public_key().key_data());
        // The key is stored and read back, private to its owner.
        let again = load_or_create_key(&dir.path().join("k")).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn operator_keys_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, "# ops\nssh-ed25519 AAAAnot-a-key x\n").unwrap();
        let e = read_authorized_keys(&f).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
