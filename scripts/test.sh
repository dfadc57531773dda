#!/usr/bin/env bash
# Installs what is missing and runs the whole test suite: unit tests, the
# API suite against SQLite and PostgreSQL, the OpenAPI drift check, the
# hypervisor agent's end-to-end tests against the machine's libvirtd and
# QEMU with the guest images scripts/guest-images.sh builds (cached in
# /var/cache/strato/images), and the storage agent's iSCSI target judged by
# libiscsi's iscsi-test-cu and QEMU's iscsi:// driver, and the provisioner
# PXE-booting QEMU VMs in a private network namespace.
#
# Every test binary runs even when another fails (a fresh machine must show
# everything that is wrong at once); the run fails at the end if any did.
# It closes with each binary's time and a line of totals.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
ensure_postgres
ensure_virt
ensure_bmc_emulators
# libiscsi's initiators judge the iSCSI target; tgt is the benchmark's peer.
# The provisioner's boot services are judged by real DHCP/TFTP clients and
# relays (dnsmasq is the benchmarks' peer; only its binary, no service);
# an operator logs in to a deployed machine with ssh. faketime runs a
# stack-manager replica whose clock is wrong.
apt_install python3 libiscsi-bin tgt isc-dhcp-client isc-dhcp-relay tftp-hpa atftp dnsmasq-base curl openssh-client faketime
cd "$STRATO_ROOT"

logs="$(mktemp -d)"
images=""
# A run that stops early (a failed build, Ctrl-C) also stops the image
# build it started, which may hold apt's lock.
trap '[ -n "$images" ] && kill -- -"$images" 2>/dev/null; rm -rf "$logs"' EXIT

log "cargo fmt --check"
cargo fmt --all -- --check

# The guest images and the boot environment are downloads and file-system
# work; the build is CPU. On a fresh machine each takes minutes, so they
# run side by side.
log "guest images and boot environment (in the background)"
setsid bash -c 'bash scripts/guest-images.sh >/dev/null && bash scripts/boot-env.sh >/dev/null' \
    >"$logs/images.log" 2>&1 &
images=$!

log "build"
cargo build --locked --workspace
# In the test profile: this only keeps them compiling, and a second
# (release) build of the workspace would cost CI minutes for nothing.
log "benchmarks compile"
cargo build --locked --workspace --benches

if ! wait "$images"; then
    cat "$logs/images.log" >&2
    echo "error: building the guest images or the boot environment failed" >&2
    exit 1
fi
images=""
log "guest images and boot environment ready"

log "real peers this run is judged against"
peer_versions

# The two binaries that PXE-boot and deploy Debian under emulation take
# more than half of the time and keep a core busy; they run one after the
# other in a lane beside the rest (see scripts/run-tests.py). Side by side
# with each other they only slow each other down (pxe 209 s alone, 302 s
# beside up_rack; up_rack 197 s alone, 416 s).
log "tests"
python3 scripts/run-tests.py \
    --side provisioner:pxe --side provisioner:up_rack \
    -- --test-threads 2
