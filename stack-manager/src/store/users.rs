//! Users and their memberships. Admins manage users and see everyone;
//! everyone else sees only themselves (anyone else is "not found", never
//! "forbidden", so user names do not leak).
//!
//! A user is read with their memberships in one statement: the users (a
//! page of them, or the one asked for) joined with their memberships and
//! the projects' names, one row per membership.

use api::ids::UserId;
use api::resources::{List, Membership, PageParams, ProjectRole, User, UserCreate};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, is_unique_violation, now_ms, RowExt};
use crate::error::{ApiError, ApiResult};

/// By name (unique); the id makes the key obviously total.
static PAGES: Keyset = Keyset {
    list: "users",
    columns: &[("u.name", KeyKind::Text), ("u.id", KeyKind::Text)],
    descending: false,
};

/// The columns of a user with each of their memberships, from the users
/// `u`, which the query defines; memberships by project name.
const WITH_MEMBERSHIPS: &str =
    "SELECT u.id, u.name, u.admin, u.created_at, m.project_id AS m_project_id, \
     p.name AS m_project_name, m.role AS m_role FROM";
const MEMBERSHIP_JOINS: &str =
    "LEFT JOIN memberships m ON m.user_id = u.id LEFT JOIN projects p ON p.id = m.project_id";

/// Users from rows of [`WITH_MEMBERSHIPS`], ordered by user.
fn users_of_rows(rows: &[AnyRow]) -> Result<Vec<User>, sqlx::Error> {
    let mut out: Vec<User> = Vec::new();
    for r in rows {
        let id: UserId = r.id("id")?;
        let membership = match r.opt_id("m_project_id")? {
            Some(project_id) => Some(Membership {
                project_id,
                project_name: r.text("m_project_name")?,
                role: r.parsed("m_role", ProjectRole::parse)?,
            }),
            None => None,
        };
        match out.last_mut() {
            Some(u) if u.id == id => u.memberships.extend(membership),
            _ => out.push(User {
                id,
                name: r.text("name")?,
                admin: r.int("admin")? != 0,
                memberships: membership.into_iter().collect(),
                created_at: r.time("created_at")?,
            }),
        }
    }
    Ok(out)
}

impl Store {
    /// A user by id or name; 404 when absent.
    pub async fn user_resolve(&self, id_or_name: &str) -> ApiResult<UserId> {
        let row = sqlx::query("SELECT id FROM users WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("user", id_or_name))?;
        Ok(row.id("id")?)
    }

    /// The user a caller names, as far as they may see it: admins see
    /// everyone, others only themselves.
    pub async fn user_resolve_visible(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> ApiResult<UserId> {
        let id = self.user_resolve(id_or_name).await?;
        if caller.admin || id == caller.user_id {
            Ok(id)
        } else {
            Err(ApiError::not_found("user", id_or_name))
        }
    }

    /// A user with their memberships, whoever asks: for answers about the
    /// caller themselves or after an admin's change.
    pub(crate) async fn user_read(&self, id: UserId) -> ApiResult<User> {
        let sql = format!(
            "{WITH_MEMBERSHIPS} users u {MEMBERSHIP_JOINS} WHERE u.id = $1 ORDER BY p.name"
        );
        let rows = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_all(&self.db.pool)
            .await?;
        users_of_rows(&rows)?
            .pop()
            .ok_or_else(|| ApiError::not_found("user", id))
    }

    /// The caller as the database has them now.
    pub async fn user_whoami(&self, caller: &Caller) -> ApiResult<User> {
        self.user_read(caller.user_id).await
    }

    /// A user the caller may see (see [`user_resolve_visible`](Self::user_resolve_visible)).
    pub async fn user_get(&self, caller: &Caller, id_or_name: &str) -> ApiResult<User> {
        let id = self.user_resolve_visible(caller, id_or_name).await?;
        self.user_read(id).await
    }

    /// One page of the users the caller may see (everyone for admins, only
    /// themselves for others), by name, with their memberships.
    pub async fn user_list(&self, caller: &Caller, q: &PageParams) -> ApiResult<List<User>> {
        let page = PAGES.page(q)?;
        let sql = format!(
            "{WITH_MEMBERSHIPS} (SELECT * FROM users u WHERE ($1 = 1 OR u.id = $2){}{}) u \
             {MEMBERSHIP_JOINS} ORDER BY {}, p.name",
            page.condition(3),
            page.order_and_limit(),
            page.order(),
        );
        let rows = page
            .bind(
                sqlx::query(&sql)
                    .bind(i64::from(caller.admin))
                    .bind(caller.user_id.to_string()),
            )
            .fetch_all(&self.db.pool)
            .await?;
        let items = users_of_rows(&rows)?;
        Ok(page.finish(items, |u| {
            vec![u.name.clone().into(), u.id.to_string().into()]
        }))
    }

    /// Creates a user (name checked) with no memberships; admins only.
    pub async fn user_create(&self, caller: &Caller, body: UserCreate) -> ApiResult<User> {
        caller.require_admin()?;
        let user = User {
            id: UserId::new(),
            name: body.name,
            admin: body.admin,
            memberships: Vec::new(),
            created_at: from_ms(now_ms()),
        };
        let insert =
            sqlx::query("INSERT INTO users (id, name, admin, created_at) VALUES ($1, $2, $3, $4)")
                .bind(user.id.to_string())
                .bind(&user.name)
                .bind(i64::from(user.admin))
                .bind(user.created_at.timestamp_millis());
        self.db.gated(insert.execute(&self.db.pool)).await.map_err(
            |e| match is_unique_violation(&e) {
                true => ApiError::conflict(format!("a user named `{}` already exists", user.name)),
                false => e.into(),
            },
        )?;
        Ok(user)
    }

    /// Deletes a user with their tokens and memberships; admins only, never
    /// themselves, never the last admin.
    pub async fn user_delete(&self, caller: &Caller, id_or_name: &str) -> ApiResult<()> {
        caller.require_admin()?;
        let id = self.user_resolve(id_or_name).await?;
        if id == caller.user_id {
            return Err(ApiError::conflict(
                "you cannot delete yourself; ask another admin",
            ));
        }
        let mut tx = self.db.begin_write().await?;
        // Lock every admin row before counting them, so that on PostgreSQL two
        // concurrent deletes of the last two admins cannot both see two.
        sqlx::query("UPDATE users SET admin = admin WHERE admin = 1")
            .execute(&mut **tx)
            .await?;
        // Counted inside the transaction so two concurrent deletes cannot both
        // pass the check and leave no admin at all.
        let row = sqlx::query(
            "SELECT admin, (SELECT COUNT(*) FROM users WHERE admin = 1) AS admins FROM users WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id_or_name))?;
        if row.int("admin")? != 0 && row.int("admins")? <= 1 {
            return Err(ApiError::conflict(format!(
                "`{id_or_name}` is the last admin; make someone else an admin first"
            )));
        }
        for sql in [
            "DELETE FROM tokens WHERE user_id = $1",
            "DELETE FROM memberships WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
