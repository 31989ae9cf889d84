# Shared by the benchmark scripts: installs a missing tool from Debian, builds the release
# binary, and keeps generated data under bench/.work (ignored by git).
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

# Builds custos and sets $custos and $work. With CUSTOS_BIN set, that binary is measured
# instead and nothing is built (to compare two versions on one machine, one after the other).
prepare() {
  if [ -n "${CUSTOS_BIN:-}" ]; then
    custos=$CUSTOS_BIN
  else
    cargo build --release --quiet
    custos=./target/release/custos
  fi
  work=bench/.work
  mkdir -p "$work"
}

# A demo folder, generated once and kept for later runs: demo_folder PATH ACCOUNTS CONVERSATIONS
demo_folder() {
  if [ ! -f "$1/custos.sqlite3" ]; then
    echo "== generating $2 demo accounts with $3 conversations in $1 (kept for later runs)"
    "$custos" demo --data "$1" --accounts "$2" --conversations "$3" --now 2026-11-28T00:00:00Z
  fi
}

# Serves folder $1 with nginx (2 workers, no access log) on a free port, every file typed $2;
# sets $nginx_pid and $nginx_port.
nginx_serve() {
  chmod -R a+rX "$1"  # nginx's workers drop root; mktemp -d folders are private
  nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$1/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$nginx_port; root $1; location / { default_type $2; } }
}
NGINX
  nginx -c "$1/nginx.conf" -p "$1" &
  nginx_pid=$!
  sleep 0.5
}

# Runs each registered step when the script exits, however it exits (last registered first).
exit_steps=()
on_exit() {
  exit_steps=("$1" "${exit_steps[@]}")
  trap 'for step in "${exit_steps[@]}"; do eval "$step"; done' EXIT
}

# Takes `--database SERVER` out of the arguments (a PostgreSQL server in key=value form, e.g.
# "host=127.0.0.1 port=5432 user=postgres"): then $server names it and $backend is
# "postgresql"; without it, $server is empty and $backend "sqlite" (the data folder's own
# file). The other arguments are left in $args. A bench then opens its store through
# fresh_database or demo_store.
choose_backend() {
  backend=sqlite
  server=""
  database=""
  args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --database) server="${2:?--database needs a server}"; shift 2 ;;
      --database=*) server="${1#--database=}"; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  if [ -n "$server" ]; then
    need psql postgresql-client
    backend=postgresql
  fi
}

# On PostgreSQL, sets $database to a fresh database on $server, made for this run and dropped
# when the script exits; on SQLite leaves it empty. Pass it on with
# ${database:+--database "$database"}.
fresh_database() {
  [ "$backend" = postgresql ] || return 0
  bench_database="custos_bench_$$"
  psql "$server dbname=postgres" -qc "CREATE DATABASE $bench_database"
  on_exit 'psql "$server dbname=postgres" -qc "DROP DATABASE IF EXISTS $bench_database WITH (FORCE)" >/dev/null 2>&1 || true'
  database="$server dbname=$bench_database"
}

# A demo store, generated once and kept for later runs: demo_store ACCOUNTS CONVERSATIONS.
# Sets $demo (its data folder: the keys, and on SQLite the database) and the array $store
# (the arguments that open it). On PostgreSQL the store is the database
# custos_demo_ACCOUNTS_CONVERSATIONS on $server, kept with its folder; $demo_database names it.
demo_store() {
  if [ "$backend" = postgresql ]; then
    demo="$work/demo-pg-$1-$2"
    demo_database="custos_demo_$1_$2"
    if [ ! -f "$demo/loaded" ]; then
      echo "== generating $1 demo accounts with $2 conversations in PostgreSQL database $demo_database (kept for later runs)"
      psql "$server dbname=postgres" -qc "DROP DATABASE IF EXISTS $demo_database WITH (FORCE)" \
        -c "CREATE DATABASE $demo_database"
      rm -rf "$demo"
      "$custos" demo --data "$demo" --database "$server dbname=$demo_database" --accounts "$1" \
        --conversations "$2" --now 2026-11-28T00:00:00Z
      touch "$demo/loaded"
    fi
    store=(--data "$demo" --database "$server dbname=$demo_database")
  else
    demo="$work/demo-$1-$2"
    demo_folder "$demo" "$1" "$2"
    store=(--data "$demo")
  fi
}
