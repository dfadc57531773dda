//! `strato up --rack 1` end to end, as an operator runs it: the stack
//! manager, a private bridge, the provisioner on it and one empty libvirt
//! domain that PXE-boots, is commissioned, deployed with the Debian image
//! (auto-deploy) and enrolls as a storage host, with nothing driven by the
//! test but `strato up` and `strato down`. The bridge has no route out of
//! this machine; it and the domain are removed afterwards.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{image_cache, sh, sibling_bin};
use testkit::free_port;

const RACK_ADDRESS: &str = "10.97.0.1";

/// Whatever happens: `strato down` (stack manager, provisioner), then the
/// domain and the bridge go.
struct Cleanup {
    strato: std::path::PathBuf,
    state: std::path::PathBuf,
    bridge: String,
    domain: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(&self.strato)
            .arg("down")
            .arg("--state-dir")
            .arg(&self.state)
            .args(["--rack-bridge", &self.bridge])
            .output();
        for verb in ["destroy", "undefine"] {
            let _ = Command::new("virsh")
                .args(["-c", "qemu:///system", verb, &self.domain])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn strato_up_rack_brings_a_vm_from_pxe_to_an_enrolled_host() {
    for f in ["boot-env/vmlinuz", "debian.qcow2"] {
        assert!(
            image_cache().join(f).exists(),
            "{f} is missing from the image cache: run scripts/test.sh"
        );
    }
    let strato = sibling_bin("strato");
    sibling_bin("stack-manager");
    sibling_bin("storage-agent");
    let dir = tempfile::tempdir().expect("temp dir");
    let bridge = format!("sr{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let state = dir.path().join("state");
    let _cleanup = Cleanup {
        strato: strato.clone(),
        state: state.clone(),
        bridge: bridge.clone(),
        domain: format!("{bridge}-node-1"),
    };
    let rack_dir = dir.path().join("rack");
    let (public, internal) = (free_port(), free_port());
    let run = |args: &[&str]| {
        let out = Command::new(&strato)
            .args(args)
            .env("HOME", dir.path())
            .env("STRATO_IMAGE_CACHE", image_cache())
            .output()
            .expect("strato");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "strato {args:?}:\n{text}");
        text
    };
    let state_arg = state.display().to_string();
    let said = run(&[
        "up",
        "--state-dir",
        &state_arg,
        "--listen",
        &format!("127.0.0.1:{public}"),
        "--internal-listen",
        &format!("{RACK_ADDRESS}:{internal}"),
        "--no-hypervisor",
        "--no-storage",
        "--rack",
        "1",
        "--rack-bridge",
        &bridge,
        "--rack-address",
        RACK_ADDRESS,
        "--rack-state-dir",
        &rack_dir.display().to_string(),
    ]);
    assert!(said.contains("rack: provisioner"), "{said}");
    let token = std::fs::read_to_string(state.join("admin.token")).expect("admin token");
    let console = rack_dir
        .join("nodes")
        .join(format!("{bridge}-node-1.console"));
    let diagnostics = || {
        format!(
            "--- console ---\n{}\n--- provisioner ---\n{}",
            String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default())
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(state.join("provisioner.log")).unwrap_or_default()
        )
    };

    // The operator only watches: the host appears in the stack manager.
    let started = Instant::now();
    let host = loop {
        let out = Command::new("curl")
            .args(["-sf", "-H"])
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .arg(format!("http://127.0.0.1:{public}/v1/hosts"))
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let hosts = v["items"]
            .as_array()
            .or(v.as_array())
            .cloned()
            .unwrap_or_default();
        if let Some(h) = hosts
            .iter()
            .find(|h| h["name"] == "node-1" && h["health"] == "up")
        {
            break h.clone();
        }
        let log = std::fs::read_to_string(state.join("provisioner.log")).unwrap_or_default();
        assert!(
            !log.contains("failed_deployment") && !log.contains("failed_commissioning"),
            "the machine failed:\n{}",
            diagnostics()
        );
        assert!(
            started.elapsed() < Duration::from_secs(720),
            "node-1 did not enroll within 12 minutes:\n{}",
            diagnostics()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("node-1 enrolled {:?} after strato up", started.elapsed());
    assert_eq!(host["kind"], "storage", "{host}");
    assert!(
        host["agent_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://10.97.0.")),
        "{host}"
    );

    // strato down stops the provisioner and powers the rack off.
    let said = run(&["down", "--state-dir", &state_arg, "--rack-bridge", &bridge]);
    assert!(said.contains("rack's provisioner"), "{said}");
    let domstate = sh(&[
        "virsh",
        "-c",
        "qemu:///system",
        "domstate",
        &format!("{bridge}-node-1"),
    ]);
    assert_eq!(domstate.trim(), "shut off");
    assert!(!Path::new(&state.join("provisioner.pid")).exists());
}
