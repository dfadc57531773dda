//! Projects (tenants) and who belongs to them. Admins create and delete
//! projects and manage members; members and readers see their own.

use api::ids::ProjectId;
use api::resources::{List, PageParams, Project, ProjectRole, QuotaLimits, User};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, is_unique_violation, now_ms, RowExt, WriteTx};
use crate::error::{ApiError, ApiResult};

/// By name (unique); the id makes the key obviously total.
static PAGES: Keyset = Keyset {
    list: "projects",
    columns: &[("name", KeyKind::Text), ("id", KeyKind::Text)],
    descending: false,
};

fn project_of_row(r: &AnyRow) -> Result<Project, sqlx::Error> {
    Ok(Project {
        id: r.id("id")?,
        name: r.text("name")?,
        description: r.text("description")?,
        created_at: r.time("created_at")?,
    })
}

/// Limits are stored as signed 64-bit; the defaults are far below that.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

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

    /// One page of the projects the caller may see (every one for admins,
    /// the ones they belong to for others), by name.
    pub async fn project_list(&self, caller: &Caller, q: &PageParams) -> ApiResult<List<Project>> {
        let page = PAGES.page(q)?;
        let sql = format!(
            "SELECT * FROM projects WHERE ($1 = 1 OR id IN (SELECT project_id FROM memberships WHERE user_id = $2)){}{}",
            page.condition(3),
            page.order_and_limit()
        );
        let rows = page
            .bind(
                sqlx::query(&sql)
                    .bind(i64::from(caller.admin))
                    .bind(caller.user_id.to_string()),
            )
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(project_of_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, |p| {
            vec![p.name.clone().into(), p.id.to_string().into()]
        }))
    }

    /// A project by id or name that the caller may read; 404 otherwise.
    pub async fn project_get(&self, caller: &Caller, id_or_name: &str) -> ApiResult<Project> {
        let row = sqlx::query("SELECT * FROM projects WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("project", id_or_name))?;
        let project = project_of_row(&row)?;
        caller.check_read(project.id, "project", id_or_name)?;
        Ok(project)
    }

    /// Creates a project (name and description checked) with the default
    /// quota; admins only.
    pub async fn project_create(
        &self,
        caller: &Caller,
        name: &str,
        description: &str,
    ) -> ApiResult<Project> {
        caller.require_admin()?;
        self.project_insert(name, description).await
    }

    /// [`project_create`](Self::project_create) without a caller.
    async fn project_insert(&self, name: &str, description: &str) -> ApiResult<Project> {
        let mut tx = self.db.begin_write().await?;
        let project = project_insert(&mut tx, name, description).await?;
        tx.commit().await?;
        Ok(project)
    }

    /// Deletes a project that holds no live instance or volume, with what
    /// its deleted ones left for metering; admins only (others who may see
    /// it get 403, strangers 404).
    pub async fn project_delete(&self, caller: &Caller, id_or_name: &str) -> ApiResult<()> {
        let id = self.project_resolve(id_or_name).await?;
        caller.check_read(id, "project", id_or_name)?;
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let live =
            super::live_instances_and_volumes(&mut tx, "project_id", &id.to_string()).await?;
        if live > 0 {
            return Err(ApiError::conflict(format!(
                "project `{id_or_name}` still has {live} instance(s) or volume(s); delete them first"
            )));
        }
        // Deleted instances/volumes/snapshots/usage are kept for metering
        // until the project goes; then they go with it.
        for sql in [
            "DELETE FROM attachments WHERE volume_id IN (SELECT id FROM volumes WHERE project_id = $1)",
            "DELETE FROM snapshots WHERE project_id = $1",
            "DELETE FROM volumes WHERE project_id = $1",
            "DELETE FROM addresses WHERE instance_id IN (SELECT id FROM instances WHERE project_id = $1)",
            "DELETE FROM instances WHERE project_id = $1",
            "DELETE FROM usage_spans WHERE project_id = $1",
            "DELETE FROM projects WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives `user` the `role` in `project` (replacing any role they had);
    /// admins only. Returns the user as they are now.
    pub async fn project_member_set(
        &self,
        caller: &Caller,
        project: &str,
        user: &str,
        role: ProjectRole,
    ) -> ApiResult<User> {
        caller.require_admin()?;
        let pid = self.project_resolve(project).await?;
        let uid = self.user_resolve(user).await?;
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND project_id = $2")
            .bind(uid.to_string())
            .bind(pid.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO memberships (user_id, project_id, role) VALUES ($1, $2, $3)")
            .bind(uid.to_string())
            .bind(pid.to_string())
            .bind(role.as_str())
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        self.user_read(uid).await
    }

    /// Takes `user` out of `project`; admins only. 404 when they were not in it.
    pub async fn project_member_remove(
        &self,
        caller: &Caller,
        project: &str,
        user: &str,
    ) -> ApiResult<()> {
        caller.require_admin()?;
        let pid = self.project_resolve(project).await?;
        let uid = self.user_resolve(user).await?;
        let delete = sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND project_id = $2")
            .bind(uid.to_string())
            .bind(pid.to_string());
        let done = self.db.gated(delete.execute(&self.db.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found(
                "membership of user",
                format!("{user} in {project}"),
            ));
        }
        Ok(())
    }
}

/// A project row and its default quota, in the caller's transaction.
pub(super) async fn project_insert(
    tx: &mut WriteTx,
    name: &str,
    description: &str,
) -> ApiResult<Project> {
    let id = ProjectId::new();
    let now = now_ms();
    let q = QuotaLimits::default();
    sqlx::query("INSERT INTO projects (id, name, description, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.to_string())
        .bind(name)
        .bind(description)
        .bind(now)
        .execute(&mut ***tx)
        .await
        .map_err(|e| match is_unique_violation(&e) {
            true => ApiError::conflict(format!("a project named `{name}` already exists")),
            false => e.into(),
        })?;
    sqlx::query(
        "INSERT INTO quotas (project_id, max_instances, max_vcpus, max_ram_mib, max_volumes, max_volume_gib, max_addresses) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id.to_string())
    .bind(int(q.instances))
    .bind(int(q.vcpus))
    .bind(int(q.ram_mib))
    .bind(int(q.volumes))
    .bind(int(q.volume_gib))
    .bind(int(q.addresses))
    .execute(&mut ***tx)
    .await?;
    Ok(Project {
        id,
        name: name.to_string(),
        description: description.to_string(),
        created_at: from_ms(now),
    })
}

/// The project a request acts in.
impl Store {
    /// The project a create acts in: `?project=` (id or name) or the caller's
    /// only project.
    pub async fn project_for_write(
        &self,
        caller: &Caller,
        scope: Option<&str>,
        kind: &str,
    ) -> ApiResult<ProjectId> {
        let project = self.project_for_read(caller, scope).await?;
        match project {
            Some(p) => {
                caller
                    .check_write(p, "project", p)
                    .map_err(|e| match e.code {
                        api::ErrorCode::Forbidden => {
                            ApiError::forbidden(format!("the reader role cannot create {kind}s"))
                        }
                        _ => e,
                    })?;
                Ok(p)
            }
            // An admin naming no project acts in their own, if they have one.
            None => match caller.memberships.as_slice() {
                [(only, _)] => Ok(*only),
                _ => Err(ApiError::invalid(format!(
                    "say which project the new {kind} belongs to with ?project=<id or name>"
                ))),
            },
        }
    }

    /// The project a list acts in. `None` means every project, which only
    /// admins get when they name none.
    pub async fn project_for_read(
        &self,
        caller: &Caller,
        scope: Option<&str>,
    ) -> ApiResult<Option<ProjectId>> {
        match scope {
            Some(s) if !s.is_empty() => {
                let own = caller
                    .project_names
                    .iter()
                    .find(|(name, id)| name == s || id.to_string() == s)
                    .map(|(_, id)| *id);
                let id = match own {
                    Some(id) => id,
                    None => self.project_resolve(s).await?,
                };
                caller.check_read(id, "project", s)?;
                Ok(Some(id))
            }
            _ => {
                if caller.admin {
                    return Ok(None);
                }
                match caller.memberships.as_slice() {
                    [(only, _)] => Ok(Some(*only)),
                    [] => Err(ApiError::forbidden("you are not a member of any project")),
                    _ => Err(ApiError::invalid(
                        "you belong to several projects: choose one with ?project=<id or name>",
                    )),
                }
            }
        }
    }
}
