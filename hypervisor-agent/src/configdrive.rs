//! The cloud-init NoCloud config drive: an ISO9660 filesystem labelled
//! `cidata` holding `meta-data`, `user-data` and `network-config`
//! (version 2). It is rebuilt only when its content changes, and replaced
//! by rename so a running guest never sees a half-written file.

use std::path::Path;

use api::internal::{InstanceSpec, NicSpec};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use crate::error::{AgentError, Result};
use crate::exec;

/// The three files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

#[derive(Serialize)]
struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "local-hostname")]
    local_hostname: &'a str,
    #[serde(rename = "public-keys", skip_serializing_if = "Vec::is_empty")]
    public_keys: Vec<&'a str>,
}

#[derive(Serialize)]
struct NetworkConfig {
    version: u8,
    ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matches: Match,
    #[serde(rename = "set-name")]
    set_name: String,
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
    mtu: u16,
}

#[derive(Serialize)]
struct Match {
    macaddress: String,
}

#[derive(Serialize)]
struct Route {
    to: &'static str,
    via: String,
}

#[derive(Serialize)]
struct Nameservers {
    addresses: Vec<String>,
}

fn ethernet(index: usize, nic: &NicSpec) -> Ethernet {
    // Only the first NIC carries the default route: two defaults would
    // leave the guest's egress to chance.
    let routes = if index == 0 {
        vec![Route {
            to: if nic.gateway.is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            },
            via: nic.gateway.to_string(),
        }]
    } else {
        Vec::new()
    };
    Ethernet {
        matches: Match {
            macaddress: nic.mac.to_ascii_lowercase(),
        },
        set_name: format!("eth{index}"),
        addresses: vec![format!("{}/{}", nic.address, nic.prefix_len)],
        routes,
        nameservers: (!nic.dns_servers.is_empty()).then(|| Nameservers {
            addresses: nic.dns_servers.iter().map(|a| a.to_string()).collect(),
        }),
        mtu: nic.mtu,
    }
}

impl Seed {
    pub fn for_instance(spec: &InstanceSpec) -> Result<Self> {
        let meta = MetaData {
            instance_id: spec.id.to_string(),
            local_hostname: &spec.hostname,
            public_keys: spec
                .ssh_authorized_keys
                .iter()
                .map(String::as_str)
                .collect(),
        };
        let net = NetworkConfig {
            version: 2,
            ethernets: spec
                .nics
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("nic{i}"), ethernet(i, n)))
                .collect(),
        };
        // Without user-data of its own, the instance still gets a valid
        // cloud-config so cloud-init does not complain about an empty file.
        let user_data = match &spec.user_data {
            Some(u) => u.clone(),
            None => "#cloud-config\n{}\n".to_string(),
        };
        Ok(Self {
            meta_data: to_yaml(&meta)?,
            user_data,
            network_config: to_yaml(&net)?,
        })
    }

    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.meta_data, &self.user_data, &self.network_config] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Writes the ISO to `iso` unless an identical one is already there.
    pub async fn write_iso(&self, iso: &Path) -> Result<()> {
        let digest_file = iso.with_extension("sha256");
        let digest = self.digest();
        if iso.exists() && std::fs::read_to_string(&digest_file).ok().as_deref() == Some(&digest) {
            return Ok(());
        }
        let dir = iso
            .parent()
            .ok_or_else(|| AgentError::Invalid("config drive path has no parent".into()))?;
        let staging = dir.join(".cidata");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(AgentError::io(&staging))?;
        let result = async {
            for (name, body) in [
                ("meta-data", &self.meta_data),
                ("user-data", &self.user_data),
                ("network-config", &self.network_config),
            ] {
                let p = staging.join(name);
                std::fs::write(&p, body).map_err(AgentError::io(&p))?;
            }
            let tmp = dir.join(".cidata.iso");
            exec::run(
                "genisoimage",
                [
                    "-quiet".as_ref(),
                    "-output".as_ref(),
                    tmp.as_os_str(),
                    "-volid".as_ref(),
                    "cidata".as_ref(),
                    "-joliet".as_ref(),
                    "-rock".as_ref(),
                    staging.join("meta-data").as_os_str(),
                    staging.join("user-data").as_os_str(),
                    staging.join("network-config").as_os_str(),
                ],
            )
            .await?;
            agent_support::fs::set_mode(&tmp, 0o644)?;
            std::fs::rename(&tmp, iso).map_err(AgentError::io(iso))?;
            std::fs::write(&digest_file, &digest).map_err(AgentError::io(&digest_file))?;
            Ok(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&staging);
        result
    }
}

fn to_yaml<T: Serialize>(v: &T) -> Result<String> {
    serde_yaml::to_string(v).map_err(|e| AgentError::Invalid(format!("yaml: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::spec;

    #[test]
    fn seed_carries_identity_keys_and_static_address() {
        let seed = Seed::for_instance(&spec()).unwrap();
        let meta: serde_yaml::Value = serde_yaml::from_str(&seed.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a01");
        assert_eq!(meta["local-hostname"], "web-1");
        assert_eq!(
            meta["public-keys"][0],
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1 me@x"
        );
        let net: serde_yaml::Value = serde_yaml::from_str(&seed.network_config).unwrap();
        let eth = &net["ethernets"]["nic0"];
        assert_eq!(net["version"], 2);
        assert_eq!(eth["match"]["macaddress"], "52:54:00:aa:bb:cc");
        assert_eq!(eth["addresses"][0], "10.0.0.5/24");
        assert_eq!(eth["routes"][0]["via"], "10.0.0.1");
        assert_eq!(eth["nameservers"]["addresses"][0], "10.0.0.2");
        assert!(seed.user_data.starts_with("#cloud-config"));
    }

    #[test]
    fn user_data_is_passed_through_verbatim() {
        let mut s = spec();
        s.user_data = Some("#!/bin/sh\necho hi\n".into());
        assert_eq!(
            Seed::for_instance(&s).unwrap().user_data,
            "#!/bin/sh\necho hi\n"
        );
    }

    #[test]
    fn hostile_hostname_cannot_inject_yaml_keys() {
        let mut s = spec();
        s.hostname = "x\ninstance-id: evil".into();
        let seed = Seed::for_instance(&s).unwrap();
        let meta: serde_yaml::Value = serde_yaml::from_str(&seed.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a01");
    }
}
