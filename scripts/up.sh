#!/usr/bin/env bash
# Installs what is missing, builds, and starts the all-in-one cloud: the
# stack manager and a hypervisor agent on this machine, with the tiny guest
# image built locally and registered, so a first VM needs no download.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
ensure_virt
cd "$STRATO_ROOT"
log "guest image"
bash scripts/guest-images.sh tiny >/dev/null
log "building (release)"
cargo build --release --locked -p stack-manager -p strato-cli -p hypervisor-agent -p storage-agent
exec "$STRATO_ROOT/target/release/strato" up "$@"
