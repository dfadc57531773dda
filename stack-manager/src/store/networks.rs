//! Tenant networks, their subnets, and address allocation from them (the
//! IPAM rules live in `netconfig`; the database holds what is taken).

use std::collections::BTreeSet;
use std::net::IpAddr;

use api::ids::{InstanceId, NetworkId, ProjectId, SubnetId};
use api::resources::{AddressRange, List, Network, NetworkCreate, PageParams, ProjectPage, Subnet};
use api::ErrorCode;
use ipnet::IpNet;
use netconfig::SubnetPlan;
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{now_ms, RowExt, WriteTx};
use crate::error::{ApiError, ApiResult};

/// Networks are listed by project, then name (unique in a project); the id
/// only makes the key total.
static NETWORK_PAGES: Keyset = Keyset {
    list: "networks",
    columns: &[
        ("n.project_id", KeyKind::Text),
        ("n.name", KeyKind::Text),
        ("n.id", KeyKind::Text),
    ],
    descending: false,
};

/// A network's subnets in creation order, the order allocation walks them.
static SUBNET_PAGES: Keyset = Keyset {
    list: "subnets",
    columns: &[("s.created_at", KeyKind::Int), ("s.id", KeyKind::Text)],
    descending: false,
};

/// A subnet to create, already checked by `netconfig` (`SubnetPlan::new`).
pub struct NewSubnet {
    pub name: String,
    pub plan: SubnetPlan,
    pub dns_servers: Vec<IpAddr>,
}

fn network_of_row(r: &AnyRow) -> Result<Network, sqlx::Error> {
    Ok(Network {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        vlan: r.opt_int("vlan")?.map(|v| v as u16),
        mtu: r.uint("mtu")? as u16,
        created_at: r.time("created_at")?,
    })
}

/// A stored column that no longer parses is a bug or a hand-edited database:
/// say which subnet and column instead of failing somewhere downstream.
fn corrupt(r: &AnyRow, col: &str, detail: impl std::fmt::Display) -> ApiError {
    let id = r.text("id").unwrap_or_default();
    ApiError::internal(format!("subnet {id}: stored {col} is invalid: {detail}"))
}

fn parse_col<T: std::str::FromStr>(r: &AnyRow, col: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    r.text(col)?.parse().map_err(|e| corrupt(r, col, e))
}

fn json_col<T: serde::de::DeserializeOwned>(r: &AnyRow, col: &str) -> ApiResult<T> {
    serde_json::from_str(&r.text(col)?).map_err(|e| corrupt(r, col, e))
}

/// The plan a subnet row was created from; re-validated on every read so a
/// stored plan can never bypass `SubnetPlan::new`.
fn plan_of_row(r: &AnyRow) -> Result<SubnetPlan, ApiError> {
    let cidr: IpNet = parse_col(r, "cidr")?;
    let gateway: IpAddr = parse_col(r, "gateway")?;
    let pools: Vec<netconfig::AddressRange> = json_col(r, "pools")?;
    let reserved: Vec<netconfig::AddressRange> = json_col(r, "reserved")?;
    SubnetPlan::new(cidr, Some(gateway), pools, reserved).map_err(|e| corrupt(r, "plan", e))
}

fn to_api_ranges(ranges: &[netconfig::AddressRange]) -> Vec<AddressRange> {
    ranges
        .iter()
        .map(|r| AddressRange {
            start: r.start,
            end: r.end,
        })
        .collect()
}

/// Expects the row to carry an `allocated` count next to the subnet columns
/// (see [`SUBNET_SELECT`]).
fn subnet_of_row(r: &AnyRow) -> ApiResult<Subnet> {
    let plan = plan_of_row(r)?;
    Ok(Subnet {
        id: r.id("id")?,
        network_id: r.id("network_id")?,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        cidr: plan.cidr(),
        gateway: plan.gateway(),
        pools: to_api_ranges(plan.pools()),
        reserved: to_api_ranges(plan.reserved()),
        dns_servers: json_col(r, "dns_servers")?,
        allocated: r.uint("allocated")?,
        capacity: plan.capacity(),
        created_at: r.time("created_at")?,
    })
}

