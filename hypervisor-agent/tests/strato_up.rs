//! The README's promise, end to end: on this machine `strato up` starts the
//! stack manager and a hypervisor agent, registers the locally built tiny
//! image and a default network; `strato vm create` then boots a real VM and
//! `strato vm console` shows it; `strato down` stops both services.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

struct Env {
    home: tempfile::TempDir,
    agent_state: std::path::PathBuf,
}

impl Env {
    fn strato(&self, args: &[&str]) -> Output {
        Command::new(sibling_bin("strato"))
            .args(args)
            .env("HOME", self.home.path())
            .env("STRATO_IMAGE_CACHE", image_cache())
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
        // A failed run must not leave VMs of its host behind.
        if let Ok(text) = std::fs::read_to_string(self.agent_state.join("identity.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(host) = v["host_id"].as_str().and_then(|h| h.parse().ok()) {
                    for d in domains_of(host) {
                        virsh(&["destroy", &d]);
                        virsh(&["undefine", &d, "--nvram"]);
                    }
                }
            }
        }
    }
}

/// Alive and not a zombie: an exited process whose parent is gone may
/// linger in /proc until some ancestor reaps it.
fn pid_alive(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn strato_up_boots_a_real_vm() {
    require_libvirt();
    guest_image("tiny.raw");
    let home = tempfile::tempdir().expect("home");
    set_mode(home.path(), 0o755);
    let env = Env {
        agent_state: home.path().join("hypervisor"),
        home,
    };
    let [listen, internal, agent, storage, iscsi] =
        [(); 5].map(|_| format!("127.0.0.1:{}", free_port()));
    let agent_state = env.agent_state.display().to_string();
    let up = env.ok(&[
        "up",
        "--listen",
        &listen,
        "--internal-listen",
        &internal,
        "--agent-listen",
        &agent,
        "--agent-state-dir",
        &agent_state,
        "--storage-listen",
        &storage,
        "--iscsi-listen",
        &iscsi,
    ]);
    assert!(up.contains("hypervisor: this machine"), "{up}");
    assert!(up.contains("storage: this machine"), "{up}");
    assert!(up.contains("strato vm create web-1"), "{up}");

    env.ok(&["keypair", "create", "laptop", "--public-key", TEST_KEY]);
    // The guest reports the volume once it is hot-plugged.
    let user_data = env.home.path().join("user-data");
    std::fs::write(
        &user_data,
        "#!/bin/sh\ni=0; while [ ! -b /dev/vdc ] && [ $i -lt 1500 ]; do sleep 0.2; i=$((i+1)); done\n\
         [ -b /dev/vdc ] && echo \"VOLUME-SEEN $(cat /sys/block/vdc/size) sectors\"\n",
    )
    .expect("user-data");
    env.ok(&[
        "vm",
        "create",
        "web-1",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--network",
        "default",
        "--keypair",
        "laptop",
        "--user-data-file",
        &user_data.display().to_string(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let console = loop {
        let vm = env.json(&["vm", "show", "web-1"]);
        assert_ne!(vm["status"], "error", "{vm}");
        let console = env.ok(&["vm", "console", "web-1"]);
        if vm["status"] == "running" && console.contains("STRATO-GUEST ready") {
            break console;
        }
        assert!(
            Instant::now() < deadline,
            "web-1 never booted: {vm}\n{console}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(console.contains("STRATO-GUEST hostname=web-1"), "{console}");
    assert!(
        console.contains("STRATO-GUEST address=10.213.0."),
        "{console}"
    );

    // A volume from the local storage agent, hot-plugged: the guest's
    // kernel sees a new virtio disk.
    let vol = env.json(&["volume", "create", "data", "--size-gib", "1", "--wait"]);
    assert_eq!(vol["status"], "available", "{vol}");
    env.ok(&["volume", "attach", "data", "--vm", "web-1"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let vol = env.json(&["volume", "show", "data"]);
        let console = env.ok(&["vm", "console", "web-1"]);
        if vol["status"] == "in_use" && console.contains("VOLUME-SEEN 2097152 sectors") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never saw the volume: {vol}\n{console}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    env.ok(&["vm", "delete", "web-1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vms = env.json(&["vm", "list"]);
        if vms["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "web-1 was not deleted: {vms}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let state = home_state(&env);
    let agent_pid = std::fs::read_to_string(state.join("hypervisor-agent.pid")).expect("agent pid");
    let down = env.ok(&["down"]);
    assert!(down.contains("stopped the hypervisor agent"), "{down}");
    assert!(down.contains("stopped the storage agent"), "{down}");
    assert!(!pid_alive(agent_pid.trim()), "the agent still runs");
}

fn home_state(env: &Env) -> std::path::PathBuf {
    env.home.path().join(".local").join("share").join("strato")
}
