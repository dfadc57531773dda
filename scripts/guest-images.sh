#!/usr/bin/env bash
# Builds the guest disk images that the hypervisor agent's tests boot:
#
#   tiny.raw      busybox initramfs guest (boots to "ready" in seconds under
#                 TCG); reads the NoCloud config drive itself and reports
#                 what it found as "STRATO-GUEST ..." lines on ttyS0.
#   debian.qcow2  a real Debian 12 guest whose real cloud-init consumes the
#                 config drive; reports as "STRATO-DEBIAN ..." lines on ttyS0.
#
# Each image gets a .sha256 file (sha256sum -c format) and a .stamp file.
# An image is rebuilt only when its stamp (this script's hash + the kernel
# package version) changed, or when the image no longer matches its .sha256
# (e.g. a test booted it writable instead of through an overlay).
#
# Usage: guest-images.sh [--force] [tiny] [debian]    (default: both)
#   STRATO_IMAGE_CACHE   output directory (default /var/cache/strato/images)
#   STRATO_DEBIAN_MIRROR debootstrap mirror (default http://deb.debian.org/debian)
# Prints the paths of the requested images on stdout; progress goes to stderr.
#
# Runs as root on Debian 12. Uses no loop devices or loop mounts: file
# systems are built as plain files (mkfs.vfat -C + mtools, mkfs.ext4 -d) and
# copied into a partitioned image file with dd.
#
# Guest contract, tiny.raw (console=ttyS0): after boot it prints
#   STRATO-GUEST instance-id=<id>
#   STRATO-GUEST hostname=<hostname>
#   STRATO-GUEST address=<addr/prefix>          (empty if none configured)
#   STRATO-GUEST ssh-key=SHA256:<fingerprint>   (one per key, as ssh-keygen -l)
#   STRATO-GUEST ready
# and, if user-data starts with "#!", runs it with output on ttyS0, then
#   STRATO-GUEST user-data-exit=<status>
# Guest contract, debian.qcow2: after cloud-final.service it prints
#   STRATO-DEBIAN instance-id=<id>, hostname=, address=, ssh-key= (same
#   formats, keys read back from the authorized_keys files cloud-init wrote)
#   STRATO-DEBIAN ready
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/kernel.sh"

CACHE_DIR="${STRATO_IMAGE_CACHE:-/var/cache/strato/images}"
KERNEL_META=linux-image-cloud-amd64
DEB_CACHE="$CACHE_DIR/boot-env-kernel"
MIRROR="${STRATO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SCRIPT_HASH="$(cat "${BASH_SOURCE[0]}" "$(dirname "${BASH_SOURCE[0]}")/kernel.sh" | sha256sum | cut -d' ' -f1)"
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
# Modules the tiny guest loads (with their dependencies): the virtio PCI
# transport, disks, NIC, and isofs for the config drive.
TINY_MODULES=(virtio_pci virtio_blk virtio_net isofs)
# What the Debian guest needs on top of debootstrap's minbase: an init, the
# kernel's install-time dependencies (the kernel itself comes from the same
# .deb as tiny's), cloud-init, ifupdown for cloud-init's ENI renderer, a
# DHCP client for its fallback network (the provisioner deploys this image
# onto machines that have no config drive), sshd, and ssh-keygen for the
# report. python3-cffi-backend is listed because debootstrap does not
# resolve the virtual package python3-cryptography depends on.
DEBIAN_INCLUDE=systemd-sysv,udev,kmod,linux-base,initramfs-tools,zstd,cloud-init,python3-cffi-backend,openssh-client,openssh-server,ifupdown,isc-dhcp-client,iproute2
DEBIAN_DISK_MIB=2048

WORK=""
FORCE=0
STEP_PID="" # a running run_step(), for cleanup() to stop

