//! `strato vm`: virtual machines.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use api::ids::{FlavorId, HostId, InstanceId};
use api::resources::{Instance, InstanceCreate, InstanceStatus};
use api::Client;
use clap::{Args, Subcommand};

use super::{label, names, resolve, Ctx};
use crate::output::{self, fmt};
use crate::wait::{poll, Step};

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// List VMs.
    List,
    /// Show one VM: state, placement, size, addresses.
    Show {
        /// VM id or name.
        vm: String,
    },
    /// Create a VM (and start it, unless --no-start).
    Create(CreateArgs),
    /// Start a stopped VM.
    Start(ActionArgs),
    /// Stop a running VM.
    Stop(ActionArgs),
    /// Reboot a running VM.
    Reboot(ActionArgs),
    /// Delete a VM; its addresses are released and its volumes detached.
    Delete(ActionArgs),
    /// Print the VM's serial console log.
    Console {
        /// VM id or name.
        vm: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name: 1–63 characters of [a-z0-9-]; also the guest hostname.
    pub name: String,
    /// Flavor id or name (`strato flavor list`).
    #[arg(long)]
    pub flavor: String,
    /// Image id or name (`strato image list`).
    #[arg(long)]
    pub image: String,
    /// Network id or name; repeat for several NICs, in order.
    #[arg(long = "network", value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
    /// Keypair id or name whose public key is injected.
    #[arg(long)]
    pub keypair: Option<String>,
    /// File passed to the guest's cloud-init as user data (at most 64 KiB).
    #[arg(long, value_name = "PATH")]
    pub user_data_file: Option<PathBuf>,
    /// Anti-affinity group id or name (`strato group list`).
    #[arg(long)]
    pub group: Option<String>,
    /// Only create it; start it later with `strato vm start`.
    #[arg(long)]
    pub no_start: bool,
    /// Wait until it is running (stopped with --no-start); at most 300 s.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// VM id or name.
    pub vm: String,
    /// Wait until the action is done (at most 300 s); fail if the VM goes into error.
    #[arg(long)]
    pub wait: bool,
}

const HEADERS: &[&str] = &[
    "ID",
    "NAME",
    "STATUS",
    "DESIRED",
    "HOST",
    "ADDRESSES",
    "FLAVOR",
];

fn row(
    i: &Instance,
    flavors: &HashMap<FlavorId, String>,
    hosts: &HashMap<HostId, String>,
) -> Vec<String> {
    vec![
        i.id.to_string(),
        i.name.clone(),
        i.status.as_str().into(),
        i.desired.as_str().into(),
        i.host_id.map_or_else(|| "-".into(), |h| label(hosts, &h)),
        addresses(i, ", "),
        label(flavors, &i.flavor_id),
    ]
}

fn addresses(i: &Instance, sep: &str) -> String {
    let v: Vec<String> = i.nics.iter().map(|n| n.address.to_string()).collect();
    fmt::join(&v, sep)
}

/// `building`, or `error: no host has room` when there is a reason.
fn status_text(i: &Instance) -> String {
    match &i.status_reason {
        Some(r) if !r.is_empty() => format!("{} ({r})", i.status.as_str()),
        _ => i.status.as_str().into(),
    }
}

pub async fn run(ctx: &Ctx, cmd: VmCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        VmCmd::List => {
            let vms = c.instance_list().await?;
            let (flavors, hosts) = if ctx.out.json {
                Default::default()
            } else {
                let (f, h) = tokio::join!(c.flavor_list(), c.host_list());
                (names(f), names(h))
            };
            ctx.out
                .list_with(&vms, HEADERS, |i| row(i, &flavors, &hosts))
        }
        VmCmd::Show { vm } => {
            let id = resolve(&vm, c.instance_list()).await?;
            show(ctx, &c, &c.instance_get(id).await?).await
        }
        VmCmd::Create(a) => create(ctx, &c, a).await,
        VmCmd::Start(a) => action(ctx, &c, a, "start", InstanceStatus::Running).await,
        VmCmd::Stop(a) => action(ctx, &c, a, "stop", InstanceStatus::Stopped).await,
        VmCmd::Reboot(a) => action(ctx, &c, a, "reboot", InstanceStatus::Running).await,
        VmCmd::Delete(a) => {
            let id = resolve(&a.vm, c.instance_list()).await?;
            c.instance_delete(id).await?;
            if a.wait {
                wait_gone(&c, id, &a.vm).await?;
                ctx.out.note(format!("deleted vm {}", a.vm))
            } else {
                ctx.out.note(format!("vm {} is being deleted", a.vm))
            }
        }
        VmCmd::Console { vm } => {
            let id = resolve(&vm, c.instance_list()).await?;
            let log = c.instance_console(id).await?;
            if ctx.out.json {
                return ctx.out.json(&log);
            }
            output::print(log.data.strip_suffix('\n').unwrap_or(&log.data))
        }
    }
}

