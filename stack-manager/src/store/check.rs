//! The consistency checker: every figure the store keeps derived (quota
//! usage per project, allocations per host) recomputed from the rows it is
//! derived from, and every relation between rows that must hold (an address
//! or an attachment held by a live instance), reported as drift.
//!
//! Read-only and safe on a live cloud: each check is one statement, so it
//! reads one snapshot (PostgreSQL's statement snapshot, SQLite's WAL read
//! transaction) and a create or delete committing meanwhile cannot show as
//! drift. What it finds is what a crash, a bug or a hand edit left behind;
//! the test suite runs it after its crash tests.

use api::resources::{ConsistencyCheck, ConsistencyReport, Drift};
use sqlx::any::AnyRow;

use super::Store;
use crate::db::RowExt;
use crate::error::ApiResult;

/// (recorded column, recomputed column, figure) of the quota check.
const QUOTA_FIGURES: [(&str, &str, &str); 6] = [
    ("used_instances", "a_instances", "instances"),
    ("used_vcpus", "a_vcpus", "vCPUs"),
    ("used_ram_mib", "a_ram_mib", "MiB of RAM"),
    ("used_volumes", "a_volumes", "volumes"),
    ("used_volume_gib", "a_volume_gib", "GiB of volumes"),
    ("used_addresses", "a_addresses", "addresses"),
];

const HOST_FIGURES: [(&str, &str, &str); 6] = [
    ("alloc_vcpus", "a_vcpus", "vCPUs"),
    ("alloc_ram_mib", "a_ram_mib", "MiB of RAM"),
    ("alloc_disk_gib", "a_disk_gib", "GiB of root disk"),
    ("alloc_instances", "a_instances", "instances"),
    ("alloc_storage", "a_storage", "bytes of volumes"),
    ("alloc_volumes", "a_volumes", "volumes"),
];

/// What a project's live instances, volumes and their addresses add up to,
/// beside what its quota row records.
const QUOTA_SQL: &str = "\
SELECT p.name AS subject, q.used_instances, q.used_vcpus, q.used_ram_mib, q.used_volumes, \
       q.used_volume_gib, q.used_addresses, \
  (SELECT COUNT(*) FROM instances i WHERE i.project_id = q.project_id AND i.deleted_at IS NULL) AS a_instances, \
  CAST((SELECT COALESCE(SUM(i.vcpus), 0) FROM instances i \
        WHERE i.project_id = q.project_id AND i.deleted_at IS NULL) AS BIGINT) AS a_vcpus, \
  CAST((SELECT COALESCE(SUM(i.ram_mib), 0) FROM instances i \
        WHERE i.project_id = q.project_id AND i.deleted_at IS NULL) AS BIGINT) AS a_ram_mib, \
  (SELECT COUNT(*) FROM volumes v WHERE v.project_id = q.project_id AND v.deleted_at IS NULL) AS a_volumes, \
  CAST((SELECT COALESCE(SUM(v.size_gib), 0) FROM volumes v \
        WHERE v.project_id = q.project_id AND v.deleted_at IS NULL) AS BIGINT) AS a_volume_gib, \
  (SELECT COUNT(*) FROM addresses a JOIN instances i ON i.id = a.instance_id \
    WHERE i.project_id = q.project_id AND i.deleted_at IS NULL) AS a_addresses \
FROM quotas q JOIN projects p ON p.id = q.project_id ORDER BY p.name";

/// What the live instances placed on (or moving to) a host and the live
/// volumes on it (primary or copy) add up to, beside its recorded allocations. An instance
/// being moved holds a claim on its source and on its target.
const HOST_SQL: &str = "\
SELECT h.name AS subject, h.alloc_vcpus, h.alloc_ram_mib, h.alloc_disk_gib, h.alloc_instances, \
       h.alloc_storage, h.alloc_volumes, \
  CAST((SELECT COALESCE(SUM(i.vcpus), 0) FROM instances i WHERE i.deleted_at IS NULL \
        AND (i.host_id = h.id OR i.move_target = h.id)) AS BIGINT) AS a_vcpus, \
  CAST((SELECT COALESCE(SUM(i.ram_mib), 0) FROM instances i WHERE i.deleted_at IS NULL \
        AND (i.host_id = h.id OR i.move_target = h.id)) AS BIGINT) AS a_ram_mib, \
  CAST((SELECT COALESCE(SUM(i.disk_gib), 0) FROM instances i WHERE i.deleted_at IS NULL \
        AND (i.host_id = h.id OR i.move_target = h.id)) AS BIGINT) AS a_disk_gib, \
  (SELECT COUNT(*) FROM instances i WHERE i.deleted_at IS NULL \
    AND (i.host_id = h.id OR i.move_target = h.id)) AS a_instances, \
  CAST((SELECT COALESCE(SUM(v.size_gib), 0) FROM volumes v \
        WHERE v.deleted_at IS NULL AND (v.host_id = h.id \
          OR EXISTS (SELECT 1 FROM volume_copies c WHERE c.volume_id = v.id AND c.host_id = h.id))) \
        AS BIGINT) * 1073741824 AS a_storage, \
  (SELECT COUNT(*) FROM volumes v WHERE v.deleted_at IS NULL AND (v.host_id = h.id \
    OR EXISTS (SELECT 1 FROM volume_copies c WHERE c.volume_id = v.id AND c.host_id = h.id))) AS a_volumes \
FROM hosts h ORDER BY h.name";

