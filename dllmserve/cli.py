"""`dllmserve serve | scheduler | worker | generate`.

`serve` is the all-in-one mode for a single machine: a private redis-server (unless
--redis-url is given), the scheduler, and one worker per GPU (or one CPU worker), all child
processes that stop together on Ctrl-C. Without --model it serves a small built-in demo model.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TARGET = "localhost:50051"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def demo_model_dir() -> Path:
    """The built-in demo checkpoint: the trained tiny LLaDA shipped in the package."""
    from dllmserve.assets import default_model_path

    return default_model_path()


def _resolve_model(model: str) -> str:
    return str(demo_model_dir()) if model in ("", "demo") else model


# ---- scheduler -----------------------------------------------------------------------------
def _add_scheduler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=_env("DLLMSERVE_LISTEN", "0.0.0.0:50051"))
    p.add_argument("--max-queue", type=int, default=int(_env("DLLMSERVE_MAX_QUEUE", "10000")))
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--orphan-grace", type=float, default=30.0, help="seconds")
    p.add_argument("--result-ttl", type=int, default=3600, help="seconds")
    p.add_argument("--lease-ttl-ms", type=int, default=3000)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--drain-grace", type=float, default=30.0, help="seconds")
    p.add_argument("--auth-token", default=_env("DLLMSERVE_AUTH_TOKEN"))
    p.add_argument("--tls-cert", default=_env("DLLMSERVE_TLS_CERT"))
    p.add_argument("--tls-key", default=_env("DLLMSERVE_TLS_KEY"))
    p.add_argument("--id", default="", help="scheduler id (default: host-pid-random)")
    p.add_argument("--no-dispatch", action="store_true", help="relay only, never dispatch")


def _scheduler_config(a: argparse.Namespace):
    from dllmserve.scheduler.config import SchedulerConfig

    return SchedulerConfig(
        redis_url=a.redis_url,
        listen=a.listen,
        scheduler_id=a.id,
        max_queue=a.max_queue,
        max_attempts=a.max_attempts,
        orphan_grace_s=a.orphan_grace,
        result_ttl_s=a.result_ttl,
        lease_ttl_ms=a.lease_ttl_ms,
        max_batch=a.max_batch,
        max_message_bytes=a.max_message_bytes,
        drain_grace_s=a.drain_grace,
        auth_token=a.auth_token,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        dispatch=not a.no_dispatch,
    )


def cmd_scheduler(a: argparse.Namespace) -> int:
    import asyncio

    from dllmserve.scheduler.server import run

    asyncio.run(run(_scheduler_config(a)))
    return 0


# ---- worker --------------------------------------------------------------------------------
def _add_random_shape_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--random-shape",
        default="",
        metavar="SHAPE",
        help="serve random weights of a named shape (llada-8b, dream-7b, tiny) with a byte-level "
        "tokenizer instead of --model: for benchmarks, whose speed depends only on shapes",
    )


def _add_worker_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        p.add_argument(
            "--model",
            default=_env("DLLMSERVE_MODEL", "demo"),
            help="checkpoint directory, or 'demo' for the built-in tiny model",
        )
        _add_random_shape_arg(p)
    p.add_argument("--model-name", default="", help="name clients use (default: directory name)")
    p.add_argument("--device", default=_env("DLLMSERVE_DEVICE") or None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--num-cache-pages", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--slots", type=int, default=0, help="requests accepted at once (0: 2x seqs)")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--heartbeat-ttl", type=float, default=5.0)
    p.add_argument("--worker-id", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sync-publish", action="store_true", help="publish on the engine's thread (debugging)"
    )


def _worker_config(a: argparse.Namespace):
    from dllmserve.worker.config import WorkerConfig

    return WorkerConfig(
        redis_url=a.redis_url,
        model="" if a.random_shape else _resolve_model(a.model),
        random_shape=a.random_shape,
        model_name=a.model_name,
        device=a.device,
        dtype=a.dtype,
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
        num_cache_pages=a.num_cache_pages,
        gpu_memory_utilization=a.gpu_memory_utilization,
        slots=a.slots,
        heartbeat_interval_s=a.heartbeat_interval,
        heartbeat_ttl_s=a.heartbeat_ttl,
        worker_id=a.worker_id,
        seed=a.seed,
        async_publish=not a.sync_publish,
    )


def cmd_worker(a: argparse.Namespace) -> int:
    from dllmserve.worker.main import run

    run(_worker_config(a))
    return 0


# ---- serve ---------------------------------------------------------------------------------
def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from dllmserve.scheduler.local_redis import LocalRedis, free_port

    model = f"random-{a.random_shape}" if a.random_shape else _resolve_model(a.model)
    model_args = ["--random-shape", a.random_shape] if a.random_shape else ["--model", model]
    redis = None
    children: list[subprocess.Popen] = []
    tmp = tempfile.TemporaryDirectory(prefix="dllmserve-")
    try:
        if not a.redis_url:
            try:
                redis = LocalRedis(a.redis_dir or Path(tmp.name) / "redis").start()
            except RuntimeError as e:
                print(f"dllmserve serve: {e}", file=sys.stderr)
                return 2
            a.redis_url = redis.url
            print(f"redis: private redis-server at {redis.url}", flush=True)
        host, _, port = a.listen.rpartition(":")
        if port == "0":
            a.listen = f"{host}:{free_port()}"
        base = [sys.executable, "-m", "dllmserve.cli", "--log-level", a.log_level]
        sched = base + ["scheduler", "--redis-url", a.redis_url, "--listen", a.listen]
        if a.auth_token:
            sched += ["--auth-token", a.auth_token]
        children.append(subprocess.Popen(sched))
        gpus = _gpu_count() if a.device in (None, "cuda") else 0
        # worker i gets the i-th GPU this process sees (of CUDA_VISIBLE_DEVICES when it is set)
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        gpu_ids = visible[:gpus] if len(visible) >= gpus else [str(g) for g in range(gpus)]
        n = a.workers or max(1, gpus)
        for i in range(n):
            env = dict(os.environ)
            cmd = base + ["worker", "--redis-url", a.redis_url, *model_args,
                          "--max-num-seqs", str(a.max_num_seqs)]  # fmt: skip
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % gpus].strip()
            elif a.device:
                cmd += ["--device", a.device]
            else:
                cmd += ["--device", "cpu"]
            children.append(subprocess.Popen(cmd, env=env))
        target = "localhost:" + a.listen.rpartition(":")[2]
        print(f"dllmserve: scheduler on {target}, {n} worker(s), model {model}", flush=True)
        if not _wait_ready(target, a.auth_token, children, timeout_s=a.ready_timeout):
            print("dllmserve serve: the service did not become ready", file=sys.stderr)
            return 1
        print(f"dllmserve: ready. Try: dllmserve generate --target {target} 'Hello'", flush=True)
        if a.demo:
            _stream(
                target,
                a.auth_token,
                a.demo_prompt,
                chat=True,
                gen_length=64,
                steps=32,
                block_length=None,
                sparse=False,
                live=sys.stdout.isatty(),
            )
            if a.exit_after_demo:
                return 0
        stop = {"flag": False}

        def on_sig(signum, frame):
            stop["flag"] = True

        signal.signal(signal.SIGTERM, on_sig)
        signal.signal(signal.SIGINT, on_sig)
        while not stop["flag"]:
            if any(c.poll() is not None for c in children):
                print("dllmserve serve: a child process exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(a.stop_timeout)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        if redis is not None:
            redis.stop()
        tmp.cleanup()


def _wait_ready(target: str, token: str, children, timeout_s: float) -> bool:
    from dllmserve.client import Client

    end = time.monotonic() + timeout_s
    with Client(target, token=token or None) as c:
        while time.monotonic() < end:
            if any(ch.poll() is not None for ch in children):
                return False
            try:
                if any(w.state == "ready" for w in c.server_info(timeout=2).workers):
                    return True
            except Exception:
                pass
            time.sleep(0.3)
    return False


# ---- generate ------------------------------------------------------------------------------
def _stream(
    target: str, token: str, prompt: str, *, chat: bool, gen_length: int, steps: int,
    block_length: int | None, sparse: bool, live: bool, temperature: float = 0.0,
    model: str = "", tls: bool = False, ca: str = "", as_json: bool = False,
) -> int:  # fmt: skip
    import json

    import grpc

    from dllmserve.client import Canvas, Client

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
                kind = ev.WhichOneof("event")
                if kind == "accepted" and not as_json:
                    print(f"request {ev.accepted.request_id} accepted", file=sys.stderr)
                elif kind == "step":
                    canvas.apply(ev.step)
                    if live and not as_json:
                        text = (
                            f"step {ev.step.step}/{ev.step.total_steps} "
                            f"(attempt {ev.step.attempt}, {ev.step.masked_left} masked)\n"
                            f"{canvas.canvas}"
                        )
                        if shown_lines:  # back to where the last frame began, clear below
                            sys.stdout.write(f"\x1b[{shown_lines}F\x1b[J")
                        sys.stdout.write(text + "\n")
                        sys.stdout.flush()
                        shown_lines = _rows(text)
                elif kind == "completed":
                    done = ev.completed
                    if as_json:
                        from google.protobuf import json_format

                        print(json.dumps(json_format.MessageToDict(done)))
                    else:
                        print(f"\n{done.text}")
                        u, t = done.usage, done.timings
                        print(
                            f"[{pb_finish(done.finish_reason)}; {u.generated_tokens} tokens, "
                            f"{u.steps} steps, {t.total_ms:.0f} ms]",
                            file=sys.stderr,
                        )
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


def _rows(text: str) -> int:
    """Terminal rows a text takes, long lines wrapping at the terminal's width."""
    import shutil

    cols = max(1, shutil.get_terminal_size().columns)
    return sum(max(1, -(-len(line) // cols)) for line in text.split("\n"))


def pb_finish(reason: int) -> str:
    from dllmserve.v1 import dllm_pb2 as pb

    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def cmd_generate(a: argparse.Namespace) -> int:
    return _stream(
        a.target, a.token, a.prompt, chat=not a.raw, gen_length=a.gen_length, steps=a.steps,
        block_length=a.block_length, sparse=a.sparse, live=not a.no_live and sys.stdout.isatty(),
        temperature=a.temperature, model=a.model, tls=a.tls, ca=a.ca, as_json=a.json,
    )  # fmt: skip


# ---- entry ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dllmserve", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default=_env("DLLMSERVE_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="cmd", required=True)
    redis_url = _env("DLLMSERVE_REDIS_URL")

    s = sub.add_parser("serve", help="all in one: private Redis + scheduler + workers")
    s.add_argument("--model", default=_env("DLLMSERVE_MODEL", "demo"))
    _add_random_shape_arg(s)
    s.add_argument("--redis-url", default=redis_url, help="default: start a private redis-server")
    s.add_argument("--redis-dir", default="", help="data directory of the private redis-server")
    s.add_argument("--listen", default="0.0.0.0:50051")
    s.add_argument("--workers", type=int, default=0, help="default: one per GPU, or one on CPU")
    s.add_argument("--device", default=None)
    s.add_argument("--max-num-seqs", type=int, default=64)
    s.add_argument("--auth-token", default=_env("DLLMSERVE_AUTH_TOKEN"))
    s.add_argument("--demo", action="store_true", help="stream a demo generation once ready")
    s.add_argument(
        "--demo-prompt",
        default="Repeat exactly: serving diffusion models",
        help="the default suits the tiny demo model, which copies text but answers no questions",
    )
    s.add_argument("--exit-after-demo", action="store_true")
    s.add_argument("--ready-timeout", type=float, default=600.0)
    s.add_argument("--stop-timeout", type=float, default=30.0)
    s.set_defaults(fn=cmd_serve)

    sc = sub.add_parser("scheduler", help="the gRPC front end and dispatcher")
    sc.add_argument("--redis-url", default=redis_url or "redis://127.0.0.1:6379/0")
    _add_scheduler_args(sc)
    sc.set_defaults(fn=cmd_scheduler)

    w = sub.add_parser("worker", help="a worker process owning one GPU (or the CPU)")
    w.add_argument("--redis-url", default=redis_url or "redis://127.0.0.1:6379/0")
    _add_worker_args(w)
    w.set_defaults(fn=cmd_worker)

    g = sub.add_parser("generate", help="stream one generation, showing the canvas denoise")
    g.add_argument("prompt")
    g.add_argument("--target", default=_env("DLLMSERVE_TARGET", DEFAULT_TARGET))
    g.add_argument("--token", default=_env("DLLMSERVE_AUTH_TOKEN"))
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
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(a.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(a.fn(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
