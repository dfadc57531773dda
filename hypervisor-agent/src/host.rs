//! Host checks made before the first libvirt call that matters.
//!
//! **Why `/dev/kvm` is checked.** libvirt caches what each QEMU binary can
//! do (its "capabilities", probed by running QEMU for a few seconds) and
//! revalidates the cache on every lookup: a definition, a start, a
//! capabilities query. One rule of that check (libvirt 9.0,
//! `virQEMUCapsIsValid`) is: if the probe found KVM enabled but the QEMU
//! user cannot open `/dev/kvm` now, the cache is stale. QEMU 10 reports KVM
//! enabled in the probe even when its user cannot open the device (it
//! opens it before dropping privileges), while libvirt's own check runs as
//! that user. The two then never agree: every lookup probes QEMU again,
//! about 4 s each, and one domain definition does a dozen lookups. This is
//! what made a start or stop take about a minute on fresh machines with
//! QEMU 10 (measured: `virsh define` 52 s, `virsh start` 4.5 s; after the
//! repair 0.03 s and 0.5 s).
//!
//! A host gets `/dev/kvm` as `root:kvm 0660` from udev's default rules; a
//! host without udev (containers, minimal images) gets `root:root 0600`
//! from the kernel. The agent gives the device to the QEMU user's group
//! when that user cannot use it, which is what udev would have done.

use std::ffi::CStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

pub const KVM_DEVICE: &str = "/dev/kvm";

/// Who QEMU runs as: libvirt's DAC base label (`+uid:+gid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    pub uid: u32,
    pub gid: u32,
    /// Every group the user is in, the primary one included.
    pub groups: Vec<u32>,
}

/// The DAC base label from libvirt's capabilities XML, e.g.
/// `<baselabel type='kvm'>+64055:+64055</baselabel>`.
pub fn dac_base_label(caps: &str) -> Option<(u32, u32)> {
    let dac = caps.find("<model>dac</model>")?;
    let rest = &caps[dac..];
    let end = rest.find("</secmodel>").unwrap_or(rest.len());
    let secmodel = &rest[..end];
    let label = &secmodel[secmodel.find("<baselabel")?..];
    let start = label.find('>')? + 1;
    let stop = label.find("</baselabel>")?;
    let (uid, gid) = label.get(start..stop)?.trim().split_once(':')?;
    let id = |s: &str| s.trim().trim_start_matches('+').parse::<u32>().ok();
    Some((id(uid)?, id(gid)?))
}

/// The groups of the user `uid` (from the system's user database): `gid`,
/// the user's primary group and every group listing the user; just `gid`
/// when the user has no entry. QEMU runs with all of them.
pub fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    let Some((name, primary)) = user_entry(uid) else {
        return groups;
    };
    groups.push(primary);
    let Ok(cname) = std::ffi::CString::new(name) else {
        return groups;
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut buf = vec![0 as libc::gid_t; n as usize];
        let want = n;
        // SAFETY: `buf` holds `n` entries and `cname` is NUL-terminated;
        // getgrouplist writes at most `n` entries and sets `n` to the count.
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), gid, buf.as_mut_ptr(), &mut n) };
        if r >= 0 {
            buf.truncate(n.max(0) as usize);
            groups.extend(buf);
            groups.sort_unstable();
            groups.dedup();
            return groups;
        }
        if n <= want {
            n = want * 2;
        }
        if n > 65536 {
            return groups;
        }
    }
}

/// Calls a `get*_r` function with a buffer that grows while it answers
/// ERANGE (large groups from LDAP need more than the usual 16 KiB).
fn with_growing_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Option<T> {
    let mut len = 16 * 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        match call(&mut buf) {
            (0, found) => return found,
            (libc::ERANGE, _) if len < (16 << 20) => len *= 4,
            _ => return None,
        }
    }
}

/// The user's name and primary group.
fn user_entry(uid: u32) -> Option<(String, u32)> {
    with_growing_buffer(|buf| {
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to storage that outlives the call;
        // getpwuid_r writes strings into `buf` and sets `result` to `&pwd`
        // or null.
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if r != 0 || result.is_null() {
            return (r, None);
        }
        // SAFETY: on success pw_name points into `buf`, NUL-terminated.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        (0, name.to_str().ok().map(|n| (n.to_string(), pwd.pw_gid)))
    })
}

