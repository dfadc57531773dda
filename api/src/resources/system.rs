//! The stack manager's own background work, for operators
//! (`GET /v1/system/tasks`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether a task is in a run right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Idle,
    Running,
}

/// What started a task's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskActivation {
    /// Its period elapsed.
    Timer,
    /// Something asked for it (a change it has to act on).
    Notify,
}

/// One background task and how its runs went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    /// Unique. Per-host reconcilers are `reconciler/<host id>`.
    pub name: String,
    pub description: String,
    /// Runs at least this often (counted from the end of the last run);
    /// absent when it runs only when activated.
    pub period_secs: Option<f64>,
    pub state: TaskState,
    /// Finished runs, failed ones included.
    pub runs: u64,
    /// Finished runs that failed.
    pub errors: u64,
    pub last_activation: Option<TaskActivation>,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<f64>,
    /// The most recent failure, kept after later runs succeed (compare
    /// `last_error_at` with `last_finished_at`).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The task's own counters and findings from its last successful run.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A lease a replica holds: one of the cloud-wide background tasks runs on
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaLease {
    /// The task's lease: `health-monitor`, `mover`, `planner-statistics`.
    pub name: String,
    /// The fencing token: grows by one at every change of holder.
    pub token: i64,
    /// Since when this replica holds it.
    pub since: DateTime<Utc>,
    /// When it lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// `GET /v1/system/replicas`: a stack-manager process serving this
/// cloud's database, as it last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// New at every start of the process.
    pub id: String,
    /// `<hostname>:<pid>` unless configured (`replicas.name`).
    pub name: String,
    pub public_url: String,
    pub internal_url: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// Set when it stopped cleanly.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heartbeating (within three lease TTLs) and not stopped.
    pub alive: bool,
    /// The replica that answered this request.
    pub this: bool,
    /// The leases it holds now.
    pub leases: Vec<ReplicaLease>,
}

/// One derived figure that does not match what the rows it is derived
/// from add up to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Drift {
    /// The check that found it: `quota_usage`, `host_allocations`,
    /// `addresses`, `attachments`.
    pub check: String,
    /// What it is about: a project, a host, an address, a volume.
    pub subject: String,
    /// The figure (`used_vcpus`, `alloc_instances`, …) or the relation.
    pub field: String,
    /// What the database records, where it is a number.
    pub recorded: Option<i64>,
    /// What the rows add up to, where it is a number.
    pub actual: Option<i64>,
    pub message: String,
}

/// One check the consistency checker ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyCheck {
    pub name: String,
    pub description: String,
    /// Rows it looked at.
    pub rows: u64,
    /// Drift it found.
    pub drift: u64,
}

/// `GET /v1/system/check` (and `stack-manager check`): every derived
/// figure recomputed from the rows themselves, read-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyReport {
    pub checked_at: DateTime<Utc>,
    /// No drift anywhere.
    pub consistent: bool,
    pub checks: Vec<ConsistencyCheck>,
    pub drift: Vec<Drift>,
}
