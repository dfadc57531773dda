//! Flavors: the sizes instances come in. Everyone reads them; admins make
//! and delete them.

use api::ids::FlavorId;
use api::resources::{Flavor, FlavorCreate, FlavorListQuery, List};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{from_ms, is_unique_violation, now_ms, RowExt};
use crate::error::{ApiError, ApiResult};

/// Smallest first, as a menu reads; the name and id make the order total.
static PAGES: Keyset = Keyset {
    list: "flavors",
    columns: &[
        ("vcpus", KeyKind::Int),
        ("ram_mib", KeyKind::Int),
        ("name", KeyKind::Text),
        ("id", KeyKind::Text),
    ],
    descending: false,
};

fn flavor_of_row(r: &AnyRow) -> Result<Flavor, sqlx::Error> {
    Ok(Flavor {
        id: r.id("id")?,
        name: r.text("name")?,
        vcpus: r.uint("vcpus")? as u32,
        ram_mib: r.uint("ram_mib")?,
        disk_gib: r.uint("disk_gib")?,
        created_at: r.time("created_at")?,
    })
}

/// Sizes are at most 4 TiB of RAM and 64 TiB of disk once checked, and
/// whatever a row holds was checked on its way in.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// One page of the flavors, smallest first. Every caller may list them.
    pub async fn flavor_list(
        &self,
        _caller: &Caller,
        q: &FlavorListQuery,
    ) -> ApiResult<List<Flavor>> {
        let page = PAGES.page(&q.page())?;
        let sql = format!(
            "SELECT * FROM flavors WHERE 1 = 1{}{}",
            page.condition(1),
            page.order_and_limit()
        );
        let rows = page
            .bind(sqlx::query(&sql))
            .fetch_all(&self.db.pool)
            .await?;
        let items = rows
            .iter()
            .map(flavor_of_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(items, |f| {
            vec![
                i64::from(f.vcpus).into(),
                int(f.ram_mib).into(),
                f.name.clone().into(),
                f.id.to_string().into(),
            ]
        }))
    }

    /// A flavor by id or name; 404 when there is none.
    pub async fn flavor_resolve(&self, id_or_name: &str) -> ApiResult<Flavor> {
        let row = sqlx::query("SELECT * FROM flavors WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("flavor", id_or_name))?;
        Ok(flavor_of_row(&row)?)
    }

    pub async fn flavor_get(&self, _caller: &Caller, id: FlavorId) -> ApiResult<Flavor> {
        self.flavor_resolve(&id.to_string()).await
    }

    /// Creates a flavor from a checked `body`; admins only.
    pub async fn flavor_create(&self, caller: &Caller, body: FlavorCreate) -> ApiResult<Flavor> {
        caller.require_admin()?;
        let flavor = Flavor {
            id: FlavorId::new(),
            name: body.name,
            vcpus: body.vcpus,
            ram_mib: body.ram_mib,
            disk_gib: body.disk_gib,
            created_at: from_ms(now_ms()),
        };
        let insert = sqlx::query(
            "INSERT INTO flavors (id, name, vcpus, ram_mib, disk_gib, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(flavor.id.to_string())
        .bind(&flavor.name)
        .bind(i64::from(flavor.vcpus))
        .bind(int(flavor.ram_mib))
        .bind(int(flavor.disk_gib))
        .bind(flavor.created_at.timestamp_millis());
        self.db.gated(insert.execute(&self.db.pool)).await.map_err(
            |e| match is_unique_violation(&e) {
                true => {
                    ApiError::conflict(format!("a flavor named `{}` already exists", flavor.name))
                }
                false => e.into(),
            },
        )?;
        Ok(flavor)
    }

    /// Deletes a flavor no live instance uses; admins only.
    pub async fn flavor_delete(&self, caller: &Caller, id: FlavorId) -> ApiResult<()> {
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let used = super::count_in(
            &mut tx,
            "SELECT COUNT(*) AS n FROM instances WHERE flavor_id = $1 AND deleted_at IS NULL",
            &id.to_string(),
        )
        .await?;
        if used > 0 {
            return Err(ApiError::conflict(format!(
                "flavor {id} is used by {used} instance(s)"
            )));
        }
        super::delete_by_id(&mut tx, "flavors", "flavor", id).await?;
        tx.commit().await?;
        Ok(())
    }
}
