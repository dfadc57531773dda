//! `strato network`: tenant networks and their subnets.

use std::net::IpAddr;

use anyhow::{Context, Result};
use api::ids::SubnetId;
use api::resources::{AddressRange, Network, NetworkCreate, Subnet, SubnetCreate};
use clap::{Args, Subcommand};

use super::{resolve, Ctx};
use crate::output::{fmt, render_table, Detail, Row};
use crate::parse;

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List networks.
    List,
    /// Show a network and its subnets.
    Show {
        /// Network id or name.
        network: String,
    },
    /// Create a network (add a subnet before starting VMs on it).
    Create {
        /// Network name.
        name: String,
        /// 802.1Q VLAN tag on the hosts' uplink; untagged when absent.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
        /// MTU of the tenant bridge.
        #[arg(long, default_value_t = 1500)]
        mtu: u16,
    },
    /// Delete a network (it must have no VMs).
    Delete {
        /// Network id or name.
        network: String,
    },
    /// Add a subnet (an address range VMs get addresses from) to a network.
    SubnetCreate(SubnetCreateArgs),
    /// List a network's subnets with their address usage.
    Subnets {
        /// Network id or name.
        network: String,
    },
    /// Delete a subnet (no address may be in use).
    SubnetDelete {
        /// Subnet id.
        subnet: SubnetId,
    },
}

#[derive(Debug, Args)]
pub struct SubnetCreateArgs {
    /// Network id or name.
    pub network: String,
    /// Subnet name.
    pub name: String,
    /// e.g. 10.10.0.0/24 or fd00:10::/64.
    #[arg(long, value_parser = parse::cidr)]
    pub cidr: String,
    /// Gateway address; defaults to the first usable address.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<IpAddr>,
    /// Range VM addresses come from, START-END (repeatable); default: the whole subnet.
    #[arg(long = "pool", value_name = "START-END", value_parser = parse::address_range)]
    pub pools: Vec<AddressRange>,
    /// Range never handed out, START-END (repeatable); the gateway is always reserved.
    #[arg(long = "reserve", value_name = "START-END", value_parser = parse::address_range)]
    pub reserved: Vec<AddressRange>,
    /// DNS server given to VMs (repeatable).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<IpAddr>,
}

impl SubnetCreateArgs {
    /// The API body. Goes through JSON because the CIDR type lives in a crate
    /// the CLI does not depend on; `parse::cidr` already checked the text.
    fn body(&self) -> Result<SubnetCreate> {
        let v = serde_json::json!({
            "name": self.name,
            "cidr": self.cidr,
            "gateway": self.gateway,
            "pools": self.pools,
            "reserved": self.reserved,
            "dns_servers": self.dns,
        });
        serde_json::from_value(v).with_context(|| format!("`{}` is not a valid CIDR", self.cidr))
    }
}

impl Row for Network {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VLAN", "MTU"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            fmt::opt(&self.vlan),
            self.mtu.to_string(),
        ]
    }
}

impl Detail for Network {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("project", self.project_id.to_string()),
            ("vlan", fmt::opt(&self.vlan)),
            ("mtu", self.mtu.to_string()),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

fn ranges(r: &[AddressRange]) -> String {
    let v: Vec<String> = r
        .iter()
        .map(|r| {
            if r.start == r.end {
                r.start.to_string()
            } else {
                format!("{}-{}", r.start, r.end)
            }
        })
        .collect();
    fmt::join(&v, "\n")
}

impl Row for Subnet {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "CIDR", "GATEWAY", "USED", "POOLS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.cidr.to_string(),
            self.gateway.to_string(),
            format!("{}/{}", self.allocated, self.capacity),
            ranges(&self.pools).replace('\n', ", "),
        ]
    }
}

impl Detail for Subnet {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("network", self.network_id.to_string()),
            ("cidr", self.cidr.to_string()),
            ("gateway", self.gateway.to_string()),
            ("pools", ranges(&self.pools)),
            ("reserved", ranges(&self.reserved)),
            ("dns", fmt::join(&self.dns_servers, ", ")),
            (
                "addresses",
                format!("{} of {} allocated", self.allocated, self.capacity),
            ),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

pub async fn run(ctx: &Ctx, cmd: NetworkCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        NetworkCmd::List => ctx.out.list(&c.network_list().await?),
        NetworkCmd::Show { network } => {
            let id = resolve(&network, c.network_list()).await?;
            let (net, subnets) = tokio::join!(c.network_get(id), c.subnet_list(id));
            let net = net?;
            let subnets = subnets?;
            if ctx.out.json {
                return ctx
                    .out
                    .json(&serde_json::json!({ "network": net, "subnets": subnets }));
            }
            ctx.out.show(&net)?;
            let rows = subnets.iter().map(Row::row);
            ctx.out
                .note(format!("\n{}", render_table(Subnet::HEADERS, rows)))
        }
        NetworkCmd::Create { name, vlan, mtu } => ctx
            .out
            .show(&c.network_create(&NetworkCreate { name, vlan, mtu }).await?),
        NetworkCmd::Delete { network } => {
            let id = resolve(&network, c.network_list()).await?;
            c.network_delete(id).await?;
            ctx.out.note(format!("deleted network {network}"))
        }
        NetworkCmd::SubnetCreate(a) => {
            let body = a.body()?;
            let id = resolve(&a.network, c.network_list()).await?;
            ctx.out.show(&c.subnet_create(id, &body).await?)
        }
        NetworkCmd::Subnets { network } => {
            let id = resolve(&network, c.network_list()).await?;
            ctx.out.list(&c.subnet_list(id).await?)
        }
        NetworkCmd::SubnetDelete { subnet } => {
            c.subnet_delete(subnet).await?;
            ctx.out.note(format!("deleted subnet {subnet}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_body_goes_through_the_api_type() {
        let a = SubnetCreateArgs {
            network: "n".into(),
            name: "s".into(),
            cidr: "10.0.0.0/24".into(),
            gateway: None,
            pools: vec![parse::address_range("10.0.0.10-10.0.0.20").unwrap()],
            reserved: vec![],
            dns: vec!["1.1.1.1".parse().unwrap()],
        };
        let body = a.body().unwrap();
        assert_eq!(body.cidr.to_string(), "10.0.0.0/24");
        assert_eq!(body.pools.len(), 1);
        assert_eq!(body.gateway, None);
    }
}
