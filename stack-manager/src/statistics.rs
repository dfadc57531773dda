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
//! This task is the fast half of autovacuum's analyze rule: it analyzes a
//! table once the rows changed since its last analyze reach half its live
//! rows (at least [`MIN_CHANGES`]). A growing table is thus analyzed at
//! every 1.5× of growth, and a big, steady one is left to autovacuum, whose
//! own threshold (10 % of the rows) is lower. An `ANALYZE` invalidates the
//! cached plans that read the table, so the next run of each query plans
//! with the statistics that are now current.

use std::time::Duration;

use sqlx::Row;

use crate::db::{Backend, Db};

/// Fewer changes than this never trigger an analyze: plans over a few dozen
/// rows cost the same whichever index they pick.
const MIN_CHANGES: i64 = 100;

/// Starts the task on PostgreSQL, checking every `interval`; on SQLite, or
/// with a zero interval, does nothing. SQLite's planner uses no statistics
/// unless asked to (`sqlite_stat1`), and prefers a primary-key lookup
/// whatever the table's size.
pub fn start(db: Db, interval: Duration) {
    if db.backend != Backend::Postgres || interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = analyze_grown_tables(&db).await {
                tracing::warn!(error = %e, "refreshing planner statistics failed");
            }
        }
    });
}

/// Analyzes the tables of the current schema that changed by half their
/// size since their last analyze; returns their names.
pub async fn analyze_grown_tables(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT relname::text AS relname FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND n_mod_since_analyze >= $1 \
           AND n_mod_since_analyze * 2 >= n_live_tup",
    )
    .bind(MIN_CHANGES)
    .fetch_all(&db.pool)
    .await?;
    let mut analyzed = Vec::with_capacity(rows.len());
    for row in rows {
        let table: String = row.try_get("relname")?;
        // Table names come from the catalogue, not from a caller; quoting
        // them as identifiers keeps any name safe all the same.
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        sqlx::query(&format!("ANALYZE {quoted}"))
            .execute(&db.pool)
            .await?;
        tracing::debug!(%table, "analyzed");
        analyzed.push(table);
    }
    Ok(analyzed)
}
