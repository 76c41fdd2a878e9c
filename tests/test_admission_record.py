"""The stored Admission (dllmserve.broker.admission): what the scheduler validated comes back
field for field, as the same types, and its bytes are the same for the same request."""

from __future__ import annotations

import json

import pytest

from dllmserve.broker.admission import Admission
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig
from dllmserve.structured.spec import StructuredOutput

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
CASES = [
    Admission("a text", SamplingParams(), None),
    Admission([1, 2, 3], SamplingParams(gen_length=64, steps=16, block_length=32, seed=7,
                                        temperature=0.7, top_p=0.9, top_k=40, eps=1e-4,
                                        schedule="dream", remasking="entropy"),
              SparseConfig(retention_ratio=0.3, layer_wise=True, layer_ratios=[0.5, 0.25])),
    Admission([{"role": "user", "content": "hi"}],
              SamplingParams(structured_output=StructuredOutput(json_schema=SCHEMA),
                             threshold=0.9, steps_per_block=4, editing_threshold=0.8),
              SparseConfig(enabled=False)),
    Admission("x", SamplingParams(structured_output=StructuredOutput(regex="[a-z]+")), None),
    Admission("x", SamplingParams(structured_output={"choice": ["yes", "no"]}), None),
]  # fmt: skip


@pytest.mark.parametrize("adm", CASES)
def test_the_admission_comes_back_as_it_was(adm):
    got = Admission.decode(adm.encode())
    assert got == adm and hash(got.sampling_params) == hash(adm.sampling_params)
    if adm.sparse_config is not None:
        assert got.sparse_config.layer_ratios == adm.sparse_config.layer_ratios
        n = len(adm.sparse_config.layer_ratios or (0, 0, 0))
        assert got.sparse_config.ratios_for(n) == adm.sparse_config.ratios_for(n)
    so = got.sampling_params.structured_output
    if so is not None:
        assert so.key == adm.sampling_params.structured_output.key  # the compile cache's key


def test_every_field_is_stored_by_name():
    doc = json.loads(CASES[1].encode())
    assert set(doc) == {"prompt", "sampling_params", "sparse_config"}
    assert doc["sampling_params"]["seed"] == 7 and doc["sampling_params"]["stop_at_eos"] is True
    assert doc["sparse_config"]["layer_ratios"] == [0.5, 0.25]


def test_the_same_request_stores_the_same_bytes():
    """ENQUEUE's dedupe compares them: equal requests must encode alike, others differently."""
    again = Admission([1, 2, 3], SamplingParams(gen_length=64, steps=16, block_length=32, seed=7,
                                                temperature=0.7, top_p=0.9, top_k=40, eps=1e-4,
                                                schedule="dream", remasking="entropy"),
                      SparseConfig(retention_ratio=0.3, layer_wise=True,
                                   layer_ratios=(0.5, 0.25)))  # fmt: skip
    assert again.encode() == CASES[1].encode()
    assert len({adm.encode() for adm in CASES}) == len(CASES)
