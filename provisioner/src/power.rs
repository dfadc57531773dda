//! Power drivers behind one trait: IPMI (`ipmitool -I lanplus`), Redfish
//! (HTTP), libvirt (`virsh`, for racks of VMs) and manual (an operator or
//! a test presses the button).

use std::time::{Duration, Instant};

use api::provision::{PowerDriver, PowerSpec, PowerState};
use serde::{Deserialize, Serialize};

/// How long the provisioner waits for a machine's power controller. A
/// fencing stack manager waits on these: a BMC that does not answer must
/// fail fast and clearly, not hang the evacuation of a failed host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    /// Ceiling on one call to a power controller: one `ipmitool` or
    /// `virsh` run (killed after it), one Redfish request. Default 12 s.
    pub timeout_secs: u64,
    /// `ipmitool -N`: seconds before it resends a LAN packet. Default 2.
    pub ipmi_timeout_secs: u64,
    /// `ipmitool -R`: how often it resends. Default 2; with the default
    /// `ipmi_timeout_secs` a BMC that never answers fails in 10 s
    /// (ipmitool 1.8.19 measured: 20 s with its own defaults).
    pub ipmi_retries: u32,
    /// After a fence's power off, how long the driver has to report the
    /// machine off before the fence fails. Default 20 s (a real BMC's
    /// ForceOff takes a few seconds to show).
    pub off_confirm_secs: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 12,
            ipmi_timeout_secs: 2,
            ipmi_retries: 2,
            off_confirm_secs: 20,
        }
    }
}

impl PowerConfig {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// What went wrong switching a machine. Each names the driver and the BMC
/// (never its credentials), so a log line or an API error says which box
/// to look at.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// Nothing answered in time, or the connection was refused: the
    /// machine's power state is unknown.
    #[error("{action} through {driver} BMC {bmc}: no answer: {detail}")]
    Unreachable {
        driver: PowerDriver,
        bmc: String,
        action: &'static str,
        detail: String,
    },
    /// The BMC answered, with a refusal or something unexpected.
    #[error("{action} through {driver} BMC {bmc} failed: {detail}")]
    Failed {
        driver: PowerDriver,
        bmc: String,
        action: &'static str,
        detail: String,
    },
    /// The tool the driver runs is missing on the provisioner's host.
    #[error("{driver} power driver: cannot run {program}: {detail}")]
    Tool {
        driver: PowerDriver,
        program: &'static str,
        detail: String,
    },
    /// Nothing to switch with: an operator presses the button.
    #[error("machine has the manual power driver: {0}")]
    Manual(&'static str),
}

/// Switches one machine.
pub struct Power<'a> {
    spec: &'a PowerSpec,
    http: &'a reqwest::Client,
    cfg: PowerConfig,
}

type Result<T, E = PowerError> = std::result::Result<T, E>;

impl<'a> Power<'a> {
    pub fn new(spec: &'a PowerSpec, http: &'a reqwest::Client, cfg: PowerConfig) -> Self {
        Self { spec, http, cfg }
    }

    fn unreachable(&self, action: &'static str, detail: impl std::fmt::Display) -> PowerError {
        PowerError::Unreachable {
            driver: self.spec.driver(),
            bmc: self.spec.bmc(),
            action,
            detail: detail.to_string(),
        }
    }

    fn failed(&self, action: &'static str, detail: impl std::fmt::Display) -> PowerError {
        PowerError::Failed {
            driver: self.spec.driver(),
            bmc: self.spec.bmc(),
            action,
            detail: detail.to_string(),
        }
    }

    /// Makes the next boot a network boot, where the hardware needs telling.
    /// Libvirt domains of a VM rack boot from the network first always; the
    /// provisioner's iPXE script hands over to the disk once deployed.
    pub async fn next_boot_network(&self) -> Result<()> {
        match self.spec {
            PowerSpec::Manual | PowerSpec::Libvirt { .. } => Ok(()),
            PowerSpec::Ipmi { .. } => self
                .ipmitool("network boot", &["chassis", "bootdev", "pxe"])
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
            PowerSpec::Ipmi { .. } => self
                .ipmitool("power on", &["chassis", "power", "on"])
                .await
                .map(drop),
            PowerSpec::Redfish { .. } => self.redfish_reset("power on", "On").await,
            PowerSpec::Libvirt { .. } => self.virsh("power on", "start").await,
        }
    }

