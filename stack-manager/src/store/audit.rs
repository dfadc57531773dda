//! Reading the audit log (the writer is `crate::audit`, fed by the
//! authentication middleware). Operators only.

use api::resources::{AuditQuery, AuditRecord, List};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::auth::Caller;
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

impl Store {
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
