#!/usr/bin/env bash
# Regenerates the committed Python stubs of protos/ into dllmserve/v1/ (or into $1/dllmserve/v1/).
# tests/service/test_svc_protos.py fails when the committed stubs differ from a fresh run of this.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
mkdir -p "$OUT/dllmserve/v1"
"${PYTHON:-python}" -m grpc_tools.protoc -Iprotos --python_out="$OUT" --pyi_out="$OUT" \
  --grpc_python_out="$OUT" protos/dllmserve/v1/dllm.proto
