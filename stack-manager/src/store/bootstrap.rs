//! The first rows of a new cloud (`stack-manager init`): an admin user, a
//! project they belong to, a token for them and the default flavors, in
//! one transaction, so that an init that fails half-way leaves nothing to
//! clean up and can simply be run again.

use api::ids::{FlavorId, TokenId, UserId};

use super::Store;
use crate::db::{now_ms, RowExt};
use crate::error::ApiResult;

/// What a new cloud starts with.
pub struct FirstRows<'a> {
    pub admin_name: &'a str,
    pub project_name: &'a str,
    pub project_description: &'a str,
    /// The hash of the admin's first token.
    pub token_hash: String,
    pub token_description: &'a str,
    /// Name, vCPUs, RAM MiB, disk GiB.
    pub flavors: &'a [(&'a str, i64, i64, i64)],
}

impl Store {
    /// Writes the first rows; `false` (and nothing written) when an admin
    /// exists already.
    pub async fn cloud_init(&self, first: FirstRows<'_>) -> ApiResult<bool> {
        let mut tx = self.db.begin_write().await?;
        let admins = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE admin = 1")
            .fetch_one(&mut **tx)
            .await?
            .int("n")?;
        if admins > 0 {
            return Ok(false);
        }
        let project =
            super::projects::project_insert(&mut tx, first.project_name, first.project_description)
                .await?;
        let user = UserId::new();
        let now = now_ms();
        sqlx::query("INSERT INTO users (id, name, admin, created_at) VALUES ($1, $2, 1, $3)")
            .bind(user.to_string())
            .bind(first.admin_name)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO memberships (user_id, project_id, role) VALUES ($1, $2, 'member')",
        )
        .bind(user.to_string())
        .bind(project.id.to_string())
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO tokens (id, user_id, secret_hash, description, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(TokenId::new().to_string())
        .bind(user.to_string())
        .bind(&first.token_hash)
        .bind(first.token_description)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        for (name, vcpus, ram_mib, disk_gib) in first.flavors {
            sqlx::query(
                "INSERT INTO flavors (id, name, vcpus, ram_mib, disk_gib, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(FlavorId::new().to_string())
            .bind(*name)
            .bind(*vcpus)
            .bind(*ram_mib)
            .bind(*disk_gib)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
