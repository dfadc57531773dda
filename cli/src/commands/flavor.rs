//! `strato flavor`: the sizes VMs come in.

use anyhow::Result;
use api::resources::{Flavor, FlavorCreate};
use api::Client;
use clap::Subcommand;

use super::{resolve, Ctx};
use crate::output::{fmt, Detail, Row};

#[derive(Debug, Subcommand)]
pub enum FlavorCmd {
    /// List flavors.
    List,
    /// Show one flavor.
    Show {
        /// Flavor id or name.
        flavor: String,
    },
    /// Create a flavor (admin).
    Create {
        /// Unique name, e.g. m1.small.
        name: String,
        /// Virtual CPUs (1–256).
        #[arg(long)]
        vcpus: u32,
        /// RAM in MiB (64 MiB – 4 TiB).
        #[arg(long, value_name = "MIB")]
        ram_mib: u64,
        /// Root disk in GiB (1–65536).
        #[arg(long, value_name = "GIB")]
        disk_gib: u64,
    },
    /// Delete a flavor (admin).
    Delete {
        /// Flavor id or name.
        flavor: String,
    },
}

impl Row for Flavor {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VCPUS", "RAM", "DISK"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.vcpus.to_string(),
            fmt::mib(self.ram_mib),
            fmt::gib(self.disk_gib),
        ]
    }
}

impl Detail for Flavor {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("vcpus", self.vcpus.to_string()),
            ("ram", fmt::mib(self.ram_mib)),
            ("disk", fmt::gib(self.disk_gib)),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

/// Every flavor the client may list, following the pages.
async fn all(c: &Client) -> api::client::Result<Vec<Flavor>> {
    c.transport.get_all("/v1/flavors").await
}

pub async fn run(ctx: &Ctx, cmd: FlavorCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        FlavorCmd::List => ctx.out.list(&all(&c).await?),
        FlavorCmd::Show { flavor } => {
            let id = resolve(&flavor, all(&c)).await?;
            ctx.out.show(&c.flavor_get(id).await?)
        }
        FlavorCmd::Create {
            name,
            vcpus,
            ram_mib,
            disk_gib,
        } => {
            let body = FlavorCreate {
                name,
                vcpus,
                ram_mib,
                disk_gib,
            };
            ctx.out.show(&c.flavor_create(&body).await?)
        }
        FlavorCmd::Delete { flavor } => {
            let id = resolve(&flavor, all(&c)).await?;
            c.flavor_delete(id).await?;
            ctx.out.note(format!("deleted flavor {flavor}"))
        }
    }
}
