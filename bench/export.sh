#!/usr/bin/env bash
# Training exports: `custos export` against DuckDB doing the equivalent job on Parquet copies of
# the same tables (join on the consent state, filter, aggregate each conversation's messages and
# feedback, write Parquet), in the same run; with each one's wall time and peak memory.
#
# Usage: bench/export.sh [ACCOUNTS] [CONVERSATIONS] [--database SERVER]   (default 1000000 10000000)
# With --database, custos exports from a demo store in that PostgreSQL server (kept for later
# runs, see demo_store in bench/lib.sh), and DuckDB reads Parquet copies of its tables.
# Goals: custos at least as fast as DuckDB (ratio >= 1.0x); custos's memory under 1 GiB
# whatever the data size (measured as its peak RssAnon; see watch_anon below).
#
# DuckDB's job is the usual hand-written filter over the current consent state: plan consumer,
# preference allowed, not erased, not incognito, not deleted or purged, not expired, messages up
# to the cutoff. custos applies SPEC §3 in full (the cutoff's and the snapshot's eligibility,
# withdrawals, coverage, content per plan), redacts every text, keys the rows with HMAC and signs
# a manifest; so its row count may be lower, never higher.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
choose_backend "$@"
set -- "${args[@]}"
accounts="${1:-1000000}"
conversations="${2:-10000000}"
cutoff=2026-11-28T00:00:00Z
need /usr/bin/time time

prepare
demo_store "$accounts" "$conversations"

# DuckDB and pyarrow from PyPI, in a virtual environment of the bench's own.
venv="$work/venv"
if ! "$venv/bin/python" -c 'import duckdb, pyarrow' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r crates/custos-export/tests/requirements.txt
fi
python="$venv/bin/python"

# Parquet copies of the tables DuckDB reads, made once (streamed in batches) and kept.
tables="$demo-parquet"
if [ ! -f "$tables/done" ]; then
  echo "== copying the tables to Parquet for DuckDB (once, kept in $tables)"
  rm -rf "$tables"; mkdir -p "$tables"
  "$python" - "$demo/custos.sqlite3" "$tables" "${demo_database:+$server dbname=$demo_database}" <<'PY'
import sqlite3, subprocess, sys
import pyarrow as pa, pyarrow.csv as pacsv, pyarrow.parquet as pq
out, server = sys.argv[2], sys.argv[3]
db = None if server else sqlite3.connect(sys.argv[1])
for table, columns in [
    ("accounts", "account_id, plan, preference, erased_at"),
    ("conversations", "account_id, conversation_id, surface, incognito, deleted_at, purged_at, expires_at"),
    ("messages", "account_id, conversation_id, seq, at, role, text"),
    ("feedback", "account_id, conversation_id, seq, at, rating, comment"),
]:
    if server:
        # Streamed out of PostgreSQL as CSV (booleans as 0/1, as SQLite stores them).
        select = f"SELECT {columns.replace('incognito', 'incognito::int AS incognito')} FROM {table}"
        psql = subprocess.Popen(["psql", server, "-Atqc", f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER)"],
                                stdout=subprocess.PIPE)
        reader = pacsv.open_csv(psql.stdout, read_options=pacsv.ReadOptions(block_size=64 << 20),
                                convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        writer = pq.ParquetWriter(f"{out}/{table}.parquet", reader.schema, compression="snappy")
        for batch in reader:
            writer.write_batch(batch)
        writer.close()
        assert psql.wait() == 0, f"psql failed on {table}"
        print(f"{table}: {pq.ParquetFile(f'{out}/{table}.parquet').metadata.num_rows} rows")
        continue
    cursor = db.execute(f"SELECT {columns} FROM {table}")
    names = [d[0] for d in cursor.description]
    writer = None
    while True:
        rows = cursor.fetchmany(500_000)
        if not rows:
            break
        batch = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
        if writer is None:
            writer = pq.ParquetWriter(f"{out}/{table}.parquet", batch.schema, compression="snappy")
        writer.write_table(batch.cast(writer.schema))
    writer.close()
    print(f"{table}: {pq.ParquetFile(f'{out}/{table}.parquet').metadata.num_rows} rows")
PY
  touch "$tables/done"
fi

peak() { grep "Maximum resident set size" "$1" | awk '{printf "%.0f", $NF / 1024}'; }
# Seconds of wall time from a `/usr/bin/time -v` report ([h:]mm:ss.ss).
wall() {
  grep "Elapsed (wall clock)" "$1" | awk '{print $NF}' \
    | awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }'
}
# The peak of a process's own memory (RssAnon: heap and stacks), sampled every 100 ms. Peak RSS
# also counts the pages of the database file that SQLite maps for reading: those are the OS
# page cache, shared and reclaimable, and grow with the file, not with what custos holds.
watch_anon() {
  local pid=$1 max=0 now
  while kill -0 "$pid" 2>/dev/null; do
    now=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${now:-0}" -gt "$max" ] && max=$now
    sleep 0.1
  done
  echo $((max / 1024))
}

