#!/usr/bin/env bash
# Each page's answer time on a large store, against nginx serving the same pages as static files
# with the same wrk settings in the same run.
#
# Usage: bench/pages.sh [ACCOUNTS] [CONVERSATIONS] [DURATION] [--database SERVER]
#        (default 1000000 10000000 5s; with --database, the demo store in that PostgreSQL
#        server, kept for later runs: see demo_store in bench/lib.sh)
# Goal: every page answers within 50 ms on a demo folder of 1M accounts (p99, one
# request at a time, so that each figure is one page's own time, not a queue's).
#
# The dashboard renders from figures computed in the background (counts over every table and a
# replay of the ledger); the first visit waits for them, and that time is printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
choose_backend "$@"
set -- "${args[@]}"
accounts="${1:-1000000}"
conversations="${2:-10000000}"
duration="${3:-5s}"
need wrk wrk
need nginx nginx

prepare
demo_store "$accounts" "$conversations"
user_token=$("$custos" token create "${store[@]}" --role user --account demo-00000042)
admin_token=$("$custos" token create "${store[@]}" --role admin)

out=$(mktemp)
"$custos" serve "${store[@]}" --listen 127.0.0.1:0 --sweep-every off >"$out" 2>&1 &
pid=$!
on_exit 'kill "$pid" 2>/dev/null || true'  # never leave a server behind, even on failure
for _ in $(seq 1 6000); do grep -q "custos: serving" "$out" && break; sleep 0.05; done
address=$(grep -o 'http://[0-9.:]*' "$out" | head -1)
echo "== custos serving $accounts accounts on $backend at $address"

# The dashboard's figures are counted in the background from the start (until then the page
# says so and reloads itself); then the ledger is verified. Wait for both, so that neither
# shares the cores with wrk.
t0=$(date +%s.%N)
until curl -sf -b "custos_session=$admin_token" "$address/dashboard" | grep -q 'Figures as of'; do sleep 0.5; done
t1=$(date +%s.%N)
echo "dashboard figures ready $(python3 -c "print(f'{$t1 - $t0:.1f}')") s after the server started serving"
for _ in $(seq 1 1200); do
  curl -sf -b "custos_session=$admin_token" "$address/dashboard" | grep -q 'id="ledger-status"' && break
  sleep 1
done
t2=$(date +%s.%N)
echo "ledger verification for the dashboard done $(python3 -c "print(f'{$t2 - $t0:.1f}')") s after the server started serving"

pages=(signin signup notice privacy dashboard)
cookie_of() { case "$1" in notice|privacy) echo "$user_token" ;; dashboard) echo "$admin_token" ;; *) echo "" ;; esac; }

# Static copies of the same pages, for nginx.
root=$(mktemp -d)
for page in "${pages[@]}"; do
  curl -sf -b "custos_session=$(cookie_of "$page")" "$address/$page" >"$root/$page.html"
  echo "$page: $(wc -c <"$root/$page.html") bytes"
done

measure() { # url cookie → "p50_ms p99_ms requests_per_s"
  local result
  result=$(wrk -t1 -c1 -d"$duration" --latency -H "Cookie: custos_session=$2" "$1")
  if echo "$result" | grep -q "Non-2xx"; then echo "non-2xx answers from $1" >&2; exit 1; fi
  python3 - "$result" <<'PY'
import re, sys
text = sys.argv[1]
def ms(label):
    value, unit = re.search(rf"{label}%?\s+([\d.]+)(us|ms|s)\b", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(f"{ms('50'):.2f} {ms('99'):.2f} {rps:.0f}")
PY
}

echo "== custos, one request at a time, $duration per page"
declare -A custos_p50 custos_p99
for page in "${pages[@]}"; do
  read -r p50 p99 rps < <(measure "$address/$page" "$(cookie_of "$page")")
  custos_p50[$page]=$p50; custos_p99[$page]=$p99
  printf '%-10s p50 %7s ms   p99 %7s ms   %6s pages/s\n' "$page" "$p50" "$p99" "$rps"
done
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

echo "== nginx, the same pages as static files, same settings"
nginx_serve "$root" text/html
worst=0
for page in "${pages[@]}"; do
  read -r p50 p99 rps < <(measure "http://127.0.0.1:$nginx_port/$page.html" x)
  printf '%-10s p50 %7s ms   p99 %7s ms   %6s pages/s   custos/nginx p50: %sx\n' "$page" "$p50" "$p99" "$rps" \
    "$(python3 -c "print(f'{${custos_p50[$page]} / max($p50, 0.001):.1f}')")"
  worst=$(python3 -c "print(max($worst, ${custos_p99[$page]}))")
done
kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true
echo "== result: slowest custos page p99 ${worst} ms (goal <= 50 ms)"
