//! `strato up` and `strato down`: an all-in-one cloud on this machine.
//!
//! `up` initializes a state directory with `stack-manager init` (once),
//! writes a stack-manager config, starts `stack-manager serve` in the
//! background, waits for `/v1/health`, and saves an admin login for the CLI.
//! Layout of the state directory:
//!
//! ```text
//! admin.token          admin API token (written by `stack-manager init`)
//! stack-manager.toml   config written by `strato up`
//! stack-manager.log    stdout and stderr of the background stack manager
//! stack-manager.pid    its process id
//! ```

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use api::client::Transport;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::commands::Ctx;
use crate::config::{write_private, Config};
use crate::output::render_detail;
use crate::process::{find_binary, is_root, read_pid, running_as, spawn_detached, tail, terminate};
use crate::up_agent;
use crate::up_rack;
use crate::wait::spinner;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const ADMIN_PROJECT: &str = "admin";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the database, log, pid file and admin token live
    /// [default: $HOME/.local/share/strato, or ./.state when HOME is unset].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address the public API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Address the internal API for agents listens on [default:
    /// 127.0.0.1:7101; with --rack, the rack address's port 7101, so that
    /// the rack's machines reach it].
    #[arg(long, value_name = "ADDR")]
    pub internal_listen: Option<SocketAddr>,
    /// Run the stack manager in this terminal instead of in the background
    /// (logs to the terminal; Ctrl-C stops it; its exit code is strato's).
    /// Starts no hypervisor agent.
    #[arg(long)]
    pub foreground: bool,
    /// Do not start a hypervisor agent on this machine.
    #[arg(long)]
    pub no_hypervisor: bool,
    /// Address the local hypervisor agent's API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7200")]
    pub agent_listen: SocketAddr,
    /// The local hypervisor agent's state (image cache, disks, consoles).
    /// QEMU runs as its own user, so every directory above it must be
    /// world-traversable: not under a 0700 home directory.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/strato/hypervisor")]
    pub agent_state_dir: PathBuf,
    /// Do not start a storage agent on this machine.
    #[arg(long)]
    pub no_storage: bool,
    /// Address the local storage agent's API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7300")]
    pub storage_listen: SocketAddr,
    /// Address the local storage agent's iSCSI target listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3260")]
    pub iscsi_listen: SocketAddr,
    /// The local storage agent's state: its pool of volumes
    /// [default: <state-dir>/storage].
    #[arg(long, value_name = "DIR")]
    pub storage_state_dir: Option<PathBuf>,
    /// Where `scripts/guest-images.sh` put the tiny guest image that is
    /// registered as the public image `tiny`.
    #[arg(
        long,
        value_name = "DIR",
        env = "STRATO_IMAGE_CACHE",
        default_value = "/var/cache/strato/images"
    )]
    pub image_cache: PathBuf,
    /// Also start a demo rack of N empty VMs (libvirt domains, TCG) on a
    /// private bridge, with the provisioner: they PXE-boot, are
    /// commissioned, deployed with the Debian image and enroll here as
    /// storage hosts. Needs root, `scripts/boot-env.sh` and
    /// `scripts/guest-images.sh debian` (`scripts/up.sh --rack N` runs them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
    pub rack: Option<u8>,
    /// The demo rack's bridge.
    #[arg(long, value_name = "NAME", default_value = "strato-rack")]
    pub rack_bridge: String,
    /// This machine's address on the rack's bridge; the rack is its /24.
    #[arg(long, value_name = "IP", default_value = "10.99.0.1")]
    pub rack_address: std::net::Ipv4Addr,
    /// The rack's VM disks and consoles, its images and the provisioner's
    /// state (QEMU must be able to enter it: not under a 0700 home).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/strato/rack")]
    pub rack_state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The state directory given to `strato up`
    /// [default: $HOME/.local/share/strato, or ./.state when HOME is unset].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The demo rack's bridge given to `strato up --rack`: its VMs are
    /// powered off.
    #[arg(long, value_name = "NAME", default_value = "strato-rack")]
    pub rack_bridge: String,
}

/// Files in the state directory.
struct Paths {
    state: PathBuf,
    token: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pid: PathBuf,
}

impl Paths {
    fn new(state: PathBuf) -> Self {
        Self {
            token: state.join("admin.token"),
            config: state.join("stack-manager.toml"),
            log: state.join("stack-manager.log"),
            pid: state.join("stack-manager.pid"),
            state,
        }
    }
}

