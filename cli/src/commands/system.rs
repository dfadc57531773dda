//! `strato system`: the stack manager's own workings (admin).

use anyhow::Result;
use api::resources::{TaskState, TaskStatus};
use chrono::{DateTime, Utc};
use clap::Subcommand;

use super::Ctx;
use crate::output::fmt;

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Background tasks (reconcilers, scheduler refresh, audit writer, …):
    /// their runs, failures and last error.
    Tasks,
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

pub async fn run(ctx: &Ctx, cmd: SystemCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        SystemCmd::Tasks => {
            let tasks = c.system_tasks().await?;
            let now = Utc::now();
            ctx.out.list_with(&tasks, HEADERS, |t| row(t, now))
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
