//! Domain XML, rendered from the tera templates in `templates/libvirt/`
//! (built in, or overridden from `template_dir`). A domain's name and UUID
//! are scoped by the host that creates it (see [`DomainIdentity`]), and it
//! carries the enrolling host's id in its Strato metadata: that is how a
//! restarted agent tells the domains it created from anybody else's.

use std::path::Path;

use api::ids::{HostId, InstanceId, VolumeId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tera::Tera;

use crate::error::{AgentError, Result};

pub const METADATA_NS: &str = "https://strato.dev/xmlns/libvirt/instance/1";
pub const DOMAIN_PREFIX: &str = "strato-";

/// How one host's domain for an instance is known to libvirt.
///
/// Names and UUIDs are unique per libvirtd, so both are scoped by the
/// creating host: `strato-<first 8 hex digits of the host id>-<instance id>`,
/// and a UUID hashed from both ids. An instance re-created on host B while
/// a stale domain of it survives on a partitioned host A, or several agents
/// sharing one libvirtd in tests, then never clash. Scoping is derived,
/// not configured: nothing to set per host, and nothing a wrong setting
/// could make collide. The instance id stays readable in the name; the
/// full host id (in the UUID and the metadata) is what tells hosts apart,
/// the short form only keeps `virsh list` legible.
///
/// Agents before this scheme used the instance id alone as both name
/// suffix and UUID ([`DomainIdentity::legacy`]); such domains are adopted
/// as they are, since libvirt cannot rename a running domain nor change
/// any domain's UUID, and a re-created instance gets the scoped identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainIdentity {
    pub name: String,
    pub uuid: String,
}

impl DomainIdentity {
    pub fn scoped(host: HostId, instance: InstanceId) -> Self {
        let host_hex: String = host
            .to_string()
            .chars()
            .filter(|c| *c != '-')
            .take(8)
            .collect();
        let mut h = Sha256::new();
        h.update(b"strato-domain\0");
        h.update(host.to_string().as_bytes());
        h.update(b"\0");
        h.update(instance.to_string().as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&h.finalize()[..16]);
        Self {
            name: format!("{DOMAIN_PREFIX}{host_hex}-{instance}"),
            uuid: uuid::Builder::from_custom_bytes(bytes)
                .into_uuid()
                .to_string(),
        }
    }

    /// A domain created by an agent from before host scoping.
    pub fn legacy(instance: InstanceId) -> Self {
        Self {
            name: format!("{DOMAIN_PREFIX}{instance}"),
            uuid: instance.to_string(),
        }
    }

    /// The libvirt secret holding a volume's CHAP secret for this domain.
    /// Host-scoped like the name: another host's copy of the instance has
    /// its own secrets, which tearing this one down must not remove.
    pub fn secret_usage(&self, volume: VolumeId) -> String {
        format!("{}{volume}", self.secret_prefix())
    }

    /// What every secret usage of this domain starts with. A scoped name's
    /// prefix never matches a legacy one (`strato-<8 hex>-…` against
    /// `strato-<instance id>-…`), so the two schemes cannot take each
    /// other's secrets.
    pub fn secret_prefix(&self) -> String {
        format!("{}-", self.name)
    }

    /// The instance a Strato domain name belongs to, under either scheme.
    pub fn instance_of(name: &str) -> Option<InstanceId> {
        let rest = name.strip_prefix(DOMAIN_PREFIX)?;
        rest.get(rest.len().checked_sub(36)?..)?.parse().ok()
    }
}

const DOMAIN_QEMU: &str = include_str!("../../templates/libvirt/domain.xml.tera");
const DOMAIN_XEN: &str = include_str!("../../templates/libvirt/domain-xen.xml.tera");
const VOLUME: &str = include_str!("../../templates/libvirt/volume.xml.tera");

