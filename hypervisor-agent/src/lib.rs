//! The Strato hypervisor agent: enrolls with the stack manager, heartbeats
//! the host's capacity and the observed state of its instances, and
//! realizes instance specs as libvirt domains (image cache, thin root
//! disks, cloud-init config drives, bridges, iSCSI volumes, console logs).

pub mod agent;
pub mod config;
pub mod configdrive;
pub mod domain;
pub mod error;
pub use agent_support::exec;
pub mod host;
pub mod hypervisor;
pub use agent_support::images;
pub mod instances;
pub mod network;
pub mod server;

#[cfg(test)]
pub(crate) mod tests_support {
    use api::internal::*;
    use api::resources::ImageFormat;

    pub fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a01".parse().unwrap(),
            hostname: "web-1".into(),
            generation: 1,
            power: PowerState::Running,
            reboot_count: 0,
            vcpus: 1,
            ram_mib: 128,
            disk_gib: 1,
            image: ImageSpec {
                id: "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a02".parse().unwrap(),
                source: "/x".into(),
                format: ImageFormat::Raw,
                sha256: "0".repeat(64),
            },
            nics: vec![NicSpec {
                network_id: "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a03".parse().unwrap(),
                mac: "52:54:00:AA:BB:CC".into(),
                address: "10.0.0.5".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.0.0.1".parse().unwrap(),
                dns_servers: vec!["10.0.0.2".parse().unwrap()],
                vlan: None,
                mtu: 1500,
            }],
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1 me@x".into()],
            user_data: None,
            volumes: vec![],
        }
    }
}