pub fn default_state_dir(home: Option<OsString>) -> PathBuf {
    match home.filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local").join("share").join("strato"),
        None => PathBuf::from(".state"),
    }
}

fn state_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| default_state_dir(std::env::var_os("HOME")))
}

/// Progress lines go to stderr; stdout carries the result.
fn progress(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The URL clients use for a listen address (`0.0.0.0` → loopback).
pub fn api_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// `stack-manager` next to this executable, else on `PATH`.
fn find_stack_manager() -> Result<PathBuf> {
    find_binary("stack-manager", "stack-manager")
}

/// The line `stack-manager init --json` prints.
#[derive(Debug, Deserialize)]
struct InitOutput {
    token: String,
}

/// The admin token of an initialized state directory: the file holds the
/// token itself (or, leniently, the JSON `init` printed).
fn read_token(path: &Path) -> Result<String> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = text.trim();
    let token = if text.starts_with('{') {
        serde_json::from_str::<InitOutput>(text)
            .map(|o| o.token)
            .with_context(|| format!("{} holds JSON without a token", path.display()))?
    } else {
        text.to_string()
    };
    if token.is_empty() {
        bail!("{} is empty; restore the admin token there", path.display());
    }
    Ok(token)
}

/// The token from `init`'s output: the last line that is JSON with a token.
fn parse_init_output(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<InitOutput>(l.trim()).ok())
        .map(|o| o.token)
}

