//! Images: the disks instances boot from. Public images belong to no
//! project and everyone sees them; private ones belong to a project. A
//! project's private image shadows a public one of the same name.

use api::ids::{ImageId, ProjectId};
use api::resources::{Image, ImageFormat, List, ProjectPage, Visibility};
use sqlx::any::AnyRow;

use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{is_unique_violation, RowExt};
use crate::error::{ApiError, ApiResult};

/// By name, then oldest first (a private and a public image may share a
/// name); the id makes the order total.
static PAGES: Keyset = Keyset {
    list: "images",
    columns: &[
        ("name", KeyKind::Text),
        ("created_at", KeyKind::Int),
        ("id", KeyKind::Text),
    ],
    descending: false,
};

fn image_of_row(r: &AnyRow) -> Result<Image, sqlx::Error> {
    Ok(Image {
        id: r.id("id")?,
        project_id: r.opt_id("project_id")?,
        name: r.text("name")?,
        source: r.text("source")?,
        format: r.parsed("format", ImageFormat::parse)?,
        sha256: r.text("sha256")?,
        min_disk_gib: r.uint("min_disk_gib")?,
        visibility: r.parsed("visibility", Visibility::parse)?,
        created_at: r.time("created_at")?,
    })
}

impl Store {
    /// One page of the images the caller may list: the public ones and the
    /// scoped project's, or every image for an admin naming no project.
    pub async fn image_list(&self, caller: &Caller, q: &ProjectPage) -> ApiResult<List<Image>> {
        self.scoped_page(
            caller,
            q,
            &PAGES,
            super::one_table(
                "SELECT * FROM images WHERE ($1 = '' OR project_id IS NULL OR project_id = $1)",
            ),
            super::each_row(image_of_row),
            |i| {
                vec![
                    i.name.clone().into(),
                    i.created_at.into(),
                    i.id.to_string().into(),
                ]
            },
        )
        .await
    }

    /// An image `project` may boot, by id or name: its own private images
    /// first, then public ones.
    pub async fn image_resolve(&self, project: ProjectId, id_or_name: &str) -> ApiResult<Image> {
        let row = sqlx::query(
            "SELECT * FROM images WHERE (id = $1 OR name = $1) AND (project_id IS NULL OR project_id = $2) \
             ORDER BY CASE WHEN id = $1 THEN 0 WHEN project_id = $2 THEN 1 ELSE 2 END LIMIT 1",
        )
        .bind(id_or_name)
        .bind(project.to_string())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("image", id_or_name))?;
        Ok(image_of_row(&row)?)
    }

    /// An image the caller may see; 404 otherwise.
    pub async fn image_get(&self, caller: &Caller, id: ImageId) -> ApiResult<Image> {
        let row = sqlx::query("SELECT * FROM images WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("image", id))?;
        let image = image_of_row(&row)?;
        if let Some(p) = image.project_id {
            caller.check_read(p, "image", id)?;
        }
        Ok(image)
    }

    /// Records a checked `image`: public ones are admins' to make, private
    /// ones their project's members'.
    pub async fn image_create(&self, caller: &Caller, image: Image) -> ApiResult<Image> {
        match image.project_id {
            None => caller.require_admin()?,
            Some(p) => caller.check_write(p, "project", p)?,
        }
        let insert = sqlx::query(
            "INSERT INTO images (id, project_id, name, source, format, sha256, min_disk_gib, visibility, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(image.id.to_string())
        .bind(image.project_id.map(|p| p.to_string()))
        .bind(&image.name)
        .bind(&image.source)
        .bind(image.format.as_str())
        .bind(&image.sha256)
        .bind(i64::try_from(image.min_disk_gib).unwrap_or(i64::MAX))
        .bind(image.visibility.as_str())
        .bind(image.created_at.timestamp_millis());
        self.db.gated(insert.execute(&self.db.pool)).await.map_err(
            |e| match is_unique_violation(&e) {
                true => ApiError::conflict(format!(
                    "a {} image named `{}` already exists",
                    image.visibility.as_str(),
                    image.name
                )),
                false => e.into(),
            },
        )?;
        Ok(image)
    }

    /// Deletes an image nothing live still needs: instances are re-created
    /// from their image after a host failure, and volumes may still be
    /// waiting to be filled from it.
    pub async fn image_delete(&self, caller: &Caller, id: ImageId) -> ApiResult<()> {
        let image = self.image_get(caller, id).await?;
        match image.project_id {
            None => caller.require_admin()?,
            Some(p) => caller.check_write(p, "image", id)?,
        }
        let mut tx = self.db.begin_write().await?;
        // Lock the row before counting users: creates lock it too, so on
        // PostgreSQL a create and this delete cannot both pass their checks.
        sqlx::query("UPDATE images SET min_disk_gib = min_disk_gib WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        let used = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM instances WHERE image_id = $1 AND deleted_at IS NULL) AS instances, \
                    (SELECT COUNT(*) FROM volumes WHERE source_image_id = $1 AND deleted_at IS NULL) AS volumes",
        )
        .bind(id.to_string())
        .fetch_one(&mut **tx)
        .await?;
        let (instances, volumes) = (used.int("instances")?, used.int("volumes")?);
        if instances + volumes > 0 {
            return Err(ApiError::conflict(format!(
                "image `{}` is used by {instances} instance(s) and {volumes} volume(s)",
                image.name
            )));
        }
        super::delete_by_id(&mut tx, "images", "image", id).await?;
        tx.commit().await?;
        Ok(())
    }
}
