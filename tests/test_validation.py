"""Bad input is refused with the field named and the valid range, before it joins a batch."""

from __future__ import annotations

import pytest

from dllmserve import LLM, SamplingParams, SparseConfig, ValidationError

PARAM_CASES = [
    (dict(gen_length=0), "sampling_params.gen_length", ">= 1"),
    (dict(gen_length=-3), "sampling_params.gen_length", ">= 1"),
    (dict(gen_length=8, steps=9), "sampling_params.steps", "[1, gen_length=8]"),
    (dict(steps=0), "sampling_params.steps", ">= 1"),
    (dict(gen_length=8, steps=8, block_length=9), "sampling_params.block_length", "[1, gen"),
    (dict(temperature=-0.1), "sampling_params.temperature", "[0, 10]"),
    (dict(temperature=float("nan")), "sampling_params.temperature", "[0, 10]"),
    (dict(temperature=float("inf")), "sampling_params.temperature", "[0, 10]"),
    (dict(temperature=10.000001), "sampling_params.temperature", "[0, 10]"),
    (dict(cfg_scale=-1.0), "sampling_params.cfg_scale", "[0, 10]"),
    (dict(cfg_scale=1e300), "sampling_params.cfg_scale", "[0, 10]"),
    (dict(cfg_scale=float("-inf")), "sampling_params.cfg_scale", "[0, 10]"),
    (dict(threshold=float("nan")), "sampling_params.threshold", "[0, 1]"),
    (dict(top_p=float("inf")), "sampling_params.top_p", "(0, 1]"),
    (dict(top_k=1_000_001), "sampling_params.top_k", "[1, 1000000]"),
    (dict(seed=2**63), "sampling_params.seed", "[0, 9223372036854775807]"),
    (dict(remasking="greedy"), "sampling_params.remasking", "low_confidence"),
    (dict(threshold=1.5), "sampling_params.threshold", "[0, 1]"),
    (dict(top_p=0.0), "sampling_params.top_p", "(0, 1]"),
    (dict(top_k=0), "sampling_params.top_k", "[1, 1000000]"),
    (dict(seed=-1), "sampling_params.seed", "[0, "),
    (dict(steps=2.5), "sampling_params.steps", "integer"),
    (dict(stop_at_eos="yes"), "sampling_params.stop_at_eos", "bool"),
    (dict(schedule="llada"), "sampling_params.schedule", "['blocks', 'dream']"),
    (dict(schedule=""), "sampling_params.schedule", "['blocks', 'dream']"),
    (dict(alg_temp=-0.1), "sampling_params.alg_temp", "[0, 10]"),
    (dict(alg_temp=10.5), "sampling_params.alg_temp", "[0, 10]"),
    (dict(alg_temp=float("nan")), "sampling_params.alg_temp", "[0, 10]"),
    (dict(alg_temp=0.5, threshold=0.9), "sampling_params.alg_temp", "0 with a threshold"),
    (dict(eps=-1e-9), "sampling_params.eps", "[0, 1]"),
    (dict(eps=1.5), "sampling_params.eps", "[0, 1]"),
    (dict(eps=float("inf")), "sampling_params.eps", "[0, 1]"),
    (dict(eps="0.1"), "sampling_params.eps", "[0, 1]"),
]

SPARSE_CASES = [
    (dict(retention_ratio=0.0), "sparse_config.retention_ratio", "(0, 1]"),
    (dict(retention_ratio=1.2), "sparse_config.retention_ratio", "(0, 1]"),
    (dict(delay_step=-1), "sparse_config.delay_step", ">= 0"),
    (dict(default_block_len=0), "sparse_config.default_block_len", ">= 1"),
    (dict(retention_ratio=float("nan")), "sparse_config.retention_ratio", "(0, 1]"),
    (dict(pool_kernel=2), "sparse_config.pool_kernel", "odd"),
    (dict(pool_kernel=65), "sparse_config.pool_kernel", "[1, 63]"),
    (dict(pool_kernel=2**31 - 1), "sparse_config.pool_kernel", "[1, 63]"),
    (dict(layer_wise=True, layer_ratios=[]), "sparse_config.layer_ratios", "1 to 1024"),
    (dict(layer_wise=True, layer_ratios=[0.5] * 1025), "sparse_config.layer_ratios", "1 to 1024"),
    (
        dict(layer_wise=True, layer_ratios=[0.5, float("inf")]),
        "sparse_config.layer_ratios[1]",
        "(0, 1]",
    ),
    (dict(layer_ratios=[0.5, 0.5]), "sparse_config.layer_ratios", "layer_wise=True"),
    (dict(layer_wise=True, layer_ratios=[0.5, 0.0]), "sparse_config.layer_ratios[1]", "(0, 1]"),
]


# Every bound itself is accepted.
AT_BOUNDS = [
    dict(temperature=10.0, cfg_scale=10.0, top_k=1_000_000, seed=2**63 - 1, top_p=1.0),
    dict(temperature=0.0, cfg_scale=0.0, top_k=1, seed=0, threshold=0.0),
    dict(schedule="dream", alg_temp=10.0, eps=1.0),
    dict(schedule="blocks", alg_temp=0.0, eps=0.0, threshold=1.0),
]


@pytest.mark.parametrize("kw", AT_BOUNDS)
def test_sampling_params_at_their_bounds(kw):
    SamplingParams(**kw)


