//! What end-to-end tests of every crate share: a real `stack-manager`
//! process (SQLite in a temp dir, an admin token, public and internal
//! listeners), enrollment tokens, free ports and polling helpers. Nothing
//! is simulated; a missing binary fails the test with what to run.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use api::resources::{EnrollmentTokenCreate, HostKind};
use api::Client;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A workspace binary next to `sibling` (a test's own `CARGO_BIN_EXE_*`).
pub fn workspace_bin(sibling: &str, name: &str) -> PathBuf {
    let p = Path::new(sibling).with_file_name(name);
    assert!(
        p.exists(),
        "{} is not built; run the suite with `bash scripts/test.sh` (it builds the workspace)",
        p.display()
    );
    p
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub async fn wait_async<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the stack manager's consistency checker (`GET /v1/system/check`)
/// as `admin` and fails on any drift: what failure tests end with.
pub async fn assert_consistent(admin: &Client) {
    let report = admin.system_check().await.expect("consistency check");
    assert!(
        report.consistent,
        "the consistency checker found drift: {:#?}",
        report.drift
    );
}

/// `stack-manager init` in `state_dir`: the first admin's token.
pub fn init_stack_manager(binary: &Path, state_dir: &Path) -> String {
    let init = Command::new(binary)
        .args(["init", "--state-dir"])
        .arg(state_dir)
        .arg("--json")
        .output()
        .expect("run stack-manager init");
    assert!(
        init.status.success(),
        "stack-manager init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    std::fs::read_to_string(state_dir.join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string()
}

/// A stack manager process on loopback, state under `dir/sm`, log in
/// `dir/stack-manager.log`. Killed on drop.
pub struct StackManager {
    child: Child,
    pub admin: Client,
    pub public_url: String,
    pub internal_url: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl StackManager {
    /// Initializes and starts one; `extra_toml` is appended to its config.
    pub async fn start(binary: &Path, dir: &Path, extra_toml: &str) -> StackManager {
        Self::start_on(binary, dir, IpAddr::from([127, 0, 0, 1]), extra_toml).await
    }

    /// [`StackManager::start`] with the internal API (the agents' side) on
    /// `internal_ip` instead of loopback, for agents in network namespaces.
    pub async fn start_on(
        binary: &Path,
        dir: &Path,
        internal_ip: IpAddr,
        extra_toml: &str,
    ) -> StackManager {
        let state_dir = dir.join("sm");
        let token = init_stack_manager(binary, &state_dir);
        let (listen, internal) = (free_port(), free_port());
        let internal = SocketAddr::new(internal_ip, internal);
        let config = dir.join("stack-manager.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{listen}\"\ninternal_listen = \"{internal}\"\n\
                 state_dir = \"{}\"\nlog = \"info\"\n{extra_toml}",
                state_dir.display()
            ),
        )
        .expect("write stack manager config");
        let log = dir.join("stack-manager.log");
        let out = std::fs::File::create(&log).expect("stack manager log");
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("start stack-manager");
        let public_url = format!("http://127.0.0.1:{listen}");
        let admin = Client::new(&public_url, token.trim()).with_project(Some("admin".into()));
        let probe = admin.clone();
        wait_async(
            "the stack manager to answer",
            Duration::from_secs(30),
            || {
                let probe = probe.clone();
                async move { probe.whoami().await.ok() }
            },
        )
        .await;
        StackManager {
            child,
            admin,
            public_url,
            internal_url: format!("http://{internal}"),
            state_dir,
            log,
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string()
    }

    pub async fn enrollment_token(&self, kind: HostKind) -> String {
        self.admin
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind,
                rack: None,
                expires_in_secs: 600,
            })
            .await
            .expect("enrollment token")
            .secret
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StackManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `storage-agent` process with its iSCSI target on a loopback portal,
/// state under `dir/state`, log in `dir/storage-agent.log`. Killed on drop.
pub struct StorageAgent {
    child: Option<Child>,
    binary: PathBuf,
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub state: PathBuf,
    pub portal: String,
    pub agent_url: String,
    /// `address:port` of its replication listener.
    pub replication: String,
}

impl StorageAgent {
    /// Writes its config (enrolling with `token` at `internal_url`) and
    /// starts it; [`StorageAgent::enrolled`] waits for its first heartbeat.
    pub fn start(binary: &Path, dir: &Path, internal_url: &str, token: &str) -> StorageAgent {
        std::fs::create_dir_all(dir).expect("storage agent dir");
        let (api, iscsi, replication) = (free_port(), free_port(), free_port());
        let name = format!("storage-{iscsi}");
        let state = dir.join("state");
        let config = dir.join("storage-agent.toml");
        std::fs::write(
            &config,
            format!(
                "stack_manager_url = \"{internal_url}\"\nenrollment_token = \"{token}\"\nname = \"{name}\"\n\
                 listen = \"127.0.0.1:{api}\"\nstate_dir = \"{}\"\niscsi_listen = \"127.0.0.1:{iscsi}\"\n\
                 replication_listen = \"127.0.0.1:{replication}\"\n\
                 reserved_bytes = 0\nheartbeat_interval_secs = 1\nlog = \"info,storage_agent=debug,iscsi=debug\"\n",
                state.display(),
            ),
        )
        .expect("write storage agent config");
        let mut agent = StorageAgent {
            child: None,
            binary: binary.to_path_buf(),
            name,
            config,
            log: dir.join("storage-agent.log"),
            state,
            portal: format!("127.0.0.1:{iscsi}"),
            agent_url: format!("http://127.0.0.1:{api}"),
            replication: format!("127.0.0.1:{replication}"),
        };
        agent.restart();
        agent
    }

    /// Starts the process again (after [`StorageAgent::kill`]).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("storage agent log");
        self.child = Some(
            Command::new(&self.binary)
                .arg("run")
                .arg("--config")
                .arg(&self.config)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("start storage-agent"),
        );
    }

    /// SIGKILL: no chance to flush or clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the stack manager has seen it heartbeat; its host id.
    pub async fn enrolled(&self, admin: &Client) -> api::ids::HostId {
        let name = self.name.clone();
        let host = wait_async(
            "the storage agent to enroll and heartbeat",
            Duration::from_secs(60),
            || {
                let (admin, name) = (admin.clone(), name.clone());
                async move {
                    admin
                        .host_list()
                        .await
                        .ok()?
                        .into_iter()
                        .find(|h| h.name == name && h.last_heartbeat_at.is_some())
                }
            },
        )
        .await;
        host.id
    }

    /// The agent API with the host credential, as the stack manager calls it.
    pub fn client(&self) -> api::AgentClient {
        let identity: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.state.join("identity.json")).expect("identity.json"),
        )
        .expect("identity.json is JSON");
        let credential = identity["credential"]
            .as_str()
            .expect("credential in identity.json");
        api::AgentClient::new(&self.agent_url, credential)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StorageAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