/// Addresses still held for an instance that is deleted or gone.
const ADDRESS_SQL: &str = "\
SELECT a.address, a.instance_id, i.id AS live_id, \
  (SELECT COUNT(*) FROM addresses) AS total \
FROM addresses a LEFT JOIN instances i ON i.id = a.instance_id AND i.deleted_at IS NULL \
WHERE a.instance_id IS NOT NULL AND i.id IS NULL ORDER BY a.address";

/// Attachments whose volume or instance is deleted or gone, or in another
/// project than the other.
const ATTACHMENT_SQL: &str = "\
SELECT t.volume_id, t.instance_id, v.id AS vid, v.deleted_at AS v_deleted, v.project_id AS vp, \
       i.id AS iid, i.deleted_at AS i_deleted, i.project_id AS ip \
FROM attachments t LEFT JOIN volumes v ON v.id = t.volume_id \
  LEFT JOIN instances i ON i.id = t.instance_id ORDER BY t.volume_id";

fn figures(
    check: &str,
    rows: &[AnyRow],
    columns: &[(&str, &str, &str)],
    drift: &mut Vec<Drift>,
) -> Result<(), sqlx::Error> {
    for r in rows {
        let subject = r.text("subject")?;
        for (recorded, actual, what) in columns {
            let (rec, act) = (r.int(recorded)?, r.int(actual)?);
            if rec != act {
                drift.push(Drift {
                    check: check.into(),
                    subject: subject.clone(),
                    field: (*recorded).into(),
                    recorded: Some(rec),
                    actual: Some(act),
                    message: format!(
                        "{subject}: {recorded} records {rec} {what}, its rows add up to {act}"
                    ),
                });
            }
        }
    }
    Ok(())
}

impl Store {
    /// Runs every check (see the module comment).
    pub async fn consistency_check(&self) -> ApiResult<ConsistencyReport> {
        let pool = &self.db.pool;
        let mut checks = Vec::new();
        let mut drift = Vec::new();
        let mut record = |name: &str, description: &str, rows: usize, before: usize, now: usize| {
            checks.push(ConsistencyCheck {
                name: name.into(),
                description: description.into(),
                rows: rows as u64,
                drift: (now - before) as u64,
            });
        };

        let before = drift.len();
        let rows = sqlx::query(QUOTA_SQL).fetch_all(pool).await?;
        figures("quota_usage", &rows, &QUOTA_FIGURES, &mut drift)?;
        record(
            "quota_usage",
            "each project's recorded usage against its live instances, volumes and addresses",
            rows.len(),
            before,
            drift.len(),
        );

        let before = drift.len();
        let rows = sqlx::query(HOST_SQL).fetch_all(pool).await?;
        figures("host_allocations", &rows, &HOST_FIGURES, &mut drift)?;
        record(
            "host_allocations",
            "each host's recorded allocations against the live instances placed on or moving to it and the live volumes on it",
            rows.len(),
            before,
            drift.len(),
        );

        let before = drift.len();
        let rows = sqlx::query(ADDRESS_SQL).fetch_all(pool).await?;
        let total = match rows.first() {
            Some(r) => r.uint("total")? as usize,
            None => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM addresses")
                .fetch_one(pool)
                .await?
                .max(0) as usize,
        };
        for r in &rows {
            let (address, instance) = (r.text("address")?, r.text("instance_id")?);
            drift.push(Drift {
                check: "addresses".into(),
                subject: address.clone(),
                field: "instance_id".into(),
                recorded: None,
                actual: None,
                message: format!(
                    "address {address} is held for instance {instance}, which is deleted or gone"
                ),
            });
        }
        record(
            "addresses",
            "every allocated address is held by a live instance",
            total,
            before,
            drift.len(),
        );

        let before = drift.len();
        let rows = sqlx::query(ATTACHMENT_SQL).fetch_all(pool).await?;
        for r in &rows {
            let (volume, instance) = (r.text("volume_id")?, r.text("instance_id")?);
            let live_volume = r.opt_text("vid")?.is_some() && r.opt_int("v_deleted")?.is_none();
            let live_instance = r.opt_text("iid")?.is_some() && r.opt_int("i_deleted")?.is_none();
            let why = if !live_volume {
                Some("its volume is deleted or gone".to_string())
            } else if !live_instance {
                Some("its instance is deleted or gone".to_string())
            } else if r.opt_text("vp")? != r.opt_text("ip")? {
                Some("the volume and the instance are in different projects".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                drift.push(Drift {
                    check: "attachments".into(),
                    subject: volume.clone(),
                    field: "attachment".into(),
                    recorded: None,
                    actual: None,
                    message: format!(
                        "volume {volume} is attached to instance {instance}, but {why}"
                    ),
                });
            }
        }
        record(
            "attachments",
            "every attachment joins a live volume and a live instance of one project",
            rows.len(),
            before,
            drift.len(),
        );

        Ok(ConsistencyReport {
            checked_at: chrono::Utc::now(),
            consistent: drift.is_empty(),
            checks,
            drift,
        })
    }
}
