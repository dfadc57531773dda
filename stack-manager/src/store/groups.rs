//! Anti-affinity groups: sets of instances the scheduler never puts on the
//! same host. Membership is a property of the instance (chosen when it is
//! created); a group shows its live members and cannot go while it has any.
//!
//! A group is read with its members in one statement: the groups (a page
//! of them, or the one asked for) joined with their live instances, one row
//! per member.

use api::ids::{GroupId, InstanceId, ProjectId};
use api::resources::{Group, List, ProjectPage};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, is_unique_violation, lock_row, now_ms, RowExt};
use crate::error::{ApiError, ApiResult};

/// By project, then name (unique in a project); the id makes the order
/// obviously total.
static PAGES: Keyset = Keyset {
    list: "anti-affinity-groups",
    columns: &[
        ("g.project_id", KeyKind::Text),
        ("g.name", KeyKind::Text),
        ("g.id", KeyKind::Text),
    ],
    descending: false,
};

/// The columns of a group with each of its live members, from the groups
/// `g`, which the query defines; members oldest first.
const WITH_MEMBERS: &str =
    "SELECT g.id, g.project_id, g.name, g.created_at, i.id AS member_id FROM";
const MEMBER_JOIN: &str = "LEFT JOIN instances i ON i.group_id = g.id AND i.deleted_at IS NULL";
const MEMBER_ORDER: &str = "i.created_at, i.id";

/// Groups from rows of [`WITH_MEMBERS`], ordered by group then member.
fn groups_of_rows(rows: &[AnyRow]) -> Result<Vec<Group>, sqlx::Error> {
    let mut out: Vec<Group> = Vec::new();
    for r in rows {
        let id: GroupId = r.id("id")?;
        let member: Option<InstanceId> = r.opt_id("member_id")?;
        match out.last_mut() {
            Some(g) if g.id == id => g.members.extend(member),
            _ => out.push(Group {
                id,
                project_id: r.id("project_id")?,
                name: r.text("name")?,
                members: member.into_iter().collect(),
                created_at: r.time("created_at")?,
            }),
        }
    }
    Ok(out)
}

impl Store {
    /// One page of the groups of the project the caller lists (every
    /// project's for an admin naming none), with their members.
    pub async fn group_list(&self, caller: &Caller, q: &ProjectPage) -> ApiResult<List<Group>> {
        self.scoped_page(
            caller,
            q,
            &PAGES,
            |page| {
                format!(
                    "{WITH_MEMBERS} (SELECT * FROM anti_affinity_groups g WHERE ($1 = '' OR g.project_id = $1){}{}) g \
                     {MEMBER_JOIN} ORDER BY {}, {MEMBER_ORDER}",
                    page.condition(2),
                    page.order_and_limit(),
                    page.order(),
                )
            },
            |rows| Ok(groups_of_rows(rows)?),
            |g| {
                vec![
                    g.project_id.to_string().into(),
                    g.name.clone().into(),
                    g.id.to_string().into(),
                ]
            },
        )
        .await
    }

    /// A group of `project` by id or name, with its members.
    pub async fn group_resolve(&self, project: ProjectId, id_or_name: &str) -> ApiResult<Group> {
        let sql = format!(
            "{WITH_MEMBERS} anti_affinity_groups g {MEMBER_JOIN} \
             WHERE g.project_id = $2 AND (g.id = $1 OR g.name = $1) ORDER BY g.id, {MEMBER_ORDER}"
        );
        let rows = sqlx::query(&sql)
            .bind(id_or_name)
            .bind(project.to_string())
            .fetch_all(&self.db.pool)
            .await?;
        groups_of_rows(&rows)?
            .pop()
            .ok_or_else(|| ApiError::not_found("anti-affinity group", id_or_name))
    }

    /// A group the caller may read, with its members; 404 otherwise.
    pub async fn group_get(&self, caller: &Caller, id: GroupId) -> ApiResult<Group> {
        let sql = format!(
            "{WITH_MEMBERS} anti_affinity_groups g {MEMBER_JOIN} WHERE g.id = $1 ORDER BY {MEMBER_ORDER}"
        );
        let rows = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_all(&self.db.pool)
            .await?;
        let group = groups_of_rows(&rows)?
            .pop()
            .ok_or_else(|| ApiError::not_found("anti-affinity group", id))?;
        caller.check_read(group.project_id, "anti-affinity group", id)?;
        Ok(group)
    }

    /// Creates an empty group named `name` (checked) in `project`.
    pub async fn group_create(
        &self,
        caller: &Caller,
        project: ProjectId,
        name: String,
    ) -> ApiResult<Group> {
        caller.check_write(project, "project", project)?;
        let group = Group {
            id: GroupId::new(),
            project_id: project,
            name,
            members: Vec::new(),
            created_at: from_ms(now_ms()),
        };
        let insert = sqlx::query(
            "INSERT INTO anti_affinity_groups (id, project_id, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(group.id.to_string())
        .bind(project.to_string())
        .bind(&group.name)
        .bind(group.created_at.timestamp_millis());
        self.db.gated(insert.execute(&self.db.pool)).await.map_err(
            |e| match is_unique_violation(&e) {
                true => ApiError::conflict(format!(
                    "an anti-affinity group named `{}` already exists in this project",
                    group.name
                )),
                false => e.into(),
            },
        )?;
        Ok(group)
    }

    /// Deletes a group without live members.
    pub async fn group_delete(&self, caller: &Caller, id: GroupId) -> ApiResult<()> {
        let group = self.group_get(caller, id).await?;
        caller.check_write(group.project_id, "anti-affinity group", id)?;
        let mut tx = self.db.begin_write().await?;
        // Instance creation locks the group row too, so no member can join
        // between this count and the delete.
        if !lock_row(&mut tx, "anti_affinity_groups", &id.to_string()).await? {
            return Err(ApiError::not_found("anti-affinity group", id));
        }
        let members = super::count_in(
            &mut tx,
            "SELECT COUNT(*) AS n FROM instances WHERE group_id = $1 AND deleted_at IS NULL",
            &id.to_string(),
        )
        .await?;
        if members > 0 {
            return Err(ApiError::conflict(format!(
                "anti-affinity group `{}` still has {members} instance(s); delete them first",
                group.name
            )));
        }
        sqlx::query("DELETE FROM anti_affinity_groups WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
