//! Host networking for tenant networks: one Linux bridge per network
//! (`sbr-<first 11 hex digits of the network id>`), with a VLAN
//! sub-interface of the uplink enslaved to it when the network has a VLAN.
//! Domains' NICs join the bridge. Driven with iproute2: its commands are
//! stable, idempotent enough with `link show` checks, and readable in logs;
//! an rtnetlink binding would add an async netlink stack for six calls.

use api::ids::NetworkId;

use crate::error::Result;
use crate::exec;

const BRIDGE_PREFIX: &str = "sbr-";

/// Where this host's tenant networking lives: the uplink carrying VLANs,
/// and the network namespace holding the bridges (the one libvirtd
/// attaches guests' taps in).
#[derive(Debug, Clone, Default)]
pub struct HostNet {
    pub uplink: Option<String>,
    /// A name under `/run/netns`; `None` is the agent's own namespace.
    pub netns: Option<String>,
}

impl HostNet {
    /// `ip` in the bridges' namespace.
    async fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&str> = Vec::with_capacity(args.len() + 2);
        if let Some(ns) = &self.netns {
            all.extend(["-n", ns.as_str()]);
        }
        all.extend_from_slice(args);
        Ok(exec::run("ip", all).await?)
    }
}

/// Linux interface names: 1–15 bytes, no `/`, whitespace or `:`.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub fn bridge_name(network: NetworkId) -> String {
    let hex: String = network
        .to_string()
        .chars()
        .filter(|c| *c != '-')
        .take(11)
        .collect();
    format!("{BRIDGE_PREFIX}{hex}")
}

pub fn is_strato_bridge(name: &str) -> bool {
    name.starts_with(BRIDGE_PREFIX)
}

/// `<uplink>.<vlan>` when it fits in an interface name, else a name derived
/// from the bridge's.
pub fn vlan_ifname(uplink: &str, vlan: u16, bridge: &str) -> String {
    let natural = format!("{uplink}.{vlan}");
    if natural.len() <= 15 {
        natural
    } else {
        // One VLAN sub-interface per bridge, so the bridge's suffix is unique.
        format!("svl{}", &bridge[BRIDGE_PREFIX.len()..])
    }
}

/// The alias marking an interface this agent created for `network`.
fn alias(network: NetworkId) -> String {
    format!("strato:{network}")
}

async fn owned_by(net: &HostNet, ifname: &str, network: NetworkId) -> bool {
    net.ip(&["-o", "link", "show", "dev", ifname])
        .await
        .is_ok_and(|out| out.contains(&format!("alias {}", alias(network))))
}

async fn link_exists(net: &HostNet, name: &str) -> bool {
    net.ip(&["link", "show", "dev", name]).await.is_ok()
}

/// Makes sure the bridge for `network` exists and is up, with its VLAN
/// sub-interface when the network has a VLAN and an uplink is configured.
pub async fn ensure_bridge(
    network: NetworkId,
    vlan: Option<u16>,
    mtu: u16,
    net: &HostNet,
) -> Result<String> {
    let uplink = net.uplink.as_deref();
    let bridge = bridge_name(network);
    if !link_exists(net, &bridge).await {
        // A concurrent creator may win the race; only a bridge that still
        // does not exist afterwards is an error.
        if let Err(e) = net
            .ip(&["link", "add", "name", &bridge, "type", "bridge"])
            .await
        {
            if !link_exists(net, &bridge).await {
                return Err(e);
            }
        }
        tracing::info!(%network, bridge, "bridge created");
    }
    let mtu_s = mtu.to_string();
    net.ip(&["link", "set", "dev", &bridge, "mtu", &mtu_s, "up"])
        .await?;
    match (vlan, uplink) {
        (Some(vlan), Some(uplink)) => {
            let sub = vlan_ifname(uplink, vlan, &bridge);
            if link_exists(net, &sub).await {
                // Only a sub-interface this agent made for this network is
                // ours to enslave: two networks with one VLAN, or one an
                // operator made, must not be joined or taken over.
                if !owned_by(net, &sub, network).await {
                    return Err(crate::error::AgentError::Invalid(format!(
                        "VLAN {vlan} on {uplink} is already in use ({sub} belongs to something else)"
                    )));
                }
            } else {
                let id = vlan.to_string();
                net.ip(&[
                    "link", "add", "link", uplink, "name", &sub, "type", "vlan", "id", &id,
                ])
                .await?;
                net.ip(&["link", "set", "dev", &sub, "alias", &alias(network)])
                    .await?;
            }
            net.ip(&[
                "link", "set", "dev", &sub, "master", &bridge, "mtu", &mtu_s, "up",
            ])
            .await?;
        }
        (Some(vlan), None) => {
            tracing::warn!(%network, vlan, "network has a VLAN but no uplink is configured; its bridge stays local to this host");
        }
        _ => {}
    }
    Ok(bridge)
}

/// Removes the bridge of `network` (and its VLAN sub-interface) once no
/// domain uses it.
pub async fn remove_bridge(network: NetworkId, vlan: Option<u16>, net: &HostNet) -> Result<()> {
    let uplink = net.uplink.as_deref();
    let bridge = bridge_name(network);
    if let (Some(vlan), Some(uplink)) = (vlan, uplink) {
        let sub = vlan_ifname(uplink, vlan, &bridge);
        if link_exists(net, &sub).await && owned_by(net, &sub, network).await {
            net.ip(&["link", "del", "dev", &sub]).await?;
        }
    }
    if link_exists(net, &bridge).await {
        net.ip(&["link", "del", "dev", &bridge]).await?;
        tracing::info!(%network, bridge, "bridge removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_ifnamsiz() {
        let n: NetworkId = "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a03".parse().unwrap();
        let b = bridge_name(n);
        assert_eq!(b, "sbr-6f1b2a523c1");
        assert!(valid_ifname(&b));
        assert_eq!(vlan_ifname("eth0", 100, &b), "eth0.100");
        let long = vlan_ifname("enp129s0f1np1", 4094, &b);
        assert!(valid_ifname(&long), "{long}");
    }

    #[test]
    fn hostile_interface_names_are_rejected() {
        for bad in ["", "a/b", "x y", "0123456789abcdef", "..", "a:b"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }
}
