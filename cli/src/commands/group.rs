//! `strato group`: anti-affinity groups.

use anyhow::Result;
use api::resources::{Group, GroupCreate};
use api::Client;
use clap::Subcommand;

use super::{label, names, resolve, Ctx};
use crate::output::{fmt, Row};

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List anti-affinity groups.
    List,
    /// Create a group; pass it to `strato vm create --group` so its VMs never share a host.
    Create {
        /// Group name.
        name: String,
    },
    /// Show a group and its member VMs.
    Show {
        /// Group id or name.
        group: String,
    },
    /// Delete a group (it must have no members).
    Delete {
        /// Group id or name.
        group: String,
    },
}

impl Row for Group {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "MEMBERS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.members.len().to_string(),
        ]
    }
}

/// Every group the client may list, following the pages.
async fn all(c: &Client) -> api::client::Result<Vec<Group>> {
    c.transport
        .get_all(&c.scoped("/v1/anti-affinity-groups"))
        .await
}

pub async fn run(ctx: &Ctx, cmd: GroupCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        GroupCmd::List => ctx.out.list(&all(&c).await?),
        GroupCmd::Create { name } => {
            let g = c.group_create(&GroupCreate { name }).await?;
            ctx.out
                .show_with(&g, vec![("id", g.id.to_string()), ("name", g.name.clone())])
        }
        GroupCmd::Show { group } => {
            let id = resolve(&group, all(&c)).await?;
            let g = c.group_get(id).await?;
            let vms = if ctx.out.json || g.members.is_empty() {
                Default::default()
            } else {
                names(c.instance_list().await)
            };
            let members: Vec<String> = g.members.iter().map(|m| label(&vms, m)).collect();
            ctx.out.show_with(
                &g,
                vec![
                    ("id", g.id.to_string()),
                    ("name", g.name.clone()),
                    ("project", g.project_id.to_string()),
                    ("members", fmt::join(&members, "\n")),
                    ("created", fmt::time(&g.created_at)),
                ],
            )
        }
        GroupCmd::Delete { group } => {
            let id = resolve(&group, all(&c)).await?;
            c.group_delete(id).await?;
            ctx.out.note(format!("deleted group {group}"))
        }
    }
}