#[derive(Debug, Clone, Serialize)]
pub struct NicParams {
    pub bridge: String,
    pub mac: String,
    pub mtu: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeParams {
    pub dev: String,
    pub bus: &'static str,
    pub iqn: String,
    pub lun: u32,
    pub host: String,
    pub port: u16,
    pub initiator_iqn: String,
    pub chap_user: String,
    pub secret_usage: String,
    pub serial: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainParams {
    pub name: String,
    pub uuid: String,
    pub host_id: String,
    pub generation: u64,
    pub virt_type: &'static str,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub root_disk: String,
    pub config_drive: String,
    pub console_log: String,
    pub nics: Vec<NicParams>,
    pub volumes: Vec<VolumeParams>,
}

pub struct Templates {
    tera: Tera,
    xen: bool,
}

impl Templates {
    /// The built-in templates, each replaced by a file of the same name in
    /// `dir` when one exists.
    pub fn load(dir: Option<&Path>, xen: bool) -> Result<Self> {
        let mut tera = Tera::default();
        // The `.xml` suffix turns on autoescaping for every value; XML needs
        // only its five entities, not tera's HTML set.
        tera.set_escape_fn(xml_escape);
        for (name, builtin) in [
            ("domain.xml", DOMAIN_QEMU),
            ("domain-xen.xml", DOMAIN_XEN),
            ("volume.xml", VOLUME),
        ] {
            let text = match dir.map(|d| d.join(format!("{name}.tera"))) {
                Some(p) if p.exists() => std::fs::read_to_string(&p).map_err(AgentError::io(&p))?,
                _ => builtin.to_string(),
            };
            tera.add_raw_template(name, &text)
                .map_err(|e| AgentError::Template(format!("{name}: {e:?}")))?;
        }
        Ok(Self { tera, xen })
    }

    /// Target device of the volume at `index`: after the root disk and the
    /// config drive.
    pub fn volume_dev(&self, index: u32) -> Result<String> {
        let prefix = if self.xen { "xvd" } else { "vd" };
        let letter = 2 + index;
        if letter >= 26 {
            return Err(AgentError::Invalid(format!(
                "volume index {index} has no device name"
            )));
        }
        Ok(format!("{prefix}{}", (b'a' + letter as u8) as char))
    }

    pub fn volume_bus(&self) -> &'static str {
        if self.xen {
            "xen"
        } else {
            "virtio"
        }
    }

    pub fn volume_xml(&self, v: &VolumeParams) -> Result<String> {
        let ctx =
            tera::Context::from_serialize(v).map_err(|e| AgentError::Template(e.to_string()))?;
        self.tera
            .render("volume.xml", &ctx)
            .map_err(|e| AgentError::Template(format!("volume.xml: {e:?}")))
    }

    pub fn domain_xml(&self, d: &DomainParams) -> Result<String> {
        let volumes = d
            .volumes
            .iter()
            .map(|v| self.volume_xml(v))
            .collect::<Result<Vec<_>>>()?;
        let mut ctx =
            tera::Context::from_serialize(d).map_err(|e| AgentError::Template(e.to_string()))?;
        ctx.insert("volumes", &volumes);
        ctx.insert("metadata_ns", METADATA_NS);
        let name = if self.xen {
            "domain-xen.xml"
        } else {
            "domain.xml"
        };
        self.tera
            .render(name, &ctx)
            .map_err(|e| AgentError::Template(format!("{name}: {e:?}")))
    }
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The host id in a domain's Strato metadata element, if it has one.
pub fn metadata_host(metadata_xml: &str) -> Option<String> {
    let start = metadata_xml.find("host>")? + "host>".len();
    let rest = &metadata_xml[start..];
    let end = rest.find('<')?;
    Some(rest[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DomainParams {
        DomainParams {
            name: "strato-x".into(),
            uuid: "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a01".into(),
            host_id: "h1".into(),
            generation: 3,
            virt_type: "qemu",
            vcpus: 2,
            memory_kib: 262144,
            root_disk: "/var/lib/x/root.qcow2".into(),
            config_drive: "/var/lib/x/cidata.iso".into(),
            console_log: "/var/lib/x/console.log".into(),
            nics: vec![NicParams {
                bridge: "sbr-1".into(),
                mac: "52:54:00:00:00:01".into(),
                mtu: 1500,
            }],
            volumes: vec![VolumeParams {
                dev: "vdc".into(),
                bus: "virtio",
                iqn: "iqn.2026-11.io.strato:vol-1".into(),
                lun: 0,
                host: "127.0.0.1".into(),
                port: 3260,
                initiator_iqn: "iqn.2026-11.io.strato:h1".into(),
                chap_user: "u".into(),
                secret_usage: "strato-volume-1".into(),
                serial: "vol1".into(),
            }],
        }
    }

    #[test]
    fn qemu_domain_has_disks_nic_console_and_metadata() {
        let t = Templates::load(None, false).unwrap();
        let xml = t.domain_xml(&params()).unwrap();
        for needle in [
            "<domain type='qemu'>",
            "<uuid>6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a01</uuid>",
            "<strato:host>h1</strato:host>",
            "<source file='/var/lib/x/root.qcow2'/>",
            "<target dev='vdb' bus='virtio'/>",
            "<source bridge='sbr-1'/>",
            "<log file='/var/lib/x/console.log' append='on'/>",
            "name='iqn.2026-11.io.strato:vol-1/0'",
            "<secret type='iscsi' usage='strato-volume-1'/>",
            "<memory unit='KiB'>262144</memory>",
        ] {
            assert!(xml.contains(needle), "missing {needle} in\n{xml}");
        }
        assert_eq!(
            metadata_host("<strato:instance><strato:host>h1</strato:host></strato:instance>"),
            Some("h1".into())
        );
    }

    #[test]
    fn identities_are_scoped_by_host() {
        let (a, b): (HostId, HostId) = (
            "11111111-2222-4333-8444-555555555555".parse().unwrap(),
            "99999999-2222-4333-8444-555555555555".parse().unwrap(),
        );
        let i: InstanceId = "6f1b2a52-3c1e-4a55-9b0f-0d6f1f3b1a01".parse().unwrap();
        let (da, db) = (DomainIdentity::scoped(a, i), DomainIdentity::scoped(b, i));
        assert_eq!(da.name, format!("strato-11111111-{i}"));
        assert_ne!(da.name, db.name);
        assert_ne!(da.uuid, db.uuid);
        assert_ne!(da.uuid, i.to_string());
        // Stable across restarts: adoption finds the same domain again.
        assert_eq!(da, DomainIdentity::scoped(a, i));
        let legacy = DomainIdentity::legacy(i);
        assert_eq!(legacy.uuid, i.to_string());
        for d in [&da, &db, &legacy] {
            assert_eq!(DomainIdentity::instance_of(&d.name), Some(i));
        }
        assert!(!da.secret_prefix().starts_with(&legacy.secret_prefix()));
        assert!(!legacy.secret_prefix().starts_with(&da.secret_prefix()));
        assert_eq!(DomainIdentity::instance_of("strato-power-proto"), None);
    }

    #[test]
    fn values_are_escaped() {
        let t = Templates::load(None, false).unwrap();
        let mut p = params();
        p.nics[0].bridge = "x'/><evil/>".into();
        let xml = t.domain_xml(&p).unwrap();
        assert!(!xml.contains("<evil/>"));
    }

    #[test]
    fn xen_domain_uses_xen_disks() {
        let t = Templates::load(None, true).unwrap();
        let xml = t.domain_xml(&params()).unwrap();
        assert!(xml.contains("<domain type='xen'>"));
        assert!(xml.contains("<target dev='xvda' bus='xen'/>"));
        assert_eq!(t.volume_dev(0).unwrap(), "xvdc");
    }

    #[test]
    fn volume_without_chap_has_no_auth() {
        let t = Templates::load(None, false).unwrap();
        let mut v = params().volumes.remove(0);
        v.chap_user.clear();
        assert!(!t.volume_xml(&v).unwrap().contains("<auth"));
        assert_eq!(t.volume_dev(1).unwrap(), "vdd");
        assert!(t.volume_dev(24).is_err());
    }
}
