//! One module per resource group. Each defines its clap subcommands next to
//! the code that runs them, and shares the helpers below.

pub mod audit;
pub mod auth;
pub mod flavor;
pub mod group;
pub mod host;
pub mod identity;
pub mod image;
pub mod keypair;
pub mod machine;
pub mod network;
pub mod quota;
pub mod system;
pub mod usage;
pub mod vm;
pub mod volume;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{anyhow, Result};
use api::ids::*;
use api::resources::*;
use api::Client;

use crate::config::{self, Config};
use crate::error::NotLoggedIn;
use crate::output::Output;
use crate::Globals;

/// What every command gets: the global flags and where to print.
pub struct Ctx {
    pub global: Globals,
    pub out: Output,
}

impl Ctx {
    pub fn new(global: Globals) -> Self {
        let out = Output { json: global.json };
        Self { global, out }
    }

    /// The login file's path, or an error saying how to name one.
    pub fn config_path(&self) -> Result<PathBuf> {
        config::path()
            .ok_or_else(|| anyhow!("cannot locate the config file: set $HOME or $STRATO_CONFIG"))
    }

    /// The saved login, or an empty one when no config file can be located.
    pub fn saved(&self) -> Result<Config> {
        match config::path() {
            Some(p) => Config::load(&p),
            None => Ok(Config::default()),
        }
    }

    /// An API client from flags/environment, falling back to the login file.
    pub fn client(&self) -> Result<Client> {
        let saved = self.saved()?;
        let url = self
            .global
            .url
            .clone()
            .or(saved.url)
            .ok_or(NotLoggedIn { missing: "URL" })?;
        let token = self
            .global
            .token
            .clone()
            .or(saved.token)
            .ok_or(NotLoggedIn { missing: "token" })?;
        let project = self.global.project.clone().or(saved.project);
        Ok(Client::new(&url, &token).with_project(project))
    }
}

/// A resource users may name by id or by name.
pub trait Named {
    type Id: FromStr + Copy + Eq + Hash + Display;
    /// Human word for messages: "vm", "flavor", ...
    const KIND: &'static str;
    /// The command that lists them, for hints.
    const LIST: &'static str;
    fn id(&self) -> Self::Id;
    fn name(&self) -> &str;
}

macro_rules! named {
    ($($ty:ty => $id:ty, $kind:literal, $list:literal;)*) => {$(
        impl Named for $ty {
            type Id = $id;
            const KIND: &'static str = $kind;
            const LIST: &'static str = $list;
            fn id(&self) -> $id {
                self.id
            }
            fn name(&self) -> &str {
                &self.name
            }
        }
    )*};
}

named! {
    Flavor => FlavorId, "flavor", "strato flavor list";
    Image => ImageId, "image", "strato image list";
    Keypair => KeypairId, "keypair", "strato keypair list";
    Network => NetworkId, "network", "strato network list";
    Subnet => SubnetId, "subnet", "strato network subnets NETWORK";
    Instance => InstanceId, "vm", "strato vm list";
    Volume => VolumeId, "volume", "strato volume list";
    Snapshot => SnapshotId, "snapshot", "strato volume snapshots";
    Group => GroupId, "group", "strato group list";
    Host => HostId, "host", "strato host list";
    Rack => RackId, "rack", "strato rack list";
}

/// The id `arg` names: `arg` itself when it is an id, else the one resource
/// `list` returns with that name. `list` is only awaited for names.
pub async fn resolve<T, F>(arg: &str, list: F) -> Result<T::Id>
where
    T: Named,
    F: Future<Output = api::client::Result<Vec<T>>>,
{
    if let Ok(id) = arg.parse::<T::Id>() {
        return Ok(id);
    }
    let items = list.await?;
    pick(arg, &items)
}

/// The id of the one item named `name`.
pub fn pick<T: Named>(name: &str, items: &[T]) -> Result<T::Id> {
    let mut found = items.iter().filter(|i| i.name() == name);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one.id()),
        (None, _) => Err(anyhow!(
            "no {kind} named `{name}` (see `{list}`)",
            kind = T::KIND,
            list = T::LIST
        )),
        (Some(_), Some(_)) => Err(anyhow!(
            "several {kind}s are named `{name}`; use the id (see `{list}`)",
            kind = T::KIND,
            list = T::LIST
        )),
    }
}

/// Names by id from a list call made only to label ids. Its failure (e.g. a
/// tenant may not list hosts) just means ids are shown instead of names.
pub fn names<T: Named>(list: api::client::Result<Vec<T>>) -> HashMap<T::Id, String> {
    list.map(|items| {
        items
            .iter()
            .map(|i| (i.id(), i.name().to_string()))
            .collect()
    })
    .unwrap_or_default()
}

/// The name for `id` if known, else the id.
pub fn label<I: Hash + Eq + Display>(names: &HashMap<I, String>, id: &I) -> String {
    names.get(id).cloned().unwrap_or_else(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn rack(name: &str) -> Rack {
        Rack {
            id: RackId::new(),
            name: name.into(),
            location: String::new(),
            host_count: 0,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn resolve_takes_ids_without_listing_and_names_by_listing() {
        let id = RackId::new();
        let got = resolve::<Rack, _>(&id.to_string(), async { panic!("must not list for an id") })
            .await
            .unwrap();
        assert_eq!(got, id);

        let racks = vec![rack("r1"), rack("r2"), rack("dup"), rack("dup")];
        assert_eq!(pick("r2", &racks).unwrap(), racks[1].id);
        let missing = pick("r9", &racks).unwrap_err().to_string();
        assert!(missing.contains("no rack named `r9`"), "{missing}");
        let dup = pick("dup", &racks).unwrap_err().to_string();
        assert!(dup.contains("use the id"), "{dup}");
    }
}
