//! `strato`: the command-line client of a Strato cloud, and `strato up`, the
//! all-in-one cloud on one machine.

mod commands;
mod config;
mod error;
mod output;
mod parse;
mod process;
mod up;
mod up_agent;
mod up_rack;
mod wait;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use commands::*;

const AFTER_HELP: &str = "\
Getting started:
  strato up                    start an all-in-one cloud here and log in as admin
  strato flavor list           see what VM sizes exist
  strato vm create web-1 --flavor m1.small --image ubuntu --network default --wait

Credentials come from --url/--token/--project, else STRATO_URL/STRATO_TOKEN/
STRATO_PROJECT, else the file `strato login` writes ($STRATO_CONFIG, default
$HOME/.config/strato/config.toml).";

/// Manage a Strato bare-metal cloud: VMs, volumes, networks, hosts, projects.
#[derive(Debug, Parser)]
#[command(name = "strato", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after the subcommand.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct Globals {
    /// Stack manager API URL, e.g. http://127.0.0.1:7100; several replicas
    /// separated by commas (a call that cannot reach one goes to the next).
    #[arg(long, global = true, env = "STRATO_URL", value_name = "URL")]
    pub url: Option<String>,
    /// API token (strato_...).
    #[arg(
        long,
        global = true,
        env = "STRATO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Project (id or name) to act in; needed when your user belongs to several.
    #[arg(long, global = true, env = "STRATO_PROJECT", value_name = "PROJECT")]
    pub project: Option<String>,
    /// Print the API's JSON response (pretty) instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an all-in-one cloud on this machine (stack manager + admin login).
    Up(up::UpArgs),
    /// Stop the stack manager `strato up` started.
    Down(up::DownArgs),
    /// Check a URL and token and save them as the default login.
    #[command(
        long_about = "Check a URL and token and save them as the default login.\n\n\
                             Pass the global --url and --token (and optionally --project):\n\n  \
                             strato login --url http://127.0.0.1:7100 --token strato_... --project demo"
    )]
    Login,
    /// Show who the current token belongs to.
    Whoami,
    /// VM sizes (admins create and delete them).
    #[command(subcommand)]
    Flavor(flavor::FlavorCmd),
    /// Bootable disk images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// SSH public keys injected into VMs.
    #[command(subcommand)]
    Keypair(keypair::KeypairCmd),
    /// Tenant networks and their subnets.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Virtual machines.
    #[command(subcommand, visible_alias = "instance")]
    Vm(vm::VmCmd),
    /// Persistent block volumes, their attachments and snapshots.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Anti-affinity groups: members never share a host.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// Hypervisor and storage hosts (admin).
    #[command(subcommand)]
    Host(host::HostCmd),
    /// Racks hosts belong to (admin).
    #[command(subcommand)]
    Rack(host::RackCmd),
    /// Bare machines on a rack, through its provisioner: enlist,
    /// commission, deploy, release, power, events.
    Machine(machine::MachineArgs),
    /// Projects (tenants) and their members (admin).
    #[command(subcommand)]
    Project(identity::ProjectCmd),
    /// Users and their API tokens (admin).
    #[command(subcommand)]
    User(identity::UserCmd),
    /// Per-project limits and what is used against them.
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// Instance-hours by flavor and volume GiB-hours per project.
    #[command(
        long_about = "Instance-hours by flavor and volume GiB-hours per project, over a period \
                             (default: the last 24 hours).\n\n\
                             Covers every project you may see, unless the global --project (or \
                             STRATO_PROJECT) names one; the saved login's project is not applied here."
    )]
    Usage(usage::UsageArgs),
    /// Recent mutating API calls (admin).
    Audit(audit::AuditArgs),
    /// The stack manager's own workings: background tasks (admin).
    #[command(subcommand)]
    System(system::SystemCmd),
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx::new(cli.global);
    match cli.command {
        Command::Up(a) => return up::up(&ctx, a).await,
        Command::Down(a) => up::down(&ctx, a).await?,
        Command::Login => auth::login(&ctx).await?,
        Command::Whoami => auth::whoami(&ctx).await?,
        Command::Flavor(c) => flavor::run(&ctx, c).await?,
        Command::Image(c) => image::run(&ctx, c).await?,
        Command::Keypair(c) => keypair::run(&ctx, c).await?,
        Command::Network(c) => network::run(&ctx, c).await?,
        Command::Vm(c) => vm::run(&ctx, c).await?,
        Command::Volume(c) => volume::run(&ctx, c).await?,
        Command::Group(c) => group::run(&ctx, c).await?,
        Command::Host(c) => host::run(&ctx, c).await?,
        Command::Rack(c) => host::run_rack(&ctx, c).await?,
        Command::Machine(a) => machine::run(&ctx, a).await?,
        Command::Project(c) => identity::run_project(&ctx, c).await?,
        Command::User(c) => identity::run_user(&ctx, c).await?,
        Command::Quota(c) => quota::run(&ctx, c).await?,
        Command::Usage(a) => usage::run(&ctx, a).await?,
        Command::Audit(a) => audit::run(&ctx, a).await?,
        Command::System(c) => system::run(&ctx, c).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Prints help/version (exit 0) or the usage error (exit 2).
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let report = error::Report::of(&err);
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {}", report.message);
            if let Some(hint) = &report.hint {
                let _ = writeln!(stderr, "hint: {hint}");
            }
            ExitCode::from(report.code)
        }
    }
}

