#!/usr/bin/env bash
# Installs what is missing, builds, and starts the all-in-one cloud.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
cd "$STRATO_ROOT"
log "building (release)"
cargo build --release --locked -p stack-manager -p strato-cli -p hypervisor-agent -p storage-agent
exec "$STRATO_ROOT/target/release/strato" up "$@"
