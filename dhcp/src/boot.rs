//! Which boot program a client should get, decided from what its firmware
//! says about itself. Pure so the rules can be tested exhaustively.

use crate::config::BootConfig;
use crate::mac::Mac;

/// RFC 4578 / IANA processor architecture types we serve.
pub mod arch {
    pub const BIOS: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_BC: u16 = 7;
    pub const EFI_X64: u16 = 9;
    pub const EFI_ARM64: u16 = 11;
    pub const EFI_X64_HTTP: u16 = 16;
    pub const EFI_ARM64_HTTP: u16 = 19;
}

/// What the client told us.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientInfo<'a> {
    pub mac: Mac,
    /// Option 93, or the arch parsed out of the option 60 string.
    pub arch: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<&'a [u8]>,
    /// Option 77.
    pub user_class: Option<&'a [u8]>,
}

impl ClientInfo<'_> {
    pub fn is_pxe(&self) -> bool {
        self.vendor_class
            .is_some_and(|v| v.starts_with(b"PXEClient"))
    }

    pub fn is_http_boot(&self) -> bool {
        self.vendor_class
            .is_some_and(|v| v.starts_with(b"HTTPClient"))
    }

    /// iPXE sends the bare string "iPXE" as user class rather than the
    /// RFC 3004 length-prefixed list, so a substring match covers both.
    pub fn is_ipxe(&self) -> bool {
        self.user_class
            .is_some_and(|u| u.windows(4).any(|w| w == b"iPXE"))
    }

    /// Firmware that omits option 93 still encodes the arch in option 60
    /// ("PXEClient:Arch:00007:UNDI:003016").
    pub fn effective_arch(&self) -> Option<u16> {
        self.arch.or_else(|| {
            let v = std::str::from_utf8(self.vendor_class?).ok()?;
            let rest = v.split(":Arch:").nth(1)?;
            rest.get(..5)?.parse().ok()
        })
    }
}

/// The boot answer: filename/URL for the `file` field (and option 67), plus
/// the vendor class to send back when the firmware requires one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    pub file: String,
    /// UEFI HTTP boot ignores offers that do not carry option 60
    /// "HTTPClient".
    pub vendor_class: Option<&'static str>,
}

impl BootFile {
    fn tftp(file: &str) -> Option<BootFile> {
        (!file.is_empty()).then(|| BootFile {
            file: file.to_owned(),
            vendor_class: None,
        })
    }
}

/// Picks the boot program. `None` means "no boot info": an ordinary OS DHCP
/// client, an architecture we have nothing for, or a missing URL.
pub fn select(cfg: &BootConfig, client: &ClientInfo<'_>) -> Option<BootFile> {
    // Checked first: iPXE also sends PXEClient and an arch, and answering
    // those would make it chainload itself forever.
    if client.is_ipxe() {
        let template = cfg.ipxe_script_url.as_deref()?;
        return Some(BootFile {
            file: expand(template, client.mac),
            vendor_class: None,
        });
    }
    let arch = client.effective_arch();
    if !client.is_pxe() && !client.is_http_boot() && arch.is_none() {
        return None;
    }
    match arch? {
        arch::BIOS => BootFile::tftp(&cfg.bios_file),
        arch::EFI_IA32 | arch::EFI_BC | arch::EFI_X64 => BootFile::tftp(&cfg.uefi_x64_file),
        arch::EFI_ARM64 => BootFile::tftp(&cfg.uefi_arm64_file),
        arch::EFI_X64_HTTP => http(cfg.http_x64_url.as_deref()?),
        arch::EFI_ARM64_HTTP => http(cfg.http_arm64_url.as_deref()?),
        _ => None,
    }
}

fn http(url: &str) -> Option<BootFile> {
    Some(BootFile {
        file: url.to_owned(),
        vendor_class: Some("HTTPClient"),
    })
}

fn expand(template: &str, mac: Mac) -> String {
    let colon = mac.to_string();
    template
        .replace("{mac_hyphen}", &colon.replace(':', "-"))
        .replace("{mac}", &colon)
}
