#!/usr/bin/env bash
# Installs what is missing and runs the whole test suite: unit tests, the
# API suite against SQLite and PostgreSQL, and the OpenAPI drift check.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_build_deps
ensure_postgres
cd "$STRATO_ROOT"
log "cargo fmt --check"
cargo fmt --all -- --check
log "build"
cargo build --locked --workspace
log "benchmarks compile"
cargo bench --locked --no-run -p stack-manager
log "tests"
cargo test --locked --workspace --lib --bins --tests -- --test-threads 2
