//! Power drivers behind one trait: IPMI (`ipmitool -I lanplus`), Redfish
//! (HTTP), libvirt (`virsh`, for racks of VMs) and manual (an operator or
//! a test presses the button).

use std::time::Duration;

use api::provision::{PowerSpec, PowerState};

use crate::error::{ProvisionError, Result};

fn fail(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Power(e.to_string())
}

/// Switches one machine.
pub struct Power<'a> {
    spec: &'a PowerSpec,
    http: &'a reqwest::Client,
}

impl<'a> Power<'a> {
    pub fn new(spec: &'a PowerSpec, http: &'a reqwest::Client) -> Self {
        Self { spec, http }
    }

    /// Makes the next boot a network boot, where the hardware needs telling.
    /// Libvirt domains of a VM rack boot from the network first always; the
    /// provisioner's iPXE script hands over to the disk once deployed.
    pub async fn next_boot_network(&self) -> Result<()> {
        match self.spec {
            PowerSpec::Manual | PowerSpec::Libvirt { .. } => Ok(()),
            PowerSpec::Ipmi { .. } => self
                .ipmitool(&["chassis", "bootdev", "pxe"])
                .await
                .map(drop),
            PowerSpec::Redfish { .. } => {
                self.redfish_patch(serde_json::json!({
                    "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
                }))
                .await
            }
        }
    }

    pub async fn on(&self) -> Result<()> {
        match self.spec {
            PowerSpec::Manual => Ok(()),
            PowerSpec::Ipmi { .. } => self.ipmitool(&["chassis", "power", "on"]).await.map(drop),
            PowerSpec::Redfish { .. } => self.redfish_reset("On").await,
            PowerSpec::Libvirt { .. } => self.virsh("start").await,
        }
    }

    pub async fn off(&self) -> Result<()> {
        match self.spec {
            PowerSpec::Manual => Ok(()),
            PowerSpec::Ipmi { .. } => self.ipmitool(&["chassis", "power", "off"]).await.map(drop),
            PowerSpec::Redfish { .. } => self.redfish_reset("ForceOff").await,
            PowerSpec::Libvirt { .. } => self.virsh("destroy").await,
        }
    }

    /// Off and on again, or on if it was off.
    pub async fn cycle(&self) -> Result<()> {
        match self.status().await? {
            PowerState::On => {
                self.off().await?;
                self.on().await
            }
            _ => self.on().await,
        }
    }

    pub async fn status(&self) -> Result<PowerState> {
        match self.spec {
            PowerSpec::Manual => Ok(PowerState::Unknown),
            PowerSpec::Ipmi { .. } => {
                let out = self.ipmitool(&["chassis", "power", "status"]).await?;
                Ok(parse_ipmi_status(&out))
            }
            PowerSpec::Redfish {
                url,
                system,
                user,
                password,
                ..
            } => {
                let v: serde_json::Value = self
                    .http
                    .get(format!("{}{system}", url.trim_end_matches('/')))
                    .basic_auth(user, Some(password))
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                    .map_err(fail)?
                    .error_for_status()
                    .map_err(fail)?
                    .json()
                    .await
                    .map_err(fail)?;
                Ok(match v["PowerState"].as_str() {
                    Some("On") | Some("PoweringOn") => PowerState::On,
                    Some("Off") | Some("PoweringOff") => PowerState::Off,
                    _ => PowerState::Unknown,
                })
            }
            PowerSpec::Libvirt { uri, domain } => {
                let out = agent_support::exec::run("virsh", ["-c", uri, "domstate", domain])
                    .await
                    .map_err(fail)?;
                Ok(match out.trim() {
                    "running" | "paused" | "in shutdown" => PowerState::On,
                    "shut off" | "crashed" => PowerState::Off,
                    _ => PowerState::Unknown,
                })
            }
        }
    }

    async fn virsh(&self, verb: &str) -> Result<()> {
        let PowerSpec::Libvirt { uri, domain } = self.spec else {
            return Err(fail("not a libvirt machine"));
        };
        match agent_support::exec::run("virsh", ["-c", uri.as_str(), verb, domain.as_str()]).await {
            Ok(_) => Ok(()),
            // Already in the wanted state is success.
            Err(e)
                if e.to_string().contains("is already active")
                    || e.to_string().contains("domain is not running") =>
            {
                Ok(())
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// The password goes through the environment (`-E`), not argv, so it
    /// never shows in `ps`.
    async fn ipmitool(&self, args: &[&str]) -> Result<String> {
        let PowerSpec::Ipmi {
            address,
            user,
            password,
        } = self.spec
        else {
            return Err(fail("not an IPMI machine"));
        };
        let out = tokio::process::Command::new("ipmitool")
            .args(["-I", "lanplus", "-H", address, "-U", user, "-E"])
            .args(args)
            .env("IPMI_PASSWORD", password)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .map_err(|_| fail(format!("ipmitool {args:?} timed out")))?
            .map_err(|e| fail(format!("ipmitool: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!(
                "ipmitool {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn redfish_reset(&self, kind: &str) -> Result<()> {
        let PowerSpec::Redfish {
            url,
            system,
            user,
            password,
            ..
        } = self.spec
        else {
            return Err(fail("not a Redfish machine"));
        };
        self.http
            .post(format!(
                "{}{system}/Actions/ComputerSystem.Reset",
                url.trim_end_matches('/')
            ))
            .basic_auth(user, Some(password))
            .json(&serde_json::json!({ "ResetType": kind }))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(fail)?
            .error_for_status()
            .map_err(fail)?;
        Ok(())
    }

    async fn redfish_patch(&self, body: serde_json::Value) -> Result<()> {
        let PowerSpec::Redfish {
            url,
            system,
            user,
            password,
            ..
        } = self.spec
        else {
            return Err(fail("not a Redfish machine"));
        };
        self.http
            .patch(format!("{}{system}", url.trim_end_matches('/')))
            .basic_auth(user, Some(password))
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(fail)?
            .error_for_status()
            .map_err(fail)?;
        Ok(())
    }
}

fn parse_ipmi_status(out: &str) -> PowerState {
    let o = out.to_ascii_lowercase();
    if o.contains("is on") {
        PowerState::On
    } else if o.contains("is off") {
        PowerState::Off
    } else {
        PowerState::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipmitool_status_lines() {
        assert_eq!(parse_ipmi_status("Chassis Power is on\n"), PowerState::On);
        assert_eq!(parse_ipmi_status("Chassis Power is off\n"), PowerState::Off);
        assert_eq!(parse_ipmi_status("garbage"), PowerState::Unknown);
    }
}
