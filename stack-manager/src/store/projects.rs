//! Projects as other resources need them: resolving `?project=`.

use api::ids::ProjectId;

use super::Store;
use crate::db::RowExt;
use crate::error::{ApiError, ApiResult};

impl Store {
    /// The project named by an id or a name; 404 when there is none.
    pub async fn project_resolve(&self, id_or_name: &str) -> ApiResult<ProjectId> {
        let row = sqlx::query("SELECT id FROM projects WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.db.pool)
            .await?;
        match row {
            Some(r) => Ok(r.id("id")?),
            None => Err(ApiError::not_found("project", id_or_name)),
        }
    }
}