/// A group's id by name.
fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    with_growing_buffer(|buf| {
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `user_entry`.
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (r, (r == 0 && !result.is_null()).then_some(grp.gr_gid))
    })
}

/// Whether a file with this owner, group and mode is readable and writable
/// by `user`, as the kernel's permission check decides (owner bits first,
/// then group bits, then other bits; root is not special-cased here since
/// QEMU never runs as root under libvirt's DAC driver by default).
pub fn usable_by(user: &QemuUser, owner: u32, group: u32, mode: u32) -> bool {
    let rw = |bits: u32| bits & 0o6 == 0o6;
    if user.uid == owner {
        return rw(mode >> 6);
    }
    if user.groups.contains(&group) {
        return rw(mode >> 3);
    }
    rw(mode)
}

/// What [`ensure_kvm_device`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmDevice {
    Absent,
    Usable,
    /// Not usable, and left so.
    Unusable,
    /// Given to group `gid` with mode 0660.
    Repaired {
        gid: u32,
        was_mode: u32,
    },
}

/// Makes `device` usable by QEMU's user when it is not and still has the
/// kernel's root group (see the module comment). The group is `kvm` when
/// the user is in it (udev's choice), else the user's own group.
pub fn ensure_kvm_device(device: &Path, user: &QemuUser) -> std::io::Result<KvmDevice> {
    match kvm_device_state(device, user)? {
        KvmDevice::Unusable => {}
        state => return Ok(state),
    }
    let meta = std::fs::metadata(device)?;
    // Only the kernel's default (root's group) is repaired: a device some
    // administrator gave to a group stays theirs, and the log says why
    // QEMU cannot use it.
    if meta.gid() != 0 {
        return Ok(KvmDevice::Unusable);
    }
    let mode = meta.mode() & 0o7777;
    let gid = group_id("kvm")
        .filter(|g| user.groups.contains(g))
        .unwrap_or(user.gid);
    std::os::unix::fs::chown(device, None, Some(gid))?;
    std::fs::set_permissions(device, std::fs::Permissions::from_mode(0o660))?;
    Ok(KvmDevice::Repaired {
        gid,
        was_mode: mode,
    })
}

/// The agent's start-up check: reads who QEMU runs as from libvirt's
/// capabilities and, when `repair`, fixes `device` if that user cannot use
/// it. Never fatal: a host that cannot be repaired still runs guests,
/// slowly, and the log says why and how to fix it.
pub fn check_kvm_device(caps: &str, device: &Path, repair: bool) -> Option<KvmDevice> {
    let Some((uid, gid)) = dac_base_label(caps) else {
        tracing::debug!("libvirt reports no DAC base label; QEMU's user is unknown");
        return None;
    };
    let user = QemuUser {
        uid,
        gid,
        groups: groups_of(uid, gid),
    };
    let dev = device.display();
    let slow = "libvirt probes QEMU again on every call while QEMU's user cannot open it \
                (about a minute per VM start)";
    let found = if repair {
        ensure_kvm_device(device, &user)
    } else {
        kvm_device_state(device, &user)
    };
    match &found {
        Ok(KvmDevice::Absent) => tracing::info!("no {dev} on this host"),
        Ok(KvmDevice::Usable) => tracing::debug!(uid, "{dev} is usable by QEMU's user"),
        Ok(KvmDevice::Unusable) => tracing::warn!(
            uid,
            "{dev} is not usable by QEMU's user (left alone: repair_kvm_device is off, or the \
             device belongs to a group already): {slow}; make it root:kvm 0660 (udev's rule) \
             and add QEMU's user to group kvm"
        ),
        Ok(KvmDevice::Repaired { gid, was_mode }) => tracing::warn!(
            uid,
            gid,
            was_mode = format!("{was_mode:o}"),
            "{dev} was not usable by QEMU's user: {slow}; gave it to group {gid} with mode 660, \
             as udev does"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "{dev} is not usable by QEMU's user and could not be repaired: {slow}; make it \
             root:kvm 0660 (udev's rule) and add QEMU's user to group kvm"
        ),
    }
    found.ok()
}

