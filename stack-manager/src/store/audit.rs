//! The audit log: its batched writes (from the `crate::audit` writer task,
//! fed by the authentication middleware) and its pages, for operators.

use api::ids::UserId;
use api::resources::{AuditQuery, AuditRecord, List};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::RowExt;
use crate::error::ApiResult;

/// Newest first: what an operator looks for is what just happened.
static PAGES: Keyset = Keyset {
    list: "audit",
    columns: &[("at", KeyKind::Int), ("id", KeyKind::Text)],
    descending: true,
};

fn record_of_row(r: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        id: r.id("id")?,
        at: r.time("at")?,
        user_id: r.opt_id("user_id")?,
        user_name: r.opt_text("user_name")?,
        method: r.text("method")?,
        path: r.text("path")?,
        status: u16::try_from(r.int("status")?).unwrap_or(0),
        result: r.text("result")?,
    })
}

/// One request as the audit log records it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: i64,
    pub user: Option<(UserId, String)>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub result: String,
}

/// Rows per INSERT: 8 columns each keeps a statement well under SQLite's
/// 32,766 bound parameters and PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 64;

impl Store {
    /// Writes a batch as a few multi-row INSERTs in one transaction: each
    /// statement is a round trip (and, on SQLite, a thread hand-off).
    pub async fn audit_write(&self, batch: &[AuditEntry]) -> Result<(), crate::db::DbError> {
        let mut tx = self.db.begin_write().await?;
        for chunk in batch.chunks(ROWS_PER_INSERT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let p: Vec<String> = (1..=8).map(|c| format!("${}", r * 8 + c)).collect();
                    format!("({})", p.join(", "))
                })
                .collect();
            let sql = format!(
            "INSERT INTO audit_log (id, at, user_id, user_name, method, path, status, result) VALUES {}",
            values.join(", ")
        );
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(e.at)
                    .bind(e.user.as_ref().map(|u| u.0.to_string()))
                    .bind(e.user.as_ref().map(|u| u.1.clone()))
                    .bind(e.method.clone())
                    .bind(e.path.clone())
                    .bind(e.status as i64)
                    .bind(e.result.clone());
            }
            q.execute(&mut **tx).await?;
        }
        Ok(tx.commit().await?)
    }

    /// One page of the records at or after `q.since`, newest first.
    pub async fn audit_list(
        &self,
        caller: &Caller,
        q: &AuditQuery,
    ) -> ApiResult<List<AuditRecord>> {
        caller.require_admin()?;
        let page = PAGES.page(&q.page())?;
        let since = q.since.map(|t| t.timestamp_millis()).unwrap_or(i64::MIN);
        let sql = format!(
            "SELECT * FROM audit_log WHERE at >= $1{}{}",
            page.condition(2),
            page.order_and_limit()
        );
        let rows = page
            .bind(sqlx::query(&sql).bind(since))
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(record_of_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, |r| vec![r.at.into(), r.id.to_string().into()]))
    }
}
