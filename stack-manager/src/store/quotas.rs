//! Quotas: limits and usage share one row, so that a claim is one
//! conditional `UPDATE`: two concurrent creates can never both slip under
//! the same limit, on SQLite or PostgreSQL. Claims and releases run inside
//! the transaction of the create or delete they belong to.

use api::ids::ProjectId;
use api::resources::{Quota, QuotaLimits, QuotaUsage};
use api::ErrorCode;
use sqlx::any::AnyRow;

use super::Store;
use crate::caller::Caller;
use crate::db::{RowExt, WriteTx};
use crate::error::{ApiError, ApiResult};

/// The quota names, in the order of [`QuotaDelta::values`]; each is the
/// suffix of a `max_` and a `used_` column.
pub const FIELDS: [&str; 6] = [
    "instances",
    "vcpus",
    "ram_mib",
    "volumes",
    "volume_gib",
    "addresses",
];

/// What a create (positive) or delete (passed to [`quota_release`]) changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaDelta {
    pub instances: i64,
    pub vcpus: i64,
    pub ram_mib: i64,
    pub volumes: i64,
    pub volume_gib: i64,
    pub addresses: i64,
}

impl QuotaDelta {
    fn values(&self) -> [i64; 6] {
        [
            self.instances,
            self.vcpus,
            self.ram_mib,
            self.volumes,
            self.volume_gib,
            self.addresses,
        ]
    }
}

/// Adds `d` to the project's usage if every limit still holds, as ONE
/// conditional UPDATE. Only fields that grow are checked: a limit lowered
/// below current usage blocks new claims of that kind, not of the others.
pub async fn quota_claim(tx: &mut WriteTx, project: ProjectId, d: QuotaDelta) -> ApiResult<()> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let (mut sets, mut conds) = (Vec::new(), Vec::new());
        for (i, f) in FIELDS.iter().enumerate() {
            let p = i + 2;
            sets.push(format!("used_{f} = used_{f} + ${p}"));
            conds.push(format!("(${p} <= 0 OR used_{f} + ${p} <= max_{f})"));
        }
        format!(
            "UPDATE quotas SET {} WHERE project_id = $1 AND {}",
            sets.join(", "),
            conds.join(" AND ")
        )
    });
    let mut q = sqlx::query(sql).bind(project.to_string());
    for v in d.values() {
        q = q.bind(v);
    }
    if q.execute(&mut ***tx).await?.rows_affected() > 0 {
        return Ok(());
    }
    let row = sqlx::query("SELECT * FROM quotas WHERE project_id = $1")
        .bind(project.to_string())
        .fetch_optional(&mut ***tx)
        .await?
        .ok_or_else(|| ApiError::not_found("quota of project", project))?;
    let (limits, used) = (columns(&row, "max_")?, columns(&row, "used_")?);
    let message =
        exceeded(limits, used, d.values()).unwrap_or_else(|| "quota exceeded".to_string());
    Err(ApiError::new(ErrorCode::QuotaExceeded, message))
}

/// Subtracts `d` (never below zero), unconditionally.
pub async fn quota_release(tx: &mut WriteTx, project: ProjectId, d: QuotaDelta) -> ApiResult<()> {
    let sets: Vec<String> = FIELDS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let p = i + 2;
            format!("used_{f} = CASE WHEN used_{f} > ${p} THEN used_{f} - ${p} ELSE 0 END")
        })
        .collect();
    let sql = format!(
        "UPDATE quotas SET {} WHERE project_id = $1",
        sets.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(project.to_string());
    for v in d.values() {
        q = q.bind(v);
    }
    q.execute(&mut ***tx).await?;
    Ok(())
}

/// The message naming the first quota `requested` would push past its limit.
fn exceeded(limits: [i64; 6], used: [i64; 6], requested: [i64; 6]) -> Option<String> {
    (0..FIELDS.len())
        .find(|&i| requested[i] > 0 && used[i].saturating_add(requested[i]) > limits[i])
        .map(|i| {
            format!(
                "quota exceeded: {} (limit {}, in use {}, requested {})",
                FIELDS[i], limits[i], used[i], requested[i]
            )
        })
}

fn columns(r: &AnyRow, prefix: &str) -> Result<[i64; 6], sqlx::Error> {
    let mut out = [0; 6];
    for (slot, f) in out.iter_mut().zip(FIELDS) {
        *slot = r.int(&format!("{prefix}{f}"))?;
    }
    Ok(out)
}

fn from_row(project_id: ProjectId, r: &AnyRow) -> Result<Quota, sqlx::Error> {
    let [instances, vcpus, ram_mib, volumes, volume_gib, addresses] =
        columns(r, "max_")?.map(|v| v.max(0) as u64);
    let limits = QuotaLimits {
        instances,
        vcpus,
        ram_mib,
        volumes,
        volume_gib,
        addresses,
    };
    let [instances, vcpus, ram_mib, volumes, volume_gib, addresses] =
        columns(r, "used_")?.map(|v| v.max(0) as u64);
    let usage = QuotaUsage {
        instances,
        vcpus,
        ram_mib,
        volumes,
        volume_gib,
        addresses,
    };
    Ok(Quota {
        project_id,
        limits,
        usage,
    })
}