/// What `device` is to `user`, changing nothing.
fn kvm_device_state(device: &Path, user: &QemuUser) -> std::io::Result<KvmDevice> {
    match std::fs::metadata(device) {
        Ok(m) if usable_by(user, m.uid(), m.gid(), m.mode() & 0o7777) => Ok(KvmDevice::Usable),
        Ok(_) => Ok(KvmDevice::Unusable),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KvmDevice::Absent),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: &str = "<capabilities><host><secmodel><model>none</model><doi>0</doi></secmodel>\
        <secmodel>\n<model>dac</model>\n<doi>0</doi>\n<baselabel type='kvm'>+64055:+107</baselabel>\n\
        <baselabel type='qemu'>+64055:+107</baselabel>\n</secmodel></host></capabilities>";

    #[test]
    fn base_label_is_read_from_the_dac_model() {
        assert_eq!(dac_base_label(CAPS), Some((64055, 107)));
        assert_eq!(dac_base_label("<capabilities/>"), None);
        assert_eq!(
            dac_base_label("<secmodel><model>dac</model><baselabel>x:y</baselabel></secmodel>"),
            None
        );
        // A base label elsewhere does not count as DAC's.
        assert_eq!(
            dac_base_label(
                "<secmodel><model>apparmor</model><baselabel>+1:+2</baselabel></secmodel>"
            ),
            None
        );
    }

    #[test]
    fn groups_include_the_primary_group_of_the_user_database() {
        // root's entry exists everywhere; its primary group is 0.
        assert!(groups_of(0, 4242).contains(&0));
        assert!(groups_of(0, 4242).contains(&4242));
        // A user without an entry has just the group it was given.
        assert_eq!(groups_of(4_000_000_000, 7), vec![7]);
    }

    #[test]
    fn permission_check_follows_the_kernel_order() {
        let user = QemuUser {
            uid: 64055,
            gid: 64055,
            groups: vec![64055, 107],
        };
        // What a host without udev has: root-only.
        assert!(!usable_by(&user, 0, 0, 0o600));
        // udev's rule.
        assert!(usable_by(&user, 0, 107, 0o660));
        // Group bits apply to members, other bits to the rest.
        assert!(!usable_by(&user, 0, 107, 0o606));
        assert!(usable_by(&user, 0, 5, 0o666));
        assert!(!usable_by(&user, 0, 5, 0o664));
        // The owner's bits decide for the owner, even when others may.
        assert!(!usable_by(&user, 64055, 0, 0o066));
    }

    #[test]
    fn a_root_only_device_is_given_to_the_users_group() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o600)).unwrap();
        let owner = std::fs::metadata(&dev).unwrap().uid();
        // Someone who is neither the owner nor in the file's group.
        let user = QemuUser {
            uid: owner + 1000,
            gid: 4242,
            groups: vec![4242],
        };
        // Only root may give a file to another group, as the agent does.
        assert_eq!(owner, 0, "the suite runs as root (scripts/test.sh)");
        let got = ensure_kvm_device(&dev, &user).unwrap();
        assert_eq!(
            got,
            KvmDevice::Repaired {
                gid: 4242,
                was_mode: 0o600
            }
        );
        let meta = std::fs::metadata(&dev).unwrap();
        assert_eq!(meta.gid(), 4242);
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(ensure_kvm_device(&dev, &user).unwrap(), KvmDevice::Usable);
        // A device given to another group is not taken from it.
        std::os::unix::fs::chown(&dev, None, Some(4343)).unwrap();
        assert_eq!(ensure_kvm_device(&dev, &user).unwrap(), KvmDevice::Unusable);
        assert_eq!(std::fs::metadata(&dev).unwrap().gid(), 4343);
        assert_eq!(
            ensure_kvm_device(&dir.path().join("none"), &user).unwrap(),
            KvmDevice::Absent
        );
    }
}