root="$work/export-root"
rm -rf "$root"; mkdir -p "$root"
echo "== custos export --cutoff $cutoff (Parquet; core decisions, redaction, keyed rows, signed manifest)"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
[ "$backend" = sqlite ] && cat "$demo/custos.sqlite3" >/dev/null   # both start with their input in the page cache
"$custos" export "${store[@]}" --cutoff "$cutoff" --now "$cutoff" --export-root "$root" \
  --out "$root/custos" --format parquet >"$work/export-custos.out" 2>&1 &
custos_pid=$!
custos_anon=$(watch_anon "$custos_pid")
wait "$custos_pid"
tail -1 "$work/export-custos.out"
# Again under /usr/bin/time for the wall time and peak RSS (the sampling above costs a little).
rm -rf "$root/custos"
/usr/bin/time -v -o "$work/export-custos.time" "$custos" export "${store[@]}" --cutoff "$cutoff" \
  --now "$cutoff" --export-root "$root" --out "$root/custos" --format parquet 2>&1 | tail -1
custos_s=$(wall "$work/export-custos.time")
custos_mb=$(peak "$work/export-custos.time")
custos_rows=$("$python" -c "import json; print(json.load(open('$root/custos/manifest.json'))['conversations']['included'])")
custos_bytes=$(du -sb "$root/custos" | awk '{print $1}')

echo "== DuckDB $("$python" -c 'import duckdb; print(duckdb.__version__)'): the same job on the Parquet copies"
cat "$tables"/*.parquet >/dev/null
/usr/bin/time -v -o "$work/export-duckdb.time" "$python" - "$tables" "$root/duckdb.parquet" "$cutoff" <<'PY'
import datetime, sys, duckdb
tables, out, cutoff = sys.argv[1], sys.argv[2], sys.argv[3]
cut = int(datetime.datetime.fromisoformat(cutoff.replace("Z", "+00:00")).timestamp() * 1000)
con = duckdb.connect()
con.execute(f"""
COPY (
  WITH eligible AS (
    SELECT c.account_id, c.conversation_id, c.surface
    FROM '{tables}/conversations.parquet' c JOIN '{tables}/accounts.parquet' a USING (account_id)
    WHERE a.plan IN ('free', 'pro', 'max') AND a.preference = 'allowed' AND a.erased_at IS NULL
      AND c.incognito = 0 AND c.deleted_at IS NULL AND c.purged_at IS NULL AND c.expires_at > {cut}
  ),
  messages AS (
    SELECT m.account_id, m.conversation_id,
           list({{'role': m.role, 'content': m.text, 'at': make_timestamp(m.at * 1000)}} ORDER BY m.seq) AS messages
    FROM '{tables}/messages.parquet' m SEMI JOIN eligible e USING (account_id, conversation_id)
    WHERE m.at <= {cut}
    GROUP BY ALL
  ),
  feedback AS (
    SELECT f.account_id, f.conversation_id,
           list({{'rating': f.rating, 'comment': f.comment, 'at': make_timestamp(f.at * 1000)}} ORDER BY f.seq) AS feedback
    FROM '{tables}/feedback.parquet' f SEMI JOIN eligible e USING (account_id, conversation_id)
    WHERE f.at <= {cut}
    GROUP BY ALL
  )
  SELECT e.conversation_id, e.account_id, e.surface, m.messages, coalesce(f.feedback, []) AS feedback
  FROM eligible e JOIN messages m USING (account_id, conversation_id)
  LEFT JOIN feedback f USING (account_id, conversation_id)
) TO '{out}' (FORMAT parquet, COMPRESSION snappy)
""")
print(con.execute(f"SELECT count(*) FROM '{out}'").fetchall()[0][0], "rows")
PY
duck_s=$(wall "$work/export-duckdb.time")
duck_mb=$(peak "$work/export-duckdb.time")
duck_rows=$("$python" -c "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM '$root/duckdb.parquet'\").fetchall()[0][0])")

echo "== result ($conversations conversations of $accounts accounts on $backend, cutoff $cutoff)"
echo "custos: ${custos_s} s, peak RSS ${custos_mb} MiB (its own memory, RssAnon, at most ${custos_anon} MiB), ${custos_rows} conversations, $((custos_bytes / 1048576)) MiB written"
echo "duckdb: ${duck_s} s, peak RSS ${duck_mb} MiB, ${duck_rows} conversations"
echo "ratio (DuckDB time / custos time): $("$python" -c "print(f'{$duck_s / $custos_s:.2f}')")x (goal >= 1.0x); custos's own memory at most $custos_anon MiB (goal < 1024)"