/// The reader of our stdout went away (`strato vm list | head -1`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strato").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_create_with_repeated_networks_and_global_flags_anywhere() {
        let cli = parse(&[
            "vm",
            "create",
            "web-1",
            "--flavor",
            "m1.small",
            "--image",
            "ubuntu",
            "--network",
            "front",
            "--network",
            "back",
            "--keypair",
            "me",
            "--no-start",
            "--wait",
            "--json",
            "--project",
            "demo",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.project.as_deref(), Some("demo"));
        let Command::Vm(vm::VmCmd::Create(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(a.name, "web-1");
        assert_eq!(a.networks, ["front", "back"]);
        assert_eq!(a.keypair.as_deref(), Some("me"));
        assert!(a.no_start && a.wait);
    }

    #[test]
    fn vm_create_requires_a_network() {
        let err = parse(&["vm", "create", "web-1", "--flavor", "f", "--image", "i"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn unknown_subcommand_and_bad_values_are_usage_errors() {
        assert_eq!(
            parse(&["vm", "explode", "x"]).unwrap_err().kind(),
            clap::error::ErrorKind::InvalidSubcommand
        );
        assert_eq!(
            parse(&["image", "create", "u", "--source", "s", "--format", "vmdk", "--sha256", "ab"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::InvalidValue
        );
        assert_eq!(
            parse(&["usage", "--since", "yesterday"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&["usage", "--since", "24h", "--start", "2026-01-01T00:00:00Z"])
                .unwrap_err()
                .kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        assert!(parse(&[
            "flavor",
            "create",
            "m1",
            "--vcpus",
            "two",
            "--ram-mib",
            "1",
            "--disk-gib",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn volume_sources_conflict_and_keypair_needs_a_key() {
        assert!(parse(&[
            "volume",
            "create",
            "v",
            "--size-gib",
            "10",
            "--from-image",
            "i",
            "--from-snapshot",
            "s"
        ])
        .is_err());
        assert!(parse(&["keypair", "create", "k"]).is_err());
        assert!(parse(&["keypair", "create", "k", "--public-key", "ssh-ed25519 AAAA"]).is_ok());
    }

    #[test]
    fn network_subnet_create_parses_ranges() {
        let cli = parse(&[
            "network",
            "subnet-create",
            "net",
            "sub",
            "--cidr",
            "10.0.0.0/24",
            "--pool",
            "10.0.0.10-10.0.0.99",
            "--pool",
            "10.0.0.150-10.0.0.199",
            "--dns",
            "1.1.1.1",
        ])
        .unwrap();
        let Command::Network(network::NetworkCmd::SubnetCreate(a)) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(a.pools.len(), 2);
        assert_eq!(a.dns.len(), 1);
        assert!(parse(&[
            "network",
            "subnet-create",
            "net",
            "sub",
            "--cidr",
            "10.0.0.0"
        ])
        .is_err());
    }

    #[test]
    fn up_defaults_and_quota_set() {
        let cli = parse(&["up"]).unwrap();
        let Command::Up(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.listen.to_string(), "127.0.0.1:7100");
        // Chosen at run time: loopback, or the rack bridge with --rack.
        assert_eq!(a.internal_listen, None);
        assert_eq!(a.rack, None);
        assert!(!a.foreground);
        let cli = parse(&["up", "--rack", "3", "--rack-address", "10.98.0.1"]).unwrap();
        let Command::Up(a) = cli.command else {
            panic!()
        };
        assert_eq!(
            (a.rack, a.rack_address.to_string()),
            (Some(3), "10.98.0.1".into())
        );
        assert!(parse(&["up", "--rack", "0"]).is_err());

        let cli = parse(&[
            "quota",
            "set",
            "demo",
            "--instances",
            "5",
            "--ram-mib",
            "8192",
        ])
        .unwrap();
        let Command::Quota(quota::QuotaCmd::Set(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.project, "demo");
        assert_eq!(a.instances, Some(5));
        assert_eq!(a.vcpus, None);
    }

    #[test]
    fn host_enroll_token_kind_is_checked() {
        assert!(parse(&[
            "host",
            "enroll-token",
            "--kind",
            "hypervisor",
            "--rack",
            "r1"
        ])
        .is_ok());
        assert!(parse(&["host", "enroll-token", "--kind", "toaster"]).is_err());
        assert!(parse(&["project", "add-member", "p", "u", "--role", "member"]).is_ok());
        assert!(parse(&["project", "add-member", "p", "u", "--role", "admin"]).is_err());
    }
}
