#!/usr/bin/env bash
# Builds dLLM-Serve's wheel into .whl/ (git-ignored), or into $1: the way to install it where an
# editable install cannot work (the GPU machine: no package index for build isolation, and the
# editable finder hard-codes this checkout's absolute paths). README.md ("On a GPU machine")
# gives the commands that install it there and run the GPU tests and benchmarks against it.
# Needs setuptools >= 77 in the running Python (the test extras install it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.whl}
mkdir -p "$OUT"
rm -f "$OUT"/dllmserve-*.whl
rm -rf build  # setuptools' scratch copy: a file deleted here would otherwise stay in the wheel
"${PYTHON:-python}" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" .
ls "$OUT"/dllmserve-*.whl
