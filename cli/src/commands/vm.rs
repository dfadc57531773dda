//! `strato vm`: virtual machines.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use api::ids::{FlavorId, HostId, InstanceId};
use api::resources::{Instance, InstanceCreate, InstanceStatus, InstanceUpdate, Relocation};
use api::{Client, ClientError, ErrorBody};
use clap::{Args, Subcommand};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{label, names, resolve, Ctx};
use crate::error::usage;
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
    /// Whether drains and rebalancing may move the VM (a move stops it and
    /// starts it on another host with the same addresses and volumes).
    SetRelocation {
        /// VM id or name.
        vm: String,
        #[arg(value_enum)]
        policy: RelocationArg,
    },
    /// What happened to a VM: crashes and restarts, its host's failure,
    /// where it was re-created.
    Events {
        /// VM id or name.
        vm: String,
    },
    /// Print the VM's serial console log, or follow it live with --follow.
    Console {
        /// VM id or name.
        vm: String,
        /// Stay attached: print the last few KiB of the console, then every
        /// byte the guest prints as it prints it, until the VM is deleted or
        /// you press Ctrl-C. The bytes are copied to stdout unchanged.
        #[arg(short, long)]
        follow: bool,
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
    /// Whether drains and rebalancing may move it (`never`: it stays on
    /// its host through maintenance; a failed host's VMs move regardless).
    #[arg(long, value_enum, default_value = "allow")]
    pub relocation: RelocationArg,
    /// Wait until it is running (stopped with --no-start); at most 300 s.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RelocationArg {
    Allow,
    Never,
}

impl From<RelocationArg> for Relocation {
    fn from(r: RelocationArg) -> Self {
        match r {
            RelocationArg::Allow => Relocation::Allow,
            RelocationArg::Never => Relocation::Never,
        }
    }
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
        VmCmd::SetRelocation { vm, policy } => {
            let id = resolve(&vm, c.instance_list()).await?;
            let body = InstanceUpdate {
                relocation: Some(policy.into()),
            };
            let i = c.instance_update(id, &body).await?;
            if ctx.out.json {
                return ctx.out.json(&i);
            }
            ctx.out.note(format!(
                "vm {}: relocation {}",
                i.name,
                i.relocation.as_str()
            ))
        }
        VmCmd::Events { vm } => {
            let id = resolve(&vm, c.instance_list()).await?;
            super::host::print_events(ctx, &c.instance_events(id).await?)
        }
        VmCmd::Console { vm, follow } => {
            if follow && ctx.out.json {
                return Err(usage(
                    "--follow prints the console's raw bytes; it cannot be combined with --json",
                ));
            }
            let id = resolve(&vm, c.instance_list()).await?;
            if follow {
                let ctrl_c = async {
                    // Without a Ctrl-C handler, follow until the server ends
                    // the stream rather than stop at once.
                    if tokio::signal::ctrl_c().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                return follow_console(&c, id, &mut std::io::stdout(), ctrl_c).await;
            }
            let log = c.instance_console(id).await?;
            if ctx.out.json {
                return ctx.out.json(&log);
            }
            output::print(log.data.strip_suffix('\n').unwrap_or(&log.data))
        }
    }
}

/// `ws://` or `wss://` URL of a VM's live console, beside the API's `base`.
fn console_stream_url(base: &str, id: InstanceId) -> Result<String> {
    let ws = match base.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => format!("ws://{rest}"),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("wss://{rest}"),
        _ => bail!("the API URL `{base}` does not start with http:// or https://"),
    };
    Ok(format!(
        "{}/v1/instances/{id}/console/stream",
        ws.trim_end_matches('/')
    ))
}

/// Copies a VM's live console to `out` until the server closes the
/// WebSocket or `stop` completes (Ctrl-C).
async fn follow_console(
    c: &Client,
    id: InstanceId,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let url = console_stream_url(c.transport.base_url(), id)?;
    let mut req = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("invalid console URL {url}"))?;
    // Instances are addressed by id, so the project (a `?project=` query on
    // list and create calls) plays no part here: the token is all it takes.
    if let Some(token) = c.transport.token() {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token cannot be sent as a header")?;
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(resp)) => return Err(refusal(&resp).into()),
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot open the console stream at {url}"))
            )
        }
    };
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            _ = &mut stop => {
                // Say goodbye so the stack manager stops reading the host now
                // rather than when its next write fails.
                let _ = ws.close(None).await;
                return Ok(());
            }
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Binary(bytes))) => {
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Some(Ok(Message::Text(text))) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Some(Ok(Message::Close(Some(frame)))) if frame.code != CloseCode::Normal => {
                bail!("the console stream was cut off: {}", frame.reason)
            }
            Some(Ok(Message::Close(_))) | None => return Ok(()),
            // Pings (tungstenite answers them itself) and pongs.
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(anyhow::Error::new(e).context("the console stream broke")),
        }
    }
}

