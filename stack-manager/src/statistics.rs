//! Keeps PostgreSQL's planner statistics current on tables that grow fast.
//!
//! sqlx prepares every query once per connection, and after five runs
//! PostgreSQL may switch a prepared statement to a generic plan that it keeps
//! until the table is next analyzed. On a new cloud, that plan is made while
//! the tables are nearly empty, and with no statistics a full scan of a
//! partial index looks as cheap as a primary-key lookup. The placement
//! benchmark caught the instance status `UPDATE` and the reconciler's host
//! query scanning every live instance: 2.1 ms each, instead of 0.05 ms.
//! Autovacuum would analyze eventually, but it looks at each database at
//! most once a minute (`autovacuum_naptime`), and a burst of creates fills a
//! table well within that minute.
//!
//! This task is the fast half of autovacuum's analyze rule, for growth
//! only: it analyzes a table that was never analyzed, or whose live rows
//! have doubled since its last analyze, once it has at least
//! [`MIN_CHANGES`] changes. A table whose rows are only updated (hosts on
//! every heartbeat, quotas on every create) is left to autovacuum, whose
//! own threshold then applies. An `ANALYZE` invalidates the cached plans
//! that read the table, so the next run of each query plans with the
//! statistics that are now current.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;

use crate::db::{Backend, Db};
use crate::tasks::{BackgroundTask, Outcome, TaskError};

/// Fewer changes than this never trigger an analyze: plans over a few dozen
/// rows cost the same whichever index they pick.
const MIN_CHANGES: i64 = 100;

/// The task that keeps the statistics current (see the module doc).
pub struct PlannerStatistics {
    db: Db,
    analyzed: u64,
}

impl PlannerStatistics {
    pub fn new(db: Db) -> Self {
        Self { db, analyzed: 0 }
    }

    /// How often the task runs: every `interval` on PostgreSQL; never on
    /// SQLite, or with a zero interval. SQLite's planner uses no statistics
    /// unless asked to (`sqlite_stat1`), and prefers a primary-key lookup
    /// whatever the table's size.
    pub fn period(db: &Db, interval: Duration) -> Option<Duration> {
        (db.backend == Backend::Postgres && !interval.is_zero()).then_some(interval)
    }
}

impl BackgroundTask for PlannerStatistics {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        if self.db.backend != Backend::Postgres {
            return Ok(Outcome::ran(json!({ "skipped": "not PostgreSQL" })));
        }
        let tables = analyze_grown_tables(&self.db).await?;
        self.analyzed += tables.len() as u64;
        Ok(Outcome::ran(json!({
            "analyzed_total": self.analyzed,
            "last_analyzed": tables,
        })))
    }
}

/// Analyzes the tables of the current schema, owned by this role, that were
/// never analyzed or have doubled since; returns their names. A table that
/// cannot be analyzed (locked by a running vacuum, say) is skipped until the
/// next round, and does not stop the others.
pub async fn analyze_grown_tables(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    // `format('%I.%I')` quotes the names as identifiers in the catalogue
    // itself; they never come from a caller.
    let rows = sqlx::query(
        "SELECT format('%I.%I', s.schemaname, s.relname) AS name \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() \
           AND pg_has_role(c.relowner, 'USAGE') \
           AND s.n_mod_since_analyze >= $1 \
           AND (c.reltuples < 0 OR s.n_live_tup >= 2 * c.reltuples)",
    )
    .bind(MIN_CHANGES)
    .fetch_all(&db.pool)
    .await?;
    let mut analyzed = Vec::with_capacity(rows.len());
    for row in rows {
        let table: String = row.try_get("name")?;
        // SKIP_LOCKED: an autovacuum holding the table (an anti-wraparound
        // one is never cancelled) must not pin a pooled connection.
        match sqlx::query(&format!("ANALYZE (SKIP_LOCKED) {table}"))
            .execute(&db.pool)
            .await
        {
            Ok(_) => {
                tracing::debug!(%table, "analyzed");
                analyzed.push(table);
            }
            Err(e) => tracing::warn!(%table, error = %e, "ANALYZE failed"),
        }
    }
    Ok(analyzed)
}
