//! `strato volume`: persistent iSCSI volumes, attachments and snapshots.

use std::collections::HashMap;

use anyhow::Result;
use api::ids::{HostId, InstanceId, VolumeId};
use api::resources::{Snapshot, SnapshotCreate, Volume, VolumeCreate, VolumeSource, VolumeStatus};
use api::Client;
use clap::{Args, Subcommand};

use super::{label, names, resolve, Ctx};
use crate::output::{fmt, Detail, Row};
use crate::wait::{poll, Step};

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// List volumes.
    List,
    /// Show one volume: where it lives, its status and attachment.
    Show {
        /// Volume id or name.
        volume: String,
    },
    /// Create a volume, empty or from an image or a snapshot.
    Create(CreateArgs),
    /// Delete a volume (it must be detached).
    Delete {
        /// Volume id or name.
        volume: String,
        /// Wait until it is gone (at most 300 s).
        #[arg(long)]
        wait: bool,
    },
    /// Attach a volume to a VM as its next disk.
    Attach {
        /// Volume id or name.
        volume: String,
        /// VM id or name.
        #[arg(long)]
        vm: String,
    },
    /// Detach a volume from a VM.
    Detach {
        /// Volume id or name.
        volume: String,
        /// VM id or name.
        #[arg(long)]
        vm: String,
    },
    /// Snapshot a volume.
    Snapshot {
        /// Volume id or name.
        volume: String,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots, optionally of one volume.
    Snapshots {
        /// Only snapshots of this volume (id or name).
        volume: Option<String>,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// Snapshot id or name.
        snapshot: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Volume name.
    pub name: String,
    /// Size in GiB (1–65536).
    #[arg(long, value_name = "GIB")]
    pub size_gib: u64,
    /// Start with the blocks of this image (id or name).
    #[arg(long, value_name = "IMAGE", conflicts_with = "from_snapshot")]
    pub from_image: Option<String>,
    /// Start with the blocks of this snapshot (id or name).
    #[arg(long, value_name = "SNAPSHOT")]
    pub from_snapshot: Option<String>,
    /// Copies on distinct storage nodes, 1–3: with 2 or more, the volume
    /// survives the loss of its node (an in-sync copy takes over).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Wait until it is available (at most 300 s).
    #[arg(long)]
    pub wait: bool,
}

const HEADERS: &[&str] = &["ID", "NAME", "SIZE", "STATUS", "HOST", "ATTACHED TO"];

fn row(
    v: &Volume,
    hosts: &HashMap<HostId, String>,
    vms: &HashMap<InstanceId, String>,
) -> Vec<String> {
    vec![
        v.id.to_string(),
        v.name.clone(),
        fmt::gib(v.size_gib),
        v.status.as_str().into(),
        v.host_id.map_or_else(|| "-".into(), |h| label(hosts, &h)),
        v.attachment
            .as_ref()
            .map_or_else(|| "-".into(), |a| label(vms, &a.instance_id)),
    ]
}

impl Row for Snapshot {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VOLUME", "SIZE", "STATUS", "CREATED"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.volume_id.to_string(),
            fmt::gib(self.size_gib),
            self.status.as_str().into(),
            fmt::time(&self.created_at),
        ]
    }
}

impl Detail for Snapshot {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("volume", self.volume_id.to_string()),
            ("size", fmt::gib(self.size_gib)),
            ("status", self.status.as_str().into()),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

pub async fn run(ctx: &Ctx, cmd: VolumeCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        VolumeCmd::List => {
            let vols = c.volume_list().await?;
            let (hosts, vms) = if ctx.out.json {
                Default::default()
            } else {
                let (h, i) = tokio::join!(c.host_list(), c.instance_list());
                (names(h), names(i))
            };
            ctx.out.list_with(&vols, HEADERS, |v| row(v, &hosts, &vms))
        }
        VolumeCmd::Show { volume } => {
            let id = resolve(&volume, c.volume_list()).await?;
            show(ctx, &c, &c.volume_get(id).await?).await
        }
        VolumeCmd::Create(a) => {
            let source = match (a.from_image, a.from_snapshot) {
                (Some(image), _) => VolumeSource::Image(image),
                (None, Some(s)) => VolumeSource::Snapshot(resolve(&s, c.snapshot_list()).await?),
                (None, None) => VolumeSource::Empty,
            };
            let body = VolumeCreate {
                name: a.name,
                size_gib: a.size_gib,
                source,
                replicas: a.replicas,
            };
            let mut vol = c.volume_create(&body).await?;
            if a.wait {
                vol = wait_available(&c, vol.id, &vol.name).await?;
            }
            show(ctx, &c, &vol).await
        }
        VolumeCmd::Delete { volume, wait } => {
            let id = resolve(&volume, c.volume_list()).await?;
            c.volume_delete(id).await?;
            if wait {
                wait_gone(&c, id, &volume).await?;
                ctx.out.note(format!("deleted volume {volume}"))
            } else {
                ctx.out.note(format!("volume {volume} is being deleted"))
            }
        }
        VolumeCmd::Attach { volume, vm } => {
            let vm_id = resolve(&vm, c.instance_list()).await?;
            let att = c.attachment_create(vm_id, &volume).await?;
            if ctx.out.json {
                return ctx.out.json(&att);
            }
            ctx.out.note(format!(
                "attached volume {volume} to vm {vm} (device index {}; 0 is the first disk after the root disk)",
                att.device_index
            ))
        }
        VolumeCmd::Detach { volume, vm } => {
            let (vm_id, vol_id) = tokio::try_join!(
                resolve(&vm, c.instance_list()),
                resolve(&volume, c.volume_list())
            )?;
            c.attachment_delete(vm_id, vol_id).await?;
            ctx.out
                .note(format!("detached volume {volume} from vm {vm}"))
        }
        VolumeCmd::Snapshot { volume, name } => {
            let id = resolve(&volume, c.volume_list()).await?;
            ctx.out
                .show(&c.snapshot_create(id, &SnapshotCreate { name }).await?)
        }
        VolumeCmd::Snapshots { volume } => {
            let mut snaps = c.snapshot_list().await?;
            if let Some(v) = volume {
                let id = resolve(&v, c.volume_list()).await?;
                snaps.retain(|s| s.volume_id == id);
            }
            ctx.out.list(&snaps)
        }
        VolumeCmd::SnapshotDelete { snapshot } => {
            let id = resolve(&snapshot, c.snapshot_list()).await?;
            c.snapshot_delete(id).await?;
            ctx.out.note(format!("deleted snapshot {snapshot}"))
        }
    }
}

