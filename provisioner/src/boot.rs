//! Boot decisions rendered as iPXE scripts (tera templates from
//! `templates/ipxe/`, built in, overridable by a template directory).

use std::path::Path;

use api::provision::Machine;
use tera::{Context, Tera};

use crate::error::{ProvisionError, Result};
use crate::lifecycle::BootChoice;

const BOOTENV: &str = include_str!("../../templates/ipxe/bootenv.ipxe.tera");
const LOCALBOOT: &str = include_str!("../../templates/ipxe/localboot.ipxe.tera");

pub struct Scripts {
    tera: Tera,
}

impl Scripts {
    pub fn load(dir: Option<&Path>) -> Result<Scripts> {
        let mut tera = Tera::default();
        let read = |name: &str, builtin: &str| -> Result<String> {
            match dir {
                Some(d) => std::fs::read_to_string(d.join(name)).map_err(|e| {
                    ProvisionError::Invalid(format!("{}: {e}", d.join(name).display()))
                }),
                None => Ok(builtin.to_string()),
            }
        };
        tera.add_raw_template("bootenv", &read("bootenv.ipxe.tera", BOOTENV)?)
            .map_err(|e| ProvisionError::Invalid(format!("bootenv template: {e}")))?;
        tera.add_raw_template("localboot", &read("localboot.ipxe.tera", LOCALBOOT)?)
            .map_err(|e| ProvisionError::Invalid(format!("localboot template: {e}")))?;
        // iPXE scripts are not HTML.
        tera.autoescape_on(vec![]);
        Ok(Scripts { tera })
    }

    /// The script for `m`, booting per `choice`. `base_url` is where this
    /// provisioner's HTTP server is reached from the rack.
    pub fn render(
        &self,
        m: &Machine,
        choice: BootChoice,
        base_url: &str,
        secret: &str,
    ) -> Result<String> {
        let mut ctx = Context::new();
        ctx.insert("name", &m.name);
        ctx.insert("mac", &m.mac);
        ctx.insert("state", m.state.as_str());
        ctx.insert("base_url", base_url);
        let (template, mode) = match choice {
            BootChoice::Commission => ("bootenv", "commission"),
            BootChoice::Deploy => ("bootenv", "deploy"),
            BootChoice::Rescue => ("bootenv", "rescue"),
            BootChoice::LocalDisk => ("localboot", ""),
        };
        ctx.insert("mode", mode);
        ctx.insert(
            "callback_url",
            &format!("{base_url}/bootenv/{}/{secret}", m.id),
        );
        ctx.insert("disk", &Option::<String>::None);
        self.tera
            .render(template, &ctx)
            .map_err(|e| ProvisionError::Invalid(format!("rendering the {template} script: {e}")))
    }
}
