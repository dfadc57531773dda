//! API tokens: minting (only the secret's hash is kept), listing, revoking,
//! and finding who a presented secret stands for.

use api::ids::{ProjectId, TokenId, UserId};
use api::resources::{List, ProjectRole, Token, TokenCreate, TokenCreated, TokenListQuery};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, now_ms, RowExt};
use crate::error::{ApiError, ApiResult};
use crate::secrets::{hash_secret, new_secret};

/// Oldest first.
static PAGES: Keyset = Keyset {
    list: "tokens",
    columns: &[("created_at", KeyKind::Int), ("id", KeyKind::Text)],
    descending: false,
};

fn token_of_row(r: &AnyRow) -> Result<Token, sqlx::Error> {
    Ok(Token {
        id: r.id("id")?,
        user_id: r.id("user_id")?,
        description: r.text("description")?,
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
    })
}

impl Store {
    /// One page of a user's tokens, oldest first: the caller's own, or for
    /// an admin anyone's (`q.user`).
    pub async fn token_list(&self, caller: &Caller, q: &TokenListQuery) -> ApiResult<List<Token>> {
        let page = PAGES.page(&q.page())?;
        let user = match q.user.as_deref() {
            Some(u) if !u.is_empty() => self.user_resolve_visible(caller, u).await?,
            _ => caller.user_id,
        };
        let sql = format!(
            "SELECT * FROM tokens WHERE user_id = $1{}{}",
            page.condition(2),
            page.order_and_limit()
        );
        let rows = page
            .bind(sqlx::query(&sql).bind(user.to_string()))
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(token_of_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, |t| {
            vec![t.created_at.into(), t.id.to_string().into()]
        }))
    }

    /// Mints a token for `user` from a checked `body`: the caller's own, or
    /// anyone's for an admin. The secret is returned once and only its hash
    /// kept.
    pub async fn token_create(
        &self,
        caller: &Caller,
        user: UserId,
        body: TokenCreate,
    ) -> ApiResult<TokenCreated> {
        if !caller.admin && user != caller.user_id {
            return Err(ApiError::not_found("user", user));
        }
        let now = now_ms();
        // At most ten years of milliseconds once checked.
        let expires = body
            .expires_in_secs
            .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)));
        let secret = new_secret("strato");
        let token = Token {
            id: TokenId::new(),
            user_id: user,
            description: body.description,
            created_at: from_ms(now),
            expires_at: expires.map(from_ms),
        };
        let insert = sqlx::query(
            "INSERT INTO tokens (id, user_id, secret_hash, description, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.id.to_string())
        .bind(user.to_string())
        .bind(hash_secret(&secret))
        .bind(&token.description)
        .bind(now)
        .bind(expires);
        self.db.gated(insert.execute(&self.db.pool)).await?;
        Ok(TokenCreated { token, secret })
    }

    /// Revokes a token: the caller's own, or anyone's for an admin. Someone
    /// else's token is "not found" for others, so ids do not leak.
    pub async fn token_delete(&self, caller: &Caller, id: TokenId) -> ApiResult<()> {
        let delete = sqlx::query("DELETE FROM tokens WHERE id = $1 AND (user_id = $2 OR $3 = 1)")
            .bind(id.to_string())
            .bind(caller.user_id.to_string())
            .bind(i64::from(caller.admin));
        let done = self.db.gated(delete.execute(&self.db.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("token", id));
        }
        Ok(())
    }

    /// Who the secret whose hash is `hash` stands for, with their
    /// memberships, in one statement; `None` for an unknown or expired one.
    pub async fn token_authenticate(&self, hash: &str) -> ApiResult<Option<Caller>> {
        let rows = sqlx::query(
            "SELECT u.id, u.name, u.admin, t.expires_at, m.project_id, m.role, p.name AS project_name \
             FROM tokens t JOIN users u ON u.id = t.user_id \
             LEFT JOIN memberships m ON m.user_id = u.id LEFT JOIN projects p ON p.id = m.project_id \
             WHERE t.secret_hash = $1",
        )
        .bind(hash)
        .fetch_all(&self.db.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let expires = first.opt_int("expires_at")?;
        if expires.is_some_and(|e| e <= now_ms()) {
            return Ok(None);
        }
        let mut memberships = Vec::with_capacity(rows.len());
        let mut project_names = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(project) = r.opt_id::<ProjectId>("project_id")? else {
                continue;
            };
            memberships.push((project, r.parsed("role", ProjectRole::parse)?));
            project_names.push((r.text("project_name")?, project));
        }
        Ok(Some(Caller {
            user_id: first.id("id")?,
            user_name: first.text("name")?,
            admin: first.int("admin")? != 0,
            memberships,
            project_names,
            expires_at: expires,
        }))
    }
}
