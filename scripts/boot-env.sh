#!/usr/bin/env bash
# Builds the Strato boot environment: the kernel + initramfs the provisioner
# PXE-boots bare-metal machines into, to commission them (report a hardware
# inventory) or to deploy them (write a raw disk image to a disk).
#
#   $STRATO_IMAGE_CACHE/boot-env/vmlinuz      Debian's cloud kernel
#   $STRATO_IMAGE_CACHE/boot-env/initrd.img   busybox-static + modules + /init
#   $STRATO_IMAGE_CACHE/boot-env/SHA256SUMS   (sha256sum -c format)
#   $STRATO_IMAGE_CACHE/boot-env/stamp        what they were built from
#
# Rebuilt only when the stamp (this script's hash, the hash of
# templates/boot-env/, the kernel package version, busybox's version)
# changed or the files no longer match SHA256SUMS.
#
# Usage: boot-env.sh [--force]
#   STRATO_IMAGE_CACHE         output cache (default /var/cache/strato/images)
#   STRATO_BOOTENV_KERNEL      kernel metapackage (default linux-image-cloud-amd64;
#                              linux-image-amd64 has the drivers of real servers:
#                              ahci, e1000e, igb, ixgbe, i40e, ice, bnxt, tg3...)
#   STRATO_KERNEL_DEB          a local copy of the resolved kernel .deb; used only
#                              if its SHA256 matches apt's index (saves a download;
#                              a downloaded .deb is kept in $STRATO_IMAGE_CACHE/boot-env-kernel)
# Prints the output directory on stdout; progress goes to stderr. Runs as root.
#
# Kernel command line (the provisioner's iPXE script sets it):
#   strato.url=<base>          e.g. http://10.99.0.1:8080/bootenv/<machine-id>/<secret>
#   strato.mode=commission|deploy
#   strato.disk=<name>         deploy target, e.g. sda or /dev/nvme0n1 (default: the
#                              first non-removable vd*, sd*, nvme*n* disk of size > 0)
#   BOOTIF=01-aa-bb-cc-dd-ee-ff optional (iPXE: BOOTIF=01-${netX/mac:hexhyp}):
#                              try DHCP on this NIC first
#   recommended too: console=tty0 console=ttyS0,115200 quiet panic=10
#
# HTTP contract (all below <base>; plain HTTP/1.x; any 2xx is success):
#   commission:
#     POST <base>/inventory   Content-Type: application/json, body:
#       {"cpus":N,"cpu_model":"..","ram_mib":N,
#        "disks":[{"name":"vda","size_bytes":N,"model":".."}],
#        "nics":[{"name":"eth0","mac":"52:54:00:..","link":true}]}
#     then powers off.
#   deploy:
#     GET  <base>/image-size    decimal byte count of the image (required)
#     GET  <base>/image-map     optional: "offset length sha256" lines, one per
#                               chunk of the image's data (MiB-aligned offsets);
#                               then only these are written, each checked first:
#     GET  <base>/image-chunk/<offset>/<length>   one chunk's bytes
#   without an image-map (404), the whole image is streamed:
#     GET  <base>/image-sha256  64 hex digits (optional: 404 skips the check)
#     GET  <base>/image         the raw disk image, streamed to the disk
#     GET  <base>/cloud-init-seed  optional (404: skipped): a cloud-init config
#                               written to etc/cloud/cloud.cfg.d/90-strato-provisioner.cfg
#                               on the image's ext4 partition that has etc/cloud
#                               (post-install); none such fails the deploy
#     POST <base>/deployed      empty body, after the image was written, its
#                               length (and hash) checked and the disk synced;
#                               then reboots
#   any failure (either mode):
#     POST <base>/failed        Content-Type: text/plain, one-line reason;
#                               then powers off (provisioner timeouts take over)
#   Every console line of /init starts with "STRATO-BOOTENV ".
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/kernel.sh"

