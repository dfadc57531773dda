//! The agent's life: enroll once, serve the volumes persisted before a
//! restart, start the iSCSI target and the agent API, adopt what the stack
//! manager wants, and heartbeat.

use std::sync::Arc;
use std::time::Duration;

use agent_support::enroll::{enroll_or_load, retry};
use agent_support::fs::{fs_space, set_mode};
use agent_support::images::ImageCache;
use api::ids::HostId;
use api::internal::{EnrollRequest, Heartbeat};
use api::resources::{Capacity, HostKind};
use api::InternalClient;

use crate::config::Config;
use crate::exports::Exports;
use crate::replication::ReplicaRegistry;
use crate::server::{router, ServerState};
use crate::volumes::Volumes;

fn capacity(cfg: &Config) -> Capacity {
    let space = fs_space(&cfg.pool_dir()).unwrap_or_default();
    Capacity {
        storage_bytes_total: space.total.saturating_sub(cfg.reserved_bytes),
        storage_bytes_free: space.available.saturating_sub(cfg.reserved_bytes),
        ..Capacity::default()
    }
}

pub fn iscsi_config(cfg: &Config) -> iscsi::Config {
    iscsi::Config {
        listen: cfg.iscsi_listen,
        portal: Some(cfg.iscsi_portal()),
        max_recv_data_segment_length: cfg.iscsi_max_recv_data_segment_length,
        max_burst_length: cfg.iscsi_max_burst_length,
        first_burst_length: cfg
            .iscsi_max_burst_length
            .min(iscsi::Config::default().first_burst_length),
        queue_depth: cfg.iscsi_queue_depth,
        nop_in_interval: Duration::from_secs(cfg.iscsi_nop_in_interval_secs),
        nop_in_timeout: Duration::from_secs(cfg.iscsi_nop_in_interval_secs),
        ..iscsi::Config::default()
    }
}

/// Runs the agent until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)?;
    set_mode(&cfg.state_dir, 0o700)?;
    // Capacity is measured on the pool's file system, before enrolling.
    std::fs::create_dir_all(cfg.pool_dir())?;
    let identity = enroll_or_load(
        &cfg.state_dir,
        &cfg.stack_manager_url,
        cfg.enrollment_token()?,
        |token| async {
            Ok(EnrollRequest {
                token,
                name: cfg.host_name(),
                kind: HostKind::Storage,
                agent_url: cfg.agent_url(),
                capacity: capacity(&cfg),
                initiator_iqn: None,
                iscsi_portal: Some(cfg.iscsi_portal().to_string()),
                machine_id: None,
                replication_address: Some(cfg.replication_address().to_string()),
            })
        },
    )
    .await?;

    let exports = Arc::new(Exports::default());
    let target = Arc::new(iscsi::Server::bind(iscsi_config(&cfg), exports.clone())?);
    tracing::info!(listen = %target.local_addr(), portal = %cfg.iscsi_portal(), "iSCSI target listening");
    let images = ImageCache::new(
        cfg.state_dir.join("images"),
        cfg.max_image_bytes,
        &cfg.image_roots,
    )?;
    let replicas = Arc::new(ReplicaRegistry::default());
    let replication = std::net::TcpListener::bind(cfg.replication_listen)?;
    tracing::info!(listen = %replication.local_addr()?, "replication listening");
    {
        let replicas = replicas.clone();
        std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || replicas.serve(replication))?;
    }
    let volumes = Volumes::new(
        cfg.pool_dir(),
        images,
        exports,
        target,
        replicas,
        cfg.resync_bytes_per_sec,
    )?;
    let persisted = volumes.resume().await;
    tracing::info!(volumes = persisted.len(), "serving persisted volumes");

    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, url = cfg.agent_url(), "agent API listening");
    let app = router(
        ServerState {
            volumes: volumes.clone(),
        },
        Arc::new(identity.credential.clone()),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = InternalClient::new(&cfg.stack_manager_url, Some(identity.credential.clone()));
    let desired = retry("fetch desired state", || client.desired(identity.host_id)).await?;
    tracing::info!(volumes = desired.volumes.len(), "adopting desired state");
    volumes.adopt(desired.volumes, &persisted).await;

    let heartbeat = heartbeat_loop(cfg.clone(), volumes, client, identity.host_id);
    tokio::select! {
        r = server => { r??; Ok(()) }
        r = heartbeat => r,
    }
}

async fn heartbeat_loop(
    cfg: Config,
    volumes: Arc<Volumes>,
    client: InternalClient,
    host: HostId,
) -> anyhow::Result<()> {
    let mut every = Duration::from_secs(cfg.heartbeat_interval_secs);
    loop {
        let hb = Heartbeat {
            capacity: capacity(&cfg),
            instances: Vec::new(),
            volumes: volumes.observe_all(),
        };
        match client.heartbeat(host, &hb).await {
            Ok(ack) => every = Duration::from_secs(ack.heartbeat_interval_secs.max(1)),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(every).await;
    }
}
