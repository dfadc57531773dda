//! `strato project` and `strato user`: tenants, people and their tokens.

use std::time::Duration;

use anyhow::Result;
use api::resources::{Project, ProjectCreate, ProjectRole, TokenCreate, User, UserCreate};
use clap::{Subcommand, ValueEnum};

use super::auth::projects;
use super::Ctx;
use crate::output::{fmt, Detail, Row};
use crate::parse;

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// List projects.
    List,
    /// Show one project.
    Show {
        /// Project id or name.
        project: String,
    },
    /// Create a project (a tenant with its own quota, networks and VMs).
    Create {
        /// 1–63 characters of [a-z0-9-], starting with a letter.
        name: String,
        /// Free-form description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a project (it must own no resources).
    Delete {
        /// Project id or name.
        project: String,
    },
    /// Give a user a role in a project (or change it).
    AddMember {
        /// Project id or name.
        project: String,
        /// User id or name.
        user: String,
        /// member: create, change and delete; reader: read only.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// Take a user out of a project.
    RemoveMember {
        /// Project id or name.
        project: String,
        /// User id or name.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// List users and their project roles.
    List,
    /// Create a user; then give it a token with `strato user token`.
    Create {
        /// Login name, same rules as project names.
        name: String,
        /// Make the user an operator (admin of everything).
        #[arg(long)]
        admin: bool,
    },
    /// Delete a user and its tokens.
    Delete {
        /// User id or name.
        user: String,
    },
    /// Create an API token for a user and print its secret (shown only once).
    Token {
        /// User id or name.
        user: String,
        /// What the token is for, shown in listings.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 30d; without it the token does not expire.
        #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
        expires_in: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Member,
    Reader,
}

impl From<Role> for ProjectRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Member => ProjectRole::Member,
            Role::Reader => ProjectRole::Reader,
        }
    }
}

impl Row for Project {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "DESCRIPTION", "CREATED"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            fmt::or_dash(&self.description),
            fmt::time(&self.created_at),
        ]
    }
}

impl Detail for Project {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("description", fmt::or_dash(&self.description)),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

impl Row for User {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "ADMIN", "PROJECTS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            fmt::yes_no(self.admin),
            projects(self),
        ]
    }
}

impl Detail for User {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("admin", fmt::yes_no(self.admin)),
            ("projects", projects(self)),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

pub async fn run_project(ctx: &Ctx, cmd: ProjectCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        ProjectCmd::List => ctx
            .out
            .list(&c.transport.get_all::<Project>("/v1/projects").await?),
        ProjectCmd::Show { project } => ctx.out.show(&c.project_get(&project).await?),
        ProjectCmd::Create { name, description } => ctx.out.show(
            &c.project_create(&ProjectCreate { name, description })
                .await?,
        ),
        ProjectCmd::Delete { project } => {
            c.project_delete(&project).await?;
            ctx.out.note(format!("deleted project {project}"))
        }
        ProjectCmd::AddMember {
            project,
            user,
            role,
        } => {
            let u = c.member_set(&project, &user, role.into()).await?;
            if ctx.out.json {
                return ctx.out.json(&u);
            }
            let role = ProjectRole::from(role);
            ctx.out
                .note(format!("{} is now {} of {project}", u.name, role.as_str()))
        }
        ProjectCmd::RemoveMember { project, user } => {
            c.member_remove(&project, &user).await?;
            ctx.out.note(format!("removed {user} from {project}"))
        }
    }
}

pub async fn run_user(ctx: &Ctx, cmd: UserCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        UserCmd::List => ctx
            .out
            .list(&c.transport.get_all::<User>("/v1/users").await?),
        UserCmd::Create { name, admin } => ctx
            .out
            .show(&c.user_create(&UserCreate { name, admin }).await?),
        UserCmd::Delete { user } => {
            c.user_delete(&user).await?;
            ctx.out.note(format!("deleted user {user}"))
        }
        UserCmd::Token {
            user,
            description,
            expires_in,
        } => {
            let body = TokenCreate {
                description,
                expires_in_secs: expires_in.map(|d| d.as_secs()),
            };
            let t = c.token_create(Some(&user), &body).await?;
            if ctx.out.json {
                return ctx.out.json(&t);
            }
            let expiry = t.token.expires_at.map_or_else(
                || "does not expire".to_string(),
                |e| format!("expires {}", fmt::time(&e)),
            );
            ctx.out.note(format!(
                "token {} for {user} ({expiry}); the secret is shown only once:\n\n{}\n\n\
                 log in with: strato login --url {} --token {}",
                t.token.id,
                t.secret,
                c.transport.base_url(),
                t.secret
            ))
        }
    }
}
