//! The README's tour, end to end: the real `strato` binary starts the real
//! `stack-manager` with `strato up` and drives it. No agents exist yet, so
//! scheduling answers with a clear capacity error.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn strato(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strato"))
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("STRATO_URL")
            .env_remove("STRATO_TOKEN")
            .env_remove("STRATO_PROJECT")
            .env_remove("STRATO_CONFIG")
            .output()
            .expect("run strato")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.strato(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "strato {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("--json prints JSON")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.strato(&["down"]);
    }
}

/// Runs a `--json` command until `done` holds for its output (30 s at most).
fn poll_json(
    env: &Env,
    args: &[&str],
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..120 {
        let v = env.json(args);
        if done(&v) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!(
        "`strato {}` never reached the expected state",
        args.join(" ")
    );
}

#[test]
fn tour_through_strato_up() {
    let stack_manager = Path::new(env!("CARGO_BIN_EXE_strato")).with_file_name("stack-manager");
    assert!(
        stack_manager.exists(),
        "{} is not built; run the suite with `bash scripts/test.sh` (cargo test --workspace builds it)",
        stack_manager.display()
    );
    let env = Env {
        home: tempfile::tempdir().expect("temp home"),
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let internal = format!("127.0.0.1:{}", free_port());
    let storage = format!("127.0.0.1:{}", free_port());
    let iscsi = format!("127.0.0.1:{}", free_port());
    let up = env.ok(&[
        "up",
        "--no-hypervisor",
        "--listen",
        &listen,
        "--internal-listen",
        &internal,
        "--storage-listen",
        &storage,
        "--iscsi-listen",
        &iscsi,
    ]);
    assert!(up.contains("storage: this machine"), "{up}");
    assert!(up.contains("admin token:"), "{up}");
    assert!(up.contains(&listen), "{up}");
    // A second `up` finds it running.
    let again = env.strato(&[
        "up",
        "--no-hypervisor",
        "--listen",
        &listen,
        "--internal-listen",
        &internal,
        "--storage-listen",
        &storage,
        "--iscsi-listen",
        &iscsi,
    ]);
    assert!(again.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(said.contains("already running"), "{said}");

    let me = env.json(&["whoami"]);
    assert_eq!(me["user"]["name"], "admin");
    assert_eq!(me["user"]["admin"], true);

    env.ok(&[
        "flavor",
        "create",
        "t1.custom",
        "--vcpus",
        "3",
        "--ram-mib",
        "3072",
        "--disk-gib",
        "30",
    ]);
    let flavors = env.ok(&["flavor", "list"]);
    // A new cloud comes with the usual sizes.
    for f in ["m1.tiny", "m1.small", "m1.medium", "m1.large", "t1.custom"] {
        assert!(flavors.contains(f), "{f} missing: {flavors}");
    }

    let net = env.json(&["network", "create", "web"]);
    assert_eq!(net["name"], "web");
    let subnet = env.json(&[
        "network",
        "subnet-create",
        "web",
        "v4",
        "--cidr",
        "10.10.0.0/24",
    ]);
    assert_eq!(subnet["gateway"], "10.10.0.1");
    assert_eq!(subnet["capacity"], 253);

    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuEbkB5fiabq34MkliWiex1mZ7OFzxnZjfW/XWDNRTO tour@strato";
    let kp = env.json(&["keypair", "create", "laptop", "--public-key", key]);
    assert!(
        kp["fingerprint"]
            .as_str()
            .unwrap_or("")
            .starts_with("SHA256:"),
        "{kp}"
    );

    let sha = "8950abfda7b727630760dd35bcf5c3daa7631aff223a90f7728c0d2521dde10c";
    env.ok(&[
        "image",
        "create",
        "tiny",
        "--source",
        "/var/lib/strato/images/tiny.qcow2",
        "--format",
        "qcow2",
        "--sha256",
        sha,
        "--public",
    ]);

    // No hypervisor agent yet: a clear 409, and nothing written.
    let vm = env.strato(&[
        "vm",
        "create",
        "web-1",
        "--flavor",
        "m1.small",
        "--image",
        "tiny",
        "--network",
        "web",
        "--keypair",
        "laptop",
    ]);
    assert_eq!(vm.status.code(), Some(1));
    let err = String::from_utf8_lossy(&vm.stderr);
    assert!(err.contains("no hypervisor has enrolled"), "{err}");
    let vms = env.json(&["vm", "list"]);
    assert_eq!(vms["items"].as_array().map(Vec::len), Some(0));
    let quota = env.json(&["quota", "show"]);
    assert_eq!(quota["usage"]["instances"], 0);

    // Volumes live on the local storage agent: create, snapshot, clone.
    let vol = env.json(&["volume", "create", "data", "--size-gib", "1", "--wait"]);
    assert_eq!(vol["status"], "available", "{vol}");
    assert!(vol["host_id"].is_string(), "{vol}");
    let snap = env.json(&["volume", "snapshot", "data", "before"]);
    let snap_id = snap["id"].as_str().expect("snapshot id").to_string();
    let snap = poll_json(&env, &["volume", "snapshots", "data"], |v| {
        v["items"][0]["status"] == "available"
    });
    assert_eq!(snap["items"][0]["id"], snap_id.as_str());
    let clone = env.json(&[
        "volume",
        "create",
        "copy",
        "--size-gib",
        "2",
        "--from-snapshot",
        &snap_id,
        "--wait",
    ]);
    assert_eq!(clone["status"], "available", "{clone}");
    assert_eq!(clone["host_id"], vol["host_id"]);
    env.ok(&["volume", "delete", "copy", "--wait"]);
    env.ok(&["volume", "snapshot-delete", &snap_id]);

    // Bad input from the command line gets a clear error, not a crash.
    let bad = env.strato(&[
        "network",
        "subnet-create",
        "web",
        "bad",
        "--cidr",
        "10.10.0.5/24",
    ]);
    assert_eq!(bad.status.code(), Some(1));

    // The audit log saw all of it.
    let audit = env.ok(&["audit", "--limit", "20"]);
    assert!(audit.contains("capacity_exhausted"), "{audit}");

    // The background tasks that wrote it, and their runs.
    let tasks = env.ok(&["system", "tasks"]);
    assert!(tasks.contains("audit-writer"), "{tasks}");
    let tasks = env.json(&["system", "tasks"]);
    assert!(
        tasks["items"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "scheduler-refresh")),
        "{tasks}"
    );

    // A tenant: project, user, membership, token, login.
    env.ok(&["project", "create", "acme"]);
    env.ok(&["user", "create", "alice"]);
    env.ok(&["project", "add-member", "acme", "alice", "--role", "member"]);
    let token = env.json(&["user", "token", "alice"]);
    let secret = token["secret"].as_str().expect("token secret").to_string();
    let url = format!("http://{listen}");
    env.ok(&[
        "--url",
        &url,
        "--token",
        &secret,
        "--project",
        "acme",
        "login",
    ]);
    let me = env.json(&["whoami"]);
    assert_eq!(me["user"]["name"], "alice");
    // alice sees her project's (empty) networks, not admin's `web`.
    let nets = env.json(&["network", "list"]);
    assert_eq!(nets["items"].as_array().map(Vec::len), Some(0), "{nets}");
    let denied = env.strato(&[
        "flavor",
        "create",
        "x1",
        "--vcpus",
        "1",
        "--ram-mib",
        "512",
        "--disk-gib",
        "1",
    ]);
    assert_eq!(denied.status.code(), Some(1));

    env.ok(&["down"]);
}
