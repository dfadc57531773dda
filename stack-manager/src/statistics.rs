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
//! `store::statistics::MIN_CHANGES` changes. A table whose rows are only updated (hosts on
//! every heartbeat, quotas on every create) is left to autovacuum, whose
//! own threshold then applies. An `ANALYZE` invalidates the cached plans
//! that read the table, so the next run of each query plans with the
//! statistics that are now current.

use std::time::Duration;

use serde_json::json;

use crate::db::{Backend, Db};
use crate::tasks::{BackgroundTask, Outcome, TaskError};

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
        let tables = crate::store::statistics::analyze_grown_tables(&self.db).await?;
        self.analyzed += tables.len() as u64;
        Ok(Outcome::ran(json!({
            "analyzed_total": self.analyzed,
            "last_analyzed": tables,
        })))
    }
}
