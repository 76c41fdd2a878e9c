"""How a request's steps are spread over its blocks and its tokens over its steps
(docs/design.md §5).

When the step count divides evenly this is exactly the official LLaDA schedule; otherwise the
remainder goes to the earliest blocks and steps, the same rule the official code applies to
tokens within a block. `Request.commits_at` is the one place a step's commit count is read:
another plan (Dream's timestep schedule) plugs in there.
"""

from __future__ import annotations


def even_split(total: int, parts: int) -> list[int]:
    """`total` over `parts`: `total // parts` each, one more for the first `total % parts`."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def block_bounds(gen_length: int, block_length: int) -> list[tuple[int, int]]:
    """[start, end) of each block as offsets into the generated canvas; the last may be short."""
    return [(s, min(s + block_length, gen_length)) for s in range(0, gen_length, block_length)]


def even_commits(masks: int, steps: int) -> list[int]:
    """Tokens committed at each step of a block of `masks` masks (LLaDA's num_transfer_tokens)."""
    return even_split(masks, steps)
