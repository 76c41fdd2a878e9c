"""Random-weight engines of named shapes (what `dllmserve worker --random-shape` serves)."""

from __future__ import annotations

import pytest

from dllmserve import SamplingParams
from dllmserve.engine.engine import Engine
from dllmserve.errors import ValidationError
from dllmserve.models.shapes import SHAPES, shape_tokenizer
from dllmserve.testing.tiny_models import LLADA_SPECIALS, build_byte_tokenizer


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_tokenizer_uses_the_shapes_special_ids(name):
    cfg = SHAPES[name]
    tok = shape_tokenizer(cfg)
    assert tok.mask_token_id == cfg.mask_token_id and tok.eos_token_id == cfg.eos_token_id
    ids = tok("Any text, même accentuée", add_special_tokens=False)["input_ids"]
    assert ids and max(ids) < 256  # one token per byte
    assert tok.decode(ids) == "Any text, même accentuée"
    assert max(tok.get_vocab().values()) < cfg.vocab_size
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "Hi" in chat


def test_tiny_shape_tokenizer_is_the_test_checkpoints_tokenizer():
    ref, ids = build_byte_tokenizer(LLADA_SPECIALS)
    tok = shape_tokenizer(SHAPES["tiny"])
    assert {s: tok.convert_tokens_to_ids(s) for s in LLADA_SPECIALS} == ids
    text = "<|startoftext|>Hello <|eot_id|>"
    assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text).ids


def test_random_engine_generates_and_names_the_shape():
    a = Engine.from_random_shape("tiny", device="cpu", max_num_seqs=4, num_cache_pages=256)
    b = Engine.from_random_shape("tiny", device="cpu", max_num_seqs=4, num_cache_pages=256)
    assert a.model_name == "random-tiny" and a.model.cfg == SHAPES["tiny"]
    assert a.tokens.stop == {257, 261}  # <|endoftext|> and <|eot_id|>
    params = SamplingParams(gen_length=16, steps=8, block_length=8, stop_at_eos=False)
    outs = []
    for eng in (a, b):  # the same weights in every process: workers agree
        eng.add_request("r", "Hello there", params)
        while eng.has_unfinished():
            done = [u for u in eng.step() if u.finished]
        outs.append(done[0].output.token_ids)
    assert outs[0] == outs[1] and len(outs[0]) == 16
    with pytest.raises(ValidationError, match="random_shape"):
        Engine.from_random_shape("llada-70b", device="cpu")
