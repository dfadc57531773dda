//! Shared application state handed to every handler.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use crate::scheduler::Scheduler;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    pub scheduler: Arc<Scheduler>,
    pub reconciler: Reconciler,
    pub callers: Arc<crate::auth::CallerCache>,
}

impl AppState {
    /// Connects to the database, loads the scheduler's host view and starts
    /// the background tasks (audit writer, host reconcilers, health monitor).
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
        let config = Arc::new(config);
        let reconciler = Reconciler::new(db.clone(), config.clone());
        let state = Self {
            db,
            config,
            metrics,
            audit,
            scheduler,
            reconciler,
            callers: Arc::default(),
        };
        state.reconciler.start(state.clone()).await?;
        Ok(state)
    }
}
