# Shared by up.sh and test.sh: install what is missing, idempotently.
# Sourced, not run. Needs root (apt-get) on a fresh Debian 12 machine.

set -euo pipefail

STRATO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STRATO_ROOT

# Each line carries the time since the script started: where a slow run
# spent its minutes shows in the log.
log() { printf '\033[1m==> [%dm%02ds] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the build and the services need.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if [ ! -f /var/lib/apt/periodic/strato-updated ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
        as_root apt-get update -qq
        as_root mkdir -p /var/lib/apt/periodic && as_root touch /var/lib/apt/periodic/strato-updated
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_build_deps() {
    apt_install build-essential pkg-config ca-certificates curl
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: no Rust toolchain (cargo) found. Install one with rustup (https://rustup.rs) and re-run." >&2
        exit 1
    fi
}

# A local PostgreSQL for the tests: the Debian cluster, started without
# systemd (CI machines may have none), with a password login for Strato.
ensure_postgres() {
    apt_install postgresql postgresql-client
    local ver
    ver="$(ls /usr/lib/postgresql | sort -n | tail -1)"
    if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver main"; then
        as_root pg_createcluster "$ver" main >/dev/null
    fi
    if ! pg_lsclusters -h | grep -q "^$ver main .* online"; then
        log "starting PostgreSQL $ver"
        as_root pg_ctlcluster "$ver" main start
    fi
    for _ in $(seq 1 30); do
        as_root su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
        sleep 0.5
    done
    as_root su postgres -c "psql -qtAc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strato') THEN CREATE ROLE strato LOGIN CREATEDB PASSWORD 'strato'; END IF; END \\\$\\\$;\"" >/dev/null
    # Each test makes its own database; drop the previous run's.
    as_root su postgres -c "psql -qtAc \"SELECT datname FROM pg_database WHERE datname LIKE 'strato_t_%'\"" |
        while read -r db; do as_root su postgres -c "dropdb --if-exists $db" >/dev/null 2>&1 || true; done
    export STRATO_TEST_POSTGRES_URL="postgres://strato:strato@127.0.0.1:5432/postgres"
}

# libvirt and QEMU for the hypervisor agent, plus the host tools it drives.
# Some machines carry qemu-utils from bookworm-backports; QEMU itself must
# then come from there too, or apt refuses the mix.
ensure_virt() {
    if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
        local utils_ver
        utils_ver="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)"
        if [[ "$utils_ver" == *bpo12* ]]; then
            if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
                log "enabling bookworm-backports (qemu-utils $utils_ver came from there)"
                echo "deb http://deb.debian.org/debian bookworm-backports main" |
                    as_root tee /etc/apt/sources.list.d/strato-backports.list >/dev/null
                as_root apt-get update -qq
            fi
            log "installing QEMU from bookworm-backports"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -t bookworm-backports qemu-system-x86 qemu-block-extra qemu-utils >/dev/null
        fi
    fi
    apt_install qemu-system-x86 qemu-utils qemu-block-extra ipxe-qemu seabios ovmf \
        libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
        genisoimage iproute2
    ensure_kvm_access
    start_libvirtd
}

# The BMC emulators the provisioner's IPMI and Redfish drivers are judged
# against, as in OpenStack Ironic's CI: VirtualBMC (IPMI) and sushy-tools
# (Redfish), both switching libvirt domains, plus ipmitool, the client the
# IPMI driver runs. They live in a venv of Debian's Python that sees
# Debian's libvirt binding (python3-libvirt): libvirt-python from PyPI
# would have to be compiled against libvirt-dev, and a pyenv Python first
# on PATH sees no Debian package. Pinned to the versions the tests passed
# with; provisioner/tests/power.rs finds them in $STRATO_BMC_BIN.
ensure_bmc_emulators() {
    apt_install ipmitool python3-libvirt python3-venv
    local venv=/opt/strato/bmc
    if ! "$venv/bin/python" -c 'import libvirt, virtualbmc, sushy_tools' 2>/dev/null ||
        [ ! -x "$venv/bin/vbmcd" ] || [ ! -x "$venv/bin/sushy-emulator" ]; then
        log "installing virtualbmc and sushy-tools in $venv"
        as_root /usr/bin/python3 -m venv --system-site-packages "$venv"
        as_root "$venv/bin/pip" install -q --disable-pip-version-check \
            virtualbmc==3.3.0 sushy-tools==2.2.0
    fi
    export STRATO_BMC_BIN="$venv/bin"
}

# What udev's rule does on a normal host: /dev/kvm belongs to group kvm,
# mode 0660. Without udev (containers) the kernel leaves it root:root
# 0600, and libvirt then probes QEMU again on every call (see
# hypervisor-agent/src/host.rs, which repairs the same at agent start).
# A device already given to some group is left alone.
ensure_kvm_access() {
    [ -c /dev/kvm ] || return 0
    getent group kvm >/dev/null || return 0
    if [ "$(stat -c %g /dev/kvm)" = 0 ] && [ "$(( 0$(stat -c %a /dev/kvm) & 060 ))" != 48 ]; then
        log "giving /dev/kvm to group kvm (mode 0660), as udev would"
        as_root chgrp kvm /dev/kvm
        as_root chmod 0660 /dev/kvm
    fi
}

# libvirtd and virtlogd, with or without systemd.
start_libvirtd() {
    if virsh -c qemu:///system version >/dev/null 2>&1; then return 0; fi
    log "starting libvirtd"
    if [ -d /run/systemd/system ]; then
        as_root systemctl start virtlogd libvirtd || true
    fi
    pgrep -x virtlogd >/dev/null || as_root virtlogd -d
    pgrep -x libvirtd >/dev/null || as_root libvirtd -d
    for _ in $(seq 1 40); do
        virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    echo "error: libvirtd did not come up" >&2
    exit 1
}

# The versions of the real components a test run talks to, one a line:
# a failure on another machine starts with "which QEMU was that?".
peer_versions() {
    local p v
    printf '  %-22s %s\n' kernel "$(uname -r)"
    printf '  %-22s %s\n' rustc "$(rustc --version 2>/dev/null | cut -d' ' -f2)"
    for p in qemu-system-x86 libvirt-daemon postgresql-15 libiscsi-bin tgt dnsmasq-base \
        isc-dhcp-client isc-dhcp-relay tftp-hpa atftp ipxe-qemu openssh-client frr nats-server libfaketime; do
        v="$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)"
        [ -n "$v" ] && printf '  %-22s %s\n' "$p" "$v"
    done
    printf '  %-22s %s\n' "QEMU (running)" "$(qemu-system-x86_64 --version 2>/dev/null | head -1)"
    printf '  %-22s %s\n' "libvirtd (running)" "$(virsh -c qemu:///system version 2>/dev/null | grep -i 'running hypervisor\|using library' | tr -s ' ' | paste -sd';')"
    printf '  %-22s %s\n' "PostgreSQL (server)" "$(su postgres -c "psql -qtAc 'show server_version'" 2>/dev/null)"
    printf '  %-22s %s\n' "KVM" "$( [ -e /dev/kvm ] && stat -c '/dev/kvm %U:%G %a' /dev/kvm || echo 'no /dev/kvm')"
}

