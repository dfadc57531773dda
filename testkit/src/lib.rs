//! What end-to-end tests of every crate share: a real `stack-manager`
//! process (SQLite in a temp dir, an admin token, public and internal
//! listeners), enrollment tokens, free ports and polling helpers. Nothing
//! is simulated; a missing binary fails the test with what to run.

use std::net::TcpListener;
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
        let state_dir = dir.join("sm");
        let init = Command::new(binary)
            .args(["init", "--state-dir"])
            .arg(&state_dir)
            .arg("--json")
            .output()
            .expect("run stack-manager init");
        assert!(
            init.status.success(),
            "stack-manager init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let token = std::fs::read_to_string(state_dir.join("admin.token")).expect("admin token");
        let (listen, internal) = (free_port(), free_port());
        let config = dir.join("stack-manager.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{listen}\"\ninternal_listen = \"127.0.0.1:{internal}\"\n\
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
            internal_url: format!("http://127.0.0.1:{internal}"),
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
