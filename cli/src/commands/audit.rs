//! `strato audit`: the audit log of mutating API calls.

use anyhow::Result;
use api::resources::AuditRecord;
use clap::Args;

use super::Ctx;
use crate::output::{fmt, Row};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many records, newest first (1–1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

impl Row for AuditRecord {
    const HEADERS: &'static [&'static str] =
        &["TIME", "USER", "METHOD", "PATH", "STATUS", "RESULT"];
    fn row(&self) -> Vec<String> {
        vec![
            fmt::time(&self.at),
            self.user_name.clone().unwrap_or_else(|| "-".into()),
            self.method.clone(),
            self.path.clone(),
            self.status.to_string(),
            self.result.clone(),
        ]
    }
}

pub async fn run(ctx: &Ctx, args: AuditArgs) -> Result<()> {
    let c = ctx.client()?;
    ctx.out.list(&c.audit_list(args.limit).await?)
}
