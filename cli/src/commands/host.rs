//! `strato host` and `strato rack`: the operator's view of the hardware.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use api::ids::RackId;
use api::resources::{
    AdminState, EnrollmentTokenCreate, EvacuateRequest, Event, Host, HostHealth, HostKind,
    HostUpdate, Rack, RackCreate, RebalancePlan, RebalanceRequest,
};
use api::Client;
use chrono::Utc;
use clap::{Subcommand, ValueEnum};

use super::{label, names, resolve, Ctx};
use crate::output::{fmt, Row};
use crate::parse;

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List hosts with their health and allocation.
    List,
    /// Show one host.
    Show {
        /// Host id or name.
        host: String,
    },
    /// Let a host take new work.
    Enable {
        /// Host id or name.
        host: String,
    },
    /// Stop placing new work on a host; what runs there stays.
    Disable {
        /// Host id or name.
        host: String,
    },
    /// Stop placing new work on a host and move its VMs away.
    Drain {
        /// Host id or name.
        host: String,
    },
    /// Plan the fewest VM moves that bring every hypervisor's vCPU and RAM
    /// allocation within a band of the mean, and run them (a few at a
    /// time; each stops a VM and starts it on its new host).
    Rebalance {
        /// Only show the plan; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Half-width of the band as a share, e.g. 0.1 for ±10 points
        /// (default: the stack manager's `moves.band`).
        #[arg(long)]
        band: Option<f64>,
    },
    /// Fence a hypervisor (revoke its volumes, power it off where it has a
    /// power driver) and re-create its VMs elsewhere with the same
    /// addresses and volumes, even while the mass-failure guard holds
    /// automatic evacuation. For maintenance of a healthy host, use drain.
    Evacuate {
        /// Host id or name.
        host: String,
        /// You have made sure the host is off (powered down or unplugged
        /// by hand): fencing counts as confirmed now, without its power
        /// driver or storage nodes (for a host whose BMC or storage node
        /// is gone too). Refused while the host heartbeats. If it is in
        /// fact running, its VMs run twice.
        #[arg(long)]
        confirm_fenced: bool,
    },
    /// Take a fenced host back once its VMs moved: its volumes accept it
    /// again and it gets new work.
    Readmit {
        /// Host id or name.
        host: String,
    },
    /// What happened to a host: suspicion, fencing, evacuation, re-admission.
    Events {
        /// Host id or name.
        host: String,
    },
    /// Forget a host (it must hold no VMs or volumes).
    Delete {
        /// Host id or name.
        host: String,
    },
    /// Create a one-time token an agent uses to enroll its host.
    EnrollToken {
        /// What the host will be.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Rack (id or name) the host belongs to.
        #[arg(long)]
        rack: Option<String>,
        /// How long the token stays valid, e.g. 1h, 24h, 7d.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse::duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum RackCmd {
    /// List racks.
    List,
    /// Declare a rack.
    Create {
        /// Rack name.
        name: String,
        /// Free-form location, e.g. "dc1 row 3".
        #[arg(long, default_value = "")]
        location: String,
    },
    /// Delete a rack (it must hold no hosts).
    Delete {
        /// Rack id or name.
        rack: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Hypervisor,
    Storage,
}

impl From<Kind> for HostKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Hypervisor => HostKind::Hypervisor,
            Kind::Storage => HostKind::Storage,
        }
    }
}

const HEADERS: &[&str] = &[
    "ID",
    "NAME",
    "KIND",
    "RACK",
    "ADMIN",
    "HEALTH",
    "ALLOCATED",
    "LAST SEEN",
];

/// What is claimed against what is there, in the terms of the host's kind.
fn allocation(h: &Host) -> String {
    let (a, c) = (&h.allocated, &h.capacity);
    match h.kind {
        HostKind::Hypervisor => format!(
            "{} vms, {}/{} vcpu, {}/{} GiB ram, {}/{} GiB disk",
            a.instances,
            a.vcpus,
            c.vcpus,
            a.ram_mib / 1024,
            c.ram_mib / 1024,
            a.disk_gib,
            c.disk_gib
        ),
        HostKind::Storage => format!(
            "{} volumes, {}/{} GiB ({} GiB free)",
            a.volumes,
            fmt::bytes_gib(a.storage_bytes),
            fmt::bytes_gib(c.storage_bytes_total),
            fmt::bytes_gib(c.storage_bytes_free)
        ),
    }
}

