#!/usr/bin/env bash
# Installs what the test suite needs and runs it: the README's test command, and what .ci/run calls.
#   bash scripts/test.sh                 # embedded defaults (SQLite, in-process events)
#   TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \
#   TEST_REDIS_URL=redis://127.0.0.1:6379/0 bash scripts/test.sh   # again against real servers
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[dev]'

# Real peers the tests talk to: Debian's Chromium (browser tests) and dcmtk (DICOM interop).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/storescu ] || missing+=(dcmtk)  # pynetdicom installs a storescu script of its own
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