usage() {
    sed -n '2,/^source /p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- plumbing

# Installs the named Debian packages that are not installed yet.
# Unmounts whatever is still mounted below the work dir (an interrupted
# chroot step), deepest first, then deletes it. Refuses to delete if a mount
# survives: rm -rf through a mounted /proc or /dev would be a disaster.
cleanup() {
    local rc=$?
    if [ -n "$STEP_PID" ]; then
        kill -TERM -- "-$STEP_PID" 2>/dev/null || true
        wait "$STEP_PID" 2>/dev/null || true
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
        if awk -v w="$WORK/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
            echo "warning: mounts remain below $WORK; not deleting it" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# Runs a long step (debootstrap) in its own process group and waits for it:
# bash runs a trap only once the foreground command is done, so without this
# a TERM sent to this script would wait minutes, and cleanup() could not
# stop the step's children (dpkg in the chroot).
run_step() {
    local rc=0
    setsid "$@" &
    STEP_PID=$!
    wait "$STEP_PID" || rc=$?
    STEP_PID=""
    return "$rc"
}

new_workdir() {
    mkdir -p "$CACHE_DIR"
    WORK="$(mktemp -d "$CACHE_DIR/.work.XXXXXX")"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# The stamp says what an image was built from. The kernel package version is
# in it because both images boot that kernel.
stamp_for() { # NAME
    printf 'image=%s script=%s kernel=%s_%s\n' "$1" "$SCRIPT_HASH" "$KERNEL_PKG" "$KERNEL_VERSION"
}

up_to_date() { # FILE (in CACHE_DIR)
    local f="$CACHE_DIR/$1"
    [ "$FORCE" -eq 0 ] || return 1
    [ -f "$f" ] && [ -f "$f.sha256" ] && [ -f "$f.stamp" ] || return 1
    [ "$(cat "$f.stamp")" = "$(stamp_for "$1")" ] || return 1
    (cd "$CACHE_DIR" && sha256sum --status -c "$1.sha256") || {
        log "$1 does not match its .sha256 (modified?); rebuilding"
        return 1
    }
}

# Moves a finished image from the work dir into the cache: image first, stamp
# last, so an interrupted publish is never taken for a complete one.
publish() { # BUILT_FILE NAME
    local name="$2"
    rm -f "$CACHE_DIR/$name.stamp"
    mv -f "$1" "$CACHE_DIR/$name"
    (cd "$CACHE_DIR" && sha256sum "$name" >"$name.sha256.tmp" && mv -f "$name.sha256.tmp" "$name.sha256")
    stamp_for "$name" >"$CACHE_DIR/$name.stamp"
}

# ------------------------------------------------------------------ kernel

# ------------------------------------------------------------- boot disks

# Builds a raw disk: MBR (syslinux's mbr.bin) + partition 1 FAT (bootable,
# syslinux, kernel, initrd) + optionally partition 2 ext4 filled from a
# directory. Each file system is made as its own file and dd'ed in, so no
# loop device or mount is needed.
make_boot_disk() { # OUT KERNEL INITRD APPEND [ROOTDIR TOTAL_MIB]
    local out="$1" kernel="$2" initrd="$3" append="$4" rootdir="${5:-}" total_mib="${6:-}"
    local d="$WORK/disk" fat_mib ext_mib
    mkdir -p "$d"
    # Room for kernel + initrd + syslinux, with slack for a kernel update.
    fat_mib=$(( ($(stat -c %s "$kernel") + $(stat -c %s "$initrd")) / 1048576 + 8 ))
    [ "$fat_mib" -ge 16 ] || fat_mib=16

    cat >"$d/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.img
  APPEND $append
EOF
    # -h: sectors before the partition, recorded in the boot sector.
    mkfs.vfat -C -n STRATOBOOT -h 2048 "$d/fat.img" $((fat_mib * 1024)) >/dev/null
    syslinux --install "$d/fat.img"
    cp "$kernel" "$d/vmlinuz"
    cp "$initrd" "$d/initrd.img"
    mcopy -i "$d/fat.img" "$d/vmlinuz" "$d/initrd.img" "$d/syslinux.cfg" ::/

    if [ -n "$rootdir" ]; then
        ext_mib=$((total_mib - 1 - fat_mib))
        log "making the ext4 root file system (${ext_mib} MiB)"
        mkfs.ext4 -q -F -L strato-root -d "$rootdir" "$d/root.img" "${ext_mib}M" >/dev/null
    else
        total_mib=$((1 + fat_mib))
    fi

    rm -f "$out"
    truncate -s "${total_mib}M" "$out"
    {
        echo "label: dos"
        echo "unit: sectors"
        echo "start=2048, size=$((fat_mib * 2048)), type=c, bootable"
        [ -z "$rootdir" ] || echo "start=$(((1 + fat_mib) * 2048)), type=83"
    } | sfdisk -q "$out"
    # Boot code only: the first 440 bytes, the partition table stays.
    dd if="$SYSLINUX_MBR" of="$out" bs=440 count=1 conv=notrunc status=none
    dd if="$d/fat.img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
    [ -z "$rootdir" ] || dd if="$d/root.img" of="$out" bs=1M seek=$((1 + fat_mib)) conv=notrunc,sparse status=none
    rm -rf "$d"
}

# ---------------------------------------------------------------- tiny.raw

# PID 1 of the tiny guest, run by busybox sh. Kept to busybox applets only.
write_tiny_init() { # FILE
    cat >"$1" <<'INIT'
#!/bin/sh
# /init of the Strato tiny test guest. PID 1: must never exit.
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /mnt/cidata /run/cidata
mount -t devpts devpts /dev/pts

# The markers go to the serial port itself, not to whatever /dev/console is.
OUT=/dev/ttyS0
[ -c "$OUT" ] || OUT=/dev/console
say() { echo "STRATO-GUEST $*" >"$OUT"; }
note() { echo "strato-init: $*" >"$OUT"; }
# Syslinux leaves terminal escapes on the current line: start a fresh one so
# that every marker starts its own line.
echo >"$OUT"

# Modules, dependencies first (the order was worked out at build time).
while read -r m; do
    insmod "/lib/modules/$m" || note "insmod $m failed"
done </lib/modules/load-order

# ISO9660 volume label: the primary volume descriptor is sector 16 (2048-byte
# sectors), "\1CD001" then the 32-byte space-padded volume id at offset 40.
iso_label() {
    [ "$(dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=1 count=5 2>/dev/null)" = CD001 ] || return 0
    dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' \000' | tr A-Z a-z
}

# The NoCloud config drive: the ISO labelled cidata. Disks appear
# asynchronously after the virtio modules load, so look for ~5 s.
find_cidata() {
    local d found
    for _ in $(seq 50); do
        for d in /dev/vd? /dev/sr?; do
            [ -b "$d" ] && [ "$(iso_label "$d")" = cidata ] && { echo "$d"; return 0; }
        done
        sleep 0.1
    done
    # No label match: take any disk that mounts as iso9660 with a meta-data.
    for d in /dev/vd? /dev/sr?; do
        [ -b "$d" ] || continue
        if mount -t iso9660 -o ro "$d" /mnt/cidata 2>/dev/null; then
            [ -f /mnt/cidata/meta-data ] && found=1 || found=0
            umount /mnt/cidata
            [ "$found" = 1 ] && { echo "$d"; return 0; }
        fi
    done
    return 1
}

# --- a little YAML: enough for NoCloud meta-data, netplan v2 (and v1)
# network-config and #cloud-config user-data.

# yaml_scalar KEY FILE [top]: the value of the first "KEY: value" line, at
# any depth (or only unindented ones with "top").
yaml_scalar() {
    [ -f "$2" ] || return 0
    awk -v key="$1" -v top="${3:-}" -v q="'" '
        { sub(/\r$/, "") }
        $0 ~ (top ? "^" : "^[ \t]*(- )?") "[\"" q "]?" key "[\"" q "]?[ \t]*:" {
            v = $0; sub("^[^:]*:[ \t]*", "", v)
            c = substr(v, 1, 1)
            if (c == "\"" || c == q) { v = substr(v, 2); sub(c ".*$", "", v) }
            else { sub(/[ \t]+#.*$/, "", v); sub(/[ \t]+$/, "", v) }
            if (v != "") { print v; exit }
        }' "$2"
}

# yaml_list KEY FILE: the items of every "KEY:" list, any depth: block items
# ("- x", also at the key's own indent), a flow list "[a, b]", a lone scalar
# "KEY: x", or the values of a mapping under KEY.
yaml_list() {
    [ -f "$2" ] || return 0
    awk -v key="$1" -v q="'" '
        function unq(s,   c) {
            sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
            c = substr(s, 1, 1)
            if ((c == "\"" || c == q) && substr(s, length(s)) == c) s = substr(s, 2, length(s) - 2)
            return s
        }
        function indent(s) { match(s, /^[ \t]*/); return RLENGTH }
        { sub(/\r$/, "") }
        inl && /^[ \t]*(#.*)?$/ { next }
        inl && indent($0) > kin { 
            if ($0 ~ /^[ \t]*- /) { v = $0; sub(/^[ \t]*- /, "", v); print unq(v) }
            else if ($0 ~ /:[ \t]/) { v = $0; sub(/^[^:]*:[ \t]*/, "", v); print unq(v) }
            next
        }
        inl && indent($0) == kin && /^[ \t]*- / { v = $0; sub(/^[ \t]*- /, "", v); print unq(v); next }
        inl { inl = 0 }
        $0 ~ "^[ \t]*(- )?" key ":" {
            v = $0; sub("^[^:]*:[ \t]*", "", v); sub(/[ \t]+#.*$/, "", v)
            kin = indent($0); if ($0 ~ /^[ \t]*- /) kin += 2
            if (v == "") { inl = 1; next }
            if (v ~ /^\[/) {
                sub(/^\[/, "", v); sub(/\][ \t]*$/, "", v)
                n = split(v, a, ","); for (i = 1; i <= n; i++) if (unq(a[i]) != "") print unq(a[i])
            } else print unq(v)
        }' "$2"
}

# 255.255.255.0 -> 24 (network-config v1 gives a netmask).
mask_to_prefix() {
    echo "$1" | awk -F. '{ n = 0; for (i = 1; i <= 4; i++) { x = $i; while (x > 0) { n += x % 2; x = int(x / 2) } } print n }'
}

# SHA256 fingerprint of an authorized_keys line, as ssh-keygen -l prints it:
# unpadded base64 of the SHA-256 of the decoded key blob (the field after
# the key type; options may come before it).
fingerprint() {
    local blob
    blob="$(echo "$1" | awk '{ for (i = 1; i < NF; i++) if ($i ~ /^(ssh-|ecdsa-|sk-)/) { print $(i + 1); exit } }')"
    [ -n "$blob" ] || return 1
    echo "SHA256:$(echo "$blob" | base64 -d | sha256sum | cut -c1-64 | xxd -r -p | base64 | tr -d '=\n')"
}

CI=/run/cidata
if dev="$(find_cidata)"; then
    mount -t iso9660 -o ro "$dev" /mnt/cidata
    cp /mnt/cidata/* "$CI/" 2>/dev/null
    umount /mnt/cidata   # a copy, so the drive may be detached later
else
    note "no NoCloud config drive (iso9660 labelled cidata) found"
fi
CLOUD_CONFIG=""
head -n1 "$CI/user-data" 2>/dev/null | grep -q '^#cloud-config' && CLOUD_CONFIG="$CI/user-data"

IID="$(yaml_scalar instance-id "$CI/meta-data")"
# cloud-init's precedence: user-data hostname over meta-data local-hostname.
HOST=""
[ -z "$CLOUD_CONFIG" ] || HOST="$(yaml_scalar hostname "$CLOUD_CONFIG" top)"
[ -n "$HOST" ] || HOST="$(yaml_scalar local-hostname "$CI/meta-data")"
[ -n "$HOST" ] && hostname "$HOST" && echo "$HOST" >/etc/hostname

NC="$CI/network-config"
ADDR="$(yaml_list addresses "$NC" | grep / | head -n1)"
if [ -z "$ADDR" ]; then   # network-config v1: address (+ netmask)
    ADDR="$(yaml_scalar address "$NC")"
    mask="$(yaml_scalar netmask "$NC")"
    case "$ADDR" in ""|*/*) ;; *) [ -n "$mask" ] && ADDR="$ADDR/$(mask_to_prefix "$mask")" || ADDR="$ADDR/32" ;; esac
fi
GW="$(yaml_scalar gateway4 "$NC")"
[ -n "$GW" ] || GW="$(yaml_scalar via "$NC")"
[ -n "$GW" ] || GW="$(yaml_scalar gateway "$NC")"

ip link set lo up
IFACE=""
# Give a virtio NIC (virtio device id 1) ~2 s to show up; no NIC, no wait.
grep -qx 0x0001 /sys/bus/virtio/devices/*/device 2>/dev/null && tries=20 || tries=1
for _ in $(seq "$tries"); do
    for n in /sys/class/net/*; do
        n="${n##*/}"; [ "$n" = lo ] || { IFACE="$n"; break 2; }
    done
    sleep 0.1
done
if [ -n "$ADDR" ] && [ -n "$IFACE" ]; then
    ip addr add "$ADDR" dev "$IFACE" || note "cannot set $ADDR on $IFACE"
    ip link set "$IFACE" up
    [ -z "$GW" ] || ip route add default via "$GW" dev "$IFACE" onlink || note "cannot add default route via $GW"
elif [ -n "$ADDR" ]; then
    note "no network interface for $ADDR"
fi

say "instance-id=$IID"
say "hostname=$HOST"
say "address=$ADDR"
{ yaml_list public-keys "$CI/meta-data"; [ -z "$CLOUD_CONFIG" ] || yaml_list ssh_authorized_keys "$CLOUD_CONFIG"; } |
    awk 'NF && !seen[$0]++' | while read -r key; do
        if fp="$(fingerprint "$key")"; then say "ssh-key=$fp"; else note "cannot parse key: $key"; fi
    done
say ready

# A user-data script is how tests drive the guest.
if head -c2 "$CI/user-data" 2>/dev/null | grep -q '^#!'; then
    cp "$CI/user-data" /run/user-data
    chmod 755 /run/user-data
    /run/user-data </dev/null >"$OUT" 2>&1
    say "user-data-exit=$?"
fi

# Stay up: a shell on the console for interactive debugging, respawned.
while true; do
    setsid cttyhack sh -l
    sleep 1
done
INIT
}

# gzip'ed newc cpio: busybox-static with all its applets, the modules
# (decompressed: busybox insmod may not read .ko.xz) and /init.
build_tiny_initrd() { # OUT
    local s="$WORK/initrd" m f a order
    rm -rf "$s"
    mkdir -p "$s"/{bin,dev,etc,lib/modules,mnt,proc,root,run,sys,tmp,usr}
    ln -s bin "$s/sbin"; ln -s ../bin "$s/usr/bin"; ln -s ../bin "$s/usr/sbin"
    cp /bin/busybox "$s/bin/busybox"
    for a in $(busybox --list); do
        [ -e "$s/bin/$a" ] || ln -s busybox "$s/bin/$a"
    done
    # busybox has no bash applet; test scripts may still say #!/bin/bash.
    printf '#!/bin/sh\nexec /bin/sh "$@"\n' >"$s/bin/bash"
    chmod 755 "$s/bin/bash"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$s/etc/passwd"
    echo 'root:x:0:' >"$s/etc/group"
    # The kernel opens /dev/console for init before /init mounts devtmpfs.
    mknod -m 600 "$s/dev/console" c 5 1
    mknod -m 666 "$s/dev/null" c 1 3

    # (Assigned first: set -e does not see a failure inside a for word list.)
    order="$(module_load_order "${TINY_MODULES[@]}")"
    : >"$s/lib/modules/load-order"
    for m in $order; do
        f="$KROOT/lib/modules/$KVER/$m"
        case "$m" in
            *.ko.xz) xz -dc "$f" >"$s/lib/modules/$(basename "$m" .xz)" ;;
            *.ko.zst) apt_install zstd; zstd -qdc "$f" >"$s/lib/modules/$(basename "$m" .zst)" ;;
            *.ko.gz) gzip -dc "$f" >"$s/lib/modules/$(basename "$m" .gz)" ;;
            *) cp "$f" "$s/lib/modules/" ;;
        esac
        f="$(basename "$m")"; f="${f%.xz}"; f="${f%.zst}"; f="${f%.gz}"
        echo "$f" >>"$s/lib/modules/load-order"
    done
    write_tiny_init "$s/init"
    chmod 755 "$s/init"
    (cd "$s" && find . | sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n) >"$1"
}

build_tiny() {
    local out="$WORK/tiny.raw"
    log "building tiny.raw"
    fetch_kernel
    build_tiny_initrd "$WORK/tiny-initrd.img"
    # quiet: kernel messages (e.g. a hot-plugged disk) would otherwise land in
    # the middle of marker lines and of user-data output on the same port.
    # no_timer_check: under emulation on a loaded host the kernel's IO-APIC
    # timer check times out and panics ("IO-APIC + timer doesn't work");
    # panic=5 reboots instead of hanging should anything else panic.
    make_boot_disk "$out" "$KROOT/boot/vmlinuz-$KVER" "$WORK/tiny-initrd.img" "console=ttyS0 quiet no_timer_check panic=5"
    publish "$out" tiny.raw
}

# ------------------------------------------------------------ debian.qcow2

# Every chroot path handed around must be inside the work dir: a stray empty
# variable must never turn "$r/tmp/*" into /tmp/*.
check_chroot() { # ROOTDIR
    case "$1" in "$WORK"/?*) ;; *) echo "error: bad chroot dir '$1'" >&2; exit 1 ;; esac
}