/// Runs `stack-manager init`: creates the database and the admin user.
fn init(sm: &Path, p: &Paths) -> Result<String> {
    progress(format!("initializing a new cloud in {}", p.state.display()));
    let out = Command::new(sm)
        .env_remove("STRATO_CONFIG")
        .arg("init")
        .arg("--config")
        .arg(&p.config)
        .arg("--state-dir")
        .arg(&p.state)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", sm.display()))?;
    if !out.status.success() {
        bail!(
            "`stack-manager init` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let token = parse_init_output(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow!("`stack-manager init --json` printed no token"))?;
    // init writes it too; make sure the next `strato up` finds it either way.
    if !p.token.exists() {
        write_private(&p.token, token.as_bytes())
            .with_context(|| format!("cannot write {}", p.token.display()))?;
    }
    Ok(token)
}

/// What `strato up` writes for `stack-manager serve --config`.
#[derive(Debug, Serialize)]
struct StackManagerConfig<'a> {
    listen: SocketAddr,
    internal_listen: SocketAddr,
    state_dir: &'a Path,
}

fn write_stack_manager_config(
    p: &Paths,
    listen: SocketAddr,
    internal_listen: SocketAddr,
) -> Result<()> {
    let cfg = StackManagerConfig {
        listen,
        internal_listen,
        state_dir: &p.state,
    };
    let text = format!(
        "# Written by `strato up`; rewritten on every `strato up`.\n{}",
        toml::to_string(&cfg).context("the state directory path must be UTF-8")?
    );
    fs::write(&p.config, text).with_context(|| format!("cannot write {}", p.config.display()))
}

/// Whether `pid` is a live stack manager.
fn running(pid: u32) -> bool {
    running_as(pid, "stack-manager")
}

/// Starts `stack-manager serve` detached, logging to the state directory.
fn spawn(sm: &Path, p: &Paths) -> Result<Child> {
    let mut cmd = Command::new(sm);
    cmd.env_remove("STRATO_CONFIG")
        .arg("serve")
        .arg("--config")
        .arg(&p.config);
    spawn_detached(cmd, &p.log, &p.pid)
}

/// Polls `/v1/health` until it answers, the child exits, or time runs out.
async fn wait_healthy(url: &str, mut child: Option<&mut Child>, log: &Path) -> Result<()> {
    let transport = Transport::new(url, None);
    let pb = spinner(format!("waiting for the stack manager at {url}"));
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    let result = loop {
        let last = match transport.get_text("/v1/health").await {
            Ok(_) => break Ok(()),
            Err(e) => e,
        };
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                break Err(anyhow!(
                    "the stack manager exited ({status}); the end of {}:\n{}",
                    log.display(),
                    tail(log, 20)
                ));
            }
        }
        if Instant::now() >= deadline {
            break Err(anyhow!(
                "the stack manager did not answer {url}/v1/health within {} s ({last}); see {} \
                 (stop it with `strato down`)",
                HEALTH_TIMEOUT.as_secs(),
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    pb.finish_and_clear();
    result
}

fn save_login(ctx: &Ctx, url: &str, token: &str) -> Result<PathBuf> {
    let path = ctx.config_path()?;
    Config {
        url: Some(url.to_string()),
        token: Some(token.to_string()),
        project: Some(ADMIN_PROJECT.to_string()),
    }
    .save(&path)?;
    Ok(path)
}

/// The compute side of the all-in-one cloud.
enum Compute {
    Running {
        pid: u32,
        host: api::ids::HostId,
        image: Option<String>,
    },
    Skipped(String),
}

const NO_AGENTS: &str = "\
No hypervisor or storage agent runs yet: VMs will not be scheduled until a
hypervisor agent enrolls, nor volumes until a storage agent does. Create a
token for one with `strato host enroll-token --kind hypervisor`.";

#[derive(Serialize)]
struct UpSummary<'a> {
    url: &'a str,
    token: &'a str,
    project: &'a str,
    state_dir: &'a Path,
    log: &'a Path,
    config: &'a Path,
    pid: Option<u32>,
    /// The local hypervisor host, when `strato up` started an agent.
    hypervisor_host: Option<api::ids::HostId>,
    /// The local storage host, when `strato up` started a storage agent.
    storage_host: Option<api::ids::HostId>,
    /// The demo rack's provisioner, with `--rack`.
    provisioner_url: Option<&'a str>,
}

fn summary_text(s: &UpSummary) -> String {
    render_detail(&[
        ("API URL", s.url.to_string()),
        ("admin token", s.token.to_string()),
        ("log", s.log.display().to_string()),
        ("state", s.state_dir.display().to_string()),
        (
            "CLI login",
            format!("{} (project {})", s.config.display(), s.project),
        ),
    ])
}

pub async fn up(ctx: &Ctx, a: UpArgs) -> Result<ExitCode> {
    let state = state_dir(a.state_dir);
    fs::create_dir_all(&state).with_context(|| format!("cannot create {}", state.display()))?;
    let state =
        fs::canonicalize(&state).with_context(|| format!("cannot resolve {}", state.display()))?;
    let p = Paths::new(state);
    let sm = find_stack_manager()?;
    let internal_listen = a.internal_listen.unwrap_or_else(|| match a.rack {
        Some(_) => SocketAddr::from((a.rack_address, 7101)),
        None => SocketAddr::from(([127, 0, 0, 1], 7101)),
    });
    if a.rack.is_some() {
        if !is_root() {
            bail!("--rack needs root: it creates a bridge and libvirt domains");
        }
        // Before the stack manager starts: its internal API binds there.
        up_rack::ensure_bridge(&a.rack_bridge, a.rack_address)?;
    }
    let previous_config = fs::read_to_string(&p.config).unwrap_or_default();
    write_stack_manager_config(&p, a.listen, internal_listen)?;
    let token = if p.token.exists() {
        read_token(&p.token)?
    } else {
        init(&sm, &p)?
    };
    let url = api_url(a.listen);
    let running_pid = read_pid(&p.pid).filter(|pid| running(*pid));

    if a.foreground {
        if let Some(pid) = running_pid {
            bail!("the stack manager is already running (pid {pid}); stop it with `strato down` first");
        }
        let config = save_login(ctx, &url, &token)?;
        let s = UpSummary {
            url: &url,
            token: &token,
            project: ADMIN_PROJECT,
            state_dir: &p.state,
            log: Path::new("(this terminal)"),
            config: &config,
            pid: Some(std::process::id()),
            hypervisor_host: None,
            storage_host: None,
            provisioner_url: None,
        };
        progress(format!("{}\n\n{NO_AGENTS}\n", summary_text(&s)));
        return foreground(&sm, &p);
    }

    let mut child = match running_pid {
        Some(pid) => {
            progress(format!("the stack manager is already running (pid {pid})"));
            None
        }
        None => {
            let c = spawn(&sm, &p)?;
            progress(format!("started the stack manager (pid {})", c.id()));
            Some(c)
        }
    };
    if running_pid.is_some()
        && !previous_config.contains(&format!("internal_listen = \"{internal_listen}\""))
    {
        bail!(
            "the running stack manager's internal API is not on {internal_listen}; \
             stop it with `strato down` and run `strato up` again"
        );
    }
    let pid = running_pid.or(child.as_ref().map(Child::id));
    wait_healthy(&url, child.as_mut(), &p.log).await?;
    let config = save_login(ctx, &url, &token)?;
    let compute = if a.no_hypervisor {
        Compute::Skipped("not started (--no-hypervisor)".into())
    } else if !is_root() {
        Compute::Skipped(
            "not started: the hypervisor agent needs root (libvirt's system connection, bridges)"
                .into(),
        )
    } else {
        let client = api::Client::new(&url, &token).with_project(Some(ADMIN_PROJECT.into()));
        let (agent_pid, host) = up_agent::ensure_agent(
            &up_agent::HYPERVISOR,
            &client,
            &p.state,
            &a.agent_state_dir,
            &api_url(internal_listen),
            a.agent_listen,
            &a.image_cache,
            "",
        )
        .await?;
        let image = up_agent::ensure_image(&client, &a.image_cache).await?;
        up_agent::ensure_network(&client).await?;
        Compute::Running {
            pid: agent_pid,
            host,
            image,
        }
    };
    let storage = if a.no_storage {
        Compute::Skipped("not started (--no-storage)".into())
    } else {
        let client = api::Client::new(&url, &token).with_project(Some(ADMIN_PROJECT.into()));
        let storage_state = a
            .storage_state_dir
            .clone()
            .unwrap_or_else(|| p.state.join("storage"));
        let (pid, host) = up_agent::ensure_agent(
            &up_agent::STORAGE,
            &client,
            &p.state,
            &storage_state,
            &api_url(internal_listen),
            a.storage_listen,
            &a.image_cache,
            &format!("iscsi_listen = \"{}\"\n", a.iscsi_listen),
        )
        .await?;
        Compute::Running {
            pid,
            host,
            image: None,
        }
    };
    let rack = match a.rack {
        Some(n) => Some(
            up_rack::start(&up_rack::RackSpec {
                machines: n,
                bridge: &a.rack_bridge,
                address: a.rack_address,
                dir: &a.rack_state_dir,
                state: &p.state,
                image_cache: &a.image_cache,
                public_url: &url,
                internal_url: &api_url(internal_listen),
                admin_token: &token,
            })
            .await?,
        ),
        None => None,
    };
    let rack_line = match &rack {
        Some(r) => format!(
            "\nrack: provisioner {} (pid {}) on bridge {}; machines {} are being commissioned, \
             deployed and enrolled as storage hosts (a few minutes under TCG)\n\
             watch: export STRATO_PROVISIONER_URL={} STRATO_PROVISIONER_TOKEN=$(cat {})\n       \
             strato machine list; strato host list",
            r.provisioner_url,
            r.pid,
            a.rack_bridge,
            r.machines.join(", "),
            r.provisioner_url,
            r.token_file.display()
        ),
        None => String::new(),
    };
    let storage_line = match &storage {
        Compute::Running { pid, host, .. } => format!(
            "storage: this machine (host {host}, agent pid {pid}), iSCSI portal {}",
            a.iscsi_listen
        ),
        Compute::Skipped(why) => format!("storage: {why}"),
    };
    let s = UpSummary {
        url: &url,
        token: &token,
        project: ADMIN_PROJECT,
        state_dir: &p.state,
        log: &p.log,
        config: &config,
        pid,
        hypervisor_host: match &compute {
            Compute::Running { host, .. } => Some(*host),
            Compute::Skipped(_) => None,
        },
        storage_host: match &storage {
            Compute::Running { host, .. } => Some(*host),
            Compute::Skipped(_) => None,
        },
        provisioner_url: rack.as_ref().map(|r| r.provisioner_url.as_str()),
    };
    if ctx.out.json {
        ctx.out.json(&s)?;
    } else {
        let (line, next) = match &compute {
            Compute::Running { pid, host, image: Some(image) } => (
                format!("hypervisor: this machine (host {host}, agent pid {pid}), image `{image}`, network `{}`", up_agent::NETWORK_NAME),
                format!("next: strato vm create web-1 --flavor m1.tiny --image {image} --network {}\n      strato vm console web-1\n      strato volume create data --size-gib 1 --wait && strato volume attach data --vm web-1", up_agent::NETWORK_NAME),
            ),
            Compute::Running { pid, host, image: None } => (
                format!("hypervisor: this machine (host {host}, agent pid {pid}); no tiny image in {} (build it with scripts/guest-images.sh)", a.image_cache.display()),
                "next: strato image create ...".to_string(),
            ),
            Compute::Skipped(why) => (format!("hypervisor: {why}\n\n{NO_AGENTS}"), "next: strato flavor list".to_string()),
        };
        ctx.out.note(format!(
            "Strato is up.\n\n{}\n\n{line}\n{storage_line}\n{rack_line}\n\n{next}",
            summary_text(&s)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the stack manager in place of this process (Unix `exec`): signals
/// reach it directly and its exit code is the command's. The pid file gets
/// our pid, which `exec` keeps, so `strato down` works from elsewhere.
fn foreground(sm: &Path, p: &Paths) -> Result<ExitCode> {
    let mut cmd = Command::new(sm);
    cmd.env_remove("STRATO_CONFIG")
        .arg("serve")
        .arg("--config")
        .arg(&p.config);
    fs::write(&p.pid, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", p.pid.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(anyhow::Error::from(err).context(format!("cannot run {}", sm.display())))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", sm.display()))?;
        let code = status.code().unwrap_or(1);
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }
}

pub async fn down(ctx: &Ctx, a: DownArgs) -> Result<()> {
    let p = Paths::new(state_dir(a.state_dir));
    if let Some(pid) = up_rack::stop(&p.state, &a.rack_bridge).await? {
        ctx.out.note(format!(
            "stopped the rack's provisioner (pid {pid}) and powered off its VMs"
        ))?;
    }
    if let Some(pid) = up_agent::stop_agent(&up_agent::HYPERVISOR, &p.state).await? {
        ctx.out.note(format!(
            "stopped the hypervisor agent (pid {pid}); its VMs keep running and are adopted by the next `strato up`"
        ))?;
    }
    if let Some(pid) = up_agent::stop_agent(&up_agent::STORAGE, &p.state).await? {
        ctx.out.note(format!(
            "stopped the storage agent (pid {pid}); volumes keep their data and are served again by the next `strato up`"
        ))?;
    }
    let Some(pid) = read_pid(&p.pid) else {
        return ctx.out.note(format!(
            "the stack manager is not running (no pid file {})",
            p.pid.display()
        ));
    };
    if !running(pid) {
        let _ = fs::remove_file(&p.pid);
        return ctx.out.note(format!(
            "the stack manager is not running (removed stale pid file {})",
            p.pid.display()
        ));
    }
    let pb = spinner(format!("stopping the stack manager (pid {pid})"));
    let stopped = terminate(pid, "stack-manager", STOP_TIMEOUT).await;
    pb.finish_and_clear();
    if !stopped? {
        bail!(
            "the stack manager (pid {pid}) is still running {} s after SIGTERM; see {} or `kill -9 {pid}`",
            STOP_TIMEOUT.as_secs(),
            p.log.display()
        );
    }
    let _ = fs::remove_file(&p.pid);
    ctx.out
        .note(format!("stopped the stack manager (pid {pid})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_defaults() {
        assert_eq!(
            default_state_dir(Some("/home/u".into())),
            PathBuf::from("/home/u/.local/share/strato")
        );
        assert_eq!(default_state_dir(None), PathBuf::from(".state"));
    }

    #[test]
    fn api_url_maps_unspecified_to_loopback() {
        assert_eq!(
            api_url("127.0.0.1:7100".parse().unwrap()),
            "http://127.0.0.1:7100"
        );
        assert_eq!(
            api_url("0.0.0.0:8000".parse().unwrap()),
            "http://127.0.0.1:8000"
        );
        assert_eq!(api_url("[::]:7100".parse().unwrap()), "http://[::1]:7100");
    }

    #[test]
    fn init_output_is_found_among_other_lines() {
        let out =
            "migrating\n{\"user\":\"admin\",\"project\":\"admin\",\"token\":\"strato_abc\"}\n";
        assert_eq!(parse_init_output(out).as_deref(), Some("strato_abc"));
        assert_eq!(parse_init_output("nothing here"), None);
    }

    #[test]
    fn stack_manager_config_is_toml_it_understands() {
        let p = Paths::new(PathBuf::from("/var/lib/strato"));
        let cfg = StackManagerConfig {
            listen: "127.0.0.1:7100".parse().unwrap(),
            internal_listen: "127.0.0.1:7101".parse().unwrap(),
            state_dir: &p.state,
        };
        let v: toml::Value = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(v["listen"].as_str(), Some("127.0.0.1:7100"));
        assert_eq!(v["internal_listen"].as_str(), Some("127.0.0.1:7101"));
        assert_eq!(v["state_dir"].as_str(), Some("/var/lib/strato"));
    }

    #[test]
    fn no_pid_is_not_running() {
        // Pid 0 is never a user process.
        assert!(!running(0));
        assert!(!running(u32::MAX));
    }
}
