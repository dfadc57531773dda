//! A real storage node for end-to-end tests: a `stack-manager` process for
//! enrollment and the `storage-agent` binary serving volumes over its own
//! iSCSI target on loopback. Volumes are driven through the agent contract
//! (`AgentClient`, as the stack manager does) so a test can admit the
//! initiators of libiscsi's tools. The judges are real initiators:
//! libiscsi's `iscsi-test-cu`/`iscsi-ls`, QEMU's `iscsi://` driver.

#![allow(dead_code)]

pub mod raw;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use api::ids::{HostId, VolumeId};
use api::internal::{ObservedVolume, ObservedVolumeState, VolumeSourceSpec, VolumeSpec};
use api::resources::HostKind;
use api::AgentClient;
use testkit::{wait_async, workspace_bin, StackManager, StorageAgent};

/// The initiator names libiscsi's tools use unless told otherwise.
pub const INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
pub const INITIATOR_2: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";
pub const CHAP_USER: &str = "strato-test";
pub const CHAP_SECRET: &str = "a-secret-of-24-chars-xyz";

pub struct Node {
    pub dir: tempfile::TempDir,
    pub sm: StackManager,
    pub agent: StorageAgent,
    pub state: PathBuf,
    pub portal: String,
    pub agent_url: String,
}

pub fn require_tools() {
    for tool in ["iscsi-test-cu", "iscsi-ls", "qemu-img", "qemu-io"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is missing: run the suite with `bash scripts/test.sh` (it installs libiscsi-bin and qemu-utils)"
        );
    }
}

/// A stack manager for enrollment, heartbeats every second.
pub async fn stack_manager(dir: &Path) -> StackManager {
    StackManager::start(
        &workspace_bin(env!("CARGO_BIN_EXE_storage-agent"), "stack-manager"),
        dir,
        "[hosts]\nheartbeat_interval_secs = 1\n",
    )
    .await
}

/// A storage agent under `dir`, enrolled in `sm` and heartbeating.
pub async fn storage_agent(sm: &StackManager, dir: &Path) -> (StorageAgent, HostId) {
    let token = sm.enrollment_token(HostKind::Storage).await;
    let agent = StorageAgent::start(
        Path::new(env!("CARGO_BIN_EXE_storage-agent")),
        dir,
        &sm.internal_url,
        &token,
    );
    let host = agent.enrolled(&sm.admin).await;
    (agent, host)
}

impl Node {
    pub async fn start() -> Node {
        require_tools();
        let dir = tempfile::tempdir().expect("temp dir");
        let sm = stack_manager(dir.path()).await;
        let (agent, _) = storage_agent(&sm, &dir.path().join("storage")).await;
        Node {
            state: agent.state.clone(),
            portal: agent.portal.clone(),
            agent_url: agent.agent_url.clone(),
            dir,
            sm,
            agent,
        }
    }

    pub fn start_agent(&mut self) {
        self.agent.restart();
    }

    pub fn kill_agent(&mut self) {
        self.agent.kill();
    }

    pub fn log(&self) -> String {
        self.agent.log_text()
    }

    /// The agent API with the credential the stack manager uses.
    pub fn client(&self) -> AgentClient {
        self.agent.client()
    }

    /// Puts `spec` and waits until the agent reports it realized.
    pub async fn realize(&self, spec: &VolumeSpec) -> ObservedVolume {
        let client = self.client();
        wait_async("the agent API to answer", Duration::from_secs(30), || {
            let (client, spec) = (client.clone(), spec.clone());
            async move { client.volume_put(&spec).await.ok() }
        })
        .await;
        let id = spec.id;
        let generation = spec.generation;
        let o = wait_async(
            "the volume to be realized",
            Duration::from_secs(120),
            || {
                let client = client.clone();
                async move {
                    client.volume_list().await.ok()?.into_iter().find(|o| {
                        o.id == id
                            && o.generation >= generation
                            && o.state != ObservedVolumeState::Creating
                    })
                }
            },
        )
        .await;
        assert_eq!(
            o.state,
            ObservedVolumeState::Available,
            "volume {id} not available: {:?}\n{}",
            o.reason,
            self.log()
        );
        o
    }

    pub fn url(&self, iqn: &str, chap: Option<(&str, &str)>) -> String {
        match chap {
            Some((u, s)) => format!("iscsi://{u}%{s}@{}/{iqn}/0", self.portal),
            None => format!("iscsi://{}/{iqn}/0", self.portal),
        }
    }

    pub fn data_file(&self, id: VolumeId) -> PathBuf {
        self.state.join("volumes").join(id.to_string()).join("data")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.agent.kill();
        if std::env::var_os("STRATO_KEEP_TEST_DIRS").is_some() {
            let p = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp")).keep();
            eprintln!("kept test dir {}", p.display());
        }
    }
}

/// A volume spec admitting libiscsi's two test initiators, with CHAP.
pub fn volume_spec(size_bytes: u64) -> VolumeSpec {
    let id = VolumeId::new();
    VolumeSpec {
        id,
        generation: 1,
        size_bytes,
        source: VolumeSourceSpec::Empty,
        iqn: format!("iqn.2026-11.io.strato:vol-{id}"),
        chap_user: CHAP_USER.into(),
        chap_secret: CHAP_SECRET.into(),
        allowed_initiators: vec![INITIATOR.into(), INITIATOR_2.into()],
        snapshots: Vec::new(),
        replication: None,
    }
}

/// Runs a host tool with a deadline, so a hung initiator fails the test
/// instead of the whole suite.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(format!("{}", timeout.as_secs()))
        .arg(program)
        .args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
