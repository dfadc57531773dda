//! The planner-statistics task's statements (see `crate::statistics`):
//! which tables grew enough to analyze, and the analyze itself.

use sqlx::Row;

use crate::db::Db;

/// Fewer changes than this never trigger an analyze: plans over a few dozen
/// rows cost the same whichever index they pick.
pub const MIN_CHANGES: i64 = 100;

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
