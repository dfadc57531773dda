//! Keypairs: the SSH public keys a project injects into its instances,
//! stored as the normalized line the HTTP layer made of them.

use api::ids::{KeypairId, ProjectId};
use api::resources::{Keypair, List, ProjectPage};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, is_unique_violation, now_ms, RowExt};
use crate::error::{ApiError, ApiResult};

/// By project, then name (within one project: by name); names are unique
/// in a project, the id only makes the key obviously total.
static PAGES: Keyset = Keyset {
    list: "keypairs",
    columns: &[
        ("project_id", KeyKind::Text),
        ("name", KeyKind::Text),
        ("id", KeyKind::Text),
    ],
    descending: false,
};

fn keypair_of_row(r: &AnyRow) -> Result<Keypair, sqlx::Error> {
    Ok(Keypair {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        public_key: r.text("public_key")?,
        fingerprint: r.text("fingerprint")?,
        created_at: r.time("created_at")?,
    })
}

/// A new keypair, its key already parsed and normalized.
pub struct NewKeypair {
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
}

impl Store {
    /// One page of the keypairs of the project the caller lists (every
    /// project's for an admin naming none).
    pub async fn keypair_list(&self, caller: &Caller, q: &ProjectPage) -> ApiResult<List<Keypair>> {
        self.scoped_page(
            caller,
            q,
            &PAGES,
            super::one_table("SELECT * FROM keypairs WHERE ($1 = '' OR project_id = $1)"),
            super::each_row(keypair_of_row),
            |k| {
                vec![
                    k.project_id.to_string().into(),
                    k.name.clone().into(),
                    k.id.to_string().into(),
                ]
            },
        )
        .await
    }

    /// A keypair of `project` by id or name.
    pub async fn keypair_resolve(
        &self,
        project: ProjectId,
        id_or_name: &str,
    ) -> ApiResult<Keypair> {
        let row =
            sqlx::query("SELECT * FROM keypairs WHERE project_id = $2 AND (id = $1 OR name = $1)")
                .bind(id_or_name)
                .bind(project.to_string())
                .fetch_optional(&self.db.pool)
                .await?
                .ok_or_else(|| ApiError::not_found("keypair", id_or_name))?;
        Ok(keypair_of_row(&row)?)
    }

    /// A keypair the caller may read; 404 otherwise.
    pub async fn keypair_get(&self, caller: &Caller, id: KeypairId) -> ApiResult<Keypair> {
        let row = sqlx::query("SELECT * FROM keypairs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("keypair", id))?;
        let keypair = keypair_of_row(&row)?;
        caller.check_read(keypair.project_id, "keypair", id)?;
        Ok(keypair)
    }

    pub async fn keypair_create(
        &self,
        caller: &Caller,
        project: ProjectId,
        new: NewKeypair,
    ) -> ApiResult<Keypair> {
        caller.check_write(project, "project", project)?;
        let keypair = Keypair {
            id: KeypairId::new(),
            project_id: project,
            name: new.name,
            public_key: new.public_key,
            fingerprint: new.fingerprint,
            created_at: from_ms(now_ms()),
        };
        let insert = sqlx::query(
            "INSERT INTO keypairs (id, project_id, name, public_key, fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(keypair.id.to_string())
        .bind(project.to_string())
        .bind(&keypair.name)
        .bind(&keypair.public_key)
        .bind(&keypair.fingerprint)
        .bind(keypair.created_at.timestamp_millis());
        self.db.gated(insert.execute(&self.db.pool)).await.map_err(
            |e| match is_unique_violation(&e) {
                true => ApiError::conflict(format!(
                    "a keypair named `{}` already exists in this project",
                    keypair.name
                )),
                false => e.into(),
            },
        )?;
        Ok(keypair)
    }

    /// Instances keep running with the key they were given; only new
    /// instances can no longer use it (the schema nulls their reference).
    pub async fn keypair_delete(&self, caller: &Caller, id: KeypairId) -> ApiResult<()> {
        let keypair = self.keypair_get(caller, id).await?;
        caller.check_write(keypair.project_id, "keypair", id)?;
        let delete = sqlx::query("DELETE FROM keypairs WHERE id = $1").bind(id.to_string());
        let done = self.db.gated(delete.execute(&self.db.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("keypair", id));
        }
        Ok(())
    }
}
