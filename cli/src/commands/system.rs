//! `strato system`: the stack manager's own workings (admin).

use anyhow::Result;
use api::resources::{Replica, TaskState, TaskStatus};
use chrono::{DateTime, Utc};
use clap::Subcommand;

use super::Ctx;
use crate::output::fmt;

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Background tasks (reconcilers, scheduler refresh, audit writer, …):
    /// their runs, failures and last error.
    Tasks,
    /// The stack-manager replicas serving the database (the last day's),
    /// whether each is alive, and the leases (health monitor, mover, …)
    /// each holds.
    Replicas,
    /// Recompute every derived figure (quota usage, host allocations) from
    /// the rows themselves and check that addresses and attachments belong
    /// to live instances; read-only. Exits non-zero on drift.
    Check,
    /// Whether automatic evacuation runs, or the mass-failure guard paused it.
    Evacuation {
        #[command(subcommand)]
        action: Option<EvacuationCmd>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvacuationCmd {
    /// Show the guard's state (the default).
    Show,
    /// Lift the guard: automatic evacuation runs again.
    Resume,
}

const HEADERS: &[&str] = &[
    "NAME",
    "STATE",
    "PERIOD",
    "RUNS",
    "ERRORS",
    "LAST RUN",
    "TOOK",
    "LAST ERROR",
];

fn row(t: &TaskStatus, now: DateTime<Utc>) -> Vec<String> {
    vec![
        t.name.clone(),
        match t.state {
            TaskState::Idle => "idle".into(),
            TaskState::Running => "running".into(),
        },
        t.period_secs
            .map_or_else(|| "-".into(), |p| format!("{p}s")),
        t.runs.to_string(),
        t.errors.to_string(),
        t.last_finished_at
            .map_or_else(|| "never".into(), |at| fmt::ago(&at, now)),
        t.last_duration_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
        match (&t.last_error, t.last_error_at) {
            (Some(e), Some(at)) => format!("{} ({})", e, fmt::ago(&at, now)),
            (Some(e), None) => e.clone(),
            _ => "-".into(),
        },
    ]
}

const CHECK_HEADERS: &[&str] = &["CHECK", "ROWS", "DRIFT", "WHAT"];

const REPLICA_HEADERS: &[&str] = &["NAME", "STATE", "STARTED", "HEARD", "LEASES", "URL"];

fn replica_row(r: &Replica, now: DateTime<Utc>) -> Vec<String> {
    let state = match (r.alive, r.stopped_at) {
        (true, _) => "alive",
        (false, Some(_)) => "stopped",
        (false, None) => "silent",
    };
    let leases: Vec<String> = r
        .leases
        .iter()
        .map(|l| {
            format!(
                "{} (token {}, {})",
                l.name,
                l.token,
                fmt::ago(&l.since, now)
            )
        })
        .collect();
    vec![
        if r.this {
            format!("{} (this one)", r.name)
        } else {
            r.name.clone()
        },
        state.into(),
        fmt::ago(&r.started_at, now),
        fmt::ago(&r.last_heartbeat_at, now),
        if leases.is_empty() {
            "-".into()
        } else {
            leases.join(", ")
        },
        r.public_url.clone(),
    ]
}

pub async fn run(ctx: &Ctx, cmd: SystemCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        SystemCmd::Tasks => {
            let tasks = c.system_tasks().await?;
            let now = Utc::now();
            ctx.out.list_with(&tasks, HEADERS, |t| row(t, now))
        }
        SystemCmd::Check => {
            let report = c.system_check().await?;
            ctx.out.list_with(&report.checks, CHECK_HEADERS, |k| {
                vec![
                    k.name.clone(),
                    k.rows.to_string(),
                    k.drift.to_string(),
                    k.description.clone(),
                ]
            })?;
            for d in &report.drift {
                eprintln!("drift: {}", d.message);
            }
            if !report.consistent {
                anyhow::bail!(
                    "the database is inconsistent: {} drift(s) found",
                    report.drift.len()
                );
            }
            Ok(())
        }
        SystemCmd::Replicas => {
            let replicas = c.system_replicas().await?;
            let now = Utc::now();
            ctx.out
                .list_with(&replicas, REPLICA_HEADERS, |r| replica_row(r, now))
        }
        SystemCmd::Evacuation { action } => {
            let state = match action.unwrap_or(EvacuationCmd::Show) {
                EvacuationCmd::Show => c.evacuation_state().await?,
                EvacuationCmd::Resume => c.evacuation_resume().await?,
            };
            ctx.out.show_with(
                &state,
                vec![
                    (
                        "automatic evacuation",
                        if state.paused { "paused" } else { "running" }.into(),
                    ),
                    (
                        "since",
                        state.since.map_or_else(|| "-".into(), |t| fmt::time(&t)),
                    ),
                    ("reason", state.reason.clone().unwrap_or_else(|| "-".into())),
                ],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_row_names_its_leases_and_whether_it_answered() {
        let now = Utc::now();
        let r = Replica {
            id: "r1".into(),
            name: "sm-a".into(),
            public_url: "http://127.0.0.1:7100".into(),
            internal_url: "http://127.0.0.1:7101".into(),
            started_at: now - chrono::Duration::seconds(120),
            last_heartbeat_at: now,
            stopped_at: None,
            alive: true,
            this: true,
            leases: vec![api::resources::ReplicaLease {
                name: "health-monitor".into(),
                token: 2,
                since: now - chrono::Duration::seconds(60),
                expires_at: now,
            }],
        };
        assert_eq!(
            replica_row(&r, now),
            [
                "sm-a (this one)",
                "alive",
                "2m ago",
                "0s ago",
                "health-monitor (token 2, 60s ago)",
                "http://127.0.0.1:7100"
            ]
        );
        let gone = Replica {
            alive: false,
            this: false,
            stopped_at: Some(now),
            leases: vec![],
            ..r
        };
        let row = replica_row(&gone, now);
        assert_eq!(
            (row[0].as_str(), row[1].as_str(), row[4].as_str()),
            ("sm-a", "stopped", "-")
        );
    }

    #[test]
    fn a_task_row_shows_its_last_run_and_error() {
        let now = Utc::now();
        let t = TaskStatus {
            name: "reconciler/h".into(),
            description: "d".into(),
            period_secs: Some(30.0),
            state: TaskState::Idle,
            runs: 7,
            errors: 1,
            last_activation: None,
            last_started_at: Some(now - chrono::Duration::seconds(5)),
            last_finished_at: Some(now - chrono::Duration::seconds(5)),
            last_duration_ms: Some(1.24),
            last_error: Some("agent unreachable".into()),
            last_error_at: Some(now - chrono::Duration::seconds(65)),
            details: serde_json::Value::Null,
        };
        assert_eq!(
            row(&t, now),
            [
                "reconciler/h",
                "idle",
                "30s",
                "7",
                "1",
                "5s ago",
                "1.2ms",
                "agent unreachable (65s ago)"
            ]
        );
        let fresh = TaskStatus {
            period_secs: None,
            last_finished_at: None,
            last_duration_ms: None,
            last_error: None,
            last_error_at: None,
            ..t
        };
        let r = row(&fresh, now);
        assert_eq!(r[2], "-");
        assert_eq!(r[5], "never");
        assert_eq!(r[7], "-");
    }
}
