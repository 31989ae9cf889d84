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
# "host=127.0.0.1 port=5432 user=postgres"): then $database names a fresh database on it, made
# for this run and dropped when the script exits, and $backend is "postgresql". Without it,
# $database is empty and $backend "sqlite" (the data folder's own file). The other arguments
# are left in $args. Pass the store on with ${database:+--database "$database"}.
choose_backend() {
  database=""
  backend=sqlite
  args=()
  local server=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --database) server="${2:?--database needs a server}"; shift 2 ;;
      --database=*) server="${1#--database=}"; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  if [ -n "$server" ]; then
    need psql postgresql-client
    bench_database="custos_bench_$$"
    bench_server="$server"
    psql "$server dbname=postgres" -qc "CREATE DATABASE $bench_database"
    on_exit 'psql "$bench_server dbname=postgres" -qc "DROP DATABASE IF EXISTS $bench_database WITH (FORCE)" >/dev/null 2>&1 || true'
    database="$server dbname=$bench_database"
    backend=postgresql
  fi
}