def test_sparse_config_at_its_bounds():
    SparseConfig(pool_kernel=63, layer_wise=True, layer_ratios=[1.0] * 1024)
    assert SparseConfig(layer_wise=True, layer_ratios=[1, 0.5]).layer_ratios == (1.0, 0.5)


def test_echoed_values_are_cut_short():
    with pytest.raises(ValidationError) as e:
        SamplingParams(remasking="x" * 100_000)
    assert e.value.field == "sampling_params.remasking" and len(str(e.value)) < 300


@pytest.mark.parametrize("kw,field,rng", PARAM_CASES)
def test_sampling_params(kw, field, rng):
    with pytest.raises(ValidationError) as e:
        SamplingParams(**kw)
    assert e.value.field == field and rng in str(e.value)


@pytest.mark.parametrize("kw,field,rng", SPARSE_CASES)
def test_sparse_config(kw, field, rng):
    with pytest.raises(ValidationError) as e:
        SparseConfig(**kw)
    assert e.value.field == field and rng in str(e.value)


@pytest.fixture(scope="module")
def llm(llada_dir):
    return LLM(llada_dir)


ENGINE_CASES = [
    # (prompt, params, sparse, field, text)
    (
        [1, 2],
        dict(gen_length=16, block_length=4, steps=3),
        None,
        "sampling_params.steps",
        "[4, 16]",
    ),
    (
        [1, 2],
        dict(gen_length=16, steps=16),
        SparseConfig(delay_step=8, default_block_len=8),
        "sparse_config.delay_step",
        "[0, 7]",
    ),
    ([1] * 500, dict(gen_length=64, steps=64), None, "sampling_params.gen_length", "512"),
    ([], dict(gen_length=8, steps=8), None, "prompt", "at least one token"),
    ([1, 99999], dict(gen_length=8, steps=8), None, "prompt", "outside [0,"),
    (
        [1, 2],
        dict(gen_length=16, steps=16),
        SparseConfig(layer_wise=True, layer_ratios=[0.5, 0.5, 0.5]),
        "sparse_config.layer_ratios",
        "one ratio per layer (2)",
    ),
    ([1, 2], dict(gen_length=8, steps=8, top_k=263), None, "sampling_params.top_k", "[1, 262]"),
    (
        [1, 2],
        dict(gen_length=8, steps=8),
        SparseConfig(default_block_len=513),
        "sparse_config.default_block_len",
        "[1, 512]",
    ),
]


@pytest.mark.parametrize("prompt,kw,sparse,field,text", ENGINE_CASES)
def test_engine_limits(llm, prompt, kw, sparse, field, text):
    with pytest.raises(ValidationError) as e:
        llm.generate([prompt], SamplingParams(**kw), sparse_configs=sparse, use_tqdm=False)
    assert e.value.field == field and text in str(e.value)


def test_engine_limits_at_their_bounds(llm):
    """top_k up to the vocabulary, default_block_len up to the model's length, 512 tokens."""
    assert llm.engine.limits.vocab_size == 262  # the tokenizer's ids, not 320 rows
    assert llm.engine.limits.max_len == 512
    params = [
        SamplingParams(gen_length=8, steps=8, top_k=262, temperature=1.0, seed=1),
        SamplingParams(gen_length=8, steps=8, seed=1),
        SamplingParams(gen_length=510, steps=1, seed=1),
    ]
    sparse = [None, SparseConfig(default_block_len=512), None]
    outs = llm.generate([[1, 2]] * 3, params, sparse_configs=sparse, use_tqdm=False)
    assert [len(o["token_ids"]) for o in outs] == [8, 8, 510]


def test_mask_token_in_prompt(llm):
    with pytest.raises(ValidationError, match="mask token"):
        llm.generate([[1, llm.engine.tokens.mask]], SamplingParams(gen_length=8, steps=8))


def test_bad_request_never_disturbs_the_batch(llm):
    good = SamplingParams(gen_length=8, steps=8, seed=1, stop_at_eos=False)
    want = llm.generate([[1, 2, 3]], good, use_tqdm=False)[0]["token_ids"]
    engine = llm.engine
    engine.add_request("good", [1, 2, 3], good)
    engine.step()
    with pytest.raises(ValidationError):
        engine.add_request(
            "bad",
            [1, 2, 3],
            SamplingParams(
                gen_length=8,
                steps=8,
                block_length=2,
            ),
            SparseConfig(delay_step=3),
        )
    with pytest.raises(ValidationError, match="already in use"):
        engine.add_request("good", [1, 2, 3], good)
    final = None
    while engine.has_unfinished():
        for u in engine.step():
            final = u
    assert final.request_id == "good" and final.output.token_ids == want


def test_generate_argument_errors(llm):
    with pytest.raises(ValidationError, match="one per prompt"):
        llm.generate(["a", "b"], [SamplingParams(gen_length=8, steps=8)] * 3)
    with pytest.raises(ValidationError, match="tensor_parallel_size"):
        LLM("unused", tensor_parallel_size=2)


def test_settings_at_the_bounds_never_commit_the_mask_token(llm):
    params = SamplingParams(
        gen_length=16, steps=8, temperature=10.0, cfg_scale=10.0, seed=3, stop_at_eos=False
    )
    out = llm.generate([[1, 2, 3]], params, use_tqdm=False)[0]["token_ids"]
    assert len(out) == 16 and llm.engine.tokens.mask not in out
