//! Shared application state handed to every handler.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use crate::scheduler::Scheduler;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Every statement goes through here (the rest still to move from `db`).
    pub store: Store,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    pub scheduler: Arc<Scheduler>,
    pub reconciler: Reconciler,
    pub callers: Arc<crate::auth::CallerCache>,
    /// One connection pool for every push to every agent: a client per
    /// reconciler pass meant a new TCP connection per pass.
    pub agent_http: reqwest::Client,
}

impl AppState {
    /// Connects to the database, loads the scheduler's host view and starts
    /// the background tasks (audit writer, host reconcilers, health monitor, planner statistics).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url(), config.database_max_connections).await?;
        let metrics = Metrics::new();
        let scheduler = Arc::new(
            Scheduler::load(
                &db,
                config.scheduler.clone(),
                config.hosts.clone(),
                metrics.placement_seconds.clone(),
            )
            .await?,
        );
        let audit = AuditLog::start(db.clone());
        crate::statistics::start(
            db.clone(),
            std::time::Duration::from_secs(config.database_analyze_interval_secs),
        );
        let config = Arc::new(config);
        let reconciler = Reconciler::new(db.clone(), config.clone());
        let state = Self {
            store: Store::new(db.clone()),
            db,
            config,
            metrics,
            audit,
            scheduler,
            reconciler,
            callers: Arc::default(),
            agent_http: api::client::Transport::http_client(),
        };
        state.reconciler.start(state.clone()).await?;
        Ok(state)
    }
}
