#!/usr/bin/env bash
# How late an instance sees a change another instance committed: three `custos serve` on one
# fresh PostgreSQL database (the keys of one `custos keys create`). A change is made through
# instance 0 (a decided consumer moves to a business plan: allow/decided → allow/not_applicable,
# both answered from memory without asking the store, so the lag is the feed's); then instance
# 1's gate is read until it answers the new state. Measured at rest and while four
# writers load instances 0 and 2, beside the floor of the measurement in the same run: one gate
# read of instance 1 (the lag can't be less than that).
#
# Usage: bench/replicas.sh [CHANGES] [DATABASE]   (default 300, host=127.0.0.1 port=5432 user=postgres)
# Goals: lag p99 <= 100 ms at rest and <= 1 s under load.
set -euo pipefail
cd "$(dirname "$0")/.."
changes="${1:-300}"
base="${2:-host=127.0.0.1 port=5432 user=postgres}"

. bench/lib.sh
prepare
run="$work/replicas"; rm -rf "$run"; mkdir -p "$run"
db="custos_bench_replicas_$$"
psql "$base dbname=postgres" -qc "CREATE DATABASE $db"
url="$base dbname=$db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$base dbname=postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

"$custos" keys create --out "$run/keys" >/dev/null
addresses=()
for i in 0 1 2; do
  out="$run/serve-$i.out"
  "$custos" serve --data "$run/data-$i" --database "$url" --keys "$run/keys" --listen 127.0.0.1:0 \
    --sweep-every off >"$out" 2>"$run/serve-$i.log" &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q "custos: serving" "$out" && break; sleep 0.05; done
  addresses+=("$(grep -o 'http://[0-9.:]*' "$out" | head -1)")
done
token=$("$custos" token create --role service --data "$run/data-0" --database "$url" --keys "$run/keys")

python3 - "$changes" "$token" "${addresses[@]}" <<'PY'
import json, sys, threading, time, urllib.request

changes, token, addresses = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
notice = "consumer-terms-2025"

def call(address, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")

def gate(address, account):
    status, body = call(address, "GET", f"/v1/accounts/{account}/gate")
    return body.get("reason") if status == 200 else status

def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]

def measure(label, count, offset):
    lags, floors = [], []
    for n in range(count):
        account = f"b{offset + n}"
        # A decided consumer (allow, "decided"), then moved to a business plan (allow,
        # "not_applicable"): instance 1 answers both from memory, so what it answers shows
        # how far its index follows the store (a prompt or a block it would confirm first).
        assert call(addresses[0], "POST", "/v1/accounts", {"id": account, "plan": "pro",
            "choice": {"allowed": True, "channel": "signup", "notice": notice}})[0] == 201
        while gate(addresses[1], account) != "decided":
            time.sleep(0.001)
        assert call(addresses[0], "PATCH", f"/v1/accounts/{account}", {"plan": "team"})[0] == 200
        acknowledged = time.perf_counter()
        while True:
            started = time.perf_counter()
            seen = gate(addresses[1], account)
            floors.append(time.perf_counter() - started)
            if seen == "not_applicable":
                break
        lags.append(time.perf_counter() - acknowledged)
    ms = lambda s: f"{s * 1000:.1f} ms"
    print(f"{label}: {len(lags)} changes: lag p50 {ms(percentile(lags, .5))}, p99 {ms(percentile(lags, .99))}, "
          f"max {ms(max(lags))}; floor (one gate read of instance 1) p50 {ms(percentile(floors, .5))}; "
          f"p99 lag / floor p50 = {percentile(lags, .99) / percentile(floors, .5):.1f}x")
    return percentile(lags, .99)

at_rest = measure("at rest", changes, 0)

# Load: four writers record choices on accounts of their own through instances 0 and 2.
stop = threading.Event()
written = [0]
def writer(k):
    account = f"w{k}"
    address = addresses[0 if k % 2 == 0 else 2]
    call(address, "POST", "/v1/accounts", {"id": account, "plan": "pro",
        "choice": {"allowed": True, "channel": "signup", "notice": notice}})
    i = 0
    while not stop.is_set():
        call(address, "PUT", f"/v1/accounts/{account}/training-preference",
             {"allowed": i % 2 == 0, "channel": "settings", "notice": notice})
        i += 1
        written[0] += 1
threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
for t in threads:
    t.start()
started = time.perf_counter()
loaded = measure("under load", changes, changes)
stop.set()
for t in threads:
    t.join()
print(f"under load: {written[0] / (time.perf_counter() - started):.0f} choices/s written meanwhile")
print(f"== result: lag p99 {at_rest * 1000:.1f} ms at rest (goal <= 100 ms), {loaded * 1000:.1f} ms under load (goal <= 1000 ms)")
PY
