//! `strato machine`: bare machines on a rack, through that rack's
//! provisioner (`--provisioner URL`, `--provisioner-token TOKEN`, or
//! `STRATO_PROVISIONER_URL` / `STRATO_PROVISIONER_TOKEN`).

use anyhow::{anyhow, Result};
use api::provision::{Machine, MachineAction, MachineCreate, MachineEvent, PowerSpec};
use api::resources::HostKind;
use api::ProvisionerClient;
use clap::{Args, Subcommand, ValueEnum};

use super::Ctx;
use crate::output::{fmt, Detail, Row};

#[derive(Debug, Args)]
pub struct MachineArgs {
    /// The rack's provisioner, e.g. http://10.0.0.1:8080.
    #[arg(long, env = "STRATO_PROVISIONER_URL", global = true)]
    pub provisioner: Option<String>,
    /// Its API token (`api_token` in provisioner.toml).
    #[arg(
        long,
        env = "STRATO_PROVISIONER_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub provisioner_token: Option<String>,
    #[command(subcommand)]
    pub command: MachineCmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Hypervisor,
    Storage,
}

#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// List machines and their states.
    List,
    /// Show one machine with its inventory.
    Show {
        machine: String,
    },
    /// Enlist a machine by the MAC it network-boots from.
    Enlist {
        name: String,
        #[arg(long)]
        mac: String,
        #[arg(long, value_enum, default_value = "hypervisor")]
        role: Role,
        #[arg(long)]
        rack: Option<String>,
        /// Power driver as JSON, e.g. '{"driver":"ipmi","address":"10.0.0.9","user":"admin","password":"..."}'
        /// [default: manual].
        #[arg(long, value_name = "JSON")]
        power: Option<String>,
    },
    /// Boot it into the inventory environment.
    Commission {
        machine: String,
    },
    /// Write an image to its disk and boot it.
    Deploy {
        machine: String,
        /// An image file name in the provisioner's image directory.
        #[arg(long)]
        image: String,
        /// What it becomes once installed: which agent post-install starts
        /// [default: the role it was enlisted with].
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Power it off and return it to the pool.
    Release {
        machine: String,
    },
    /// Power on, off or cycle.
    Power {
        machine: String,
        #[arg(value_enum)]
        action: PowerAction,
    },
    /// Take it out of service, or put it back.
    MarkBroken {
        machine: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    MarkFixed {
        machine: String,
    },
    /// Its history: every transition and power action.
    Events {
        machine: String,
    },
    /// Forget a machine that is not deployed.
    Delete {
        machine: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    /// Ask the power driver (BMC, libvirt) whether it is on.
    Status,
}

impl Row for Machine {
    const HEADERS: &'static [&'static str] =
        &["ID", "NAME", "MAC", "ROLE", "STATE", "ADDRESS", "HARDWARE"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.mac.clone(),
            self.role.as_str().into(),
            self.state.as_str().into(),
            fmt::opt(&self.address),
            self.inventory.as_ref().map_or_else(
                || "-".into(),
                |i| {
                    format!(
                        "{} cpu, {}, {} disk",
                        i.cpus,
                        fmt::mib(i.ram_mib),
                        i.disks.len()
                    )
                },
            ),
        ]
    }
}

impl Detail for Machine {
    fn detail(&self) -> Vec<(&'static str, String)> {
        let mut d = vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("mac", self.mac.clone()),
            ("role", self.role.as_str().into()),
            ("rack", fmt::opt(&self.rack)),
            ("state", self.state.as_str().into()),
            ("reason", fmt::opt(&self.state_reason)),
            (
                "deadline",
                self.deadline.as_ref().map_or("-".into(), fmt::time),
            ),
            ("address", fmt::opt(&self.address)),
            ("switch port", fmt::opt(&self.switch_port)),
            ("arch", fmt::opt(&self.arch)),
            ("image", fmt::opt(&self.image)),
            (
                "host",
                self.host_id.map_or_else(|| "-".into(), |h| h.to_string()),
            ),
        ];
        if let Some(i) = &self.inventory {
            d.push(("cpus", format!("{} ({})", i.cpus, i.cpu_model)));
            d.push(("ram", fmt::mib(i.ram_mib)));
            for disk in &i.disks {
                d.push((
                    "disk",
                    format!("{} {} GiB {}", disk.name, disk.size_bytes >> 30, disk.model),
                ));
            }
            for nic in &i.nics {
                d.push(("nic", format!("{} {}", nic.name, nic.mac)));
            }
        }
        d.push(("updated", fmt::time(&self.updated_at)));
        d
    }
}

