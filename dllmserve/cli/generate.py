"""`dllmserve generate`: stream one generation, showing the canvas denoise."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dllmserve.cli.common import DEFAULT_TARGET

DESCRIPTION = """\
Sends one prompt to a running service (dllmserve serve, or a scheduler) and streams it. On a
terminal the canvas is redrawn at every denoising step: green what this step committed, plain
what earlier steps did, dim what is still masked, with the step, tokens/s and elapsed time;
then the answer is printed once. Piped, progress goes to stderr line by line and the answer to
stdout."""

EXAMPLES = """\
examples:
  dllmserve generate "Repeat exactly: serving diffusion models"   # the demo model copies it
  dllmserve generate --json "What is 123 + 456?" | jq .usage      # the Completed event as JSON
  dllmserve generate --gen-length 128 --steps 64 --sparse "Explain diffusion LMs."  # LLaDA-8B
  DLLMSERVE_TARGET=sched.example.com:443 dllmserve generate --tls --token TOKEN Hello"""


def stream(
    target: str,
    token: str,
    prompt: str,
    *,
    chat: bool,
    gen_length: int,
    steps: int,
    block_length: int | None,
    sparse: bool,
    live: bool,
    temperature: float = 0.0,
    model: str = "",
    tls: bool = False,
    ca: str = "",
    as_json: bool = False,
    progress: bool = True,
    remasking: str | None = None,
    schedule: str | None = None,
    extra: dict | None = None,
) -> int:
    """Stream one generation; `live` draws the canvas in place (a terminal), else plain lines."""
    from dllmserve.cli.live import MASK, LiveView, PlainView
    from dllmserve.client import Client, Completed, ServiceError

    sp = {"gen_length": gen_length, "steps": steps, "temperature": temperature}
    if block_length:
        sp["block_length"] = block_length
    for name, value in (("remasking", remasking), ("schedule", schedule), *(extra or {}).items()):
        if value is not None:  # unset: the server's default (the model's own schedule)
            sp[name] = value
    if "steps_per_block" in sp:  # LLaDA2's steps per block, given instead of steps
        del sp["steps"]
    kwargs = {
        "sampling_params": sp,
        "model": model,
        "include_canvas": live,
        "mask_placeholder": MASK,
        "sparse_config": {} if sparse else None,
    }
    if chat:
        kwargs["messages"] = [{"role": "user", "content": prompt}]
    else:
        kwargs["prompt"] = prompt
    roots = Path(ca).read_bytes() if ca else None
    view = LiveView(gen_length) if live and not as_json else PlainView(gen_length, not progress)
    try:
        with Client(target, token=token or None, tls=tls, root_certificates=roots) as c:
            for ev in c.generate(**kwargs):
                if as_json:
                    if isinstance(ev, Completed):
                        print(json.dumps(ev.to_dict()))
                else:
                    view.show(ev)
    except ServiceError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        view.close()
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    return stream(
        a.target,
        a.token,
        a.prompt,
        chat=not a.raw,
        gen_length=a.gen_length,
        steps=a.steps,
        block_length=a.block_length,
        sparse=a.sparse,
        live=sys.stdout.isatty() and not a.no_live,
        temperature=a.temperature,
        model=a.model,
        tls=a.tls,
        ca=a.ca,
        as_json=a.json,
        progress=not a.no_live,
        remasking=a.remasking,
        schedule=a.schedule,
        extra={name: getattr(a, name) for name in BLOCK_FLAGS},
    )


# LLaDA2's generate arguments (block-diffusion models), as SamplingParams fields
BLOCK_FLAGS = (
    "threshold",
    "steps_per_block",
    "minimal_topk",
    "eos_early_stop",
    "editing_threshold",
)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="stream one generation, showing the canvas denoise",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    g.add_argument("prompt", help="the prompt (a user message, unless --raw)")
    _add_connection_args(g)
    _add_sampling_args(g)
    g.add_argument("--sparse", action="store_true", help="use the default SparseConfig")
    g.add_argument("--raw", action="store_true", help="send the prompt as is (no chat template)")
    g.add_argument(
        "--no-live",
        action="store_true",
        help="no canvas and no progress lines: only the answer (and the summary)",
    )
    g.add_argument("--json", action="store_true", help="print the Completed event as JSON")
    g.set_defaults(fn=cmd_generate)


def _add_connection_args(g: argparse.ArgumentParser) -> None:
    """Where the service is, how to reach it, and which of its models to ask."""
    g.add_argument("--target", default=DEFAULT_TARGET, help="the scheduler's gRPC address")
    g.add_argument(
        "--token",
        default="",
        env="DLLMSERVE_AUTH_TOKEN",
        help="bearer token, when the service asks for one",
    )
    g.add_argument("--tls", action="store_true", help="connect over TLS (system CAs)")
    g.add_argument("--ca", default="", help="PEM file of the CA to trust (implies --tls)")
    g.add_argument(
        "--model",
        default="",
        env="DLLMSERVE_MODEL_NAME",
        help="the model to ask for, by name (none: the one served)",
    )


def _add_sampling_args(g: argparse.ArgumentParser) -> None:
    """The SamplingParams fields a command line sets (the rest keep the server's defaults)."""
    g.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    g.add_argument("--steps", type=int, default=32, help="denoising steps")
    g.add_argument(
        "--block-length",
        type=int,
        default=None,
        help="semi-autoregressive block size (none: the whole canvas)",
    )
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument(
        "--remasking",
        default=None,
        help="low_confidence, random, maskgit_plus, topk_margin, entropy or origin "
        "(none: the server's default)",
    )
    g.add_argument(
        "--schedule",
        default=None,
        help="blocks (LLaDA's) or dream (Dream's timesteps) (none: the model's own)",
    )
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="commit every token above this confidence (parallel decoding)",
    )
    g.add_argument(
        "--steps-per-block",
        type=int,
        default=None,
        help="steps of each block, instead of --steps (LLaDA2's steps)",
    )
    g.add_argument(
        "--minimal-topk",
        type=int,
        default=None,
        help="LLaDA2: cap the steps per block at gen_length // this",
    )
    g.add_argument(
        "--eos-early-stop",
        action="store_const",
        const=True,
        default=None,
        help="LLaDA2: end once an EOS and everything before it are committed",
    )
    g.add_argument(
        "--editing-threshold",
        type=float,
        default=None,
        help="LLaDA2.1: replace committed tokens of the block above this confidence",
    )
