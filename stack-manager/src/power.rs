//! Power fencing through the provisioner: a host with a machine behind it
//! is fenced only once the provisioner's power driver (IPMI, Redfish,
//! libvirt) reports that machine off.

use api::ProvisionerClient;

use crate::state::AppState;

/// Powers `machine` off through the provisioner and confirms it reads
/// off; the error says why fencing by power is not confirmed.
pub async fn power_off_confirmed(state: &AppState, machine: &str) -> Result<(), String> {
    let cfg = &state.config.health;
    let Some(url) = cfg.provisioner_url.as_deref() else {
        return Err("no provisioner is configured (health.provisioner_url)".into());
    };
    let client = ProvisionerClient::new(url, cfg.provisioner_token.as_deref().unwrap_or(""));
    let power = client
        .machine_power(machine)
        .await
        .map_err(|e| format!("provisioner: {e}"))?;
    match power.state {
        api::provision::PowerState::Off => Ok(()),
        other => Err(format!("machine reads {}", other.as_str())),
    }
}