CACHE_DIR="${STRATO_IMAGE_CACHE:-/var/cache/strato/images}"
OUT_DIR="$CACHE_DIR/boot-env"
DEB_CACHE="$CACHE_DIR/boot-env-kernel"
TEMPLATE_DIR="$STRATO_ROOT/templates/boot-env"
KERNEL_META="${STRATO_BOOTENV_KERNEL:-linux-image-cloud-amd64}"
SCRIPT_HASH="$(cat "${BASH_SOURCE[0]}" "$(dirname "${BASH_SOURCE[0]}")/kernel.sh" | sha256sum | cut -d' ' -f1)"
# Always loaded (dependencies first): virtio PCI transport, NIC and disks,
# sd_mod for SCSI/SATA/USB disks, and ext4 to seed an installed system.
CORE_MODULES=(virtio_pci virtio_net virtio_blk virtio_scsi sd_mod ext4)
# Loaded only when a PCI device matches one of their aliases (or of their
# dependencies': mlx4_en binds through mlx4_core). Those this kernel lacks
# are skipped; the cloud kernel has few of them, linux-image-amd64 most.
HW_MODULES=(ahci ata_piix e1000 e1000e igb ixgbe i40e ice bnxt_en tg3 r8169
    mlx4_en mlx5_core ena gve ixgbevf vmxnet3 megaraid_sas mpt3sas smartpqi hpsa
    vmw_pvscsi)

WORK=""
FORCE=0

usage() {
    sed -n '2,/^# shellcheck/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- plumbing
# (Kernel packages and module order come from kernel.sh, shared with
# guest-images.sh.)

cleanup() {
    local rc=$?
    [ -n "$WORK" ] && [ -d "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}

# Is NAME a loadable module of this kernel (not built in, not absent)?
is_module() { # NAME
    local re="${1//_/[-_]}"
    grep -Eq "/${re}\.ko(\.xz|\.zst|\.gz)?:" "$KROOT/lib/modules/$KVER/modules.dep"
}

# Copies one module (a modules.dep path) into DIR, decompressed (busybox
# insmod may not read compressed ones); prints its file name.
copy_module() { # MODPATH DIR
    local f="$KROOT/lib/modules/$KVER/$1" name
    name="$(basename "$1")"; name="${name%.xz}"; name="${name%.zst}"; name="${name%.gz}"
    if [ ! -f "$2/$name" ]; then
        case "$1" in
            *.ko.xz) xz -dc "$f" >"$2/$name" ;;
            *.ko.zst) apt_install zstd; zstd -qdc "$f" >"$2/$name" ;;
            *.ko.gz) gzip -dc "$f" >"$2/$name" ;;
            *) cp "$f" "$2/$name" ;;
        esac
    fi
    echo "$name"
}

# ----------------------------------------------------------------- initrd

stamp() {
    local tpl_hash
    tpl_hash="$(cd "$TEMPLATE_DIR" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
    printf 'boot-env script=%s templates=%s kernel=%s_%s busybox=%s\n' "$SCRIPT_HASH" "$tpl_hash" \
        "$KERNEL_PKG" "$KERNEL_VERSION" "$(dpkg-query -W -f='${Version}' busybox-static)"
}

up_to_date() {
    [ "$FORCE" -eq 0 ] || return 1
    [ -f "$OUT_DIR/vmlinuz" ] && [ -f "$OUT_DIR/initrd.img" ] && [ -f "$OUT_DIR/SHA256SUMS" ] && [ -f "$OUT_DIR/stamp" ] || return 1
    [ "$(cat "$OUT_DIR/stamp")" = "$(stamp)" ] || return 1
    (cd "$OUT_DIR" && sha256sum --status -c SHA256SUMS) || {
        log "boot-env files do not match SHA256SUMS (modified?); rebuilding"
        return 1
    }
}

