//! Racks, hosts and enrollment tokens as the operator sees them. Every
//! method here is for admins. Hosts are created by enrollment (the
//! internal API); here they are read, disabled or drained, and removed.

use api::ids::{EnrollmentTokenId, HostId, RackId};
use api::resources::{
    AdminState, EnrollmentTokenCreate, EnrollmentTokenCreated, Host, HostHealth, List, PageParams,
    Rack,
};
use sqlx::any::AnyRow;

use super::claims::HostView;
use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, now_ms, RowExt};
use crate::error::{ApiError, ApiResult};
use crate::secrets::{hash_secret, new_secret};

/// Racks are listed by name (unique); the id only makes the key total.
static RACK_PAGES: Keyset = Keyset {
    list: "racks",
    columns: &[("r.name", KeyKind::Text), ("r.id", KeyKind::Text)],
    descending: false,
};

/// Hosts are listed by name; the id makes the key total.
static HOST_PAGES: Keyset = Keyset {
    list: "hosts",
    columns: &[("h.name", KeyKind::Text), ("h.id", KeyKind::Text)],
    descending: false,
};

/// Every host column except the credential and its hash, so that no query
/// here can leak them into a response by accident.
const HOST_COLUMNS: &str = "h.id, h.name, h.kind, h.rack_id, h.agent_url, h.admin_state, \
     h.cap_vcpus, h.cap_ram_mib, h.cap_disk_gib, h.cap_storage_total, h.cap_storage_free, \
     h.alloc_vcpus, h.alloc_ram_mib, h.alloc_disk_gib, h.alloc_storage, h.alloc_instances, h.alloc_volumes, \
     h.health, h.health_since, h.health_reason, h.machine_id, h.last_heartbeat_at, h.created_at, \
     (SELECT COUNT(*) FROM instances pi WHERE pi.host_id = h.id AND pi.deleted_at IS NULL \
        AND pi.relocation = 'never') AS pinned_instances";

const RACK_SELECT: &str = "SELECT r.*, \
     (SELECT COUNT(*) FROM hosts h WHERE h.rack_id = r.id) AS host_count FROM racks r";

fn rack_of_row(r: &AnyRow) -> Result<Rack, sqlx::Error> {
    Ok(Rack {
        id: r.id("id")?,
        name: r.text("name")?,
        location: r.text("location")?,
        host_count: r.uint("host_count")?,
        created_at: r.time("created_at")?,
    })
}

/// How a host's health is judged: by the caller, from the scheduler's
/// view (`Scheduler::current_health`), which the store does not depend on.
pub type HealthOf<'a> = &'a (dyn Fn(&HostView) -> HostHealth + Sync);

fn host_of_row(health_of: HealthOf<'_>, r: &AnyRow) -> Result<Host, sqlx::Error> {
    let view = HostView::from_row(r)?;
    let health = health_of(&view);
    Ok(Host {
        id: view.id,
        name: r.text("name")?,
        kind: view.kind,
        rack_id: view.rack,
        agent_url: r.text("agent_url")?,
        admin_state: view.admin_state,
        health,
        health_reason: match health {
            HostHealth::Up | HostHealth::Down => None,
            // Judged overdue before the monitor's pass wrote a reason.
            HostHealth::Suspected if view.health == HostHealth::Up => {
                Some("no heartbeat within the deadline".into())
            }
            _ => r.opt_text("health_reason")?,
        },
        health_since: r.opt_time("health_since")?,
        machine_id: r.opt_text("machine_id")?,
        capacity: view.capacity,
        allocated: view.allocated,
        pinned_instances: r.uint("pinned_instances")?,
        last_heartbeat_at: r.opt_time("last_heartbeat_at")?,
        created_at: r.time("created_at")?,
    })
}