fn row(h: &Host, racks: &HashMap<RackId, String>) -> Vec<String> {
    let now = Utc::now();
    vec![
        h.id.to_string(),
        h.name.clone(),
        h.kind.as_str().into(),
        h.rack_id.map_or_else(|| "-".into(), |r| label(racks, &r)),
        h.admin_state.as_str().into(),
        health(h),
        allocation(h),
        h.last_heartbeat_at
            .map_or_else(|| "never".into(), |t| fmt::ago(&t, now)),
    ]
}

fn health(h: &Host) -> String {
    match (&h.health, &h.health_reason) {
        (HostHealth::Up, _) | (_, None) => h.health.as_str().into(),
        (_, Some(why)) => format!("{} ({why})", h.health.as_str()),
    }
}

/// Events as a table: when, what, and the message.
pub fn print_events(ctx: &Ctx, events: &[Event]) -> Result<()> {
    ctx.out.list_with(events, &["AT", "EVENT", "MESSAGE"], |e| {
        vec![fmt::time(&e.at), e.event.clone(), e.message.clone()]
    })
}

async fn set_state(ctx: &Ctx, c: &Client, host: &str, state: AdminState) -> Result<()> {
    let id = resolve(host, c.host_list()).await?;
    let h = c
        .host_update(id, &HostUpdate { admin_state: state })
        .await?;
    if ctx.out.json {
        return ctx.out.json(&h);
    }
    ctx.out
        .note(format!("host {}: {}", h.name, h.admin_state.as_str()))
}

pub async fn run(ctx: &Ctx, cmd: HostCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        HostCmd::List => {
            let hosts = c.host_list().await?;
            let racks = if ctx.out.json {
                Default::default()
            } else {
                names(c.rack_list().await)
            };
            ctx.out.list_with(&hosts, HEADERS, |h| row(h, &racks))?;
            if !ctx.out.json && !hosts.iter().any(|h| h.kind == HostKind::Hypervisor) {
                ctx.out.note(
                    "\nno hypervisor host has enrolled: VMs cannot be scheduled until one does \
                     (create a token with `strato host enroll-token --kind hypervisor`)",
                )?;
            }
            Ok(())
        }
        HostCmd::Show { host } => {
            let id = resolve(&host, c.host_list()).await?;
            let h = c.host_get(id).await?;
            let rack = match (h.rack_id, ctx.out.json) {
                (Some(r), false) => names(c.rack_list().await).get(&r).cloned(),
                _ => None,
            };
            let now = Utc::now();
            ctx.out.show_with(
                &h,
                vec![
                    ("id", h.id.to_string()),
                    ("name", h.name.clone()),
                    ("kind", h.kind.as_str().into()),
                    (
                        "rack",
                        h.rack_id
                            .map_or_else(|| "-".into(), |r| fmt::named(rack.as_deref(), r)),
                    ),
                    ("admin state", h.admin_state.as_str().into()),
                    ("health", health(&h)),
                    (
                        "health since",
                        h.health_since.map_or_else(|| "-".into(), |t| fmt::time(&t)),
                    ),
                    (
                        "fencing",
                        match &h.machine_id {
                            Some(m) => format!("storage and power (machine {m})"),
                            None => "storage only (no power driver)".into(),
                        },
                    ),
                    ("agent url", h.agent_url.clone()),
                    ("allocated", allocation(&h)),
                    (
                        "pinned vms",
                        match (h.admin_state, h.pinned_instances) {
                            (AdminState::Draining, n) if n > 0 => format!(
                                "{n} (relocation never: the drain leaves them; {} vm(s) left in all)",
                                h.allocated.instances
                            ),
                            (_, n) => n.to_string(),
                        },
                    ),
                    (
                        "last heartbeat",
                        h.last_heartbeat_at.map_or_else(
                            || "never".into(),
                            |t| format!("{} ({})", fmt::time(&t), fmt::ago(&t, now)),
                        ),
                    ),
                    ("created", fmt::time(&h.created_at)),
                ],
            )
        }
        HostCmd::Enable { host } => set_state(ctx, &c, &host, AdminState::Enabled).await,
        HostCmd::Disable { host } => set_state(ctx, &c, &host, AdminState::Disabled).await,
        HostCmd::Drain { host } => set_state(ctx, &c, &host, AdminState::Draining).await,
        HostCmd::Rebalance { dry_run, band } => {
            let plan = c
                .host_rebalance(&RebalanceRequest { dry_run, band })
                .await?;
            if ctx.out.json {
                return ctx.out.json(&plan);
            }
            print_plan(ctx, &plan)
        }
        HostCmd::Evacuate {
            host,
            confirm_fenced,
        } => {
            let id = resolve(&host, c.host_list()).await?;
            let e = c
                .host_evacuate(id, &EvacuateRequest { confirm_fenced })
                .await?;
            if ctx.out.json {
                return ctx.out.json(&e);
            }
            let when = if e.health == HostHealth::Fenced {
                "now"
            } else {
                "once fencing is confirmed"
            };
            ctx.out.note(format!(
                "host {host}: {}; its {} VM(s) are re-created elsewhere {when} \
                 (follow with `strato host events {host}`)",
                e.health.as_str(),
                e.instances
            ))
        }
        HostCmd::Readmit { host } => {
            let id = resolve(&host, c.host_list()).await?;
            let h = c.host_readmit(id).await?;
            if ctx.out.json {
                return ctx.out.json(&h);
            }
            ctx.out
                .note(format!("host {}: {}", h.name, h.health.as_str()))
        }
        HostCmd::Events { host } => {
            let id = resolve(&host, c.host_list()).await?;
            print_events(ctx, &c.host_events(id).await?)
        }
        HostCmd::Delete { host } => {
            let id = resolve(&host, c.host_list()).await?;
            c.host_delete(id).await?;
            ctx.out.note(format!("deleted host {host}"))
        }
        HostCmd::EnrollToken { kind, rack, ttl } => {
            let body = EnrollmentTokenCreate {
                kind: kind.into(),
                rack,
                expires_in_secs: ttl.as_secs(),
            };
            let t = c.enrollment_token_create(&body).await?;
            if ctx.out.json {
                return ctx.out.json(&t);
            }
            ctx.out.note(format!(
                "enrollment token for a {} host (expires {}), shown only once:\n\n{}\n\n\
                 Give it to the {}-agent on the new host; it enrolls with the stack manager's internal API.",
                t.kind.as_str(),
                fmt::time(&t.expires_at),
                t.secret,
                t.kind.as_str()
            ))
        }
    }
}

