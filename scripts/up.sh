#!/usr/bin/env bash
# Installs what is missing, builds, and starts the all-in-one cloud: the
# stack manager and a hypervisor agent on this machine, with the tiny guest
# image built locally and registered, so a first VM needs no download.
# With --rack N, also the Debian guest image and the PXE boot environment
# for the demo rack (see `strato up --help`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
ensure_virt
cd "$STRATO_ROOT"
log "guest image"
bash scripts/guest-images.sh tiny >/dev/null
for arg in "$@"; do
    case "$arg" in
        --rack|--rack=*)
            log "demo rack: Debian guest image and boot environment"
            bash scripts/guest-images.sh debian >/dev/null
            bash scripts/boot-env.sh >/dev/null
            ;;
    esac
done
log "building (release)"
cargo build --release --locked -p stack-manager -p strato-cli -p hypervisor-agent -p storage-agent -p provisioner
exec "$STRATO_ROOT/target/release/strato" up "$@"
