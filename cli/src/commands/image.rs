//! `strato image`: bootable disk images.

use anyhow::Result;
use api::resources::{Image, ImageCreate, ImageFormat, Visibility};
use api::Client;
use clap::{Subcommand, ValueEnum};

use super::{resolve, Ctx};
use crate::output::{fmt, Detail, Row};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// List images this project can boot (its own and public ones).
    List,
    /// Show one image.
    Show {
        /// Image id or name.
        image: String,
    },
    /// Register an image; hypervisors fetch and verify it on first use.
    Create(CreateArgs),
    /// Delete an image.
    Delete {
        /// Image id or name.
        image: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Image name.
    pub name: String,
    /// http(s):// URL, or an absolute path present on every hypervisor host.
    #[arg(long)]
    pub source: String,
    /// Disk format of the file.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Lower-case hex SHA-256 of the file (`sha256sum FILE`).
    #[arg(long, value_name = "HEX")]
    pub sha256: String,
    /// Smallest root disk the image fits on, in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 1)]
    pub min_disk_gib: u64,
    /// Make it bootable by every project (admin only).
    #[arg(long)]
    pub public: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Qcow2,
    Raw,
}

impl From<Format> for ImageFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Qcow2 => ImageFormat::Qcow2,
            Format::Raw => ImageFormat::Raw,
        }
    }
}

impl Row for Image {
    const HEADERS: &'static [&'static str] =
        &["ID", "NAME", "FORMAT", "MIN DISK", "VISIBILITY", "SOURCE"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.format.as_str().into(),
            fmt::gib(self.min_disk_gib),
            self.visibility.as_str().into(),
            self.source.clone(),
        ]
    }
}

impl Detail for Image {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("project", fmt::opt(&self.project_id)),
            ("visibility", self.visibility.as_str().into()),
            ("format", self.format.as_str().into()),
            ("min disk", fmt::gib(self.min_disk_gib)),
            ("source", self.source.clone()),
            ("sha256", self.sha256.clone()),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

/// Every image the client may list, following the pages.
async fn all(c: &Client) -> api::client::Result<Vec<Image>> {
    c.transport.get_all(&c.scoped("/v1/images")).await
}

pub async fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        ImageCmd::List => ctx.out.list(&all(&c).await?),
        ImageCmd::Show { image } => {
            let id = resolve(&image, all(&c)).await?;
            ctx.out.show(&c.image_get(id).await?)
        }
        ImageCmd::Create(a) => {
            let body = ImageCreate {
                name: a.name,
                source: a.source,
                format: a.format.into(),
                sha256: a.sha256.trim().to_ascii_lowercase(),
                min_disk_gib: a.min_disk_gib,
                visibility: if a.public {
                    Visibility::Public
                } else {
                    Visibility::Private
                },
            };
            ctx.out.show(&c.image_create(&body).await?)
        }
        ImageCmd::Delete { image } => {
            let id = resolve(&image, all(&c)).await?;
            c.image_delete(id).await?;
            ctx.out.note(format!("deleted image {image}"))
        }
    }
}
