"""What the engine's CUDA graphs share: the capture step, and the lane-count buckets.

The REUSE graphs (`reuse_graphs`), the batch-1 FULL and SELECT graphs (`dense_graphs`) and the
block-diffusion graphs (`block_graphs`) each pad an iteration to a fixed shape and replay a
captured forward, which removes the launch overhead of ~25 kernels per layer (at batch 1 as
much as the forward itself). Graphs of one memory pool may reuse each other's scratch memory,
so a graph's output is valid only until the next replay of any graph of the pool: the engine
reads it (LM head rows) before launching the next iteration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

LANE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)

log = logging.getLogger(__name__)


def smallest_bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest of the (ascending) `buckets` that holds `n`, None past the largest: a graph
    is captured per bucket, so nearby sizes share one."""
    return next((b for b in buckets if b >= n), None)


def lane_buckets(max_lanes: int) -> tuple[int, ...]:
    """The lane buckets of an engine running at most `max_lanes` lanes: those below it, then
    the smallest that holds it (or `max_lanes` itself past the largest)."""
    below = tuple(b for b in LANE_BUCKETS if b < max_lanes)
    return below + (smallest_bucket(max_lanes, LANE_BUCKETS) or max_lanes,)


def next_pow2(n: int) -> int:
    """`n` (>= 1) rounded up to a power of two: graphs are keyed by the page-table width so
    rounded, so a growing sequence needs a new graph only at each doubling."""
    return 1 << max(0, (n - 1).bit_length())


def capture(
    graph: torch.cuda.CUDAGraph,
    mempool: tuple,
    forward: Callable[[], torch.Tensor],
    what: str,
) -> torch.Tensor:
    """Capture `forward()` (which reads only static buffers) into `graph`; returns its output,
    which every replay rewrites in place.

    A first run on a side stream compiles the Triton kernels outside the capture (a compile
    inside it would fail) and is otherwise an ordinary forward: its writes (a SELECT's page
    stores) are the ones the first replay repeats. Each capture is logged with its time
    (`what` names the graph): it holds up the worker's iteration, so a stall in serving can be
    matched to it.
    """
    start = time.perf_counter()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph, pool=mempool):
        out = forward()
    log.info("captured a CUDA graph (%s) in %.0f ms", what, 1000 * (time.perf_counter() - start))
    return out
