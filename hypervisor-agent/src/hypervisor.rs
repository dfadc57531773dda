//! libvirt, through the `virt` crate. Every call blocks, so each runs on
//! tokio's blocking pool. The connection is reopened when libvirtd went
//! away (a libvirtd restart must not need an agent restart).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::secret::Secret;
use virt::sys;

use crate::domain::{metadata_host, xml_escape, DOMAIN_PREFIX, METADATA_NS};
use crate::error::{AgentError, Result};

pub struct Hypervisor {
    uri: String,
    conn: Mutex<Option<Arc<Connect>>>,
}

/// A Strato domain found on this host.
#[derive(Debug, Clone)]
pub struct FoundDomain {
    pub name: String,
    pub uuid: String,
    pub run: DomainRun,
    /// The host id in its metadata: who created it.
    pub host: Option<String>,
}

/// Whether a domain that exists runs, and if not, why libvirt says it
/// stopped (its `virDomainShutoffReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainRun {
    Running,
    Off(OffReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffReason {
    /// The guest powered off (ACPI or its own `poweroff`).
    Shutdown,
    /// `virDomainDestroy`: the agent, or someone behind its back.
    Destroyed,
    /// QEMU exited without being asked: killed, or crashed.
    Crashed,
    /// The guest panicked (with `on_crash` keeping the domain).
    Panicked,
    /// libvirtd stopped it while reconnecting after a restart.
    Daemon,
    /// Never started, failed to start, or a reason Strato does not name.
    Other(i32),
}

impl OffReason {
    /// From libvirt's `(state, reason)` of an inactive domain.
    fn from_libvirt(state: sys::virDomainState, reason: i32) -> Self {
        if state == sys::VIR_DOMAIN_CRASHED {
            return OffReason::Panicked;
        }
        match reason as u32 {
            sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => OffReason::Shutdown,
            sys::VIR_DOMAIN_SHUTOFF_DESTROYED => OffReason::Destroyed,
            sys::VIR_DOMAIN_SHUTOFF_CRASHED => OffReason::Crashed,
            sys::VIR_DOMAIN_SHUTOFF_DAEMON => OffReason::Daemon,
            _ => OffReason::Other(reason),
        }
    }

    /// What a report of the stop should say.
    pub fn describe(self) -> String {
        match self {
            OffReason::Shutdown => "the guest powered itself off".into(),
            OffReason::Destroyed => {
                "the domain was destroyed outside the agent (libvirt: destroyed)".into()
            }
            OffReason::Crashed => {
                "QEMU exited unexpectedly: killed by a signal or crashed (libvirt: crashed)".into()
            }
            OffReason::Panicked => "the guest kernel panicked (libvirt: crashed)".into(),
            OffReason::Daemon => "libvirtd stopped the domain (libvirt: daemon)".into(),
            OffReason::Other(r) => format!("the domain stopped (libvirt shutoff reason {r})"),
        }
    }
}

fn run_of(d: &Domain) -> Result<DomainRun> {
    Ok(libvirt_run_of(d)?)
}

fn libvirt_run_of(d: &Domain) -> std::result::Result<DomainRun, virt::error::Error> {
    // One libvirt round trip: the state says whether it is active (shut
    // off is the only inactive state), and a heartbeat reads it for every
    // VM of the host. A panicked guest kept by `on_crash` is "active" to
    // libvirt, but it runs nothing: it is reported as stopped, with the
    // panic as reason.
    let (state, reason) = d.get_state()?;
    Ok(match state {
        sys::VIR_DOMAIN_SHUTOFF | sys::VIR_DOMAIN_CRASHED => {
            DomainRun::Off(OffReason::from_libvirt(state, reason))
        }
        // No state yet (a domain being set up): libvirt's own word.
        sys::VIR_DOMAIN_NOSTATE if !d.is_active()? => {
            DomainRun::Off(OffReason::from_libvirt(state, reason))
        }
        _ => DomainRun::Running,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct NodeCapacity {
    pub cpus: u32,
    pub memory_mib: u64,
}

fn not_found(e: &virt::error::Error) -> bool {
    matches!(e.code(), ErrorNumber::NoDomain | ErrorNumber::NoSecret)
}

impl Hypervisor {
    pub fn new(uri: &str) -> Self {
        // libvirt prints every error to stderr by default; ours go through
        // tracing with context instead.
        virt::error::clear_error_callback();
        Self {
            uri: uri.to_string(),
            conn: Mutex::new(None),
        }
    }

    fn connection(&self) -> Result<Arc<Connect>> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            if c.is_alive().unwrap_or(false) {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(Connect::open(Some(&self.uri)).map_err(|e| {
            AgentError::Libvirt(format!("cannot connect to {}: {}", self.uri, e.message()))
        })?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` with a live connection on the blocking pool.
    pub async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = me.connection()?;
            f(&conn)
        })
        .await
        .map_err(|e| AgentError::Libvirt(format!("libvirt call panicked: {e}")))?
    }

    pub async fn node_capacity(self: &Arc<Self>) -> Result<NodeCapacity> {
        self.with(|c| {
            let info = c.get_node_info()?;
            Ok(NodeCapacity {
                cpus: info.cpus,
                memory_mib: info.memory / 1024,
            })
        })
        .await
    }

    pub async fn capabilities(self: &Arc<Self>) -> Result<String> {
        self.with(|c| Ok(c.get_capabilities()?)).await
    }

    /// Every domain named `strato-*`, with who created it.
    pub async fn strato_domains(self: &Arc<Self>) -> Result<Vec<FoundDomain>> {
        self.with(|c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(0)? {
                let Ok(name) = d.get_name() else { continue };
                if !name.starts_with(DOMAIN_PREFIX) {
                    continue;
                }
                let host = d
                    .get_metadata(
                        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                        Some(METADATA_NS),
                        0,
                    )
                    .ok()
                    .and_then(|m| metadata_host(&m));
                out.push(FoundDomain {
                    uuid: d.get_uuid_string()?,
                    run: run_of(&d)?,
                    name,
                    host,
                });
            }
            Ok(out)
        })
        .await
    }

    /// How each of `uuids` runs; a domain missing from the map does not
    /// exist. The listing and the UUIDs cost one round trip, each of ours
    /// one more: a heartbeat must stay cheap on a libvirtd that also serves
    /// other agents' domains and is starved by busy guests.
    pub async fn domain_runs(
        self: &Arc<Self>,
        uuids: HashSet<String>,
    ) -> Result<HashMap<String, DomainRun>> {
        self.with(move |c| {
            let mut out = HashMap::with_capacity(uuids.len());
            for d in c.list_all_domains(0)? {
                let uuid = d.get_uuid_string()?;
                if !uuids.contains(&uuid) {
                    continue;
                }
                match libvirt_run_of(&d) {
                    Ok(run) => {
                        out.insert(uuid, run);
                    }
                    // Gone between the listing and the question.
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Whether the domain exists and whether it runs.
    pub async fn domain_state(self: &Arc<Self>, uuid: &str) -> Result<Option<bool>> {
        let uuid = uuid.to_string();
        self.with(move |c| match Domain::lookup_by_uuid_string(c, &uuid) {
            Ok(d) => Ok(Some(d.is_active()?)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Whether the domain exists, whether it runs, and why not.
    pub async fn domain_run(self: &Arc<Self>, uuid: &str) -> Result<Option<DomainRun>> {
        let uuid = uuid.to_string();
        self.with(move |c| match Self::lookup(c, &uuid)? {
            Some(d) => Ok(Some(run_of(&d)?)),
            None => Ok(None),
        })
        .await
    }

    /// Defines (or redefines: the persistent config only) a domain.
    pub async fn define(self: &Arc<Self>, xml: String) -> Result<()> {
        self.with(move |c| {
            Domain::define_xml(c, &xml)?;
            Ok(())
        })
        .await
    }

    fn lookup(c: &Connect, uuid: &str) -> Result<Option<Domain>> {
        match Domain::lookup_by_uuid_string(c, uuid) {
            Ok(d) => Ok(Some(d)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn start(self: &Arc<Self>, uuid: &str) -> Result<()> {
        let uuid = uuid.to_string();
        self.with(move |c| {
            let d = Self::lookup(c, &uuid)?
                .ok_or_else(|| AgentError::Libvirt(format!("domain {uuid} is not defined")))?;
            if !d.is_active()? {
                d.create()?;
            }
            Ok(())
        })
        .await
    }

    /// Asks the guest to power off (ACPI); returns at once.
    pub async fn shutdown(self: &Arc<Self>, uuid: &str) -> Result<()> {
        let uuid = uuid.to_string();
        self.with(move |c| {
            if let Some(d) = Self::lookup(c, &uuid)? {
                if d.is_active()? {
                    d.shutdown()?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Pulls the plug. A domain already off is fine.
    pub async fn destroy(self: &Arc<Self>, uuid: &str) -> Result<()> {
        let uuid = uuid.to_string();
        self.with(move |c| {
            if let Some(d) = Self::lookup(c, &uuid)? {
                if d.is_active()? {
                    if let Err(e) = d.destroy() {
                        // It may have stopped between the check and the call.
                        if d.is_active()? {
                            return Err(e.into());
                        }
                    }
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn undefine(self: &Arc<Self>, uuid: &str) -> Result<()> {
        let uuid = uuid.to_string();
        self.with(move |c| {
            if let Some(d) = Self::lookup(c, &uuid)? {
                d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM)?;
            }
            Ok(())
        })
        .await
    }

    /// The running domain's live XML.
    pub async fn live_xml(self: &Arc<Self>, uuid: &str) -> Result<Option<String>> {
        let uuid = uuid.to_string();
        self.with(move |c| match Self::lookup(c, &uuid)? {
            Some(d) => Ok(Some(d.get_xml_desc(0)?)),
            None => Ok(None),
        })
        .await
    }

    /// Hot-plugs a device into the running domain (its persistent config
    /// is redefined separately).
    pub async fn attach_live(self: &Arc<Self>, uuid: &str, xml: String) -> Result<()> {
        let uuid = uuid.to_string();
        self.with(move |c| {
            let d = Self::lookup(c, &uuid)?
                .ok_or_else(|| AgentError::Libvirt(format!("domain {uuid} is not defined")))?;
            d.attach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)?;
            Ok(())
        })
        .await
    }

    pub async fn detach_live(self: &Arc<Self>, uuid: &str, xml: String) -> Result<()> {
        let uuid = uuid.to_string();
        self.with(move |c| {
            let d = Self::lookup(c, &uuid)?
                .ok_or_else(|| AgentError::Libvirt(format!("domain {uuid} is not defined")))?;
            d.detach_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)?;
            Ok(())
        })
        .await
    }

    /// Defines (or updates) the iSCSI CHAP secret named `usage`.
    pub async fn set_iscsi_secret(self: &Arc<Self>, usage: &str, value: &str) -> Result<()> {
        let xml = format!(
            "<secret ephemeral='no' private='yes'><description>Strato volume CHAP secret</description>\
             <usage type='iscsi'><target>{}</target></usage></secret>",
            xml_escape(usage)
        );
        let value = value.as_bytes().to_vec();
        let usage = usage.to_string();
        self.with(move |c| {
            // Defining a second secret for the same usage is refused, so an
            // existing one only gets its value updated.
            let s =
                match Secret::lookup_by_usage(c, sys::VIR_SECRET_USAGE_TYPE_ISCSI as i32, &usage) {
                    Ok(s) => s,
                    Err(e) if not_found(&e) => Secret::define_xml(c, &xml, 0)?,
                    Err(e) => return Err(e.into()),
                };
            s.set_value(&value, 0)?;
            Ok(())
        })
        .await
    }

    pub async fn remove_iscsi_secret(self: &Arc<Self>, usage: &str) -> Result<()> {
        let usage = usage.to_string();
        self.with(move |c| {
            match Secret::lookup_by_usage(c, sys::VIR_SECRET_USAGE_TYPE_ISCSI as i32, &usage) {
                Ok(s) => s.undefine()?,
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        })
        .await
    }

    /// Usage names of every iSCSI secret starting with `prefix`.
    pub async fn iscsi_secrets(self: &Arc<Self>, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.with(move |c| {
            let mut out = Vec::new();
            for s in c.list_all_secrets(0)? {
                // Not `get_usage_id`: virt 0.4.3 frees the string libvirt
                // keeps owning (a double free); the XML is ours to free.
                let Ok(xml) = s.get_xml_desc(0) else { continue };
                if let Some(u) = secret_usage_target(&xml) {
                    if u.starts_with(&prefix) {
                        out.push(u);
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The `<usage><target>` of a secret's XML.
fn secret_usage_target(xml: &str) -> Option<String> {
    let usage = &xml[xml.find("<usage")?..];
    let start = usage.find("<target>")? + "<target>".len();
    let end = usage[start..].find("</target>")?;
    Some(usage[start..start + end].trim().to_string())
}

/// Whether hardware virtualization actually works here: libvirt must offer
/// `kvm` domains, and a probe guest must boot under KVM in time. Nested KVM
/// can expose `/dev/kvm` and then hang on the first guest instruction, so
/// the device's existence proves nothing.
pub async fn kvm_works(caps: &str, scratch: &Path, timeout: Duration) -> bool {
    if !caps.contains("<domain type='kvm'") && !caps.contains("<domain type=\"kvm\"") {
        tracing::info!("libvirt offers no kvm domains");
        return false;
    }
    match probe_boots("kvm", scratch, timeout).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "KVM probe guest did not boot in time: KVM does not work here"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "KVM probe failed to run");
            false
        }
    }
}

/// The probe guest: a boot sector that switches to 32-bit protected mode,
/// returns to itself with `iretd`, then writes `K\n` to COM1 and halts.
/// Mode switches and `iret` are what nested KVM fails to emulate on some
/// hosts (bootloaders do both), so a probe stuck in real mode would pass
/// where real guests hang. Assembled (nasm) from:
///
/// ```text
/// bits 16 / org 0x7c00
///   cli; xor ax,ax; mov ds,ax; lgdt [gdt_desc]
///   mov eax,cr0; or eax,1; mov cr0,eax; jmp 0x08:pm
/// bits 32
/// pm: mov ax,0x10; mov ds,ax; mov es,ax; mov ss,ax; mov esp,0x7000
///   pushfd; push dword 0x08; push dword after; iretd
/// after: mov dx,0x3f8; mov al,'K'; out dx,al; mov al,10; out dx,al
/// halt: hlt; jmp halt
/// gdt: null, code 0x00cf9a000000ffff, data 0x00cf92000000ffff
/// gdt_desc: dw 23; dd gdt
/// ```
const PROBE_CODE: [u8; 92] = [
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x0f, 0x01, 0x16, 0x58, 0x7c, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8,
    0x01, 0x0f, 0x22, 0xc0, 0xea, 0x19, 0x7c, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e,
    0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x70, 0x00, 0x00, 0x9c, 0x6a, 0x08, 0x68, 0x31, 0x7c, 0x00, 0x00,
    0xcf, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xb0, 0x0a, 0xee, 0xf4, 0xeb, 0xfd, 0x90, 0x90,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0x17, 0x00, 0x40, 0x7c,
];

fn probe_boot_sector() -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    sector[..PROBE_CODE.len()].copy_from_slice(&PROBE_CODE);
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// Runs the probe guest under `accel` (`kvm` or `tcg`); true when it
/// printed its marker within `timeout`.
pub async fn probe_boots(accel: &str, scratch: &Path, timeout: Duration) -> std::io::Result<bool> {
    std::fs::create_dir_all(scratch)?;
    let disk = scratch.join(format!("{accel}-probe.img"));
    let serial = scratch.join(format!("{accel}-probe.serial"));
    std::fs::write(&disk, probe_boot_sector())?;
    let _ = std::fs::remove_file(&serial);
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            accel,
            "-m",
            "16",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // QEMU reports a KVM emulation failure on stderr and then pauses the
    // guest; seeing it ends the wait early.
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(mut stderr) = child.stderr.take() {
        let failed = failed.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&text).contains("internal error") {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ok = false;
    while tokio::time::Instant::now() < deadline
        && !failed.load(std::sync::atomic::Ordering::Relaxed)
    {
        if std::fs::read(&serial)
            .map(|b| b.contains(&b'K'))
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&serial);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_usage_is_read_from_xml() {
        let xml = "<secret ephemeral='no' private='yes'><uuid>x</uuid><usage type='iscsi'>\n  <target>strato-a-b</target>\n</usage></secret>";
        assert_eq!(secret_usage_target(xml).as_deref(), Some("strato-a-b"));
        assert_eq!(secret_usage_target("<secret/>"), None);
    }

    #[test]
    fn probe_sector_is_bootable() {
        let s = probe_boot_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }

    /// The probe really boots where it can: under emulation it always must.
    #[tokio::test]
    async fn probe_guest_boots_under_emulation() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            probe_boots("tcg", dir.path(), Duration::from_secs(20))
                .await
                .unwrap(),
            "the probe guest did not print its marker under TCG (is qemu-system-x86_64 installed?)"
        );
    }
}