run_in() { # ROOTDIR CMD...
    local r="$1"; shift
    check_chroot "$r"
    chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
}

# What cloud-init and the report service need inside the Debian guest.
configure_debian() { # ROOTDIR
    local r="$1"
    check_chroot "$r"
    cat >"$r/etc/fstab" <<'EOF'
/dev/vda2  /  ext4  errors=remount-ro  0  0
EOF
    echo debian >"$r/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    # Empty machine-id: each booted instance makes its own.
    : >"$r/etc/machine-id"
    rm -f "$r/var/lib/dbus/machine-id"

    # C.UTF-8 is built into glibc: with it as the system locale cloud-init's
    # locale module has nothing to generate (locale-gen is slow under TCG).
    echo 'LANG=C.UTF-8' >"$r/etc/default/locale"

    # cloud-init: only the config drive (no network metadata services to
    # time out on); ed25519 host keys only (RSA keygen is slow under TCG).
    # Keys from user-data go to the distro's default user "debian"; root
    # gets them too, behind cloud-init's "login as debian" command
    # (disable_root: true, the Debian default).
    cat >"$r/etc/cloud/cloud.cfg.d/99-strato.cfg" <<'EOF'
# Strato test image: NoCloud config drive only.
datasource_list: [ NoCloud, None ]
ssh_genkeytypes: [ ed25519 ]
EOF

    # The report, printed once cloud-init's final stage is done.
    cat >"$r/usr/local/sbin/strato-report" <<'EOF'
#!/bin/sh
# Tells the Strato test harness, on the serial console, what cloud-init did.
out=/dev/ttyS0
say() { echo "STRATO-DEBIAN $*" >"$out"; }
echo >"$out"   # systemd may have left a status line unfinished
say "instance-id=$(cat /var/lib/cloud/data/instance-id 2>/dev/null)"
say "hostname=$(hostname)"
say "address=$(ip -4 -o addr show scope global 2>/dev/null | awk '{ print $4; exit }')"
for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
    [ -f "$f" ] && ssh-keygen -lf "$f"
done | awk '!seen[$2]++ { print $2 }' | while read -r fp; do say "ssh-key=$fp"; done
say ready
EOF
    chmod 755 "$r/usr/local/sbin/strato-report"
    cat >"$r/etc/systemd/system/strato-report.service" <<'EOF'
[Unit]
Description=Report cloud-init results on ttyS0 (Strato tests)
After=cloud-final.service
Wants=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/strato-report

# Not multi-user.target: cloud-final.service is ordered after that target,
# so that would be an ordering cycle (and systemd would drop this unit).
[Install]
WantedBy=cloud-init.target
EOF
    run_in "$r" systemctl enable --quiet strato-report.service

    # The initramfs must find the root disk: virtio over PCI. A listed
    # module set keeps the initrd (read and unpacked under TCG) small.
    printf 'virtio_pci\nvirtio_blk\n' >>"$r/etc/initramfs-tools/modules"
    echo 'MODULES=list' >"$r/etc/initramfs-tools/conf.d/strato"
}

