//! Runs one rack's boot services: the HTTP server, DHCP and TFTP (when
//! configured), and the sweeper that fails machines whose in-progress
//! state outlived its deadline.

use std::sync::Arc;
use std::time::Duration;

use crate::boot::Scripts;
use crate::config::Config;
use crate::http::{router, HttpState};
use crate::machines::{LeaseSeen, Machines};
use crate::postinstall::{PostInstall, Runner};

fn arch_name(arch: u16) -> String {
    match arch {
        0 => "bios".into(),
        6 => "uefi-ia32".into(),
        7 | 9 => "uefi-x64".into(),
        11 => "uefi-arm64".into(),
        16 => "uefi-http-x64".into(),
        19 => "uefi-http-arm64".into(),
        n => format!("arch-{n}"),
    }
}

fn switch_port(relay: &Option<dhcp::relay::RelayAgent>) -> Option<String> {
    let r = relay.as_ref()?;
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|v| String::from_utf8_lossy(v).to_string());
    match (text(&r.circuit_id), text(&r.remote_id)) {
        (None, None) => None,
        (c, rid) => Some(format!(
            "{}/{}",
            rid.unwrap_or_else(|| r.giaddr.to_string()),
            c.unwrap_or_default()
        )),
    }
}

/// Runs until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let api_token = cfg.api_token()?;
    std::fs::create_dir_all(cfg.image_dir())?;
    let machines =
        Arc::new(Machines::open(&cfg.state_dir, cfg.image_dir(), cfg.timeouts(), cfg.power).await?);
    let scripts = Arc::new(Scripts::load(cfg.template_dir.as_deref())?);
    let post_install = match &cfg.post_install {
        Some(p) => {
            let pi = PostInstall::load(p.clone(), &cfg.state_dir)?;
            tracing::info!(stack_manager = %p.stack_manager_url, key = pi.public_key(), "post-install enabled");
            let runner = Runner::new(Arc::new(pi), machines.clone());
            runner.resume().await;
            Some(runner)
        }
        None => None,
    };
    let state = HttpState {
        post_install,
        machines: machines.clone(),
        scripts,
        base_url: Arc::new(cfg.http_url()),
        boot_env: Arc::new(cfg.boot_env_dir.clone()),
    };
    let listener = tokio::net::TcpListener::bind(cfg.http_listen).await?;
    tracing::info!(listen = %listener.local_addr()?, url = cfg.http_url(), "HTTP boot server and API listening");
    let app = router(state, Arc::new(api_token));
    let http = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut tasks = vec![];
    if let Some(dcfg) = cfg.dhcp_config() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<dhcp::hooks::Event>();
        let server = Arc::new(dhcp::Server::bind(dcfg, tx).await?);
        tracing::info!(listen = %server.local_addr()?, "DHCP server listening");
        let m = machines.clone();
        // Hooks only queue: the inventory is updated off the packet path.
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let r = match ev {
                    dhcp::hooks::Event::UnknownClient(c) => {
                        m.discover(&c.mac.to_string()).await.map(drop)
                    }
                    dhcp::hooks::Event::LeaseBound(l) => {
                        m.lease_seen(&LeaseSeen {
                            mac: l.mac.to_string(),
                            address: Some(l.ip.to_string()),
                            arch: l.arch.map(arch_name),
                            switch_port: switch_port(&l.relay),
                        })
                        .await
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot record a DHCP event");
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
        let s = server.clone();
        tasks.push(tokio::spawn(async move { Ok(s.run().await?) }));
    }
    if let Some(t) = &cfg.tftp {
        let server = tftp::Server::bind(tftp::Config {
            listen: t.listen,
            root: t.root.clone(),
            max_blksize: t.max_blksize,
            max_windowsize: t.max_windowsize,
            ..tftp::Config::default()
        })
        .await?;
        tracing::info!(listen = %server.local_addr(), root = %t.root.display(), "TFTP server listening");
        tasks.push(tokio::spawn(async move { Ok(server.run().await?) }));
    }
    let m = machines.clone();
    let every = Duration::from_secs(cfg.sweep_interval_secs);
    let auto_deploy = cfg.auto_deploy.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match m.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(machines = n, "in-progress states timed out"),
                Err(e) => tracing::warn!(error = %e, "deadline sweep failed"),
            }
            if let Some(a) = &auto_deploy {
                deploy_ready(&m, a).await;
            }
        }
    }));
    let others = futures_first(tasks);
    tokio::select! {
        r = http => { r??; Ok(()) }
        r = others => r,
    }
}

/// `auto_deploy`: machines that are ready and were never deployed.
async fn deploy_ready(machines: &Machines, a: &crate::config::AutoDeploy) {
    let list = match machines.list().await {
        Ok(l) => l,
        Err(e) => return tracing::warn!(error = %e, "auto-deploy: cannot list machines"),
    };
    for m in list
        .into_iter()
        .filter(|m| m.state == api::provision::MachineState::Ready && m.image.is_none())
    {
        let action = api::provision::MachineAction::Deploy {
            image: a.image.clone(),
            role: Some(a.role),
        };
        match machines.act(m.id, action).await {
            Ok(_) => tracing::info!(machine = %m.name, image = %a.image, "auto-deploy"),
            Err(e) => tracing::warn!(machine = %m.name, error = %e, "auto-deploy failed"),
        }
    }
}

/// The first of `tasks` to end (they all run forever unless they fail).
async fn futures_first(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    let (r, _, _) = futures::future::select_all(tasks).await;
    r?
}
