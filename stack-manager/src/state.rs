//! Shared application state handed to every handler.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::db::Db;
use crate::lease::{Keeper, Leased, Leases};
use crate::metrics::Metrics;
use crate::reconciler::Reconciler;
use crate::scheduler::{RefreshTask, Scheduler};
use crate::statistics::PlannerStatistics;
use crate::store::Store;
use crate::tasks::{Activator, TaskSpec, Tasks};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Every statement goes through here (the rest still to move from `db`).
    pub store: Store,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    pub scheduler: Arc<Scheduler>,
    /// Wakes host reconcilers (activators only; see `crate::reconciler`).
    pub reconciler: Reconciler,
    /// Queues planned moves and wakes the mover (see `crate::moves`).
    pub moves: crate::moves::Moves,
    /// Every background task's status, and the switch that stops them.
    pub tasks: Tasks,
    /// This replica's identity and the leases its singleton tasks run
    /// under (see `crate::lease`).
    pub leases: Leases,
    pub callers: Arc<crate::auth::CallerCache>,
    /// One connection pool for every push to every agent: a client per
    /// reconciler pass meant a new TCP connection per pass.
    pub agent_http: reqwest::Client,
}

impl AppState {
    /// Connects to the database, loads the scheduler's host view and starts
    /// the background tasks (`crate::tasks`): audit writer, host
    /// reconcilers, scheduler refresh, planner statistics.
    ///
    /// In two phases, so that nothing holds what owns it: first the state
    /// with only the tasks' activators (what handlers wake them with), then
    /// the task bodies, each given what it needs.
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
        let (audit, audit_writer) = AuditLog::new(db.clone());
        let config = Arc::new(config);
        let leases = Leases::new(db.clone(), &config.replicas, metrics.leases.clone());
        let state = Self {
            leases: leases.clone(),
            store: Store::new(db.clone()),
            db,
            tasks: Tasks::new(metrics.tasks.clone()),
            config,
            metrics,
            audit,
            scheduler,
            reconciler: Reconciler::new(leases.clone()),
            moves: crate::moves::Moves::default(),
            callers: Arc::default(),
            agent_http: api::client::Transport::http_client(),
        };
        state.start_tasks(audit_writer).await?;
        Ok(state)
    }

    /// Stops every task and releases this replica's leases, so that
    /// another replica takes them over at once rather than after their TTL.
    pub async fn stop(&self) {
        self.tasks.shutdown();
        self.leases.release().await;
    }

    /// Every replica runs its own audit writer (it writes what this
    /// replica's requests queued) and scheduler view; the host reconcilers
    /// are shared among the live replicas (each host's on one, fenced by
    /// its membership); the cloud-wide tasks run under leases.
    async fn start_tasks(&self, audit_writer: crate::audit::AuditWriter) -> anyhow::Result<()> {
        self.tasks.start(
            TaskSpec {
                name: "audit-writer".into(),
                description: "writes the audit entries requests queue, in batches".into(),
                period: None,
            },
            audit_writer.activator(),
            audit_writer,
        );
        let interval = Duration::from_secs(self.config.database_analyze_interval_secs);
        let period = PlannerStatistics::period(&self.db, interval);
        let statistics = Activator::new();
        if period.is_some() {
            // The first round right away, as a new cloud fills its tables.
            statistics.activate();
        }
        self.tasks.start(
            TaskSpec {
                name: "planner-statistics".into(),
                description: if period.is_some() {
                    "analyzes PostgreSQL tables that were never analyzed or have doubled since"
                        .into()
                } else {
                    "analyzes grown PostgreSQL tables (idle: SQLite, or a zero interval)".into()
                },
                period,
            },
            statistics,
            Leased::new(
                self.leases.clone(),
                crate::lease::PLANNER_STATISTICS,
                PlannerStatistics::new(self.db.clone()),
            ),
        );
        self.tasks.start(
            TaskSpec {
                name: "scheduler-refresh".into(),
                description: "reloads the scheduler's view of every host from the database".into(),
                period: Some(RefreshTask::period(&self.config.hosts)),
            },
            Activator::new(),
            RefreshTask {
                scheduler: self.scheduler.clone(),
                db: self.db.clone(),
            },
        );
        // Joins the members first (see `crate::reconciler`).
        crate::reconciler::start(self).await?;
        let renew = Duration::from_millis(self.config.replicas.renew_interval_ms);
        self.tasks.start(
            TaskSpec {
                name: "leases".into(),
                description: format!(
                    "renews this replica's leases and its membership every {} ms",
                    renew.as_millis()
                ),
                period: Some(renew),
            },
            Activator::new(),
            Keeper {
                leases: self.leases.clone(),
                members_changed: self.reconciler.sweep_activator(),
            },
        );
        let health = crate::health::period(&self.config.health);
        self.tasks.start(
            TaskSpec {
                name: "health-monitor".into(),
                description: if health.is_some() {
                    "detects failed hypervisors, fences them, re-creates their instances elsewhere, restarts crashed instances".into()
                } else {
                    "self-healing (idle: health.monitor_interval_ms = 0)".into()
                },
                period: health,
            },
            Activator::new(),
            Leased::new(
                self.leases.clone(),
                crate::lease::HEALTH_MONITOR,
                crate::health::HealthMonitor::new(self.clone()),
            ),
        );
        let moves = crate::moves::period(&self.config.moves);
        self.tasks.start(
            TaskSpec {
                name: "mover".into(),
                description: if moves.is_some() {
                    "moves instances off draining hosts and runs rebalancing plans, a bounded number at a time".into()
                } else {
                    "planned moves (idle: moves.interval_ms = 0)".into()
                },
                period: moves,
            },
            self.moves.activator(),
            Leased::new(
                self.leases.clone(),
                crate::lease::MOVER,
                crate::moves::Mover::new(self.clone()),
            ),
        );
        Ok(())
    }
}