impl Store {
    /// One page of the racks, by name, with their host counts.
    pub async fn rack_list(&self, caller: &Caller, params: &PageParams) -> ApiResult<List<Rack>> {
        caller.require_admin()?;
        let page = RACK_PAGES.page(params)?;
        let sql = format!(
            "{RACK_SELECT} WHERE 1 = 1{}{}",
            page.condition(1),
            page.order_and_limit()
        );
        let rows = page
            .bind(sqlx::query(&sql))
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(rack_of_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, |r| {
            vec![r.name.clone().into(), r.id.to_string().into()]
        }))
    }

    /// A rack by id or name; 404 otherwise.
    pub async fn rack_resolve(&self, caller: &Caller, id_or_name: &str) -> ApiResult<Rack> {
        caller.require_admin()?;
        let row = sqlx::query(&format!("{RACK_SELECT} WHERE r.id = $1 OR r.name = $1"))
            .bind(id_or_name)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("rack", id_or_name))?;
        Ok(rack_of_row(&row)?)
    }

    /// Records a new, empty rack; its fields are checked by the caller.
    pub async fn rack_create(
        &self,
        caller: &Caller,
        name: String,
        location: String,
    ) -> ApiResult<Rack> {
        caller.require_admin()?;
        let rack = Rack {
            id: RackId::new(),
            name,
            location,
            host_count: 0,
            created_at: from_ms(now_ms()),
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query("INSERT INTO racks (id, name, location, created_at) VALUES ($1, $2, $3, $4)")
            .bind(rack.id.to_string())
            .bind(&rack.name)
            .bind(&rack.location)
            .bind(rack.created_at.timestamp_millis())
            .execute(&mut **tx)
            .await
            .map_err(|e| match crate::db::is_unique_violation(&e) {
                true => ApiError::conflict(format!("a rack named `{}` already exists", rack.name)),
                false => e.into(),
            })?;
        tx.commit().await?;
        Ok(rack)
    }

    /// Deletes a rack that holds no host.
    pub async fn rack_delete(&self, caller: &Caller, id: RackId) -> ApiResult<()> {
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let hosts = super::count_in(
            &mut tx,
            "SELECT COUNT(*) AS n FROM hosts WHERE rack_id = $1",
            &id.to_string(),
        )
        .await?;
        if hosts > 0 {
            return Err(ApiError::conflict(format!(
                "rack {id} still holds {hosts} host(s); delete them first"
            )));
        }
        // Unused enrollment tokens for the rack go with it (ON DELETE CASCADE).
        super::delete_by_id(&mut tx, "racks", "rack", id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One page of the hosts, by name. Health is judged by `health_of`.
    pub async fn host_list(
        &self,
        caller: &Caller,
        params: &PageParams,
        health_of: HealthOf<'_>,
    ) -> ApiResult<List<Host>> {
        caller.require_admin()?;
        let page = HOST_PAGES.page(params)?;
        let sql = format!(
            "SELECT {HOST_COLUMNS} FROM hosts h WHERE 1 = 1{}{}",
            page.condition(1),
            page.order_and_limit()
        );
        let rows = page
            .bind(sqlx::query(&sql))
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(|r| host_of_row(health_of, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, |h| {
            vec![h.name.clone().into(), h.id.to_string().into()]
        }))
    }

    /// A host; 404 when there is none.
    pub async fn host_get(
        &self,
        caller: &Caller,
        id: HostId,
        health_of: HealthOf<'_>,
    ) -> ApiResult<Host> {
        caller.require_admin()?;
        let row = sqlx::query(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts h WHERE h.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("host", id))?;
        Ok(host_of_row(health_of, &row)?)
    }

    /// Sets a host's admin state (the caller updates the scheduler's view
    /// once this returned).
    pub async fn host_set_admin_state(
        &self,
        caller: &Caller,
        id: HostId,
        admin_state: AdminState,
    ) -> ApiResult<()> {
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query("UPDATE hosts SET admin_state = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(admin_state.as_str())
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("host", id));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a host that holds no live instance or volume (the caller
    /// drops it from the scheduler's view once this returned).
    pub async fn host_delete(&self, caller: &Caller, id: HostId) -> ApiResult<()> {
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let live = super::live_instances_and_volumes(&mut tx, "host_id", &id.to_string()).await?;
        if live > 0 {
            return Err(ApiError::conflict(format!(
                "host {id} still holds {live} instance(s) or volume(s); drain it or delete them first"
            )));
        }
        // Deleted instances and volumes are kept for metering and still name
        // their last host; they must not keep the host row alive.
        for sql in [
            "UPDATE instances SET host_id = NULL WHERE host_id = $1",
            "UPDATE volumes SET host_id = NULL WHERE host_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        super::delete_by_id(&mut tx, "hosts", "host", id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A one-time secret a new host enrolls with; its lifetime is checked
    /// by the caller. Only its hash is kept.
    pub async fn enrollment_token_create(
        &self,
        caller: &Caller,
        body: &EnrollmentTokenCreate,
    ) -> ApiResult<EnrollmentTokenCreated> {
        caller.require_admin()?;
        let rack = match body.rack.as_deref() {
            Some(r) => Some(self.rack_resolve(caller, r).await?.id),
            None => None,
        };
        let now = now_ms();
        let ttl_ms = i64::try_from(body.expires_in_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let expires_at = now.saturating_add(ttl_ms);
        let created = EnrollmentTokenCreated {
            id: EnrollmentTokenId::new(),
            kind: body.kind,
            rack_id: rack,
            expires_at: from_ms(expires_at),
            secret: new_secret("enroll"),
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, secret_hash, kind, rack_id, expires_at, used_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
        )
        .bind(created.id.to_string())
        .bind(hash_secret(&created.secret))
        .bind(created.kind.as_str())
        .bind(rack.map(|r| r.to_string()))
        .bind(expires_at)
        .bind(now)
        .execute(&mut **tx)
        .await
        // The rack was deleted between the lookup and the insert.
        .map_err(|e| match crate::db::is_foreign_key_violation(&e) {
            true => ApiError::not_found("rack", body.rack.as_deref().unwrap_or_default()),
            false => e.into(),
        })?;
        tx.commit().await?;
        Ok(created)
    }
}