impl Row for MachineEvent {
    const HEADERS: &'static [&'static str] = &["AT", "FROM", "TO", "MESSAGE"];
    fn row(&self) -> Vec<String> {
        vec![
            fmt::time(&self.at),
            self.from.map_or("-".into(), |s| s.as_str().to_string()),
            self.to.as_str().into(),
            self.message.clone(),
        ]
    }
}

pub async fn run(ctx: &Ctx, a: MachineArgs) -> Result<()> {
    let url = a.provisioner.ok_or_else(|| {
        anyhow!("give the rack's provisioner with --provisioner URL or STRATO_PROVISIONER_URL")
    })?;
    let token = a.provisioner_token.ok_or_else(|| {
        anyhow!(
            "give the provisioner's API token with --provisioner-token or STRATO_PROVISIONER_TOKEN"
        )
    })?;
    let c = ProvisionerClient::new(&url, &token);
    let act = |m: String, action: MachineAction| {
        let c = c.clone();
        async move { c.machine_act(&m, &action).await }
    };
    let shown = match a.command {
        MachineCmd::List => return ctx.out.list(&c.machine_list().await?),
        MachineCmd::Events { machine } => return ctx.out.list(&c.machine_events(&machine).await?),
        MachineCmd::Delete { machine } => {
            c.machine_delete(&machine).await?;
            return ctx.out.note(format!("deleted machine {machine}"));
        }
        MachineCmd::Show { machine } => c.machine_get(&machine).await?,
        MachineCmd::Enlist {
            name,
            mac,
            role,
            rack,
            power,
        } => {
            let power: PowerSpec = match power {
                Some(j) => serde_json::from_str(&j).map_err(|e| anyhow!("--power: {e}"))?,
                None => PowerSpec::Manual,
            };
            c.machine_create(&MachineCreate {
                name,
                mac,
                role: match role {
                    Role::Hypervisor => HostKind::Hypervisor,
                    Role::Storage => HostKind::Storage,
                },
                rack,
                power,
            })
            .await?
        }
        MachineCmd::Commission { machine } => act(machine, MachineAction::Commission).await?,
        MachineCmd::Deploy {
            machine,
            image,
            role,
        } => {
            let role = role.map(|r| match r {
                Role::Hypervisor => HostKind::Hypervisor,
                Role::Storage => HostKind::Storage,
            });
            act(machine, MachineAction::Deploy { image, role }).await?
        }
        MachineCmd::Release { machine } => act(machine, MachineAction::Release).await?,
        MachineCmd::Power { machine, action } => {
            let a = match action {
                PowerAction::On => MachineAction::PowerOn,
                PowerAction::Off => MachineAction::PowerOff,
                PowerAction::Cycle => MachineAction::PowerCycle,
                PowerAction::Status => {
                    let p = c.machine_power(&machine).await?;
                    return ctx
                        .out
                        .note(format!("{machine}: power {}", p.state.as_str()));
                }
            };
            act(machine, a).await?
        }
        MachineCmd::MarkBroken { machine, reason } => {
            act(machine, MachineAction::MarkBroken { reason }).await?
        }
        MachineCmd::MarkFixed { machine } => act(machine, MachineAction::MarkFixed).await?,
    };
    ctx.out.show(&shown)
}
