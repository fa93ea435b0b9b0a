#!/usr/bin/env bash
# The two commands of README.md:
#   scripts/dev.sh serve   set up, then run the daemon on the embedded demo model (loopback)
#   scripts/dev.sh test    set up, then run every check CI runs (protos, ruff, mypy, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EDGE_AGENT_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Reinstall only when the dependency list changed.
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    exec "$VENV/bin/edge-agent" serve --demo "$@"
    ;;
  test)
    # The appliance tests boot Debian in systemd-nspawn (tests/appliance): as root on a
    # Debian machine, install what they need; elsewhere they say why they cannot run.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && ! { command -v systemd-nspawn && command -v debootstrap; } >/dev/null; then
      echo "dev.sh: installing systemd-container and debootstrap for tests/appliance" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q systemd-container debootstrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q systemd-container debootstrap >/dev/null; }
    fi
    "$VENV/bin/python" scripts/gen_protos.py --check
    "$VENV/bin/ruff" check edge_agent tests scripts
    "$VENV/bin/ruff" format --check edge_agent tests scripts
    "$VENV/bin/mypy"
    for dir in tests/*/; do
      # tests/e2e imports the daemon harness and the router stand-in from their folders.
      MYPYPATH=tests/daemon:tests/cloud:tests/bundles "$VENV/bin/mypy" "$dir"
    done
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh serve|test [args...]" >&2
    exit 2
    ;;
esac
