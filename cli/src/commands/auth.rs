//! `strato login` and `strato whoami`.

use anyhow::{bail, Result};
use api::resources::User;
use api::Client;

use super::Ctx;
use crate::config::Config;
use crate::error::usage;
use crate::output::{fmt, render_table};

pub async fn login(ctx: &Ctx) -> Result<()> {
    let (Some(url), Some(token)) = (&ctx.global.url, &ctx.global.token) else {
        return Err(usage(
            "`strato login` needs --url URL and --token TOKEN (or STRATO_URL and STRATO_TOKEN)",
        ));
    };
    let project = ctx.global.project.clone();
    let client = Client::new(url, token).with_project(project.clone());
    let me = client.whoami().await?.user;
    if let Some(p) = &project {
        if !me.admin
            && !me
                .memberships
                .iter()
                .any(|m| &m.project_name == p || &m.project_id.to_string() == p)
        {
            bail!(
                "{} is not a member of project `{p}`; pick one of: {}",
                me.name,
                projects(&me)
            );
        }
    }
    let path = ctx.config_path()?;
    Config {
        url: Some(url.clone()),
        token: Some(token.clone()),
        project,
    }
    .save(&path)?;
    if ctx.out.json {
        return ctx.out.json(&me);
    }
    ctx.out.note(format!(
        "logged in as {}{}",
        me.name,
        if me.admin { " (admin)" } else { "" }
    ))?;
    ctx.out.note(format!("saved to {}", path.display()))
}

pub async fn whoami(ctx: &Ctx) -> Result<()> {
    let client = ctx.client()?;
    let who = client.whoami().await?;
    if ctx.out.json {
        return ctx.out.json(&who);
    }
    let me = &who.user;
    ctx.out.show_with(
        me,
        vec![
            ("user", fmt::named(Some(&me.name), me.id)),
            ("admin", fmt::yes_no(me.admin)),
            ("url", client.transport.base_url().to_string()),
            ("project", fmt::opt(&client.project)),
        ],
    )?;
    if !me.memberships.is_empty() {
        let rows = me.memberships.iter().map(|m| {
            vec![
                m.project_name.clone(),
                m.role.as_str().to_string(),
                m.project_id.to_string(),
            ]
        });
        ctx.out.note(format!(
            "\n{}",
            render_table(&["PROJECT", "ROLE", "ID"], rows)
        ))?;
    }
    Ok(())
}

/// `name (role), ...` of a user's projects, or `-`.
pub fn projects(u: &User) -> String {
    let v: Vec<String> = u
        .memberships
        .iter()
        .map(|m| format!("{} ({})", m.project_name, m.role.as_str()))
        .collect();
    fmt::join(&v, ", ")
}