async fn create(ctx: &Ctx, c: &Client, a: CreateArgs) -> Result<()> {
    let user_data = match &a.user_data_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read user data file {}", p.display()))?,
        ),
        None => None,
    };
    let body = InstanceCreate {
        name: a.name,
        flavor: a.flavor,
        image: a.image,
        networks: a.networks,
        keypair: a.keypair,
        user_data,
        anti_affinity_group: a.group,
        start: !a.no_start,
    };
    let mut vm = c.instance_create(&body).await?;
    if a.wait {
        let want = if a.no_start {
            InstanceStatus::Stopped
        } else {
            InstanceStatus::Running
        };
        vm = wait_status(c, vm.id, &vm.name, want).await?;
    }
    show(ctx, c, &vm).await?;
    if !a.wait && vm.status == InstanceStatus::Building {
        ctx.out.note(format!(
            "\nvm {} is building; follow it with `strato vm show {}` (or create with --wait)",
            vm.name, vm.name
        ))?;
    }
    Ok(())
}

async fn action(
    ctx: &Ctx,
    c: &Client,
    a: ActionArgs,
    verb: &str,
    want: InstanceStatus,
) -> Result<()> {
    let id = resolve(&a.vm, c.instance_list()).await?;
    let mut vm = c.instance_action(id, verb).await?;
    if a.wait {
        vm = wait_status(c, id, &vm.name, want).await?;
    }
    if ctx.out.json {
        return ctx.out.json(&vm);
    }
    ctx.out.note(format!(
        "vm {}: {} (desired {})",
        vm.name,
        status_text(&vm),
        vm.desired.as_str()
    ))
}

/// Polls until the VM has status `want`; fails on `error`.
async fn wait_status(
    c: &Client,
    id: InstanceId,
    name: &str,
    want: InstanceStatus,
) -> Result<Instance> {
    poll(&format!("vm {name}"), || async move {
        let vm = c.instance_get(id).await?;
        Ok(match vm.status {
            s if s == want => Step::Done(vm),
            InstanceStatus::Error => Step::Failed(reason(&vm)),
            InstanceStatus::Deleting | InstanceStatus::Deleted => {
                Step::Failed("it is being deleted".into())
            }
            _ => Step::Pending(status_text(&vm)),
        })
    })
    .await
}

/// Polls until the VM is deleted or no longer found; fails on `error`.
async fn wait_gone(c: &Client, id: InstanceId, name: &str) -> Result<()> {
    poll(&format!("vm {name}"), || async move {
        match c.instance_get(id).await {
            Ok(vm) => Ok(match vm.status {
                InstanceStatus::Deleted => Step::Done(()),
                InstanceStatus::Error => Step::Failed(reason(&vm)),
                _ => Step::Pending(status_text(&vm)),
            }),
            Err(e) if e.status() == Some(404) => Ok(Step::Done(())),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

fn reason(vm: &Instance) -> String {
    vm.status_reason
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "the VM went into error (no reason given)".into())
}

/// Detail view with flavor, image and host names looked up.
async fn show(ctx: &Ctx, c: &Client, vm: &Instance) -> Result<()> {
    if ctx.out.json {
        return ctx.out.json(vm);
    }
    let host = async {
        match vm.host_id {
            Some(h) => c.host_get(h).await.ok().map(|h| h.name),
            None => None,
        }
    };
    let (flavor, image, host) =
        tokio::join!(c.flavor_get(vm.flavor_id), c.image_get(vm.image_id), host);
    let flavor = flavor.ok().map(|f| f.name);
    let image = image.ok().map(|i| i.name);
    let nics: Vec<String> = vm
        .nics
        .iter()
        .enumerate()
        .map(|(n, nic)| {
            format!(
                "eth{n}  {}  {}  network {}",
                nic.address, nic.mac, nic.network_id
            )
        })
        .collect();
    let mut fields = vec![
        ("id", vm.id.to_string()),
        ("name", vm.name.clone()),
        ("project", vm.project_id.to_string()),
        ("status", vm.status.as_str().to_string()),
        ("desired", vm.desired.as_str().to_string()),
    ];
    if let Some(r) = vm.status_reason.as_ref().filter(|r| !r.is_empty()) {
        fields.push(("reason", r.clone()));
    }
    fields.extend([
        (
            "host",
            vm.host_id.map_or_else(
                || "- (not placed)".into(),
                |h| fmt::named(host.as_deref(), h),
            ),
        ),
        ("flavor", fmt::named(flavor.as_deref(), vm.flavor_id)),
        (
            "size",
            format!(
                "{} vCPU, {} RAM, {} disk",
                vm.vcpus,
                fmt::mib(vm.ram_mib),
                fmt::gib(vm.disk_gib)
            ),
        ),
        ("image", fmt::named(image.as_deref(), vm.image_id)),
        ("keypair", fmt::opt(&vm.keypair_id)),
        ("group", fmt::opt(&vm.anti_affinity_group_id)),
        ("nics", fmt::join(&nics, "\n")),
        ("created", fmt::time(&vm.created_at)),
        ("updated", fmt::time(&vm.updated_at)),
    ]);
    ctx.out.show_with(vm, fields)
}
