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