/// The API error of an upgrade the server refused (unknown VM, no token,
/// agent down), so that it is reported like any other failed call.
fn refusal(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> ClientError {
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Api { status, body },
        Err(_) => ClientError::Http { status, text },
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
        relocation: a.relocation.into(),
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
        ("relocation", vm.relocation.as_str().to_string()),
    ];
    if let Some(to) = vm.moving_to {
        fields.push(("moving to", to.to_string()));
    }
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

#[cfg(test)]
// tungstenite's handshake callbacks must return its (large) error response.
#[allow(clippy::result_large_err)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::SinkExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    use super::*;

    #[test]
    fn console_follow_is_a_flag_off_by_default() {
        use clap::Parser;
        let follow = |args: &[&str]| {
            let cli =
                crate::Cli::try_parse_from(["strato", "vm", "console"].iter().chain(args)).unwrap();
            match cli.command {
                crate::Command::Vm(VmCmd::Console { follow, .. }) => follow,
                other => panic!("parsed as {other:?}"),
            }
        };
        assert!(!follow(&["web-1"]));
        assert!(follow(&["web-1", "-f"]));
        assert!(follow(&["--follow", "web-1"]));
    }

    #[test]
    fn console_stream_url_follows_the_api_scheme() {
        let id = InstanceId::new();
        assert_eq!(
            console_stream_url("http://127.0.0.1:7100", id).unwrap(),
            format!("ws://127.0.0.1:7100/v1/instances/{id}/console/stream")
        );
        assert_eq!(
            console_stream_url("HTTPS://cloud.example/api/", id).unwrap(),
            format!("wss://cloud.example/api/v1/instances/{id}/console/stream")
        );
        assert!(console_stream_url("cloud.example:7100", id).is_err());
    }

    /// A one-connection WebSocket server: records the upgrade request's
    /// Authorization header, then runs `serve` on the socket.
    async fn server<F, Fut>(serve: F) -> (String, Arc<Mutex<Option<String>>>)
    where
        F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut
            + Send
            + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let auth = Arc::new(Mutex::new(None));
        let seen = auth.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let record = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                *seen.lock().unwrap() = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(resp)
            };
            let ws = tokio_tungstenite::accept_hdr_async(tcp, record)
                .await
                .unwrap();
            serve(ws).await;
        });
        (url, auth)
    }

    #[tokio::test]
    async fn follow_copies_binary_messages_until_a_normal_close() {
        let (url, auth) = server(|mut ws| async move {
            ws.send(Message::binary(b"hello ".to_vec())).await.unwrap();
            ws.send(Message::binary(b"world\n".to_vec())).await.unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "the console ended".into(),
            }))
            .await
            .unwrap();
        })
        .await;
        let c = Client::new(&url, "strato_tok");
        let mut out = Vec::new();
        follow_console(&c, InstanceId::new(), &mut out, std::future::pending())
            .await
            .unwrap();
        assert_eq!(out, b"hello world\n");
        assert_eq!(auth.lock().unwrap().as_deref(), Some("Bearer strato_tok"));
    }

    #[tokio::test]
    async fn follow_reports_an_error_close_and_a_refused_upgrade() {
        let (url, _) = server(|mut ws| async move {
            ws.send(Message::binary(b"boot".to_vec())).await.unwrap();
            ws.close(Some(CloseFrame {
                code: CloseCode::Error,
                reason: "lost the console stream from host h".into(),
            }))
            .await
            .unwrap();
        })
        .await;
        let mut out = Vec::new();
        let err = follow_console(
            &Client::new(&url, "t"),
            InstanceId::new(),
            &mut out,
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert_eq!(out, b"boot");
        assert!(err.to_string().contains("lost the console stream"), "{err}");

        // An HTTP answer instead of an upgrade is the API's error.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let refuse = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                let body = r#"{"error":"not_found","message":"instance x not found"}"#;
                Err(tungstenite::http::Response::builder()
                    .status(404)
                    .body(Some(body.to_string()))
                    .unwrap())
            };
            let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse).await;
        });
        let err = follow_console(
            &Client::new(&url, "t"),
            InstanceId::new(),
            &mut Vec::new(),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        let api = err.downcast_ref::<ClientError>().expect("an API error");
        assert_eq!(api.code(), Some(api::ErrorCode::NotFound));
        assert_eq!(api.status(), Some(404));
    }

    #[tokio::test]
    async fn ctrl_c_closes_the_socket_and_succeeds() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (url, _) = server(|mut ws| async move {
            ws.send(Message::binary(b"login: ".to_vec())).await.unwrap();
            // The client's close is what ends the session.
            let mut closed = false;
            while let Some(Ok(msg)) = ws.next().await {
                closed |= msg.is_close();
            }
            let _ = tx.send(closed);
        })
        .await;
        let mut out = Vec::new();
        let stop = tokio::time::sleep(std::time::Duration::from_millis(300));
        follow_console(&Client::new(&url, "t"), InstanceId::new(), &mut out, stop)
            .await
            .unwrap();
        assert_eq!(out, b"login: ");
        assert!(rx.await.unwrap(), "the server saw a close frame");
    }
}
