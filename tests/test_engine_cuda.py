"""On a GPU: the engine gives the same tokens with Triton kernels, reference kernels and
CUDA graphs (the all-REUSE graphs and the batch-1 FULL / SELECT ones), on a tiny fp32 model so
rounding cannot hide a wrong kernel. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import dllmserve.kernels as kernels
import dllmserve.models.layers as layers
from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.engine.upload import upload

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [list(range(3, 40)), [5, 6, 7, 8], list(range(50, 120))]
CONFIGS = [
    SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8),
    None,
    SparseConfig(retention_ratio=0.3, delay_step=0, default_block_len=8, head_select=False),
]
PARAMS = SamplingParams(gen_length=32, steps=32, temperature=0.5, seed=7, stop_at_eos=False)


def generate(path, **kw):
    llm = LLM(path, device="cuda", dtype=torch.float32, num_cache_pages=4096, **kw)
    return [o["token_ids"] for o in llm.generate(PROMPTS, PARAMS, CONFIGS, use_tqdm=False)]


def test_triton_equals_reference(llada_dir, monkeypatch):
    triton_tokens = generate(llada_dir, enforce_eager=True)
    for name in ("varlen_attention", "reuse_attention", "select_and_store"):
        monkeypatch.setattr(kernels, name, getattr(kernels.reference, name))
    monkeypatch.setattr(layers, "use_fused_kernels", False)
    assert generate(llada_dir, enforce_eager=True) == triton_tokens


def test_cuda_graphs_equal_eager(llada_dir, dream_dir):
    for path in (llada_dir, dream_dir):
        assert generate(path) == generate(path, enforce_eager=True)


def test_uniform_batch_uses_graphs(llada_dir):
    llm = LLM(llada_dir, device="cuda", dtype=torch.float32, num_cache_pages=4096)
    sparse = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)
    llm.generate([[1, 2, 3]] * 4, PARAMS, sparse, use_tqdm=False)
    assert llm.engine.runner.graphs is not None and llm.engine.runner.graphs.graphs


ONE_PROMPT = list(range(3, 40))
ONE_CONFIGS = {  # config -> (dense-graph keys, batch-1 FULL/SELECT iterations) at 4 blocks of 8
    "sparse delay 1": (SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8), 2, 8),
    "sparse delay 0": (SparseConfig(retention_ratio=0.3, delay_step=0, default_block_len=8), 1, 4),
    "no head select": (
        SparseConfig(retention_ratio=0.5, delay_step=0, default_block_len=8, head_select=False),
        1,
        4,
    ),
    "dense": (None, 1, 32),
}


def generate_one(path, sparse, max_graphs=None, **kw):
    llm = LLM(path, device="cuda", dtype=torch.float32, num_cache_pages=4096, **kw)
    if max_graphs is not None:
        llm.engine.runner.dense_graphs.max_graphs = max_graphs
    (out,) = llm.generate([ONE_PROMPT], PARAMS, sparse, use_tqdm=False)
    return out["token_ids"], llm.engine


@pytest.mark.parametrize("name", list(ONE_CONFIGS))
def test_batch_one_dense_iterations_replay_graphs(llada_dir, dream_dir, name):
    """One request alone: every FULL and SELECT iteration replays a dense graph (captured once
    per key, reused block after block) and the tokens are the eager engine's."""
    sparse, n_keys, n_dense_iters = ONE_CONFIGS[name]
    for path in (llada_dir, dream_dir):
        tokens, engine = generate_one(path, sparse)
        dense = engine.runner.dense_graphs
        assert (dense.captures, len(dense.graphs)) == (n_keys, n_keys), path
        assert dense.replays == n_dense_iters, path
        if sparse is not None:
            assert engine.runner.graphs.graphs, path  # REUSE steps replay their own graphs
        assert tokens == generate_one(path, sparse, enforce_eager=True)[0], path


def test_dense_graph_eviction_keeps_tokens(llada_dir):
    """With room for one dense graph, FULL and SELECT evict each other every block: each
    iteration captures anew in the shared pool, and the tokens stay the eager ones."""
    sparse = ONE_CONFIGS["sparse delay 1"][0]
    tokens, engine = generate_one(llada_dir, sparse, max_graphs=1)
    dense = engine.runner.dense_graphs
    assert dense.captures == 8 and len(dense.graphs) == 1
    assert tokens == generate_one(llada_dir, sparse, enforce_eager=True)[0]


def test_batched_iterations_skip_dense_graphs(llada_dir):
    """Two requests in one FULL iteration are not one lane: they run eagerly."""
    llm = LLM(llada_dir, device="cuda", dtype=torch.float32, num_cache_pages=4096)
    llm.generate([ONE_PROMPT, ONE_PROMPT], PARAMS, None, use_tqdm=False)
    assert llm.engine.runner.dense_graphs.replays == 0


def test_upload_round_trips_every_dtype():
    host = {
        "i32": torch.tensor([[1, -2], [3, 2**31 - 1]], dtype=torch.int32),
        "i64": torch.arange(5) * (2**40),
        "mask": torch.tensor([True, False, True]),
        "f32": torch.tensor([float("nan"), 0.1, 1.0]),
        "f64": torch.tensor([0.3, 1e-300], dtype=torch.float64),
        "bf16": torch.tensor([0.1, 3.7], dtype=torch.bfloat16),
        "empty": torch.zeros((0, 4), dtype=torch.int32),
    }
    dev = upload(host, torch.device("cuda"))
    for name, t in host.items():
        got = dev[name]
        assert got.is_cuda and got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got.cpu().nan_to_num(), t.nan_to_num()), name