install_kernel() { # ROOTDIR
    local r="$1"
    check_chroot "$r"
    cp "$KERNEL_DEB" "$r/tmp/kernel.deb"
    # Maintainer scripts want /proc; cleanup() unmounts it on failure.
    mount -t proc proc "$r/proc"
    run_in "$r" dpkg -i /tmp/kernel.deb >"$WORK/kernel-install.out" 2>&1 || {
        cat "$WORK/kernel-install.out" >&2
        exit 1
    }
    umount "$r/proc"
    rm -f "$r/tmp/kernel.deb"
    [ -f "$r/boot/initrd.img-$KVER" ] || { echo "error: no initrd made in the chroot" >&2; exit 1; }
}

trim_debian() { # ROOTDIR
    local r="$1"
    check_chroot "$r"
    rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*_* \
        "$r"/var/log/*.log "$r"/debootstrap "$r"/tmp/* "$r"/var/tmp/*
    # Host keys made at install time would be shared by every instance;
    # cloud-init makes new ones at first boot.
    rm -f "$r"/etc/ssh/ssh_host_*
}

build_debian() {
    local r="$WORK/debian-root" raw="$WORK/debian.raw"
    log "building debian.qcow2"
    fetch_kernel
    log "debootstrap bookworm (downloads are kept in $CACHE_DIR/debootstrap-debs)"
    mkdir -p "$CACHE_DIR/debootstrap-debs"
    run_step debootstrap --variant=minbase --include="$DEBIAN_INCLUDE" --cache-dir="$CACHE_DIR/debootstrap-debs" \
        bookworm "$r" "$MIRROR" >"$WORK/debootstrap.out" 2>&1 || {
        tail -n 20 "$WORK/debootstrap.out" >&2
        [ -f "$r/debootstrap/debootstrap.log" ] && tail -n 40 "$r/debootstrap/debootstrap.log" >&2
        exit 1
    }
    configure_debian "$r"
    log "installing $KERNEL_PKG in the chroot"
    install_kernel "$r"
    trim_debian "$r"
    make_boot_disk "$raw" "$r/boot/vmlinuz-$KVER" "$r/boot/initrd.img-$KVER" \
        "root=/dev/vda2 console=ttyS0 ro net.ifnames=0 no_timer_check panic=5" "$r" "$DEBIAN_DISK_MIB"
    rm -rf "$r"
    log "converting to qcow2"
    qemu-img convert -c -O qcow2 "$raw" "$WORK/debian.qcow2"
    rm -f "$raw"
    publish "$WORK/debian.qcow2" debian.qcow2
}

# -------------------------------------------------------------------- main

main() {
    local want=() name
    for a in "$@"; do
        case "$a" in
            tiny|debian) want+=("$a") ;;
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
        esac
    done
    [ ${#want[@]} -gt 0 ] || want=(tiny debian)
    [ "$(id -u)" -eq 0 ] || { echo "error: run as root (mknod, chroot, debootstrap)" >&2; exit 1; }

    apt_install busybox-static syslinux syslinux-common mtools dosfstools e2fsprogs fdisk \
        debootstrap cpio xz-utils qemu-utils genisoimage
    mkdir -p "$CACHE_DIR"
    # One builder at a time per cache (tests may call this concurrently).
    exec 9>"$CACHE_DIR/.lock"
    flock 9
    resolve_kernel
    new_workdir

    for name in "${want[@]}"; do
        case "$name" in
            # (if/else, not && ||: set -e does not apply inside a function
            # called on the left of || )
            tiny) if up_to_date tiny.raw; then log "tiny.raw is up to date"; else build_tiny; fi ;;
            debian) if up_to_date debian.qcow2; then log "debian.qcow2 is up to date"; else build_debian; fi ;;
        esac
    done
    for name in "${want[@]}"; do
        case "$name" in
            tiny) echo "$CACHE_DIR/tiny.raw" ;;
            debian) echo "$CACHE_DIR/debian.qcow2" ;;
        esac
    done
}

main "$@"
