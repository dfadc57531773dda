//! A rack in a box: a private L2 segment (a bridge inside a network
//! namespace this test creates), the provisioner binary on one side serving
//! DHCP and HTTP boot, and QEMU VMs with empty disks network-booting on the
//! other through their built-in iPXE, with no other DHCP server. An unknown
//! VM is discovered, commissioned (its inventory must match what QEMU was
//! given), deployed with an image, and boots that image from its own disk.
//! Everything is driven through the provisioner's API. Nothing leaves the
//! namespace.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::*;

#[test]
fn a_bare_vm_is_discovered_commissioned_and_deployed() {
    let mut rack = Rack::start();
    let token = TOKEN;
    let images = rack.images.clone();
    // Discovery and commissioning: the VM is unknown; booting enlists it.
    let dir = rack.dir.path().to_path_buf();
    let vm = Vm::new(&dir, &rack.seg, 1);
    let q = vm.boot(&mut rack.seg, &dir);
    let started = Instant::now();
    let machine = rack.wait_state(&vm.mac, "ready", "failed_commissioning", 240, || {
        vm.console()
    });
    eprintln!("commissioned in {:?}", started.elapsed());
    let inv = &machine["inventory"];
    assert_eq!(inv["cpus"], 2, "{inv}");
    let ram = inv["ram_mib"].as_u64().expect("ram");
    assert!(
        (300..=384).contains(&ram),
        "RAM {ram} MiB for a 384 MiB VM: {inv}"
    );
    assert!(
        inv["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .any(|d| d["size_bytes"] == 2u64 << 30),
        "the 2 GiB disk: {inv}"
    );
    assert!(
        inv["nics"]
            .as_array()
            .expect("nics")
            .iter()
            .any(|n| n["mac"] == vm.mac.as_str()),
        "the NIC: {inv}"
    );
    assert!(
        machine["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(NET)),
        "{machine}"
    );
    // The environment powers the machine off when done.
    wait("the VM to power off after commissioning", 60, || {
        (!rack.seg.running(q)).then_some(())
    });
    let seg = &mut rack.seg;

    // Deploy: the image is written to its disk, then it boots from it.
    let id = machine["id"].as_str().expect("id").to_string();
    let (code, m) = seg.api(
        token,
        "POST",
        &format!("/v1/machines/{id}/actions"),
        Some(r#"{"action":"deploy","image":"tiny.raw"}"#),
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["state"], "deploying");
    let q = vm.boot(seg, &dir);
    wait("the VM to be deployed", 240, || {
        let (_, m) = seg.api(token, "GET", &format!("/v1/machines/{id}"), None);
        assert_ne!(m["state"], "failed_deployment", "{m}\n{}", vm.console());
        (m["state"] == "deployed").then_some(())
    });
    wait(
        "the deployed image to boot from the VM's own disk",
        180,
        || vm.console().contains("STRATO-GUEST ready").then_some(()),
    );
    let head = std::fs::read(&vm.disk).expect("disk");
    let image = std::fs::read(images.join("tiny.raw")).expect("image");
    assert!(head[..image.len()] == image[..], "the disk holds the image");
    seg.kill(q);

    // Every transition is in the history.
    let (_, events) = seg.api(token, "GET", &format!("/v1/machines/{id}/events"), None);
    let states: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["from"] != e["to"])
        .filter_map(|e| e["to"].as_str())
        .collect();
    assert_eq!(
        states,
        ["new", "commissioning", "ready", "deploying", "deployed"],
        "{events}"
    );

    // The operator's view through the CLI.
    let strato = Path::new(env!("CARGO_BIN_EXE_provisioner")).with_file_name("strato");
    assert!(
        strato.exists(),
        "{} is not built (cargo build --workspace)",
        strato.display()
    );
    let cli = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &seg.ns])
            .arg(&strato)
            .args([
                "machine",
                "--provisioner",
                &format!("http://{NET}.1:8080"),
                "--provisioner-token",
                token,
            ])
            .args(args)
            .env("HOME", &dir)
            .output()
            .expect("strato");
        assert!(
            out.status.success(),
            "strato machine {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let name = machine["name"].as_str().expect("name");
    let list = cli(&["list"]);
    assert!(
        list.contains(name) && list.contains("deployed") && list.contains("2 cpu"),
        "{list}"
    );
    let history = cli(&["events", name]);
    assert!(history.contains("image written"), "{history}");

    // Illegal moves are refused and change nothing; release returns it.
    let (code, err) = seg.api(
        token,
        "POST",
        &format!("/v1/machines/{id}/actions"),
        Some(r#"{"action":"commission"}"#),
    );
    assert_eq!(code, 409, "{err}");
    assert!(
        err["message"].as_str().unwrap_or("").contains("deployed"),
        "{err}"
    );
    let (code, m) = seg.api(
        token,
        "POST",
        &format!("/v1/machines/{id}/actions"),
        Some(r#"{"action":"release"}"#),
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["state"], "ready");
    // Without the token the API is closed.
    let (code, _) = seg.api("wrong", "GET", "/v1/machines", None);
    assert_eq!(code, 401);
}

/// The UEFI path: OVMF's own iPXE asks with client arch 7; the machine is
/// discovered and commissioned the same way, and the arch is recorded.
/// Then it goes through rescue and back.
#[test]
fn a_uefi_vm_is_discovered_and_commissioned() {
    assert!(
        Path::new(OVMF).exists(),
        "{OVMF} is missing: install Debian's ovmf (scripts/test.sh does)"
    );
    let mut rack = Rack::start();
    let dir = rack.dir.path().to_path_buf();
    let vm = Vm::new(&dir, &rack.seg, 2);
    let q = vm.boot_with(&mut rack.seg, &dir, true);
    let m = rack.wait_state(&vm.mac, "ready", "failed_commissioning", 150, || {
        vm.console()
    });
    assert_eq!(m["arch"], "uefi-x64", "{m}");
    assert_eq!(m["inventory"]["cpus"], 2, "{m}");
    assert!(
        m["inventory"]["nics"]
            .as_array()
            .expect("nics")
            .iter()
            .any(|n| n["mac"] == vm.mac.as_str()),
        "{m}"
    );
    wait("the VM to power off after commissioning", 60, || {
        (!rack.seg.running(q)).then_some(())
    });

    // Rescue: the machine boots the environment with a shell for an
    // operator, and returns to where it was when told to.
    let id = m["id"].as_str().expect("id").to_string();
    let act = |rack: &Rack, action: &str| {
        rack.seg.api(
            TOKEN,
            "POST",
            &format!("/v1/machines/{id}/actions"),
            Some(&format!(r#"{{"action":"{action}"}}"#)),
        )
    };
    let (code, r) = act(&rack, "rescue");
    assert_eq!((code, r["state"].as_str()), (200, Some("rescue")), "{r}");
    let q = vm.boot_with(&mut rack.seg, &dir, true);
    let deadline = Instant::now() + std::time::Duration::from_secs(150);
    while !vm.console().contains("STRATO-BOOTENV rescue: network up") {
        assert!(
            Instant::now() < deadline,
            "no rescue shell after 150 s:\n{}\n--- provisioner ---\n{}",
            vm.console(),
            rack.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    rack.seg.kill(q);
    let (code, r) = act(&rack, "exit_rescue");
    assert_eq!((code, r["state"].as_str()), (200, Some("ready")), "{r}");
}
