#!/usr/bin/env bash
# Installs what is missing and runs the whole test suite: unit tests, the
# API suite against SQLite and PostgreSQL, the OpenAPI drift check, and the
# hypervisor agent's end-to-end tests against the machine's libvirtd and
# QEMU with the guest images scripts/guest-images.sh builds (cached in
# /var/cache/strato/images).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
ensure_postgres
ensure_virt
# tgt stands in for the storage agent in the volume test.
apt_install tgt
cd "$STRATO_ROOT"
log "guest images"
bash scripts/guest-images.sh >/dev/null
log "cargo fmt --check"
cargo fmt --all -- --check
log "build"
cargo build --locked --workspace
log "benchmarks compile"
cargo bench --locked --no-run -p stack-manager -p hypervisor-agent
log "tests"
cargo test --locked --workspace --lib --bins --tests -- --test-threads 2
