#!/usr/bin/env bash
# Ledger appends per second through the custos store against raw rusqlite writing the same rows
# (same SHA-256 chain) with the same durability, in one run; prints the ratio (goal >= 0.7x).
#
# Usage: bench/ledger.sh [APPENDS] [FOLDER] [--database SERVER]
#        (default 2000 appends, in the system temp folder)
# FOLDER decides the disk measured: fsync cost is most of an append. With --database, the store
# writes to a fresh database on that PostgreSQL server, and the baseline writes the same rows
# through the `postgres` driver there.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
choose_backend "$@"
set -- "${args[@]}"
fresh_database
cargo build --release -p custos-store --example ledger_bench --quiet
./target/release/examples/ledger_bench "${1:-2000}" "${2:-${TMPDIR:-/tmp}}" "$database"
