//! A rack in a box: a private L2 segment (a bridge inside a network
//! namespace this test creates), the provisioner binary on one side serving
//! DHCP and HTTP boot, and QEMU VMs with empty disks network-booting on the
//! other through their built-in iPXE, with no other DHCP server. An unknown
//! VM is discovered, commissioned (its inventory must match what QEMU was
//! given), deployed with a Debian image, boots it from its own disk, is
//! taken over SSH by post-install, and its storage agent enrolls in a real
//! stack manager on the same segment. Everything is driven through the
//! provisioner's API. Nothing leaves the namespace.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::*;

#[test]
fn a_bare_vm_is_discovered_commissioned_deployed_and_enrolled() {
    let mut rack = Rack::start_with(true);
    let token = TOKEN;
    let images = rack.images.clone();
    // Discovery and commissioning: the VM is unknown; booting enlists it.
    let dir = rack.dir.path().to_path_buf();
    let mut vm = Vm::new(&dir, &rack.seg, 1);
    vm.memory_mib = 512; // Debian with systemd, once deployed
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
        (412..=512).contains(&ram),
        "RAM {ram} MiB for a 512 MiB VM: {inv}"
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

    // Deploy, as a storage node: the image is written to its disk, the VM
    // boots it, cloud-init phones home, post-install takes it over SSH and
    // starts the storage agent, which enrolls in the stack manager.
    let id = machine["id"].as_str().expect("id").to_string();
    let name = machine["name"].as_str().expect("name").to_string();
    let (code, m) = rack.seg.api(
        token,
        "POST",
        &format!("/v1/machines/{id}/actions"),
        Some(r#"{"action":"deploy","image":"debian.raw","role":"storage"}"#),
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(
        (m["state"].as_str(), m["role"].as_str()),
        (Some("deploying"), Some("storage"))
    );
    let q = vm.boot(&mut rack.seg, &dir);
    let started = Instant::now();
    let m = rack.wait_state(&vm.mac, "deployed", "failed_deployment", 600, || {
        vm.console()
    });
    eprintln!("deployed and enrolled in {:?}", started.elapsed());
    let host_id = m["host_id"].as_str().expect("host id").to_string();
    let (code, hosts) = rack.stack_manager_api("GET", "/v1/hosts");
    assert_eq!(code, 200, "{hosts}");
    let host = hosts["items"]
        .as_array()
        .or(hosts.as_array())
        .and_then(|l| l.iter().find(|h| h["name"] == name.as_str()).cloned())
        .unwrap_or_else(|| panic!("no host {name} in the stack manager: {hosts}"));
    assert_eq!(host["id"], host_id.as_str(), "{host}");
    assert_eq!(host["kind"], "storage", "{host}");
    assert_eq!(host["health"], "up", "{host}");
    let address = m["address"].as_str().expect("address");
    assert_eq!(
        host["agent_url"],
        format!("http://{address}:7300").as_str(),
        "{host}"
    );
    assert!(
        host["capacity"]["storage_bytes_total"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the node reports its pool: {host}"
    );

    // The operator's key was installed: they can log in, and find the
    // agent running under systemd on the machine's own disk.
    let sm = rack.stack_manager.as_ref().expect("stack manager");
    let seg = &mut rack.seg;
    let out = Command::new("ip")
        .args(["netns", "exec", &seg.ns, "ssh", "-i"])
        .arg(&sm.operator_key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            &format!("root@{address}"),
            "hostname; systemctl is-active strato-storage-agent.service; findmnt -no SOURCE /",
        ])
        .output()
        .expect("ssh");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh as the operator: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines, [name.as_str(), "active", "/dev/vda2"], "{said}");
    // The disk starts with the image's boot sector and partition table.
    let head = std::fs::read(&vm.disk).expect("disk");
    let image = std::fs::read(images.join("debian.raw")).expect("image");
    assert!(
        head[..1 << 20] == image[..1 << 20],
        "the disk holds the image"
    );
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
    let list = cli(&["list"]);
    assert!(
        list.contains(&name) && list.contains("deployed") && list.contains("2 cpu"),
        "{list}"
    );
    let history = cli(&["events", &name]);
    eprintln!("{history}");
    for step in [
        "image written",
        "phoned home",
        "uploaded the storage agent",
        "enrolled in the stack manager as host",
    ] {
        assert!(history.contains(step), "{step:?} in:\n{history}");
    }

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

/// The UEFI path, behind a DHCP relay, powered by libvirt: an operator
/// enlists a libvirt domain (OVMF firmware, its own iPXE asking with client
/// arch 7) that sits on another subnet, reached only through isc-dhcp-relay.
/// Commissioning powers it on through the libvirt driver; the relayed
/// request records its switch port (option 82); the machine goes through
/// rescue and back, and the driver powers it off.
#[test]
fn a_uefi_vm_behind_a_relay_is_powered_by_libvirt_and_commissioned() {
    assert!(
        Path::new(OVMF).exists(),
        "{OVMF} is missing: install Debian's ovmf (scripts/test.sh does)"
    );
    let rack = Rack::start();
    let dir = rack.dir.path().to_path_buf();
    let relayed = RelayedSegment::new(&rack.seg, &dir);
    let vm = LibvirtVm::define(&dir, &relayed.host_bridge, 2);
    let console = || {
        format!(
            "{}\n--- dhcrelay ---\n{}",
            vm.console(),
            std::fs::read_to_string(&relayed.relay_log).unwrap_or_default()
        )
    };
    let (code, m) = rack.seg.api(
        TOKEN,
        "POST",
        "/v1/machines",
        Some(&format!(
            r#"{{"name":"uefi-1","mac":"{}","role":"hypervisor","rack":"r1",
                "power":{{"driver":"libvirt","uri":"{LIBVIRT_URI}","domain":"{}"}}}}"#,
            vm.mac, vm.name
        )),
    );
    assert_eq!(code, 201, "{m}");
    assert_eq!(m["state"], "new");
    let power = |rack: &Rack| {
        let (code, p) = rack
            .seg
            .api(TOKEN, "GET", "/v1/machines/uefi-1/power", None);
        assert_eq!(code, 200, "{p}");
        p["state"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(power(&rack), "off");
    let act = |rack: &Rack, action: &str| {
        rack.seg.api(
            TOKEN,
            "POST",
            "/v1/machines/uefi-1/actions",
            Some(&format!(r#"{{"action":"{action}"}}"#)),
        )
    };

    // Commission: the provisioner switches it on; nobody else does.
    let (code, r) = act(&rack, "commission");
    assert_eq!(
        (code, r["state"].as_str()),
        (200, Some("commissioning")),
        "{r}"
    );
    assert_eq!(vm.state(), "running");
    let mut rack = rack;
    let m = rack.wait_state(&vm.mac, "ready", "failed_commissioning", 240, console);
    assert_eq!(m["arch"], "uefi-x64", "{m}");
    assert_eq!(m["inventory"]["cpus"], 2, "{m}");
    assert!(
        m["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(RELAYED)),
        "an address from the relayed subnet: {m}"
    );
    assert!(
        m["switch_port"].as_str().is_some_and(|p| p.contains("br1")),
        "option 82's circuit id (the relay's interface): {m}"
    );
    assert!(
        m["inventory"]["nics"]
            .as_array()
            .expect("nics")
            .iter()
            .any(|n| n["mac"] == vm.mac.as_str()),
        "{m}"
    );
    // The environment powers it off when done; the driver sees that.
    wait("the domain to power off after commissioning", 60, || {
        (power(&rack) == "off").then_some(())
    });

    // Rescue: the provisioner powers it on into the environment with a
    // shell for an operator; it returns to where it was when told to, and
    // the driver switches it off.
    let (code, r) = act(&rack, "rescue");
    assert_eq!((code, r["state"].as_str()), (200, Some("rescue")), "{r}");
    let deadline = Instant::now() + std::time::Duration::from_secs(180);
    while !vm.console().contains("STRATO-BOOTENV rescue: network up") {
        assert!(
            Instant::now() < deadline,
            "no rescue shell after 180 s:\n{}\n--- provisioner ---\n{}",
            console(),
            rack.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(power(&rack), "on");
    let (code, r) = act(&rack, "exit_rescue");
    assert_eq!((code, r["state"].as_str()), (200, Some("ready")), "{r}");
    let (code, r) = act(&rack, "power_off");
    assert_eq!(code, 200, "{r}");
    assert_eq!(vm.state(), "shut off");
    assert_eq!(power(&rack), "off");
    let (_, events) = rack
        .seg
        .api(TOKEN, "GET", "/v1/machines/uefi-1/events", None);
    let text = events.to_string();
    assert!(text.contains("network boot and power cycle"), "{events}");
    assert!(text.contains("power off"), "{events}");
}
