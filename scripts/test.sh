#!/usr/bin/env bash
# The test command (README): installs what the page tests need when it is missing (Debian's
# chromium and chromium-driver), then runs the whole suite. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "scripts/test.sh: installing Debian's chromium and chromium-driver for the page tests" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q chromium chromium-driver; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q chromium chromium-driver
  fi
fi

exec cargo test --workspace "$@"