const SUBNET_SELECT: &str = "SELECT s.*, \
     (SELECT COUNT(*) FROM addresses a WHERE a.subnet_id = s.id) AS allocated FROM subnets s";

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(|e| ApiError::internal(format!("cannot encode JSON: {e}")))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Locks the given subnets (PostgreSQL: row locks until commit) and counts
/// the addresses allocated on them. Locking first means an allocation either
/// committed before the count (and is counted) or waits for this
/// transaction, so a delete never cascades away a live address.
async fn lock_and_count_addresses(
    tx: &mut WriteTx,
    subnet_filter: &str,
    id: &str,
) -> ApiResult<i64> {
    sqlx::query(&format!(
        "UPDATE subnets SET generation = generation + 1 WHERE {subnet_filter}"
    ))
    .bind(id)
    .execute(&mut ***tx)
    .await?;
    let n = sqlx::query(&format!(
        "SELECT COUNT(*) AS n FROM addresses WHERE subnet_id IN (SELECT id FROM subnets WHERE {subnet_filter})"
    ))
    .bind(id)
    .fetch_one(&mut ***tx)
    .await?
    .int("n")?;
    Ok(n)
}

impl Store {
    /// One page of the networks the caller may list (see
    /// `Store::project_for_read`), by project and name, in one statement.
    pub async fn network_list(&self, caller: &Caller, q: &ProjectPage) -> ApiResult<List<Network>> {
        self.scoped_page(
            caller,
            q,
            &NETWORK_PAGES,
            super::one_table("SELECT n.* FROM networks n WHERE ($1 = '' OR n.project_id = $1)"),
            super::each_row(network_of_row),
            |n| {
                vec![
                    n.project_id.to_string().into(),
                    n.name.clone().into(),
                    n.id.to_string().into(),
                ]
            },
        )
        .await
    }

    /// A network the caller may read; 404 otherwise.
    pub async fn network_get(&self, caller: &Caller, id: NetworkId) -> ApiResult<Network> {
        let row = sqlx::query("SELECT * FROM networks WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("network", id))?;
        let network = network_of_row(&row)?;
        caller.check_read(network.project_id, "network", id)?;
        Ok(network)
    }

    /// [`network_get`](Self::network_get) for a caller about to change the
    /// network or add to it: readers get 403.
    pub async fn network_get_for_write(
        &self,
        caller: &Caller,
        id: NetworkId,
    ) -> ApiResult<Network> {
        let network = self.network_get(caller, id).await?;
        caller.check_write(network.project_id, "network", id)?;
        Ok(network)
    }

    /// A network of `project` (which the caller may read) by id or name;
    /// 404 otherwise.
    pub async fn network_resolve(
        &self,
        caller: &Caller,
        project: ProjectId,
        id_or_name: &str,
    ) -> ApiResult<Network> {
        caller.check_read(project, "network", id_or_name)?;
        let row =
            sqlx::query("SELECT * FROM networks WHERE project_id = $1 AND (id = $2 OR name = $2)")
                .bind(project.to_string())
                .bind(id_or_name)
                .fetch_optional(&self.db.pool)
                .await?
                .ok_or_else(|| ApiError::not_found("network", id_or_name))?;
        Ok(network_of_row(&row)?)
    }

    /// Creates a network in `project` (see `Store::project_for_write`);
    /// the body's fields are checked by the caller.
    pub async fn network_create(
        &self,
        caller: &Caller,
        project: ProjectId,
        body: NetworkCreate,
    ) -> ApiResult<Network> {
        caller.check_write(project, "project", project)?;
        let network = Network {
            id: NetworkId::new(),
            project_id: project,
            name: body.name,
            vlan: body.vlan,
            mtu: body.mtu,
            created_at: crate::db::from_ms(now_ms()),
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO networks (id, project_id, name, vlan, mtu, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(network.id.to_string())
        .bind(project.to_string())
        .bind(&network.name)
        .bind(network.vlan.map(i64::from))
        .bind(i64::from(network.mtu))
        .bind(network.created_at.timestamp_millis())
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!(
                "a network named `{}` already exists in this project",
                network.name
            )),
            false => e.into(),
        })?;
        tx.commit().await?;
        Ok(network)
    }

