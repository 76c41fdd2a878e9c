"""OpenAI response bodies and stream chunks built from the gRPC events.

Chat and text completions differ only in their object names and where the text goes (`message` /
`delta` with a role, or `text`); everything else is shared. A denoise-mode chunk carries the
ordinary text delta plus a `denoise` object per choice: the step's committed positions, their
token ids and texts, the masked count, the rendered canvas and whether the step ended its
block; with `provisional`, also the
step's proposed token, confidence and text at each masked position of its block.
"""

from __future__ import annotations

import json
import time

from dllmserve.client import Completed, FinishReason, StepUpdate
from dllmserve.gateway.requests import Plan

DONE = b"data: [DONE]\n\n"
_REASONS = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


def sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def finish_reason(done: Completed, stopped: bool) -> str:
    """OpenAI's finish_reason: a stop string or EOS is "stop", a full canvas "length"."""
    return "stop" if stopped else _REASONS.get(done.finish_reason, "stop")


def usage(dones: list[Completed], n: int, returned: list[int] | None = None) -> dict:
    """Prompt tokens count once per prompt (not per choice), as OpenAI counts them; completion
    tokens are `returned` (each choice's tokens left after a stop string) when given."""
    prompt = sum(d.usage.prompt_tokens for d in dones[::n])
    completion = sum(returned) if returned else sum(d.usage.generated_tokens for d in dones)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "denoising_steps": sum(d.usage.steps for d in dones),  # ours: what a dLLM spends
    }


def completion(
    plan: Plan,
    dones: list[Completed],
    texts: list[str],
    reasons: list[str],
    n: int,
    returned: list[int],
) -> dict:
    choices = []
    for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
        c: dict = {"index": i, "finish_reason": reason}
        if plan.chat:
            c["message"] = {"role": "assistant", "content": text}
        else:
            c["text"], c["logprobs"] = text, None
        choices.append(c)
    return {
        "id": plan.id,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": choices,
        "usage": usage(dones, n, returned),
    }


def chunk(
    plan: Plan,
    index: int,
    text: str | None = None,
    *,
    role: bool = False,
    finish: str | None = None,
    step: StepUpdate | None = None,
) -> dict:
    c: dict = {"index": index, "finish_reason": finish}
    if plan.chat:
        delta: dict = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        c["delta"] = delta
    else:
        c["text"], c["logprobs"] = text or "", None
    if step is not None:
        c["denoise"] = denoise(step)
    return {
        "id": plan.id,
        "object": "chat.completion.chunk" if plan.chat else "text_completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": [c],
    }


def usage_chunk(plan: Plan, dones: list[Completed], n: int, returned: list[int]) -> dict:
    return {
        "id": plan.id,
        "object": "chat.completion.chunk" if plan.chat else "text_completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": [],
        "usage": usage(dones, n, returned),
    }


def denoise(step: StepUpdate) -> dict:
    d = {
        "step": step.step,
        "total_steps": step.total_steps,
        "block_index": step.block_index,
        "positions": list(step.positions),
        "token_ids": list(step.token_ids),
        "token_texts": list(step.token_texts),
        "masked_left": step.masked_left,
        "canvas": step.canvas,
        "attempt": step.attempt,
        "block_done": step.block_done,
    }
    if step.provisional:  # the request asked with "provisional": true
        d["provisional"] = [
            {
                "position": p.position,
                "token_id": p.token_id,
                "confidence": round(p.confidence, 4),
                "text": p.text,
            }
            for p in step.provisional
        ]
    if step.edits:  # LLaDA2.1: committed tokens this step replaced
        d["edits"] = [
            {
                "position": e.position,
                "old_token_id": e.old_token_id,
                "new_token_id": e.new_token_id,
                "text": e.text,
            }
            for e in step.edits
        ]
    return d
