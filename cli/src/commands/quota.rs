//! `strato quota`: per-project limits and usage against them.

use anyhow::Result;
use api::resources::{Quota, QuotaUpdate};
use api::Client;
use clap::{ArgGroup, Args, Subcommand};

use super::Ctx;
use crate::error::usage;
use crate::output::{fmt, render_table};

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Show a project's limits and what it uses.
    Show {
        /// Project id or name; default: --project, the saved login's project,
        /// or your only project.
        project: Option<String>,
    },
    /// Change some of a project's limits (admin).
    Set(SetArgs),
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("limits")
        .required(true)
        .multiple(true)
        .args(["instances", "vcpus", "ram_mib", "volumes", "volume_gib", "addresses"])
))]
pub struct SetArgs {
    /// Project id or name.
    pub project: String,
    /// Maximum number of VMs.
    #[arg(long, value_name = "N")]
    pub instances: Option<u64>,
    /// Maximum vCPUs over all VMs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Maximum RAM over all VMs, in MiB.
    #[arg(long, value_name = "MIB")]
    pub ram_mib: Option<u64>,
    /// Maximum number of volumes.
    #[arg(long, value_name = "N")]
    pub volumes: Option<u64>,
    /// Maximum volume storage, in GiB.
    #[arg(long, value_name = "GIB")]
    pub volume_gib: Option<u64>,
    /// Maximum IP addresses.
    #[arg(long, value_name = "N")]
    pub addresses: Option<u64>,
}

/// Rows of `RESOURCE  USED  LIMIT`.
pub fn quota_rows(q: &Quota) -> Vec<Vec<String>> {
    let (u, l) = (&q.usage, &q.limits);
    let plain = |name: &str, used: u64, limit: u64| {
        vec![name.to_string(), used.to_string(), limit.to_string()]
    };
    vec![
        plain("instances", u.instances, l.instances),
        plain("vcpus", u.vcpus, l.vcpus),
        vec!["ram".into(), fmt::mib(u.ram_mib), fmt::mib(l.ram_mib)],
        plain("volumes", u.volumes, l.volumes),
        vec![
            "volume storage".into(),
            fmt::gib(u.volume_gib),
            fmt::gib(l.volume_gib),
        ],
        plain("addresses", u.addresses, l.addresses),
    ]
}

fn print(ctx: &Ctx, project: &str, q: &Quota) -> Result<()> {
    if ctx.out.json {
        return ctx.out.json(q);
    }
    ctx.out.note(format!(
        "quota of project {project}:\n\n{}",
        render_table(&["RESOURCE", "USED", "LIMIT"], quota_rows(q))
    ))
}

/// The project named on the command line, else the client's, else the
/// caller's only project.
async fn project_of(c: &Client, arg: Option<String>) -> Result<String> {
    if let Some(p) = arg.or_else(|| c.project.clone()) {
        return Ok(p);
    }
    let me = c.whoami().await?.user;
    match me.memberships.as_slice() {
        [only] => Ok(only.project_name.clone()),
        _ => Err(usage("name the project: `strato quota show PROJECT`")),
    }
}

pub async fn run(ctx: &Ctx, cmd: QuotaCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        QuotaCmd::Show { project } => {
            let project = project_of(&c, project).await?;
            let q = c.quota_get(&project).await?;
            print(ctx, &project, &q)
        }
        QuotaCmd::Set(a) => {
            let body = QuotaUpdate {
                instances: a.instances,
                vcpus: a.vcpus,
                ram_mib: a.ram_mib,
                volumes: a.volumes,
                volume_gib: a.volume_gib,
                addresses: a.addresses,
            };
            let q = c.quota_update(&a.project, &body).await?;
            print(ctx, &a.project, &q)
        }
    }
}