fn print_plan(ctx: &Ctx, plan: &RebalancePlan) -> Result<()> {
    let names: HashMap<_, _> = plan
        .hosts
        .iter()
        .map(|h| (h.host_id, h.name.clone()))
        .collect();
    let name = |id| names.get(&id).cloned().unwrap_or_else(|| id.to_string());
    let moves: Vec<_> = plan.moves.iter().enumerate().collect();
    ctx.out.list_with(
        &moves,
        &["#", "VM", "FROM", "TO", "WHY", "AFTER"],
        |(i, m)| {
            vec![
                i.to_string(),
                m.instance_name.clone(),
                name(m.from),
                name(m.to),
                format!("{:?}", m.reason).to_lowercase(),
                m.depends_on
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        },
    )?;
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    ctx.out.list_with(
        &plan.hosts,
        &[
            "HOST",
            "VCPU BEFORE",
            "RAM BEFORE",
            "VCPU AFTER",
            "RAM AFTER",
            "IN BAND",
        ],
        |h| {
            vec![
                h.name.clone(),
                pct(h.before_vcpu_share),
                pct(h.before_ram_share),
                pct(h.after_vcpu_share),
                pct(h.after_ram_share),
                match h.within_band_after {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
            ]
        },
    )?;
    for s in &plan.stuck {
        ctx.out
            .note(format!("stays: {} ({})", s.instance_name, s.reason))?;
    }
    ctx.out.note(format!(
        "{} move(s) (at least {} needed), band ±{} around {} vCPU / {} RAM: {}; {}",
        plan.moves.len(),
        plan.lower_bound,
        pct(plan.band),
        pct(plan.mean_vcpu_share),
        pct(plan.mean_ram_share),
        if plan.within_band {
            "every host ends within it"
        } else {
            "some hosts stay outside"
        },
        if plan.queued {
            "queued (follow with `strato vm events VM` or `strato system tasks`)"
        } else {
            "dry run: nothing moved"
        }
    ))
}

impl Row for Rack {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "LOCATION", "HOSTS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            fmt::or_dash(&self.location),
            self.host_count.to_string(),
        ]
    }
}

pub async fn run_rack(ctx: &Ctx, cmd: RackCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        RackCmd::List => ctx.out.list(&c.rack_list().await?),
        RackCmd::Create { name, location } => {
            let r = c.rack_create(&RackCreate { name, location }).await?;
            ctx.out.show_with(
                &r,
                vec![
                    ("id", r.id.to_string()),
                    ("name", r.name.clone()),
                    ("location", fmt::or_dash(&r.location)),
                ],
            )
        }
        RackCmd::Delete { rack } => {
            let id = resolve(&rack, c.rack_list()).await?;
            c.rack_delete(id).await?;
            ctx.out.note(format!("deleted rack {rack}"))
        }
    }
}