    /// Deletes a network and its subnets; refused while any address on it
    /// is allocated.
    pub async fn network_delete(&self, caller: &Caller, id: NetworkId) -> ApiResult<()> {
        let network = self.network_get_for_write(caller, id).await?;
        let mut tx = self.db.begin_write().await?;
        let used = lock_and_count_addresses(&mut tx, "network_id = $1", &id.to_string()).await?;
        if used > 0 {
            return Err(ApiError::conflict(format!(
                "network `{}` still has {used} allocated address(es); delete the instances using it first",
                network.name
            )));
        }
        sqlx::query("DELETE FROM subnets WHERE network_id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        super::delete_by_id(&mut tx, "networks", "network", id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One page of a network's subnets, in creation order, with their
    /// allocated counts, in one statement.
    pub async fn subnet_list(
        &self,
        caller: &Caller,
        network: NetworkId,
        params: &PageParams,
    ) -> ApiResult<List<Subnet>> {
        let page = SUBNET_PAGES.page(params)?;
        self.network_get(caller, network).await?;
        let sql = format!(
            "{SUBNET_SELECT} WHERE s.network_id = $1{}{}",
            page.condition(2),
            page.order_and_limit()
        );
        let rows = page
            .bind(sqlx::query(&sql).bind(network.to_string()))
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(subnet_of_row)
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(page.finish(items, |s| {
            vec![s.created_at.into(), s.id.to_string().into()]
        }))
    }

    /// A subnet the caller may read; 404 otherwise.
    pub async fn subnet_get(&self, caller: &Caller, id: SubnetId) -> ApiResult<Subnet> {
        let row = sqlx::query(&format!("{SUBNET_SELECT} WHERE s.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("subnet", id))?;
        let subnet = subnet_of_row(&row)?;
        caller.check_read(subnet.project_id, "subnet", id)?;
        Ok(subnet)
    }

    /// Adds a subnet to `network` (read with
    /// [`network_get_for_write`](Self::network_get_for_write)); its range
    /// must not overlap a sibling's.
    pub async fn subnet_create(
        &self,
        caller: &Caller,
        network: &Network,
        new: NewSubnet,
    ) -> ApiResult<Subnet> {
        let id = network.id;
        caller.check_write(network.project_id, "network", id)?;
        let NewSubnet {
            name,
            plan,
            dns_servers,
        } = new;
        let subnet_id = SubnetId::new();
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        // A no-op update: on PostgreSQL it locks the network so two concurrent
        // creates cannot both pass the overlap check; it also sees a network
        // deleted since we read it.
        let exists = sqlx::query("UPDATE networks SET mtu = mtu WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected()
            > 0;
        if !exists {
            return Err(ApiError::not_found("network", id));
        }
        let siblings = sqlx::query("SELECT id, name, cidr FROM subnets WHERE network_id = $1")
            .bind(id.to_string())
            .fetch_all(&mut **tx)
            .await?;
        for s in &siblings {
            let other: IpNet = parse_col(s, "cidr")?;
            if overlaps(&plan.cidr(), &other) {
                return Err(ApiError::invalid(format!(
                    "{} overlaps {other} of subnet `{}` in network `{}`",
                    plan.cidr(),
                    s.text("name")?,
                    network.name
                )));
            }
        }
        sqlx::query(
            "INSERT INTO subnets (id, network_id, project_id, name, cidr, gateway, pools, reserved, dns_servers, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(subnet_id.to_string())
        .bind(id.to_string())
        .bind(network.project_id.to_string())
        .bind(&name)
        .bind(plan.cidr().to_string())
        .bind(plan.gateway().to_string())
        .bind(to_json(plan.pools())?)
        .bind(to_json(plan.reserved())?)
        .bind(to_json(&dns_servers)?)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!(
                "a subnet named `{}` already exists in network `{}`",
                name, network.name
            )),
            false => e.into(),
        })?;
        tx.commit().await?;
        Ok(Subnet {
            id: subnet_id,
            network_id: id,
            project_id: network.project_id,
            name,
            cidr: plan.cidr(),
            gateway: plan.gateway(),
            pools: to_api_ranges(plan.pools()),
            reserved: to_api_ranges(plan.reserved()),
            dns_servers,
            allocated: 0,
            capacity: plan.capacity(),
            created_at: crate::db::from_ms(now),
        })
    }

    /// Deletes a subnet; refused while any of its addresses is allocated.
    pub async fn subnet_delete(&self, caller: &Caller, id: SubnetId) -> ApiResult<()> {
        let subnet = self.subnet_get(caller, id).await?;
        caller.check_write(subnet.project_id, "subnet", id)?;
        let mut tx = self.db.begin_write().await?;
        let used = lock_and_count_addresses(&mut tx, "id = $1", &id.to_string()).await?;
        if used > 0 {
            return Err(ApiError::conflict(format!(
                "subnet `{}` ({}) still has {used} allocated address(es); delete the instances using it first",
                subnet.name, subnet.cidr
            )));
        }
        super::delete_by_id(&mut tx, "subnets", "subnet", id).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Allocates an address on the first subnet of `network` (subnets in
/// creation order) that has one free, for NIC `nic_index` of `instance`,
/// inside `tx`; see [`address_pick`] for which address.
///
/// The network's subnet rows are locked (PostgreSQL: `FOR UPDATE`, in
/// subnet order, by the same statement that reads them) before anything
/// allocated is read, so concurrent allocations on PostgreSQL serialize per
/// network and never pick the same address; on SQLite the write gate
/// already does. A subnet deleted meanwhile is not returned.
pub async fn address_allocate(
    tx: &mut WriteTx,
    network: &Network,
    instance: InstanceId,
    nic_index: u32,
) -> ApiResult<(SubnetId, IpAddr)> {
    let (subnet, address) = address_pick(tx, network, &[]).await?;
    sqlx::query(
        "INSERT INTO addresses (subnet_id, address, instance_id, nic_index, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(subnet.to_string())
    .bind(address.to_string())
    .bind(instance.to_string())
    .bind(i64::from(nic_index))
    .bind(now_ms())
    .execute(&mut ***tx)
    .await?;
    Ok((subnet, address))
}

/// Addresses after a subnet's cursor checked per allocation before falling
/// back to reading the subnet's whole allocated set.
const CANDIDATE_WINDOW: usize = 16;

/// What [`address_allocate`] would allocate, without inserting it: the
/// caller inserts the address (with the instance row, in one statement)
/// before its transaction ends. It does move the subnet's cursor, in the
/// same transaction, so a rollback puts it back. `pending` are addresses
/// this transaction picked but has not written yet (an instance with two
/// NICs on one network).
///
/// Allocation rotates: each subnet remembers the address it gave out last,
/// and the next one is the first free address after it, wrapping round the
/// pools. While the addresses after the cursor are mostly free, that is one
/// query of at most [`CANDIDATE_WINDOW`] key lookups, where "lowest free"
/// read every allocated address of the subnet on every create; and a
/// released address goes to a new instance when the cursor next reaches
/// it, not straight away. When the whole window is taken this reads the
/// allocated set and continues the rotation past it (which also finds
/// exhaustion), so the cursor lands where addresses are free again.
pub async fn address_pick(
    tx: &mut WriteTx,
    network: &Network,
    pending: &[(SubnetId, IpAddr)],
) -> ApiResult<(SubnetId, IpAddr)> {
    let sql = match tx.backend {
        crate::db::Backend::Postgres => {
            "SELECT * FROM subnets WHERE network_id = $1 ORDER BY created_at, id FOR UPDATE"
        }
        crate::db::Backend::Sqlite => {
            "SELECT * FROM subnets WHERE network_id = $1 ORDER BY created_at, id"
        }
    };
    let subnets = sqlx::query(sql)
        .bind(network.id.to_string())
        .fetch_all(&mut ***tx)
        .await?;
    let mut full = Vec::with_capacity(subnets.len());
    for row in &subnets {
        let subnet: SubnetId = row.id("id")?;
        let plan = plan_of_row(row)?;
        let pending_here: Vec<IpAddr> = pending
            .iter()
            .filter(|p| p.0 == subnet)
            .map(|p| p.1)
            .collect();
        // A cursor that does not parse is only a lost position: start over.
        let cursor = row
            .opt_text("next_after")?
            .and_then(|a| a.parse::<IpAddr>().ok());
        let address = match free_after_cursor(tx, subnet, &plan, cursor, &pending_here).await? {
            Some(a) => a,
            None => {
                let mut allocated = BTreeSet::new();
                for a in sqlx::query("SELECT address FROM addresses WHERE subnet_id = $1")
                    .bind(subnet.to_string())
                    .fetch_all(&mut ***tx)
                    .await?
                {
                    allocated.insert(parse_col::<IpAddr>(&a, "address")?);
                }
                allocated.extend(pending_here);
                match plan.first_free_after(cursor, &allocated) {
                    Ok(a) => a,
                    Err(netconfig::IpamError::Exhausted { .. }) => {
                        full.push(plan.cidr().to_string());
                        continue;
                    }
                    Err(e) => return Err(ApiError::internal(format!("subnet {subnet}: {e}"))),
                }
            }
        };
        sqlx::query("UPDATE subnets SET next_after = $2 WHERE id = $1")
            .bind(subnet.to_string())
            .bind(address.to_string())
            .execute(&mut ***tx)
            .await?;
        return Ok((subnet, address));
    }
    let message = if full.is_empty() {
        format!(
            "network `{}` has no subnet; create one with `strato network subnet-create`",
            network.name
        )
    } else {
        format!(
            "network `{}` has no free address left (subnets: {})",
            network.name,
            full.join(", ")
        )
    };
    Err(ApiError::new(ErrorCode::AddressesExhausted, message))
}

/// The first address of the window after `cursor` that is neither
/// allocated nor `pending`: one query over at most [`CANDIDATE_WINDOW`]
/// primary-key lookups. `None` when the whole window is taken.
async fn free_after_cursor(
    tx: &mut WriteTx,
    subnet: SubnetId,
    plan: &SubnetPlan,
    cursor: Option<IpAddr>,
    pending: &[IpAddr],
) -> ApiResult<Option<IpAddr>> {
    let candidates: Vec<IpAddr> = plan
        .next_candidates(cursor, CANDIDATE_WINDOW)
        .into_iter()
        .filter(|a| !pending.contains(a))
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let placeholders = (0..candidates.len())
        .map(|i| format!("${}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT address FROM addresses WHERE subnet_id = $1 AND address IN ({placeholders})"
    );
    let mut query = sqlx::query(&sql).bind(subnet.to_string());
    for a in &candidates {
        query = query.bind(a.to_string());
    }
    let mut taken = BTreeSet::new();
    for row in query.fetch_all(&mut ***tx).await? {
        taken.insert(parse_col::<IpAddr>(&row, "address")?);
    }
    Ok(candidates.into_iter().find(|a| !taken.contains(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_is_symmetric_and_family_aware() {
        assert!(overlaps(&net("10.0.0.0/16"), &net("10.0.5.0/24")));
        assert!(overlaps(&net("10.0.5.0/24"), &net("10.0.0.0/16")));
        assert!(overlaps(&net("10.0.0.0/24"), &net("10.0.0.0/24")));
        assert!(!overlaps(&net("10.0.0.0/24"), &net("10.0.1.0/24")));
        assert!(!overlaps(&net("10.0.0.0/24"), &net("fd00::/64")));
    }

    async fn subnet_row(db: &crate::db::Db, network: &Network, cidr: &str, at: i64) {
        let plan = SubnetPlan::new(net(cidr), None, vec![], vec![]).unwrap();
        sqlx::query(
            "INSERT INTO subnets (id, network_id, project_id, name, cidr, gateway, pools, reserved, dns_servers, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, '[]', '[]', $8)",
        )
        .bind(SubnetId::new().to_string())
        .bind(network.id.to_string())
        .bind(network.project_id.to_string())
        .bind(format!("s{at}"))
        .bind(cidr)
        .bind(plan.gateway().to_string())
        .bind(to_json(plan.pools()).unwrap())
        .bind(at)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn allocation_walks_subnets_in_order_then_reports_exhaustion() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = crate::db::Db::connect(&url, 2).await.unwrap();
        let network = Network {
            id: NetworkId::new(),
            project_id: ProjectId::new(),
            name: "web".into(),
            vlan: None,
            mtu: 1500,
            created_at: crate::db::from_ms(0),
        };
        sqlx::query(
            "INSERT INTO projects (id, name, description, created_at) VALUES ($1, 'p', '', 0)",
        )
        .bind(network.project_id.to_string())
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO networks (id, project_id, name, mtu, created_at) VALUES ($1, $2, 'web', 1500, 0)")
            .bind(network.id.to_string())
            .bind(network.project_id.to_string())
            .execute(&db.pool)
            .await
            .unwrap();
        let mut tx = db.begin_write().await.unwrap();
        let e = address_allocate(&mut tx, &network, InstanceId::new(), 0)
            .await
            .unwrap_err();
        assert!(e.message.contains("has no subnet"), "{e}");
        drop(tx);

        subnet_row(&db, &network, "10.0.0.0/30", 1).await;
        subnet_row(&db, &network, "10.0.1.0/30", 2).await;
        let mut got = Vec::new();
        for i in 0..2 {
            let mut tx = db.begin_write().await.unwrap();
            let (_, a) = address_allocate(&mut tx, &network, InstanceId::new(), i)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            got.push(a.to_string());
        }
        // A /30 holds the gateway and one host.
        assert_eq!(got, ["10.0.0.2", "10.0.1.2"]);
        let mut tx = db.begin_write().await.unwrap();
        let e = address_allocate(&mut tx, &network, InstanceId::new(), 0)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::AddressesExhausted);
        assert_eq!(
            e.message,
            "network `web` has no free address left (subnets: 10.0.0.0/30, 10.0.1.0/30)"
        );
    }
}
