//! A real storage node for the volume tests: the `storage-agent` binary
//! with its own iSCSI target on a loopback portal, enrolled in the test's
//! stack manager like any storage host.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use api::ids::HostId;
use api::resources::{EnrollmentTokenCreate, HostKind};

use super::{free_port, sibling_bin, wait_async};

pub struct StorageNode {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    pub portal: String,
    pub host_id: HostId,
}

impl StorageNode {
    pub async fn start(admin: &api::Client, internal_url: &str, dir: PathBuf) -> StorageNode {
        std::fs::create_dir_all(&dir).expect("storage dir");
        let token = admin
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind: HostKind::Storage,
                rack: None,
                expires_in_secs: 600,
            })
            .await
            .expect("storage enrollment token");
        let iscsi = free_port();
        let portal = format!("127.0.0.1:{iscsi}");
        let config = dir.join("storage-agent.toml");
        std::fs::write(
            &config,
            format!(
                "stack_manager_url = \"{internal_url}\"\nenrollment_token = \"{}\"\nname = \"storage-{iscsi}\"\n\
                 listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\niscsi_listen = \"{portal}\"\n\
                 reserved_bytes = 0\nheartbeat_interval_secs = 1\nlog = \"info,storage_agent=debug\"\n",
                token.secret,
                free_port(),
                dir.join("state").display(),
            ),
        )
        .expect("storage agent config");
        let mut node = StorageNode {
            child: None,
            config,
            log: dir.join("storage-agent.log"),
            portal,
            host_id: HostId::new(),
        };
        node.start_agent();
        let admin = admin.clone();
        let host = wait_async(
            "the storage agent to enroll and heartbeat",
            Duration::from_secs(60),
            || {
                let admin = admin.clone();
                async move {
                    admin
                        .host_list()
                        .await
                        .ok()?
                        .into_iter()
                        .find(|h| h.kind == HostKind::Storage && h.last_heartbeat_at.is_some())
                }
            },
        )
        .await;
        node.host_id = host.id;
        node
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("storage agent log");
        self.child = Some(
            Command::new(sibling_bin("storage-agent"))
                .arg("run")
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("start storage-agent"),
        );
    }

    /// SIGKILL, as in a crash: its target stops answering logins.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        self.kill();
    }
}
