#!/usr/bin/env bash
# Durable events per second through POST /v1/events (batches of 100 new-conversation messages,
# one commit per batch) against raw rusqlite writing the same rows with the same durability and
# the same batching, in one run; prints the ratio (goal >= 0.5x). With --database, both write
# to that PostgreSQL server instead (custos to a fresh database, the baseline through the
# `postgres` driver with prepared statements, as many connections as custos's writers).
# With --stored ACCOUNTS CONVERSATIONS, custos writes to a copy of that demo store (see
# demo_store in bench/lib.sh) instead of an empty one: the rate once that much is stored.
#
# Usage: bench/ingest.sh [DURATION] [CONNECTIONS] [--database SERVER] [--stored ACCOUNTS CONVERSATIONS]
#        (default 10s 4, an empty store)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
choose_backend "$@"
set -- "${args[@]}"
stored=()
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stored) stored=("${2:?--stored needs ACCOUNTS CONVERSATIONS}" "${3:?--stored needs ACCOUNTS CONVERSATIONS}"); shift 3 ;;
    *) positional+=("$1"); shift ;;
  esac
done
duration="${positional[0]:-10s}"
connections="${positional[1]:-4}"
need wrk wrk
prepare
cargo build --release --quiet -p custos-store --example ingest_baseline
data="$work/ingest-$$"
on_exit 'rm -rf "$data"'
# A fresh database for the baseline, and for custos on an empty store.
fresh_database
if [ ${#stored[@]} -eq 0 ]; then
  # 1000 accounts and nothing else, their histories ending where the events start.
  at=2025-10-01T00:00:00Z
  store=(--data "$data" ${database:+--database "$database"})
  "$custos" demo "${store[@]}" --accounts 1000 --conversations 0 --now "$at" >/dev/null
else
  # A copy of a demo store (the same accounts demo-00000000 … among many), written after its
  # present.
  at=2026-11-28T00:00:01Z
  demo_store "${stored[@]}"
  rm -rf "$data"; cp -r "$demo" "$data"
  if [ "$backend" = postgresql ]; then
    copy_database="custos_bench_copy_$$"
    echo "== copying $demo_database to $copy_database"
    psql "$server dbname=postgres" -qc "CREATE DATABASE $copy_database TEMPLATE $demo_database STRATEGY FILE_COPY"
    on_exit 'psql "$server dbname=postgres" -qc "DROP DATABASE IF EXISTS $copy_database WITH (FORCE)" >/dev/null 2>&1 || true'
    store=(--data "$data" --database "$server dbname=$copy_database")
  else
    store=(--data "$data")
  fi
fi
token=$("$custos" token create "${store[@]}" --role service)
admin=$("$custos" token create "${store[@]}" --role admin)
out=$(mktemp)
"$custos" serve "${store[@]}" --listen 127.0.0.1:0 --clock manual --now "$at" >"$out" 2>/dev/null &
pid=$!
for _ in $(seq 1 600); do grep -q "custos: serving" "$out" && break; sleep 0.1; done
address=$(grep -o 'http://[0-9.:]*' "$out" | head -1)

cat >"$work/ingest.lua" <<LUA
local counter = 0
local thread_id = 0
function setup(thread) thread:set("id", math.random(1, 1e9)) end
function init(args) thread_id = id end
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local events = {}
  for i = 1, 100 do
    counter = counter + 1
    local n = string.format("%d-%d", thread_id, counter)
    events[i] = string.format('{"id":"e%s","type":"message","at":"$at","account":"demo-%08d","conversation":"b%s","text":"hello there"}', n, counter % 1000, n)
  end
  return wrk.format(nil, "/v1/events", nil, '{"events":[' .. table.concat(events, ",") .. ']}')
end
LUA
wrk -t"$(( connections < 2 ? connections : 2 ))" -c"$connections" -d"$duration" -s "$work/ingest.lua" "$address" >"$work/ingest.wrk"
seconds=$(grep -o "requests in [0-9.]*[a-z]*" "$work/ingest.wrk" | awk '{print $3}' | sed 's/s$//')
accepted=$(curl -sf -H "Authorization: Bearer $admin" "$address/metrics" | awk -F' ' '/custos_events_total\{outcome="accepted"\}/ {print $2}')
rejected=$(curl -sf "$address/metrics" | awk -F' ' '/custos_events_total\{outcome="rejected"\}/ {print $2}')
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
custos_rate=$(python3 -c "print(f'{${accepted:-0} / $seconds:.0f}')")
baseline=$(./target/release/examples/ingest_baseline 200000 100 "$work" "$database" "$connections")
echo "custos POST /v1/events on $backend${stored:+ (into a copy of the ${stored[0]}-account, ${stored[1]}-conversation demo store)}: $custos_rate durable events/s (${accepted:-0} accepted, ${rejected:-0} rejected, in $seconds s)"
if [ "$backend" = sqlite ]; then
  echo "raw rusqlite, same rows: $baseline events/s"
else
  echo "postgres driver, same rows, $connections connections: $baseline events/s"
fi
echo "ratio: $(python3 -c "print(f'{$custos_rate / $baseline:.2f}')")x (goal >= 0.5x)"
