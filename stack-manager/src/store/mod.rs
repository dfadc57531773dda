//! The datastore: the statements and transactions over the metadata
//! database, row decoding into `api` types, soft-delete filters, and the
//! claims (quota, addresses, host capacity) that must change together.
//!
//! Methods are named `<resource>_<verb>`, take typed ids and the caller,
//! authorize inside (a caller who may not see a row gets the same 404 as
//! for a row that does not exist), and return `api` types or an
//! [`ApiError`](crate::error::ApiError). As in Oxide's Nexus datastore,
//! the error is the API's own typed error (a code and a message) rather
//! than a second enum translated at every handler: the store is the one
//! place that knows a row was missing, a name taken or a transition
//! refused, and says so once.
//!
//! Dependencies point one way: `http`, the internal API and background
//! tasks call the store; the store calls none of them.

pub mod agents;
pub mod audit;
pub mod bootstrap;
pub mod check;
pub mod claims;
pub mod flavors;
pub mod groups;
pub mod health;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod keypairs;
pub mod moves;
pub mod networks;
pub mod page;
pub mod projects;
pub mod quotas;
pub mod statements;
pub mod statistics;
pub mod tokens;
pub mod usage;
pub mod users;
pub mod volumes;

use sqlx::any::AnyRow;

use api::resources::{List, ProjectPage};

use crate::caller::Caller;
use crate::db::{Db, WriteTx};
use crate::error::{ApiError, ApiResult};
use page::{Key, Keyset, PageRequest};

#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The project filter of a project-scoped list, bound as `$1`: the
    /// project the caller may read, or '' for every project (an admin who
    /// named none); see `Store::project_for_read`.
    async fn list_scope(&self, caller: &Caller, q: &ProjectPage) -> ApiResult<String> {
        Ok(self
            .project_for_read(caller, q.project.as_deref())
            .await?
            .map(|p| p.to_string())
            .unwrap_or_default())
    }

    /// One page of a project-scoped list, in one statement. `sql` builds
    /// it from the page (its filter on `$1` is the project, see
    /// [`list_scope`](Self::list_scope); the page's own parameters follow);
    /// `decode` turns its rows into items, `key` gives an item's keyset key.
    async fn scoped_page<T>(
        &self,
        caller: &Caller,
        q: &ProjectPage,
        pages: &'static Keyset,
        sql: impl FnOnce(&PageRequest) -> String,
        decode: impl FnOnce(&[AnyRow]) -> ApiResult<Vec<T>>,
        key: impl Fn(&T) -> Vec<Key>,
    ) -> ApiResult<List<T>> {
        let page = pages.page(&q.page())?;
        let project = self.list_scope(caller, q).await?;
        let sql = sql(&page);
        let rows = page
            .bind(sqlx::query(&sql).bind(project))
            .fetch_all(&self.db.pool)
            .await?;
        Ok(page.finish(decode(&rows)?, key))
    }
}

/// Marks a live row deleted, returning it as it was, or `None` when it was
/// already gone. This is the first write of a finalize transaction: the
/// row lock it takes makes a second finalize (another replica, a retry)
/// find nothing to release, so nothing is given back twice.
pub(crate) async fn mark_deleted(
    tx: &mut WriteTx,
    table: &'static str,
    id: &str,
    now: i64,
) -> ApiResult<Option<AnyRow>> {
    let sql = format!("UPDATE {table} SET deleted_at = $2, status = 'deleted' WHERE id = $1 AND deleted_at IS NULL");
    let done = sqlx::query(&sql)
        .bind(id)
        .bind(now)
        .execute(&mut ***tx)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let sql = format!("SELECT * FROM {table} WHERE id = $1");
    Ok(Some(
        sqlx::query(&sql).bind(id).fetch_one(&mut ***tx).await?,
    ))
}

/// Deletes row `id` of `table` in `tx`; a 404 naming `kind` when there is
/// none (someone else deleted it meanwhile).
pub(crate) async fn delete_by_id(
    tx: &mut WriteTx,
    table: &'static str,
    kind: &str,
    id: impl std::fmt::Display,
) -> ApiResult<()> {
    let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(id.to_string())
        .execute(&mut ***tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(kind, id));
    }
    Ok(())
}

/// The `n` of a `SELECT COUNT(*) AS n … = $1` with `id`, read in `tx`: how
/// many rows still use what is about to be deleted.
pub(crate) async fn count_in(tx: &mut WriteTx, sql: &str, id: &str) -> ApiResult<i64> {
    use crate::db::RowExt;
    Ok(sqlx::query(sql)
        .bind(id)
        .fetch_one(&mut ***tx)
        .await?
        .int("n")?)
}

/// How many live instances and volumes name `id` in `column` (`project_id`,
/// `host_id`): a project or host that still holds some cannot be deleted.
pub(crate) async fn live_instances_and_volumes(
    tx: &mut WriteTx,
    column: &'static str,
    id: &str,
) -> ApiResult<i64> {
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM instances WHERE {column} = $1 AND deleted_at IS NULL) \
              + (SELECT COUNT(*) FROM volumes WHERE {column} = $1 AND deleted_at IS NULL) AS n"
    );
    count_in(tx, &sql, id).await
}

/// The SQL of a one-table page: `select` (`SELECT … FROM … WHERE <filter
/// on $1>`) with the page's condition and order appended.
fn one_table(select: &str) -> impl FnOnce(&PageRequest) -> String + '_ {
    move |page| format!("{select}{}{}", page.condition(2), page.order_and_limit())
}

/// Decodes every row into one item.
fn each_row<T>(
    decode: fn(&AnyRow) -> Result<T, sqlx::Error>,
) -> impl FnOnce(&[AnyRow]) -> ApiResult<Vec<T>> {
    move |rows| Ok(rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?)
}
