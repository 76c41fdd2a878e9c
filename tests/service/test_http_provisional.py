"""Provisional tokens over HTTP: `"provisional": true` beside `"stream_mode": "denoise"` puts
each step's proposals in its chunk's `denoise` object; without the denoise mode it is a 400
naming the field."""

from __future__ import annotations

import openai
import pytest
from http_util import add_gateway
from svc_util import Cluster

PROMPT = "Provisional tokens, please"
BODY = {"steps": 8, "block_length": 8, "seed": 4, "stop_at_eos": False, "temperature": 0}


@pytest.fixture(scope="module")
def oai(tmp_path_factory, tiny_model):
    c = Cluster(tmp_path_factory.mktemp("provisional"), tiny_model)
    try:
        c.add_scheduler()
        c.add_worker()
        yield openai.OpenAI(base_url=add_gateway(c) + "/v1", api_key="x", max_retries=0)
    finally:
        c.close()


def denoise_steps(oai, **extra) -> list[dict]:
    body = {**BODY, "stream_mode": "denoise", **extra}
    chunks = oai.completions.create(
        model="", prompt=PROMPT, max_tokens=16, stream=True, extra_body=body
    )
    return [c.choices[0].model_extra["denoise"] for c in chunks
            if c.choices and c.choices[0].model_extra.get("denoise")]  # fmt: skip


def test_the_denoise_stream_carries_the_proposals(oai):
    steps = denoise_steps(oai, provisional=True)
    assert [d["step"] for d in steps] == list(range(1, 9))
    committed: set[int] = set()
    for d in steps:
        block = range(d["block_index"] * 8, d["block_index"] * 8 + 8)
        prov = {p["position"]: p for p in d["provisional"]}
        assert list(prov) == [p for p in block if p not in committed]
        assert all(0 <= p["confidence"] <= 1 for p in d["provisional"])
        for pos, tok, text in zip(d["positions"], d["token_ids"], d["token_texts"], strict=True):
            assert (prov[pos]["token_id"], prov[pos]["text"]) == (tok, text)
        committed.update(d["positions"])
    assert all("provisional" not in d for d in denoise_steps(oai))


@pytest.mark.parametrize("mode", [None, "text"])
def test_provisional_needs_the_denoise_mode(oai, mode):
    body = {**BODY, "provisional": True, **({"stream_mode": mode} if mode else {})}
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="", prompt=PROMPT, max_tokens=16, stream=True,
                               extra_body=body)  # fmt: skip
    assert e.value.body["param"] == "provisional"
    assert "stream_mode" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # a boolean, by name too
        denoise_steps(oai, provisional="yes")
    assert e.value.body["param"] == "provisional"
