//! Boot selection is a pure function; table-test the rules.

use dhcp::boot::{select, BootFile, ClientInfo};
use dhcp::{BootConfig, Mac};

fn cfg() -> BootConfig {
    BootConfig {
        http_x64_url: Some("http://10.0.0.1:8080/ipxe.efi".into()),
        ipxe_script_url: Some("http://10.0.0.1:8080/boot/{mac}.ipxe".into()),
        ..BootConfig::default()
    }
}

const MAC: Mac = Mac([0x52, 0x54, 0, 0xab, 0xcd, 0x01]);

fn pick(arch: Option<u16>, vc: Option<&str>, uc: Option<&[u8]>) -> Option<BootFile> {
    let c = ClientInfo {
        mac: MAC,
        arch,
        vendor_class: vc.map(str::as_bytes),
        user_class: uc,
    };
    select(&cfg(), &c)
}

fn file(b: Option<BootFile>) -> Option<String> {
    b.map(|b| b.file)
}

#[test]
fn bios_gets_undionly() {
    assert_eq!(
        file(pick(
            Some(0),
            Some("PXEClient:Arch:00000:UNDI:002001"),
            None
        ))
        .as_deref(),
        Some("undionly.kpxe")
    );
}

#[test]
fn x86_64_uefi_variants_get_ipxe_efi() {
    for arch in [6, 7, 9] {
        assert_eq!(
            file(pick(Some(arch), Some("PXEClient"), None)).as_deref(),
            Some("ipxe.efi"),
            "arch {arch}"
        );
    }
}

#[test]
fn arm64_uefi_gets_arm64_build_and_is_configurable() {
    assert_eq!(
        file(pick(Some(11), Some("PXEClient"), None)).as_deref(),
        Some("ipxe-arm64.efi")
    );
    let mut c = cfg();
    c.uefi_arm64_file = "snp-arm64.efi".into();
    let ci = ClientInfo {
        mac: MAC,
        arch: Some(11),
        vendor_class: Some(b"PXEClient"),
        user_class: None,
    };
    assert_eq!(
        select(&c, &ci).map(|b| b.file).as_deref(),
        Some("snp-arm64.efi")
    );
}

#[test]
fn uefi_http_boot_gets_url_and_httpclient_class() {
    let b = pick(Some(16), Some("HTTPClient:Arch:00016:UNDI:003001"), None).expect("boot");
    assert_eq!(b.file, "http://10.0.0.1:8080/ipxe.efi");
    assert_eq!(b.vendor_class, Some("HTTPClient"));
    // Without a configured URL there is nothing sensible to send.
    let ci = ClientInfo {
        mac: MAC,
        arch: Some(16),
        vendor_class: Some(b"HTTPClient"),
        user_class: None,
    };
    assert_eq!(select(&BootConfig::default(), &ci), None);
}

#[test]
fn ipxe_user_class_gets_script_url_with_mac() {
    let b = pick(
        Some(7),
        Some("PXEClient:Arch:00007:UNDI:003016"),
        Some(b"iPXE"),
    )
    .expect("boot");
    assert_eq!(b.file, "http://10.0.0.1:8080/boot/52:54:00:ab:cd:01.ipxe");
    // RFC 3004 length-prefixed form works too.
    assert!(pick(Some(0), Some("PXEClient"), Some(b"\x04iPXE"))
        .is_some_and(|b| b.file.ends_with(".ipxe")));
    let mut c = cfg();
    c.ipxe_script_url = Some("http://h/{mac_hyphen}".into());
    let ci = ClientInfo {
        mac: MAC,
        arch: None,
        vendor_class: None,
        user_class: Some(b"iPXE"),
    };
    assert_eq!(
        select(&c, &ci).map(|b| b.file).as_deref(),
        Some("http://h/52-54-00-ab-cd-01")
    );
}

#[test]
fn ipxe_without_template_gets_nothing_rather_than_a_loop() {
    let ci = ClientInfo {
        mac: MAC,
        arch: Some(7),
        vendor_class: Some(b"PXEClient"),
        user_class: Some(b"iPXE"),
    };
    assert_eq!(select(&BootConfig::default(), &ci), None);
}

#[test]
fn plain_os_client_gets_no_boot_info() {
    assert_eq!(pick(None, None, None), None);
    assert_eq!(pick(None, Some("udhcp 1.36"), None), None);
}

#[test]
fn arch_from_vendor_class_when_option_93_missing() {
    assert_eq!(
        file(pick(None, Some("PXEClient:Arch:00009:UNDI:003016"), None)).as_deref(),
        Some("ipxe.efi")
    );
    assert_eq!(
        file(pick(None, Some("PXEClient:Arch:00000:UNDI:002001"), None)).as_deref(),
        Some("undionly.kpxe")
    );
}

#[test]
fn unknown_arch_gets_nothing() {
    assert_eq!(pick(Some(10), Some("PXEClient"), None), None);
    assert_eq!(pick(Some(0xffff), Some("PXEClient"), None), None);
    // PXEClient without any arch cannot be served safely.
    assert_eq!(pick(None, Some("PXEClient"), None), None);
}
