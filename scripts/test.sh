#!/usr/bin/env bash
# Installs what is missing and runs the whole test suite: unit tests, the
# API suite against SQLite and PostgreSQL, the OpenAPI drift check, the
# hypervisor agent's end-to-end tests against the machine's libvirtd and
# QEMU with the guest images scripts/guest-images.sh builds (cached in
# /var/cache/strato/images), and the storage agent's iSCSI target judged by
# libiscsi's iscsi-test-cu and QEMU's iscsi:// driver, and the provisioner
# PXE-booting QEMU VMs in a private network namespace.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
ensure_postgres
ensure_virt
# libiscsi's initiators judge the iSCSI target; tgt is the benchmark's peer.
# The provisioner's boot services are judged by real DHCP/TFTP clients and
# relays (dnsmasq is the benchmarks' peer; only its binary, no service);
# an operator logs in to a deployed machine with ssh.
apt_install libiscsi-bin tgt isc-dhcp-client isc-dhcp-relay tftp-hpa atftp dnsmasq-base curl openssh-client
cd "$STRATO_ROOT"
log "guest images"
bash scripts/guest-images.sh >/dev/null
log "boot environment"
bash scripts/boot-env.sh >/dev/null
log "cargo fmt --check"
cargo fmt --all -- --check
log "build"
cargo build --locked --workspace
# In the test profile: this only keeps them compiling, and a second
# (release) build of the workspace would cost CI minutes for nothing.
log "benchmarks compile"
cargo build --locked --workspace --benches
log "real peers this run is judged against"
peer_versions
log "tests"
# Every test binary runs even when an earlier one fails (a fresh machine
# must show everything that is wrong at once); the run still fails at the
# end. The log is kept to print how long each binary took.
results="$(mktemp)"
status=0
cargo test --locked --workspace --lib --bins --tests --no-fail-fast -- --test-threads 2 2>&1 |
    tee "$results" || status=$?
log "time per test binary"
test_binary_times "$results"
rm -f "$results"
exit "$status"
