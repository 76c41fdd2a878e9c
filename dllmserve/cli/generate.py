"""`dllmserve generate`: stream one generation, showing the canvas denoise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dllmserve.cli.common import DEFAULT_TARGET, env


def stream(
    target: str, token: str, prompt: str, *, chat: bool, gen_length: int, steps: int,
    block_length: int | None, sparse: bool, live: bool, temperature: float = 0.0,
    model: str = "", tls: bool = False, ca: str = "", as_json: bool = False,
) -> int:  # fmt: skip
    import json

    from dllmserve.client import Accepted, Canvas, Client, Completed, ServiceError, StepUpdate

    sp = {"gen_length": gen_length, "steps": steps, "temperature": temperature}
    if block_length:
        sp["block_length"] = block_length
    kwargs = {
        "sampling_params": sp,
        "model": model,
        "include_canvas": True,
        "mask_placeholder": "░",
        "sparse_config": {} if sparse else None,
    }
    if chat:
        kwargs["messages"] = [{"role": "user", "content": prompt}]
    else:
        kwargs["prompt"] = prompt
    roots = Path(ca).read_bytes() if ca else None
    canvas = Canvas()
    shown_lines = 0
    with Client(target, token=token or None, tls=tls or bool(ca), root_certificates=roots) as c:
        try:
            for ev in c.generate(**kwargs):
                if isinstance(ev, Accepted) and not as_json:
                    print(f"request {ev.request_id} accepted", file=sys.stderr)
                elif isinstance(ev, StepUpdate):
                    canvas.apply(ev)
                    if live and not as_json:
                        text = (
                            f"step {ev.step}/{ev.total_steps} "
                            f"(attempt {ev.attempt}, {ev.masked_left} masked)\n"
                            f"{canvas.canvas}"
                        )
                        if shown_lines:  # back to where the last frame began, clear below
                            sys.stdout.write(f"\x1b[{shown_lines}F\x1b[J")
                        sys.stdout.write(text + "\n")
                        sys.stdout.flush()
                        shown_lines = _rows(text)
                elif isinstance(ev, Completed):
                    done = ev
                    if as_json:
                        print(json.dumps(done.to_dict()))
                    else:
                        print(f"\n{done.text}")
                        u, t = done.usage, done.timings
                        print(
                            f"[{done.finish_reason}; {u.generated_tokens} tokens, "
                            f"{u.steps} steps, {t.total_ms:.0f} ms]",
                            file=sys.stderr,
                        )
        except ServiceError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


def _rows(text: str) -> int:
    """Terminal rows a text takes, long lines wrapping at the terminal's width."""
    import shutil

    cols = max(1, shutil.get_terminal_size().columns)
    return sum(max(1, -(-len(line) // cols)) for line in text.split("\n"))


def cmd_generate(a: argparse.Namespace) -> int:
    return stream(
        a.target, a.token, a.prompt, chat=not a.raw, gen_length=a.gen_length, steps=a.steps,
        block_length=a.block_length, sparse=a.sparse, live=not a.no_live and sys.stdout.isatty(),
        temperature=a.temperature, model=a.model, tls=a.tls, ca=a.ca, as_json=a.json,
    )  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="stream one generation, showing the canvas denoise")
    g.add_argument("prompt")
    g.add_argument("--target", default=env("DLLMSERVE_TARGET", DEFAULT_TARGET))
    g.add_argument("--token", default=env("DLLMSERVE_AUTH_TOKEN"))
    g.add_argument("--tls", action="store_true")
    g.add_argument("--ca", default="", help="PEM file of the CA (implies --tls)")
    g.add_argument("--model", default="")
    g.add_argument("--gen-length", type=int, default=64)
    g.add_argument("--steps", type=int, default=32)
    g.add_argument("--block-length", type=int, default=None)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--sparse", action="store_true", help="use the default SparseConfig")
    g.add_argument("--raw", action="store_true", help="send the prompt as is (no chat template)")
    g.add_argument("--no-live", action="store_true", help="print only the answer")
    g.add_argument("--json", action="store_true", help="print the Completed event as JSON")
    g.set_defaults(fn=cmd_generate)
