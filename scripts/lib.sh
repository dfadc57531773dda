# Shared by up.sh and test.sh: install what is missing, idempotently.
# Sourced, not run. Needs root (apt-get) on a fresh Debian 12 machine.

set -euo pipefail

STRATO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STRATO_ROOT

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

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