impl Store {
    /// The quota of a project (by id or name) the caller may read.
    pub async fn quota_get(&self, caller: &Caller, project: &str) -> ApiResult<Quota> {
        let id = self.project_resolve(project).await?;
        caller.check_read(id, "project", project)?;
        self.quota_read(id).await
    }

    async fn quota_read(&self, project: ProjectId) -> ApiResult<Quota> {
        let row = sqlx::query("SELECT * FROM quotas WHERE project_id = $1")
            .bind(project.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("quota of project", project))?;
        Ok(from_row(project, &row)?)
    }

    /// Sets the limits given (`None` keeps a limit), already checked, and
    /// returns the quota as it is now; admins only.
    pub async fn quota_set_limits(
        &self,
        caller: &Caller,
        project: ProjectId,
        limits: [Option<i64>; 6],
    ) -> ApiResult<Quota> {
        caller.require_admin()?;
        let sets: Vec<String> = FIELDS
            .iter()
            .enumerate()
            .map(|(i, f)| format!("max_{f} = COALESCE(${}, max_{f})", i + 2))
            .collect();
        let sql = format!(
            "UPDATE quotas SET {} WHERE project_id = $1",
            sets.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(project.to_string());
        for v in limits {
            q = q.bind(v);
        }
        let done = self.db.gated(q.execute(&self.db.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("quota of project", project));
        }
        self.quota_read(project).await
    }
}

#[cfg(test)]
mod tests {
    use super::{exceeded, quota_claim as claim, quota_release as release, QuotaDelta};
    use api::ids::ProjectId;

    #[test]
    fn names_the_first_quota_that_would_be_exceeded() {
        let limits = [20, 40, 81_920, 20, 2_000, 40];
        let used = [3, 38, 4_096, 0, 0, 3];
        assert_eq!(
            exceeded(limits, used, [1, 4, 8_192, 0, 0, 1]).as_deref(),
            Some("quota exceeded: vcpus (limit 40, in use 38, requested 4)")
        );
        assert_eq!(exceeded(limits, used, [1, 2, 8_192, 0, 0, 1]), None);
    }

    #[test]
    fn a_lowered_limit_only_blocks_what_grows() {
        let limits = [1, 40, 81_920, 20, 2_000, 40];
        let used = [5, 0, 0, 0, 0, 0];
        assert_eq!(exceeded(limits, used, [0, 0, 0, 1, 10, 0]), None);
        assert!(exceeded(limits, used, [1, 0, 0, 0, 0, 0])
            .is_some_and(|m| m.contains("instances (limit 1, in use 5")));
    }

    #[tokio::test]
    async fn claims_are_conditional_and_releases_floor_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = crate::db::Db::connect(&url, 2).await.unwrap();
        let p = ProjectId::new();
        sqlx::query(
            "INSERT INTO projects (id, name, description, created_at) VALUES ($1, 'p', '', 0)",
        )
        .bind(p.to_string())
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO quotas (project_id, max_instances, max_vcpus, max_ram_mib, max_volumes, \
             max_volume_gib, max_addresses, used_instances) VALUES ($1, 2, 4, 4096, 1, 10, 2, 5)",
        )
        .bind(p.to_string())
        .execute(&db.pool)
        .await
        .unwrap();
        let used = |col: &'static str| {
            let db = db.clone();
            async move {
                let r = sqlx::query(&format!("SELECT {col} AS n FROM quotas"))
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                crate::db::RowExt::int(&r, "n").unwrap()
            }
        };
        let vol = QuotaDelta {
            volumes: 1,
            volume_gib: 8,
            ..Default::default()
        };
        // Instances are over their (lowered) limit; volumes are not affected.
        let mut tx = db.begin_write().await.unwrap();
        claim(&mut tx, p, vol).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(used("used_volume_gib").await, 8);

        let mut tx = db.begin_write().await.unwrap();
        let e = claim(&mut tx, p, vol).await.unwrap_err();
        assert_eq!(e.code, api::ErrorCode::QuotaExceeded);
        assert_eq!(
            e.message,
            "quota exceeded: volumes (limit 1, in use 1, requested 1)"
        );
        let e = claim(
            &mut tx,
            p,
            QuotaDelta {
                instances: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(e.message.starts_with("quota exceeded: instances"), "{e}");
        drop(tx);
        assert_eq!(used("used_volumes").await, 1);

        let mut tx = db.begin_write().await.unwrap();
        release(
            &mut tx,
            p,
            QuotaDelta {
                volumes: 1,
                volume_gib: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(used("used_volume_gib").await, 0);
        assert_eq!(used("used_volumes").await, 0);
        assert_eq!(used("used_instances").await, 5);
    }
}
