//! Tenant networks, their subnets, and the addresses allocated from them.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{InstanceId, NetworkId, ProjectId, SubnetId};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    pub name: String,
    /// 802.1Q tag on the hosts' uplink; absent for an untagged network.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// MTU of the tenant bridge.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub id: NetworkId,
    pub project_id: ProjectId,
    pub name: String,
    pub vlan: Option<u16>,
    pub mtu: u16,
    pub created_at: DateTime<Utc>,
}

/// An inclusive address range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRange {
    #[schema(value_type = String)]
    pub start: IpAddr,
    #[schema(value_type = String)]
    pub end: IpAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    pub name: String,
    /// e.g. `10.10.0.0/24` or `fd00:10::/64`.
    #[schema(value_type = String)]
    pub cidr: IpNet,
    /// Defaults to the first usable address.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<IpAddr>,
    /// Where instance addresses come from; defaults to the whole usable range.
    #[serde(default)]
    pub pools: Vec<AddressRange>,
    /// Never handed out (switches, appliances, ...). The gateway is always reserved.
    #[serde(default)]
    pub reserved: Vec<AddressRange>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub dns_servers: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Subnet {
    pub id: SubnetId,
    pub network_id: NetworkId,
    pub project_id: ProjectId,
    pub name: String,
    #[schema(value_type = String)]
    pub cidr: IpNet,
    #[schema(value_type = String)]
    pub gateway: IpAddr,
    pub pools: Vec<AddressRange>,
    pub reserved: Vec<AddressRange>,
    #[schema(value_type = Vec<String>)]
    pub dns_servers: Vec<IpAddr>,
    /// Addresses allocated now.
    pub allocated: u64,
    /// Addresses the pools hold in all.
    pub capacity: u64,
    pub created_at: DateTime<Utc>,
}

/// An address held by an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Address {
    pub subnet_id: SubnetId,
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub instance_id: Option<InstanceId>,
}
