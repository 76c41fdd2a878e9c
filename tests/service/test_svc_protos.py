"""The committed stubs are exactly what scripts/gen_protos.sh generates from protos/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

ROOT = Path(__file__).resolve().parents[2]
STUBS = ["dllm_pb2.py", "dllm_pb2.pyi", "dllm_pb2_grpc.py"]


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    for name in STUBS:
        fresh = (tmp_path / "dllmserve" / "v1" / name).read_bytes()
        committed = (ROOT / "dllmserve" / "v1" / name).read_bytes()
        assert fresh == committed, f"dllmserve/v1/{name} is stale: run scripts/gen_protos.sh"


def test_stubs_import_and_describe_the_service():
    from dllmserve.v1 import dllm_pb2, dllm_pb2_grpc

    svc = dllm_pb2.DESCRIPTOR.services_by_name["DllmService"]
    assert svc.full_name == "dllmserve.v1.DllmService"
    assert [m.name for m in svc.methods] == ["Generate", "Attach", "Cancel", "GetServerInfo"]
    assert svc.methods_by_name["Generate"].server_streaming
    assert hasattr(dllm_pb2_grpc, "DllmServiceStub")
    # Every SamplingParams / SparseConfig field of the Python API is on the wire.
    import dataclasses

    from dllmserve.sampling_params import SamplingParams
    from dllmserve.sparse.state import SparseConfig

    for py, msg in (
        (SamplingParams, dllm_pb2.SamplingParams),
        (SparseConfig, dllm_pb2.SparseConfig),
    ):
        wire = {f.name for f in msg.DESCRIPTOR.fields}
        assert {f.name for f in dataclasses.fields(py)} == wire
