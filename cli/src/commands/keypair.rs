//! `strato keypair`: SSH public keys injected into VMs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use api::resources::{Keypair, KeypairCreate};
use api::Client;
use clap::{Args, Subcommand};

use super::{resolve, Ctx};
use crate::output::{fmt, Detail, Row};

#[derive(Debug, Subcommand)]
pub enum KeypairCmd {
    /// List keypairs.
    List,
    /// Show one keypair, including its public key.
    Show {
        /// Keypair id or name.
        keypair: String,
    },
    /// Register a public key.
    Create {
        /// Keypair name.
        name: String,
        #[command(flatten)]
        key: KeySource,
    },
    /// Delete a keypair (VMs that have it keep it).
    Delete {
        /// Keypair id or name.
        keypair: String,
    },
}

/// Exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeySource {
    /// File holding one OpenSSH public key line, e.g. ~/.ssh/id_ed25519.pub.
    #[arg(long, value_name = "PATH")]
    pub public_key_file: Option<PathBuf>,
    /// The OpenSSH public key line itself.
    #[arg(long, value_name = "KEY")]
    pub public_key: Option<String>,
}

impl KeySource {
    fn read(self) -> Result<String> {
        let key = match (self.public_key, self.public_key_file) {
            (Some(k), _) => k,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read public key file {}", path.display()))?,
            (None, None) => bail!("give --public-key-file PATH or --public-key KEY"),
        };
        let key = key.trim().to_string();
        if key.is_empty() {
            bail!("the public key is empty");
        }
        if key.contains("PRIVATE KEY") {
            bail!("that is a private key; give the public half (the .pub file)");
        }
        Ok(key)
    }
}

impl Row for Keypair {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "FINGERPRINT"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.fingerprint.clone(),
        ]
    }
}

impl Detail for Keypair {
    fn detail(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.to_string()),
            ("name", self.name.clone()),
            ("fingerprint", self.fingerprint.clone()),
            ("public key", self.public_key.clone()),
            ("created", fmt::time(&self.created_at)),
        ]
    }
}

/// Every keypair the client may list, following the pages.
async fn all(c: &Client) -> api::client::Result<Vec<Keypair>> {
    c.transport.get_all(&c.scoped("/v1/keypairs")).await
}

pub async fn run(ctx: &Ctx, cmd: KeypairCmd) -> Result<()> {
    let c = ctx.client()?;
    match cmd {
        KeypairCmd::List => ctx.out.list(&all(&c).await?),
        KeypairCmd::Show { keypair } => {
            let id = resolve(&keypair, all(&c)).await?;
            ctx.out.show(&c.keypair_get(id).await?)
        }
        KeypairCmd::Create { name, key } => {
            let body = KeypairCreate {
                name,
                public_key: key.read()?,
            };
            ctx.out.show(&c.keypair_create(&body).await?)
        }
        KeypairCmd::Delete { keypair } => {
            let id = resolve(&keypair, all(&c)).await?;
            c.keypair_delete(id).await?;
            ctx.out.note(format!("deleted keypair {keypair}"))
        }
    }
}