# gzip'ed newc cpio: busybox-static with all its applets, the modules, /init
# and the udhcpc event script. Layout inside:
#   /lib/modules/*.ko        decompressed modules
#   /lib/modules/load-order  core modules, dependencies first: always loaded
#   /lib/modules/hw-aliases  "<modalias glob> <module.ko>..." per alias of
#                            the hardware modules: loaded when a device matches
build_initrd() { # OUT
    local s="$WORK/initrd" a m p order closure names
    rm -rf "$s"
    mkdir -p "$s"/{bin,dev,etc,lib/modules,proc,root,run,sys,tmp,usr}
    ln -s bin "$s/sbin"; ln -s ../bin "$s/usr/bin"; ln -s ../bin "$s/usr/sbin"
    cp /bin/busybox "$s/bin/busybox"
    for a in $(busybox --list); do
        [ -e "$s/bin/$a" ] || ln -s busybox "$s/bin/$a"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$s/etc/passwd"
    echo 'root:x:0:' >"$s/etc/group"
    printf 'hosts: files dns\n' >"$s/etc/nsswitch.conf"
    printf '127.0.0.1\tlocalhost\n' >"$s/etc/hosts"
    mknod -m 600 "$s/dev/console" c 5 1
    mknod -m 666 "$s/dev/null" c 1 3

    order="$(module_load_order "${CORE_MODULES[@]}")"
    : >"$s/lib/modules/load-order"
    for p in $order; do
        copy_module "$p" "$s/lib/modules" >>"$s/lib/modules/load-order"
    done

    : >"$s/lib/modules/hw-aliases"
    for m in "${HW_MODULES[@]}"; do
        if ! is_module "$m"; then
            log "hardware module $m: not a module of $KVER (built in or absent)"
            continue
        fi
        closure="$(module_load_order "$m")"
        names=""
        for p in $closure; do
            names="$names $(copy_module "$p" "$s/lib/modules")"
        done
        # The aliases of the module and of its dependencies (in
        # modules.alias, "alias <glob> <module>" with - spelled _ or -).
        awk -v mods="$closure" -v names="$names" '
            BEGIN { n = split(mods, a, " "); for (i = 1; i <= n; i++) { b = a[i]; sub(/.*\//, "", b); sub(/\.ko.*$/, "", b); gsub(/-/, "_", b); want[b] = 1 } }
            $1 == "alias" { m = $3; gsub(/-/, "_", m); if ((m in want) && $2 ~ /^pci:/) print $2 names }
        ' "$KROOT/lib/modules/$KVER/modules.alias" >>"$s/lib/modules/hw-aliases"
    done

    install -m 755 "$TEMPLATE_DIR/init" "$s/init"
    install -m 755 "$TEMPLATE_DIR/udhcpc.script" "$s/etc/udhcpc.script"
    (cd "$s" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n) >"$1"
}

build() {
    log "building the boot environment ($KERNEL_PKG $KERNEL_VERSION)"
    fetch_kernel
    cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
    build_initrd "$WORK/initrd.img"
    # Publish: stamp removed first and written last, so an interrupted
    # publish is never taken for a complete one.
    mkdir -p "$OUT_DIR"
    rm -f "$OUT_DIR/stamp"
    mv -f "$WORK/vmlinuz" "$OUT_DIR/vmlinuz"
    mv -f "$WORK/initrd.img" "$OUT_DIR/initrd.img"
    (cd "$OUT_DIR" && sha256sum vmlinuz initrd.img >SHA256SUMS.tmp && mv -f SHA256SUMS.tmp SHA256SUMS)
    stamp >"$OUT_DIR/stamp"
    log "boot env: vmlinuz $(stat -c %s "$OUT_DIR/vmlinuz") bytes, initrd.img $(stat -c %s "$OUT_DIR/initrd.img") bytes"
}

main() {
    for a in "$@"; do
        case "$a" in
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || { echo "error: run as root (mknod, apt-get)" >&2; exit 1; }
    for f in init udhcpc.script; do
        [ -f "$TEMPLATE_DIR/$f" ] || { echo "error: missing $TEMPLATE_DIR/$f" >&2; exit 1; }
    done
    apt_install busybox-static cpio xz-utils gzip
    mkdir -p "$CACHE_DIR"
    # One builder at a time per cache (the same lock as guest-images.sh).
    exec 9>"$CACHE_DIR/.lock"
    flock 9
    resolve_kernel
    if up_to_date; then
        log "boot env is up to date"
    else
        WORK="$(mktemp -d "$CACHE_DIR/.work-bootenv.XXXXXX")"
        trap cleanup EXIT
        trap 'exit 130' INT TERM
        build
    fi
    echo "$OUT_DIR"
}

main "$@"
