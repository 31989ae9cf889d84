#!/usr/bin/env bash
# A local PostgreSQL primary and hot standby, for the tests and benches of failover (README:
# "Running more than one instance"). Debian's cluster tools, on spare ports:
#
#   scripts/postgres-replicas.sh up       # primary on 5433, synchronous hot standby on 5434
#   scripts/postgres-replicas.sh stop-primary  # stop the primary at once (an outage)
#   scripts/postgres-replicas.sh promote  # stop the primary if it runs, promote the standby
#   scripts/postgres-replicas.sh down     # remove both clusters and their data
#
# Both trust connections on loopback only (test clusters: no password, nothing beyond
# 127.0.0.1). The standby is synchronous (`synchronous_standby_names = '*'`), so a commit the primary
# acknowledges is on the standby too: promoting it loses no acknowledged write.
# Connect with: host=127.0.0.1,127.0.0.1 port=5433,5434 user=postgres target_session_attrs=read-write
set -euo pipefail

version=${PG_VERSION:-$(ls /usr/lib/postgresql | sort -n | tail -1)}
primary=custos_primary
standby=custos_standby
primary_port=${PRIMARY_PORT:-5433}
standby_port=${STANDBY_PORT:-5434}
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

exists() { pg_lsclusters -h | awk '{print $2}' | grep -qx "$1"; }

trust_loopback() {
  local conf=/etc/postgresql/$version/$1
  root tee "$conf/pg_hba.conf" >/dev/null <<EOF
# custos test cluster: trust on loopback only
local   all          all                    trust
host    all          all    127.0.0.1/32    trust
host    all          all    ::1/128         trust
local   replication  all                    trust
host    replication  all    127.0.0.1/32    trust
host    replication  all    ::1/128         trust
EOF
}

wait_ready() {
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$1" && return 0
    sleep 0.5
  done
  echo "postgres-replicas: the cluster on port $1 did not start" >&2
  return 1
}

down() {
  for cluster in "$standby" "$primary"; do
    if exists "$cluster"; then
      root pg_dropcluster --stop "$version" "$cluster"
    fi
  done
}

up() {
  down
  # The folder under /var/lib/postgresql must be the postgres user's, or initdb refuses.
  root mkdir -p "/var/lib/postgresql/$version"
  root chown postgres:postgres /var/lib/postgresql "/var/lib/postgresql/$version"
  root pg_createcluster "$version" "$primary" -p "$primary_port" -- --auth=trust >/dev/null
  trust_loopback "$primary"
  root tee "/etc/postgresql/$version/$primary/conf.d/custos.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 5
synchronous_standby_names = '*'
synchronous_commit = on
EOF
  root pg_ctlcluster "$version" "$primary" start
  wait_ready "$primary_port"

  root pg_createcluster "$version" "$standby" -p "$standby_port" -- --auth=trust >/dev/null
  trust_loopback "$standby"
  local data=/var/lib/postgresql/$version/$standby
  root rm -rf "$data"
  # -R writes standby.signal and the primary's address (into postgresql.auto.conf).
  as_postgres pg_basebackup -h 127.0.0.1 -p "$primary_port" -U postgres -D "$data" -R -X stream -c fast
  root tee "/etc/postgresql/$version/$standby/conf.d/custos.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
hot_standby = on
EOF
  root pg_ctlcluster "$version" "$standby" start
  wait_ready "$standby_port"
  # Wait until the primary counts the standby as synchronous: before that, commits would wait.
  for _ in $(seq 1 60); do
    state=$(as_postgres psql -h 127.0.0.1 -p "$primary_port" -Atc \
      "SELECT sync_state FROM pg_stat_replication LIMIT 1" postgres || true)
    [ "$state" = "sync" ] && { echo "postgres-replicas: primary on $primary_port, synchronous standby on $standby_port"; return 0; }
    sleep 0.5
  done
  echo "postgres-replicas: the standby never became synchronous" >&2
  return 1
}

stop_primary() {
  if pg_isready -q -h 127.0.0.1 -p "$primary_port"; then
    root pg_ctlcluster "$version" "$primary" stop -m immediate
  fi
}

promote() {
  stop_primary
  as_postgres psql -h 127.0.0.1 -p "$standby_port" -Atc "SELECT pg_promote(wait => true)" postgres >/dev/null
  echo "postgres-replicas: the primary is down; the standby on $standby_port is the primary now"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop-primary) stop_primary ;;
  promote) promote ;;
  *) echo "usage: $0 up|stop-primary|promote|down" >&2; exit 2 ;;
esac
