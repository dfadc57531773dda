//! `strato usage`: metered instance-hours and volume GiB-hours.

use std::time::Duration;

use anyhow::{anyhow, Result};
use api::resources::{UsageQuery, UsageReport};
use chrono::{DateTime, Utc};
use clap::Args;

use super::Ctx;
use crate::output::{fmt, render_table};
use crate::parse;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the period, RFC 3339 (e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse::timestamp, conflicts_with = "since")]
    pub start: Option<DateTime<Utc>>,
    /// The period ending now, e.g. 1h, 24h, 30d [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub since: Option<Duration>,
    /// End of the period, RFC 3339 [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse::timestamp)]
    pub end: Option<DateTime<Utc>>,
}

const DEFAULT_SINCE: Duration = Duration::from_secs(24 * 3600);

impl UsageArgs {
    /// The API query, with `--since` turned into a start time relative to `now`.
    pub fn query(&self, project: Option<String>, now: DateTime<Utc>) -> Result<UsageQuery> {
        let start = match self.start {
            Some(s) => s,
            None => {
                let since = self.since.unwrap_or(DEFAULT_SINCE);
                chrono::Duration::from_std(since)
                    .ok()
                    .and_then(|d| now.checked_sub_signed(d))
                    .ok_or_else(|| anyhow!("--since is too far back"))?
            }
        };
        Ok(UsageQuery {
            start,
            end: self.end,
            project,
        })
    }
}

fn rows(r: &UsageReport) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for p in &r.projects {
        for f in &p.instances {
            rows.push(vec![
                p.project_name.clone(),
                format!("instance-hours ({})", f.flavor_name),
                format!("{:.2}", f.instance_hours),
            ]);
        }
        rows.push(vec![
            p.project_name.clone(),
            "volume GiB-hours".into(),
            format!("{:.2}", p.volume_gib_hours),
        ]);
    }
    rows
}

pub async fn run(ctx: &Ctx, args: UsageArgs) -> Result<()> {
    let c = ctx.client()?;
    let q = args.query(ctx.global.project.clone(), Utc::now())?;
    let report = c.usage(&q).await?;
    if ctx.out.json {
        return ctx.out.json(&report);
    }
    ctx.out.note(format!(
        "usage from {} to {}:\n\n{}",
        fmt::time(&report.start),
        fmt::time(&report.end),
        render_table(&["PROJECT", "METER", "AMOUNT"], rows(&report))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_becomes_a_start_time() {
        let now = parse::timestamp("2026-03-02T12:00:00Z").unwrap();
        let a = UsageArgs {
            start: None,
            since: Some(parse::duration("36h").unwrap()),
            end: None,
        };
        let q = a.query(Some("demo".into()), now).unwrap();
        assert_eq!(q.start, parse::timestamp("2026-03-01T00:00:00Z").unwrap());
        assert_eq!(q.project.as_deref(), Some("demo"));

        let d = UsageArgs {
            start: None,
            since: None,
            end: None,
        };
        assert_eq!(
            d.query(None, now).unwrap().start,
            parse::timestamp("2026-03-01T12:00:00Z").unwrap()
        );

        let huge = UsageArgs {
            start: None,
            since: Some(Duration::from_secs(u64::MAX)),
            end: None,
        };
        assert!(huge.query(None, now).is_err());
    }
}
