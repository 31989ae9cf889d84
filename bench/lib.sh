# Shared by the benchmark scripts: installs a missing tool from Debian, builds the release
# binary, and keeps generated data under bench/.work (ignored by git).
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

# Builds custos and sets $custos and $work.
prepare() {
  cargo build --release --quiet
  custos=./target/release/custos
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
