#!/usr/bin/env bash
# Retention sweeps: purge throughput of `custos sweep` against a plain DELETE on a copy of the
# same database, and the gate's p99 under wrk while a sweep runs, against idle.
#
# Usage: bench/sweep.sh [ACCOUNTS] [CONVERSATIONS] [DUE]   (default 1000000 10000000 200000)
# Goals: sweep >= 0.7x the plain DELETE's conversations/s; gate p99 during a sweep
# <= 2x idle. Both sweeps purge the same DUE conversations: those that expire first.
set -euo pipefail
cd "$(dirname "$0")/.."
accounts="${1:-1000000}"
conversations="${2:-10000000}"
due="${3:-200000}"

. bench/lib.sh
need wrk wrk

prepare
demo="$work/demo-$accounts-$conversations"
demo_folder "$demo" "$accounts" "$conversations"
# Open it once (an older folder is migrated then) with a sweep that finds nothing due.
"$custos" sweep --data "$demo" --now 2000-01-01T00:00:00Z >/dev/null

# The cut: the expiry of the DUE-th conversation in expiry order (and of the 2*DUE-th, for the
# sweep that runs under wrk).
cuts=$(python3 - "$demo/custos.sqlite3" "$due" <<'PY'
import datetime, sqlite3, sys
db = sqlite3.connect(sys.argv[1]); due = int(sys.argv[2])
def cut(n):
    (ms,) = db.execute("SELECT expires_at FROM conversations WHERE purged_at IS NULL "
                       "ORDER BY expires_at LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return f"{t.strftime('%Y-%m-%dT%H:%M:%S')}.{ms % 1000:03d}Z {ms}"
print(cut(due), cut(2 * due))
PY
)
read -r cut cut_ms cut2 _ <<<"$cuts"

copy() { rm -rf "$2"; mkdir -p "$2"; cp "$1"/custos.sqlite3 "$1"/ledger-signing.key "$1"/ledger-signing.pub "$2"/; }

echo "== custos sweep --now $cut (batches of 1000 conversations, each its own transaction)"
copy "$demo" "$work/sweep-custos"
t0=$(date +%s.%N)
report=$("$custos" sweep --data "$work/sweep-custos" --now "$cut")
t1=$(date +%s.%N)
echo "$report"
purged=$(grep -o 'purged [0-9]*' <<<"$report" | head -1 | awk '{print $2}')
custos_rate=$(python3 -c "print(f'{$purged / ($t1 - $t0):.0f}')")

echo "== plain DELETE ... WHERE expires_at <= $cut_ms on a copy (one transaction, WAL, synchronous=FULL)"
copy "$demo" "$work/sweep-plain"
plain=$(python3 - "$work/sweep-plain/custos.sqlite3" "$cut_ms" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL"); db.execute("PRAGMA synchronous = FULL")
db.execute("PRAGMA cache_size = -65536")
cut = int(sys.argv[2])
due = "SELECT account_id, conversation_id FROM conversations WHERE purged_at IS NULL AND expires_at <= ?"
started = time.time()
db.execute("BEGIN IMMEDIATE")
db.execute(f"DELETE FROM messages WHERE (account_id, conversation_id) IN ({due})", (cut,))
db.execute(f"DELETE FROM feedback WHERE (account_id, conversation_id) IN ({due})", (cut,))
deleted = db.execute("DELETE FROM conversations WHERE purged_at IS NULL AND expires_at <= ?", (cut,)).rowcount
db.execute("COMMIT")
print(deleted, time.time() - started)
PY
)
read -r plain_deleted plain_seconds <<<"$plain"
plain_rate=$(python3 -c "print(f'{$plain_deleted / $plain_seconds:.0f}')")
echo "custos: $purged conversations in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s = $custos_rate/s"
echo "plain DELETE: $plain_deleted conversations in $(python3 -c "print(f'{$plain_seconds:.1f}')") s = $plain_rate/s"
echo "== result: sweep $custos_rate conversations/s, plain DELETE $plain_rate/s, ratio $(python3 -c "print(f'{$custos_rate / $plain_rate:.2f}')")x (goal >= 0.7x)"

echo "== the gate under wrk: idle, then while a sweep of the next $due conversations runs"
data="$work/sweep-custos"
service=$("$custos" token create --data "$data" --role service)
admin=$("$custos" token create --data "$data" --role admin)
out=$(mktemp)
"$custos" serve --data "$data" --listen 127.0.0.1:0 --clock manual --now "$cut2" --sweep-every off >"$out" 2>/dev/null &
pid=$!
on_exit 'kill "$pid" 2>/dev/null || true'
for _ in $(seq 1 6000); do grep -q "custos: serving" "$out" && break; sleep 0.05; done
address=$(grep -o 'http://[0-9.:]*' "$out" | head -1)
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
