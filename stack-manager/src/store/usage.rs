//! Metering: usage spans (opened when an instance or volume is created,
//! closed when it goes) and the report summed from them, clipped exactly
//! to the requested window.

use std::collections::BTreeMap;

use api::ids::{FlavorId, ProjectId};
use api::resources::{FlavorHours, ProjectUsage, UsageQuery, UsageReport};

use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, now_ms, RowExt, WriteTx};
use crate::error::{ApiError, ApiResult};

const MS_PER_HOUR: f64 = 3_600_000.0;

/// Opens a usage span (kind "instance" with flavor, or "volume" with gib) at `at_ms`.
pub async fn usage_open_span(
    tx: &mut WriteTx,
    project: ProjectId,
    kind: &str,
    resource_id: &str,
    flavor: Option<FlavorId>,
    gib: i64,
    at_ms: i64,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO usage_spans (id, project_id, kind, resource_id, flavor_id, gib, started_at, ended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(project.to_string())
    .bind(kind)
    .bind(resource_id)
    .bind(flavor.map(|f| f.to_string()))
    .bind(gib)
    .bind(at_ms)
    .execute(&mut ***tx)
    .await?;
    Ok(())
}

/// Milliseconds of `[started, ended or now)` that fall inside `[start, end)`.
/// A span still open is counted up to `now`, never into the future.
fn overlap_ms(started: i64, ended: Option<i64>, now: i64, start: i64, end: i64) -> i64 {
    let from = started.max(start);
    let to = ended.unwrap_or(now).min(end);
    (to - from).max(0)
}

/// One project's totals while the report is being summed.
struct Totals {
    id: ProjectId,
    name: String,
    flavors: BTreeMap<FlavorId, (String, f64)>,
    volume_gib_hours: f64,
}

impl Store {
    /// Usage of one project or of all of them over `[q.start, q.end or
    /// now)`; operators only. The spans are read in one statement, however
    /// many there are.
    pub async fn usage_get(&self, caller: &Caller, q: &UsageQuery) -> ApiResult<UsageReport> {
        caller.require_admin()?;
        let now = now_ms();
        let start = q.start.timestamp_millis();
        let end = q.end.map(|e| e.timestamp_millis()).unwrap_or(now);
        if start >= end {
            return Err(ApiError::invalid("start must be before end"));
        }
        let project = match q.project.as_deref() {
            Some(p) if !p.is_empty() => self.project_resolve(p).await?.to_string(),
            _ => String::new(),
        };
        // Flavors may have been deleted since; the span keeps their id.
        let rows = sqlx::query(
            "SELECT s.project_id, p.name AS project_name, s.kind, s.flavor_id, f.name AS flavor_name, \
                    s.gib, s.started_at, s.ended_at \
             FROM usage_spans s JOIN projects p ON p.id = s.project_id LEFT JOIN flavors f ON f.id = s.flavor_id \
             WHERE s.started_at < $1 AND (s.ended_at IS NULL OR s.ended_at > $2) \
               AND ($3 = '' OR s.project_id = $3)",
        )
        .bind(end)
        .bind(start)
        .bind(&project)
        .fetch_all(&self.db.pool)
        .await?;
        let mut totals: BTreeMap<ProjectId, Totals> = BTreeMap::new();
        for r in &rows {
            let ms = overlap_ms(
                r.int("started_at")?,
                r.opt_int("ended_at")?,
                now,
                start,
                end,
            );
            if ms == 0 {
                continue;
            }
            let hours = ms as f64 / MS_PER_HOUR;
            let id: ProjectId = r.id("project_id")?;
            let name = r.text("project_name")?;
            let t = totals.entry(id).or_insert_with(|| Totals {
                id,
                name,
                flavors: BTreeMap::new(),
                volume_gib_hours: 0.0,
            });
            match (r.text("kind")?.as_str(), r.opt_id::<FlavorId>("flavor_id")?) {
                ("instance", Some(flavor)) => {
                    let name = r.opt_text("flavor_name")?;
                    let entry = t.flavors.entry(flavor).or_insert_with(|| {
                        (name.unwrap_or_else(|| format!("(deleted {flavor})")), 0.0)
                    });
                    entry.1 += hours;
                }
                ("volume", _) => t.volume_gib_hours += r.int("gib")? as f64 * hours,
                (kind, _) => tracing::warn!(kind, "usage span of unknown kind ignored"),
            }
        }
        let mut projects: Vec<ProjectUsage> = totals
            .into_values()
            .map(|t| {
                let mut instances: Vec<FlavorHours> = t
                    .flavors
                    .into_iter()
                    .map(|(flavor_id, (flavor_name, instance_hours))| FlavorHours {
                        flavor_id,
                        flavor_name,
                        instance_hours,
                    })
                    .collect();
                instances.sort_by(|a, b| a.flavor_name.cmp(&b.flavor_name));
                ProjectUsage {
                    project_id: t.id,
                    project_name: t.name,
                    instances,
                    volume_gib_hours: t.volume_gib_hours,
                }
            })
            .collect();
        projects.sort_by(|a, b| a.project_name.cmp(&b.project_name));
        Ok(UsageReport {
            start: from_ms(start),
            end: from_ms(end),
            projects,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::overlap_ms;

    const H: i64 = 3_600_000;

    #[test]
    fn closed_span_is_clipped_to_the_window() {
        // Window [10h, 20h).
        assert_eq!(
            overlap_ms(12 * H, Some(15 * H), 100 * H, 10 * H, 20 * H),
            3 * H
        );
        assert_eq!(
            overlap_ms(5 * H, Some(15 * H), 100 * H, 10 * H, 20 * H),
            5 * H
        );
        assert_eq!(
            overlap_ms(15 * H, Some(25 * H), 100 * H, 10 * H, 20 * H),
            5 * H
        );
        assert_eq!(
            overlap_ms(5 * H, Some(25 * H), 100 * H, 10 * H, 20 * H),
            10 * H
        );
    }

    #[test]
    fn spans_outside_the_window_count_nothing() {
        assert_eq!(overlap_ms(0, Some(10 * H), 100 * H, 10 * H, 20 * H), 0);
        assert_eq!(overlap_ms(20 * H, Some(30 * H), 100 * H, 10 * H, 20 * H), 0);
        assert_eq!(overlap_ms(20 * H, None, 100 * H, 10 * H, 20 * H), 0);
    }

    #[test]
    fn open_span_runs_until_now_but_not_past_it() {
        // Still running, window entirely in the past.
        assert_eq!(overlap_ms(5 * H, None, 100 * H, 10 * H, 20 * H), 10 * H);
        // Window reaching into the future: counted up to now only.
        assert_eq!(overlap_ms(15 * H, None, 18 * H, 10 * H, 30 * H), 3 * H);
        // Started after now (clock skew): nothing, never negative.
        assert_eq!(overlap_ms(19 * H, None, 18 * H, 10 * H, 30 * H), 0);
    }
}