    pub async fn off(&self) -> Result<()> {
        match self.spec {
            PowerSpec::Manual => Ok(()),
            PowerSpec::Ipmi { .. } => self
                .ipmitool("power off", &["chassis", "power", "off"])
                .await
                .map(drop),
            PowerSpec::Redfish { .. } => self.redfish_reset("power off", "ForceOff").await,
            PowerSpec::Libvirt { .. } => self.virsh("power off", "destroy").await,
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

    /// Power off, then the driver's word that it is off: fencing. A manual
    /// machine cannot be fenced this way, since nothing can confirm it.
    pub async fn fence(&self) -> Result<()> {
        if *self.spec == PowerSpec::Manual {
            return Err(PowerError::Manual(
                "nothing can switch it off or confirm that it is off",
            ));
        }
        self.off().await?;
        let deadline = Instant::now() + Duration::from_secs(self.cfg.off_confirm_secs);
        loop {
            let state = self.status().await?;
            if state == PowerState::Off {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failed(
                    "fence",
                    format!(
                        "still reports {} {} s after power off",
                        state.as_str(),
                        self.cfg.off_confirm_secs
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn status(&self) -> Result<PowerState> {
        match self.spec {
            PowerSpec::Manual => Ok(PowerState::Unknown),
            PowerSpec::Ipmi { .. } => {
                let out = self
                    .ipmitool("power status", &["chassis", "power", "status"])
                    .await?;
                Ok(parse_ipmi_status(&out))
            }
            PowerSpec::Redfish {
                url,
                system,
                user,
                password,
                ..
            } => {
                const ACTION: &str = "power status";
                let resp = self
                    .http
                    .get(format!("{}{system}", url.trim_end_matches('/')))
                    .basic_auth(user, Some(password))
                    .timeout(self.cfg.timeout())
                    .send()
                    .await
                    .map_err(|e| self.http_error(ACTION, e))?;
                let resp = self.http_status(ACTION, resp).await?;
                let v: serde_json::Value =
                    resp.json().await.map_err(|e| self.http_error(ACTION, e))?;
                Ok(match v["PowerState"].as_str() {
                    Some("On") | Some("PoweringOn") => PowerState::On,
                    Some("Off") | Some("PoweringOff") => PowerState::Off,
                    _ => PowerState::Unknown,
                })
            }
            PowerSpec::Libvirt { uri, domain } => {
                let out = self
                    .command(
                        "power status",
                        "virsh",
                        &["-c", uri, "domstate", domain],
                        &[],
                    )
                    .await?;
                Ok(match out.trim() {
                    "running" | "paused" | "in shutdown" => PowerState::On,
                    "shut off" | "crashed" => PowerState::Off,
                    _ => PowerState::Unknown,
                })
            }
        }
    }

    /// Runs a driver's tool under `timeout_secs`, killed when it overruns.
    async fn run(
        &self,
        action: &'static str,
        program: &'static str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String, RunError> {
        let out = tokio::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(self.cfg.timeout(), out)
            .await
            .map_err(|_| {
                RunError::Power(self.unreachable(
                    action,
                    format!(
                        "{program} gave no answer within {} s",
                        self.cfg.timeout_secs
                    ),
                ))
            })?
            .map_err(|e| {
                RunError::Power(PowerError::Tool {
                    driver: self.spec.driver(),
                    program,
                    detail: e.to_string(),
                })
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(RunError::Exit(stderr.trim().chars().take(2000).collect()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn command(
        &self,
        action: &'static str,
        program: &'static str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String> {
        match self.run(action, program, args, env).await {
            Ok(out) => Ok(out),
            Err(RunError::Exit(stderr)) => Err(self.failed(action, format!("{program}: {stderr}"))),
            Err(RunError::Power(e)) => Err(e),
        }
    }

    async fn virsh(&self, action: &'static str, verb: &str) -> Result<()> {
        let PowerSpec::Libvirt { uri, domain } = self.spec else {
            return Err(self.failed(action, "not a libvirt machine"));
        };
        match self
            .run(action, "virsh", &["-c", uri, verb, domain], &[])
            .await
        {
            Ok(_) => Ok(()),
            // Already in the wanted state is success.
            Err(RunError::Exit(stderr))
                if stderr.contains("is already active")
                    || stderr.contains("domain is not running") =>
            {
                Ok(())
            }
            Err(RunError::Exit(stderr)) => {
                Err(self.failed(action, format!("virsh {verb}: {stderr}")))
            }
            Err(RunError::Power(e)) => Err(e),
        }
    }

    /// The password goes through the environment (`-E`), not argv, so it
    /// never shows in `ps`.
    async fn ipmitool(&self, action: &'static str, args: &[&str]) -> Result<String> {
        let PowerSpec::Ipmi {
            address,
            port,
            user,
            password,
        } = self.spec
        else {
            return Err(self.failed(action, "not an IPMI machine"));
        };
        let port = port.unwrap_or(623).to_string();
        let timeout = self.cfg.ipmi_timeout_secs.to_string();
        let retries = self.cfg.ipmi_retries.to_string();
        let mut argv = vec![
            "-I", "lanplus", "-H", address, "-p", &port, "-U", user, "-E", "-N", &timeout, "-R",
            &retries,
        ];
        argv.extend_from_slice(args);
        match self
            .run(action, "ipmitool", &argv, &[("IPMI_PASSWORD", password)])
            .await
        {
            Ok(out) => Ok(out),
            // ipmitool says this both when nothing answers and when the
            // BMC ignores a wrong password (as pyghmi's does): either way
            // no session, and no word from the BMC on its state.
            Err(RunError::Exit(stderr)) if stderr.contains("Unable to establish") => Err(self
                .unreachable(
                    action,
                    format!(
                        "no IPMI session (is the address, port or password wrong?): {}",
                        last_line(&stderr)
                    ),
                )),
            Err(RunError::Exit(stderr)) => Err(self.failed(action, format!("ipmitool: {stderr}"))),
            Err(RunError::Power(e)) => Err(e),
        }
    }

    /// A transport failure: refused, reset or timed out is "did not
    /// answer"; anything else (a body that is not JSON) a failure.
    fn http_error(&self, action: &'static str, e: reqwest::Error) -> PowerError {
        // reqwest's Display hides the cause ("error sending request"); the
        // chain has it ("Connection refused", "operation timed out").
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            detail = format!("{detail}: {s}");
            src = s.source();
        }
        if e.is_timeout() {
            self.unreachable(
                action,
                format!("nothing within {} s: {detail}", self.cfg.timeout_secs),
            )
        } else if e.is_connect() || e.is_request() {
            self.unreachable(action, detail)
        } else {
            self.failed(action, detail)
        }
    }

    async fn http_status(
        &self,
        action: &'static str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(self.failed(
            action,
            format!(
                "HTTP {status}: {}",
                body.trim().chars().take(500).collect::<String>()
            ),
        ))
    }

    async fn redfish_send(
        &self,
        action: &'static str,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<()> {
        let PowerSpec::Redfish {
            url,
            system,
            user,
            password,
            ..
        } = self.spec
        else {
            return Err(self.failed(action, "not a Redfish machine"));
        };
        let resp = self
            .http
            .request(
                method,
                format!("{}{system}{path}", url.trim_end_matches('/')),
            )
            .basic_auth(user, Some(password))
            .json(&body)
            .timeout(self.cfg.timeout())
            .send()
            .await
            .map_err(|e| self.http_error(action, e))?;
        self.http_status(action, resp).await.map(drop)
    }

    async fn redfish_reset(&self, action: &'static str, kind: &str) -> Result<()> {
        self.redfish_send(
            action,
            reqwest::Method::POST,
            "/Actions/ComputerSystem.Reset",
            serde_json::json!({ "ResetType": kind }),
        )
        .await
    }

    async fn redfish_patch(&self, body: serde_json::Value) -> Result<()> {
        self.redfish_send("network boot", reqwest::Method::PATCH, "", body)
            .await
    }
}

/// How a driver's tool failed: on its own (with its stderr, for the
/// driver to classify), or already as a `PowerError` (not started, killed).
enum RunError {
    Exit(String),
    Power(PowerError),
}

fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
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

    /// Specs stored before the IPMI port existed read back as port 623,
    /// and a spec without one is written as before.
    #[test]
    fn ipmi_port_is_optional_on_the_wire() {
        let old = r#"{"driver":"ipmi","address":"10.0.0.5","user":"u","password":"p"}"#;
        let spec: PowerSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.bmc(), "10.0.0.5:623");
        assert_eq!(spec.driver(), PowerDriver::Ipmi);
        assert_eq!(serde_json::to_string(&spec).unwrap(), old);
    }

    #[tokio::test]
    async fn manual_machines_cannot_be_fenced() {
        let http = reqwest::Client::new();
        let e = Power::new(&PowerSpec::Manual, &http, PowerConfig::default())
            .fence()
            .await
            .unwrap_err();
        assert!(matches!(e, PowerError::Manual(_)), "{e}");
    }
}
