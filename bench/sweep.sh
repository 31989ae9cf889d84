#!/usr/bin/env bash
# Retention sweeps: purge throughput of `custos sweep` against a plain DELETE on a copy of the
# same database, and the gate's p99 under wrk while a sweep runs, against idle.
#
# Usage: bench/sweep.sh [ACCOUNTS] [CONVERSATIONS] [DUE] [--database SERVER]
#        (default 1000000 10000000 200000)
# Goals: sweep >= 0.7x the plain DELETE's conversations/s; gate p99 during a sweep
# <= 2x idle. Both sweeps purge the same DUE conversations: those that expire first.
# With --database, the demo store lives in that PostgreSQL server (kept, see demo_store in
# bench/lib.sh); each sweep runs on a copy of it (CREATE DATABASE … TEMPLATE).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
choose_backend "$@"
set -- "${args[@]}"
accounts="${1:-1000000}"
conversations="${2:-10000000}"
due="${3:-200000}"
need wrk wrk

prepare
demo_store "$accounts" "$conversations"
# Open it once (an older store is migrated then) with a sweep that finds nothing due.
"$custos" sweep "${store[@]}" --now 2000-01-01T00:00:00Z >/dev/null

# Runs SQL on the demo store (SQLite file or PostgreSQL database), printing rows as a|b.
demo_sql() {
  if [ "$backend" = postgresql ]; then
    psql "$server dbname=$demo_database" -Atc "$1"
  else
    python3 -c 'import sqlite3, sys
for row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print("|".join(map(str, row)))' \
      "$demo/custos.sqlite3" "$1"
  fi
}
# The cut: the expiry of the DUE-th conversation in expiry order (and of the 2*DUE-th, for the
# sweep that runs under wrk).
cut_at() {
  local ms
  ms=$(demo_sql "SELECT expires_at FROM conversation_expiry ORDER BY expires_at LIMIT 1 OFFSET $(($1 - 1))")
  python3 -c 'import datetime, sys
ms = int(sys.argv[1]); t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
print(t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z {ms}")' "$ms"
}
cuts=$(cut_at "$due") && cuts2=$(cut_at $((2 * due))) || { echo "cannot compute the cut" >&2; exit 1; }
read -r cut cut_ms <<<"$cuts"
read -r cut2 _ <<<"$cuts2"

# A copy of the demo store: copy NAME sets $copied to the arguments that open it.
copy() {
  rm -rf "$work/$1"; cp -r "$demo" "$work/$1"
  if [ "$backend" = postgresql ]; then
    psql "$server dbname=postgres" -qc "DROP DATABASE IF EXISTS custos_$1 WITH (FORCE)" \
      -c "CREATE DATABASE custos_$1 TEMPLATE $demo_database STRATEGY FILE_COPY"
    on_exit "psql \"\$server dbname=postgres\" -qc 'DROP DATABASE IF EXISTS custos_$1 WITH (FORCE)' >/dev/null 2>&1 || true"
    copied=(--data "$work/$1" --database "$server dbname=custos_$1")
  else
    copied=(--data "$work/$1")
  fi
}

echo "== custos sweep --now $cut on $backend (batches of 1000 conversations, each its own transaction)"
copy sweep_custos
custos_store=("${copied[@]}")
t0=$(date +%s.%N)
report=$("$custos" sweep "${custos_store[@]}" --now "$cut")
t1=$(date +%s.%N)
echo "$report"
purged=$(grep -o 'purged [0-9]*' <<<"$report" | head -1 | awk '{print $2}')
custos_rate=$(python3 -c "print(f'{$purged / ($t1 - $t0):.0f}')")

copy sweep_plain
if [ "$backend" = postgresql ]; then
  echo "== plain DELETE ... WHERE expires_at <= $cut_ms on a copy with an ordinary expiry index (one transaction, synchronous_commit as the server has it)"
  # The rows the last DELETE removed are counted through RETURNING.
  plain=$(python3 - "$server dbname=custos_sweep_plain" "$cut_ms" <<'PY'
import subprocess, sys, time
cut = int(sys.argv[2])
due = f"SELECT account_id, conversation_id FROM conversations WHERE purged_at IS NULL AND expires_at <= {cut}"
# The baseline is a plain table with an ordinary expiry index: custos's trigger and the table
# it keeps are replaced by that index before the clock starts.
setup = """\\set ON_ERROR_STOP on
DROP TRIGGER conversations_expiry_inserted ON conversations;
DROP TRIGGER conversations_expiry_moved ON conversations;
DROP TRIGGER conversations_expiry_deleted ON conversations;
DROP TABLE conversation_expiry;
CREATE INDEX conversations_by_expiry ON conversations (expires_at) WHERE purged_at IS NULL;
ANALYZE conversations;
"""
subprocess.run(["psql", sys.argv[1], "-Atq"], input=setup, check=True, capture_output=True, text=True)
script = f"""\\set ON_ERROR_STOP on
BEGIN;
DELETE FROM messages WHERE (account_id, conversation_id) IN ({due});
DELETE FROM feedback WHERE (account_id, conversation_id) IN ({due});
WITH gone AS (DELETE FROM conversations WHERE purged_at IS NULL AND expires_at <= {cut} RETURNING 1)
  SELECT count(*) FROM gone;
COMMIT;
"""
started = time.time()
out = subprocess.run(["psql", sys.argv[1], "-Atq"], input=script, check=True,
                     capture_output=True, text=True).stdout
print(int(out.split()[0]), time.time() - started)
PY
)
else
  echo "== plain DELETE ... WHERE expires_at <= $cut_ms on a copy with an ordinary expiry index (one transaction, WAL, synchronous=FULL)"
  plain=$(python3 - "$work/sweep_plain/custos.sqlite3" "$cut_ms" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL"); db.execute("PRAGMA synchronous = FULL")
db.execute("PRAGMA cache_size = -65536")
cut = int(sys.argv[2])
due = "SELECT account_id, conversation_id FROM conversations WHERE purged_at IS NULL AND expires_at <= ?"
# As on PostgreSQL: a plain table with an ordinary expiry index, made before the clock starts.
for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'conversations'").fetchall():
    db.execute(f"DROP TRIGGER {name}")
db.execute("DROP TABLE conversation_expiry")
db.execute("CREATE INDEX conversations_by_expiry ON conversations (expires_at) WHERE purged_at IS NULL")
started = time.time()
db.execute("BEGIN IMMEDIATE")
db.execute(f"DELETE FROM messages WHERE (account_id, conversation_id) IN ({due})", (cut,))
db.execute(f"DELETE FROM feedback WHERE (account_id, conversation_id) IN ({due})", (cut,))
deleted = db.execute("DELETE FROM conversations WHERE purged_at IS NULL AND expires_at <= ?", (cut,)).rowcount
db.execute("COMMIT")
print(deleted, time.time() - started)
PY
)
fi
read -r plain_deleted plain_seconds <<<"$plain"
plain_rate=$(python3 -c "print(f'{$plain_deleted / $plain_seconds:.0f}')")
echo "custos: $purged conversations in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s = $custos_rate/s"
echo "plain DELETE: $plain_deleted conversations in $(python3 -c "print(f'{$plain_seconds:.1f}')") s = $plain_rate/s"
echo "== result on $backend: sweep $custos_rate conversations/s, plain DELETE $plain_rate/s, ratio $(python3 -c "print(f'{$custos_rate / $plain_rate:.2f}')")x (goal >= 0.7x)"

echo "== the gate under wrk: idle, then while a sweep of the next $due conversations runs"
service=$("$custos" token create "${custos_store[@]}" --role service)
admin=$("$custos" token create "${custos_store[@]}" --role admin)
out=$(mktemp)
"$custos" serve "${custos_store[@]}" --listen 127.0.0.1:0 --clock manual --now "$cut2" --sweep-every off >"$out" 2>/dev/null &
pid=$!
on_exit 'kill "$pid" 2>/dev/null || true'
for _ in $(seq 1 6000); do grep -q "custos: serving" "$out" && break; sleep 0.05; done
address=$(grep -o 'http://[0-9.:]*' "$out" | head -1)
# Idle means the index holds every account: until then a gate may read the store.
for _ in $(seq 1 12000); do
  curl -sf "$address/metrics" | grep -q '^custos_gate_index_loaded 1' && break
  sleep 0.05
done
cat >"$work/sweep-gate.lua" <<LUA
math.randomseed(7)
wrk.headers["Authorization"] = "Bearer $service"
request = function()
  return wrk.format("GET", string.format("/v1/accounts/demo-%08d/gate", math.random(0, $accounts - 1)))
end
LUA
p99() { grep -E "^ +99%" | awk '{print $2}'; }
idle=$(wrk -t2 -c64 -d10s --latency -s "$work/sweep-gate.lua" "$address")
idle_p99=$(p99 <<<"$idle")
sweep_started=$(date +%s.%N)
curl -sf -X POST -H "Authorization: Bearer $admin" "$address/v1/retention/sweeps" >"$work/sweep-reply.json" &
sweeper=$!
sleep 1
busy=$(wrk -t2 -c64 -d10s --latency -s "$work/sweep-gate.lua" "$address")
busy_p99=$(p99 <<<"$busy")
if kill -0 "$sweeper" 2>/dev/null; then still="still running when wrk ended"; else still="ENDED BEFORE wrk did"; fi
wait "$sweeper"
sweep_ended=$(date +%s.%N)
echo "idle:   $(grep Requests/sec <<<"$idle"), p99 $idle_p99"
echo "sweep:  $(grep Requests/sec <<<"$busy"), p99 $busy_p99 (the sweep was $still)"
echo "the sweep under load: $(cat "$work/sweep-reply.json") in $(python3 -c "print(f'{$sweep_ended - $sweep_started:.1f}')") s"
to_ms() { python3 -c "import sys; v=sys.argv[1]; print(float(v[:-2]) if v.endswith('ms') else float(v[:-2])/1000 if v.endswith('us') else float(v[:-1])*1000)" "$1"; }
echo "== result: gate p99 idle $idle_p99, during a sweep $busy_p99, ratio $(python3 -c "print(f'{$(to_ms "$busy_p99") / $(to_ms "$idle_p99"):.2f}')")x (goal <= 2x)"
