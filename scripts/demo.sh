#!/usr/bin/env bash
# The main job on a fresh machine: makes .venv, installs dLLM-Serve with its service extras,
# starts the all-in-one service (private Redis + scheduler + one worker) on the built-in demo
# model, streams one generation live in the terminal, then stops everything.
# Pass extra `dllmserve serve` flags after the script name (e.g. --model /path/to/LLaDA-8B).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" 2>/dev/null || python -m pip install -q torch
python -m pip install -q -e ".[service]"
exec dllmserve serve --demo --exit-after-demo "$@"
