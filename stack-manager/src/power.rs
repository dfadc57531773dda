//! Power fencing through the provisioner: a host with a machine behind it
//! is fenced only once the provisioner's power driver (IPMI, Redfish,
//! libvirt) has switched that machine off and read it back off
//! (`POST /v1/machines/{id}/fence`). A BMC that does not answer takes the
//! provisioner up to its power deadlines (about 10-20 s), so each fence
//! runs in a task of its own and the health monitor only looks at how it
//! ended: one dead BMC never holds up the detection of other hosts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api::ids::{HostId, MachineId};
use api::ProvisionerClient;

use crate::config::HealthConfig;

/// How a host's power fence stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerFence {
    /// Asked; the provisioner has not answered yet.
    InFlight,
    /// Off, as the driver reported: how (for the host's reason).
    Off(String),
    /// Not confirmed: why. The next look asks again.
    Failed(String),
}

/// The power fences in progress, by host.
#[derive(Clone, Default)]
pub struct PowerFences {
    jobs: Arc<Mutex<HashMap<HostId, PowerFence>>>,
}

impl PowerFences {
    /// How the power fence of `host` (machine `machine`) stands, starting
    /// it when none is in progress. A finished fence is reported once.
    pub fn poll(&self, cfg: &HealthConfig, host: HostId, machine: &str) -> PowerFence {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        match jobs.get(&host).cloned() {
            Some(PowerFence::InFlight) => PowerFence::InFlight,
            Some(done) => {
                jobs.remove(&host);
                done
            }
            None => {
                jobs.insert(host, PowerFence::InFlight);
                let me = self.clone();
                let url = cfg.provisioner_url.clone();
                let token = cfg.provisioner_token.clone().unwrap_or_default();
                let machine = machine.to_string();
                tokio::spawn(async move {
                    let outcome = match fence(url.as_deref(), &token, &machine).await {
                        Ok(how) => PowerFence::Off(how),
                        Err(why) => PowerFence::Failed(why),
                    };
                    me.jobs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(host, outcome);
                });
                PowerFence::InFlight
            }
        }
    }
}

async fn fence(url: Option<&str>, token: &str, machine: &str) -> Result<String, String> {
    let Some(url) = url else {
        return Err("no provisioner is configured (health.provisioner_url)".into());
    };
    let id: MachineId = machine
        .parse()
        .map_err(|_| format!("`{machine}` is not a machine id"))?;
    let done = ProvisionerClient::new(url, token)
        .machine_fence(id)
        .await
        .map_err(|e| format!("provisioner: {e}"))?;
    Ok(format!(
        "powered off through its {} driver in {} ms",
        done.driver.as_str(),
        done.elapsed_ms
    ))
}
