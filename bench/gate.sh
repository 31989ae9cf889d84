#!/usr/bin/env bash
# The gate's hot path against nginx serving a static 60-byte JSON file, with the same wrk
# settings in the same run; then the gate index's memory per account and the time to start.
#
# Usage: bench/gate.sh [ACCOUNTS] [DURATION] [CONNECTIONS] [--database SERVER]   (default 1000000 10s 64)
# With --database, the accounts live in that PostgreSQL server (a demo store kept for later
# runs, see demo_store in bench/lib.sh), and the empty server's store is a fresh database.
# Goals: gate >= 0.5x nginx requests/s; p99 <= 5 ms at 64 connections;
# <= 64 resident bytes per account in the index; ready (serving) with 10M accounts in <= 5 s.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
choose_backend "$@"
set -- "${args[@]}"
accounts="${1:-1000000}"
duration="${2:-10s}"
connections="${3:-64}"
need wrk wrk
need nginx nginx

prepare
demo_store "$accounts" 0
full=("${store[@]}")
token=$("$custos" token create "${full[@]}" --role service)

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# The process's own memory (heap and stacks), and the file pages it holds mapped (SQLite's
# mapped reads: the OS page cache, shared and reclaimable), apart.
anon_kb() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
file_kb() { awk '/RssFile/ {print $2}' "/proc/$1/status"; }

# Waits until the server's gate index holds every account; prints the seconds since $2.
wait_loaded() { # address t0
  for _ in $(seq 1 12000); do
    curl -sf "$1/metrics" | grep -q '^custos_gate_index_loaded 1' && break
    sleep 0.05
  done
  python3 -c "import time; print(f'{time.time() - $2:.2f}')"
}

start_custos() { # store arguments → prints "pid address seconds-to-serve seconds-to-loaded"
  local out; out=$(mktemp)
  local t0; t0=$(date +%s.%N)
  "$custos" serve "$@" --listen 127.0.0.1:0 >"$out" 2>/dev/null &
  local pid=$!
  for _ in $(seq 1 6000); do grep -q "custos: serving" "$out" && break; sleep 0.05; done
  local t1; t1=$(date +%s.%N)
  local address; address=$(grep -o 'http://[0-9.:]*' "$out" | head -1)
  echo "$pid $address $(python3 -c "print(f'{$t1 - $t0:.2f}')") $(wait_loaded "$address" "$t0")"
}

echo "== memory and start-up"
empty="$work/empty"; rm -rf "$empty"
fresh_database
read -r empty_pid _ _ _ < <(start_custos --data "$empty" ${database:+--database "$database"})
sleep 0.5; empty_rss=$(rss_kb "$empty_pid"); empty_anon=$(anon_kb "$empty_pid"); empty_file=$(file_kb "$empty_pid"); kill "$empty_pid"; wait "$empty_pid" 2>/dev/null || true
# The first start may read the database from disk (cold page cache); the second is the
# restart of a server whose files the OS still caches. Both are reported. A server answers
# from its first second (an account its index does not hold yet is looked up in the store);
# "loaded" is when its index holds every account.
read -r first_pid _ first_start first_loaded < <(start_custos "${full[@]}")
kill -TERM "$first_pid"; wait "$first_pid" 2>/dev/null || true
echo "first start (page cache as found), $accounts accounts: serving after ${first_start} s, index loaded after ${first_loaded} s"
read -r pid address started loaded < <(start_custos "${full[@]}")
on_exit 'kill "$pid" 2>/dev/null || true'  # never leave a server behind, even on failure
sleep 0.5; full_rss=$(rss_kb "$pid"); full_anon=$(anon_kb "$pid"); full_file=$(file_kb "$pid")
per_account=$(python3 -c "print(f'{($full_rss - $empty_rss) * 1024 / $accounts:.1f}')")
anon_per_account=$(python3 -c "print(f'{($full_anon - $empty_anon) * 1024 / $accounts:.1f}')")
file_per_account=$(python3 -c "print(f'{($full_file - $empty_file) * 1024 / $accounts:.1f}')")
echo "restart (files cached), $accounts accounts: serving after ${started} s, index loaded after ${loaded} s"
echo "resident memory (VmRSS): ${empty_rss} KiB empty, ${full_rss} KiB with $accounts accounts => ${per_account} B/account"
echo "  anonymous (RssAnon, the index and the heap): ${empty_anon} KiB empty, ${full_anon} KiB => ${anon_per_account} B/account (goal <= 64)"
echo "  file-backed (RssFile, mapped database pages and the binary): ${empty_file} KiB empty, ${full_file} KiB => ${file_per_account} B/account"

echo "== wrk against the gate ($connections connections, $duration)"
cat >"$work/gate.lua" <<LUA
math.randomseed(42)
wrk.headers["Authorization"] = "Bearer $token"
request = function()
  return wrk.format("GET", string.format("/v1/accounts/demo-%08d/gate", math.random(0, $accounts - 1)))
end
LUA
# The server's CPU time over the run, per request: steadier than requests/s on a small machine
# where the server and wrk share the cores.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_before=$(cpu_ticks "$pid")
gate=$(wrk -t2 -c"$connections" -d"$duration" --latency -s "$work/gate.lua" "$address")
ticks_after=$(cpu_ticks "$pid")
echo "$gate" | grep -E "Requests/sec|99%|Non-2xx" || true
served=$(echo "$gate" | awk '/requests in/ {print $1}')
echo "server CPU: $(python3 -c "print(f'{($ticks_after - $ticks_before) / $(getconf CLK_TCK) * 1e6 / $served:.1f}')") µs per request"
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

echo "== wrk against nginx (static 60-byte JSON, same settings)"
root=$(mktemp -d)
printf '{"decision":"allow","reason":"decided","notice":"terms-25"}' >"$root/gate.json"
nginx_serve "$root" application/json
static=$(wrk -t2 -c"$connections" -d"$duration" --latency -H "Authorization: Bearer x" "http://127.0.0.1:$nginx_port/gate.json")
echo "$static" | grep -E "Requests/sec|99%" || true
kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true

g=$(echo "$gate" | awk '/Requests\/sec/ {print $2}')
n=$(echo "$static" | awk '/Requests\/sec/ {print $2}')
echo "== result: gate ${g} req/s, nginx ${n} req/s, ratio $(python3 -c "print(f'{$g / $n:.2f}')")x (goal >= 0.5x)"