fn status_text(v: &Volume) -> String {
    match &v.status_reason {
        Some(r) if !r.is_empty() => format!("{} ({r})", v.status.as_str()),
        _ => v.status.as_str().into(),
    }
}

fn reason(v: &Volume) -> String {
    v.status_reason
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "the volume went into error (no reason given)".into())
}

async fn wait_available(c: &Client, id: VolumeId, name: &str) -> Result<Volume> {
    poll(&format!("volume {name}"), || async move {
        let v = c.volume_get(id).await?;
        Ok(match v.status {
            VolumeStatus::Available | VolumeStatus::InUse => Step::Done(v),
            VolumeStatus::Error => Step::Failed(reason(&v)),
            VolumeStatus::Deleting | VolumeStatus::Deleted => {
                Step::Failed("it is being deleted".into())
            }
            VolumeStatus::Creating => Step::Pending(status_text(&v)),
        })
    })
    .await
}

async fn wait_gone(c: &Client, id: VolumeId, name: &str) -> Result<()> {
    poll(&format!("volume {name}"), || async move {
        match c.volume_get(id).await {
            Ok(v) => Ok(match v.status {
                VolumeStatus::Deleted => Step::Done(()),
                VolumeStatus::Error => Step::Failed(reason(&v)),
                _ => Step::Pending(status_text(&v)),
            }),
            Err(e) if e.status() == Some(404) => Ok(Step::Done(())),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Detail view: where it lives (storage host), status, attachment.
async fn show(ctx: &Ctx, c: &Client, v: &Volume) -> Result<()> {
    if ctx.out.json {
        return ctx.out.json(v);
    }
    let host = async {
        match v.host_id {
            Some(h) => c.host_get(h).await.ok().map(|h| h.name),
            None => None,
        }
    };
    let vm = async {
        match &v.attachment {
            Some(a) => c.instance_get(a.instance_id).await.ok().map(|i| i.name),
            None => None,
        }
    };
    let copies = async {
        let mut out = Vec::new();
        for copy in &v.copies {
            let name = c.host_get(copy.host_id).await.ok().map(|h| h.name);
            out.push(format!(
                "{} ({})",
                fmt::named(name.as_deref(), copy.host_id),
                match copy.state {
                    api::resources::CopyState::InSync => "in sync".to_string(),
                    api::resources::CopyState::OutOfSync if copy.behind_bytes > 0 => format!(
                        "out of sync, {} MiB to resync",
                        copy.behind_bytes.div_ceil(1 << 20)
                    ),
                    api::resources::CopyState::OutOfSync =>
                        "out of sync, resyncing when back".to_string(),
                }
            ));
        }
        out
    };
    let (host, vm, copies) = tokio::join!(host, vm, copies);
    let mut fields = vec![
        ("id", v.id.to_string()),
        ("name", v.name.clone()),
        ("project", v.project_id.to_string()),
        ("size", fmt::gib(v.size_gib)),
        ("status", v.status.as_str().to_string()),
    ];
    if let Some(r) = v.status_reason.as_ref().filter(|r| !r.is_empty()) {
        fields.push(("reason", r.clone()));
    }
    let source = match (v.source_image_id, v.source_snapshot_id) {
        (Some(i), _) => format!("image {i}"),
        (None, Some(s)) => format!("snapshot {s}"),
        (None, None) => "empty".into(),
    };
    fields.extend([
        (
            "host",
            v.host_id.map_or_else(
                || "- (not placed)".into(),
                |h| fmt::named(host.as_deref(), h),
            ),
        ),
        (
            "attachment",
            v.attachment.as_ref().map_or_else(
                || "-".into(),
                |a| {
                    format!(
                        "vm {}, device index {}",
                        fmt::named(vm.as_deref(), a.instance_id),
                        a.device_index
                    )
                },
            ),
        ),
        ("replicas", v.replicas.to_string()),
        (
            "copies",
            if copies.is_empty() {
                "-".into()
            } else {
                copies.join(", ")
            },
        ),
        ("source", source),
        ("iqn", v.iqn.clone()),
        ("created", fmt::time(&v.created_at)),
    ]);
    ctx.out.show_with(v, fields)
}
