"""Worker settings. Each field carries its flag's help (and its flag and range where they differ
from the field's name or from any value): `dllmserve worker`'s flags and their environment
variables are generated from these fields (dllmserve/cli/config_args.py); the engine's are
one EngineConfig, generated the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

from dllmserve.config_fields import setting
from dllmserve.engine.config import EngineConfig


@dataclass
class WorkerConfig:
    redis_url: str = setting("", "", cli=False)  # required: the CLI's --redis-url
    model: str = setting("", "", cli=False)  # checkpoint directory (the CLI's --model)
    # instead of a checkpoint: random weights of a named shape of dllmserve.models.shapes
    # ("llada-8b", "dream-7b", "tiny") with a byte-level tokenizer, for benchmarks
    random_shape: str = setting("", "", cli=False)  # the CLI's --random-shape
    model_name: str = setting(
        "", "the name clients ask for (none: the checkpoint directory's name)"
    )
    engine: EngineConfig = field(default_factory=EngineConfig, metadata={"cli": False})
    gpu_lock_dir: str = setting(
        "",
        "a directory shared by the workers of a host that all see its GPUs: each takes the "
        "first GPU no other holds (none: use the GPU the environment gives)",
    )
    worker_id: str = setting("", "worker id (none: host-pid-random)")
    slots: int = setting(
        0, "requests accepted at once, running or waiting (0: 2 x --max-num-seqs)", lo=0
    )
    heartbeat_interval_s: float = setting(
        1.0, "seconds between heartbeats", flag="--heartbeat-interval", lo=0.01
    )
    heartbeat_ttl_s: float = setting(
        5.0,
        "seconds without a heartbeat after which the worker counts as dead",
        flag="--heartbeat-ttl",
        lo=0.1,
    )
    idle_block_ms: int = setting(200, "how long an idle worker waits on its inbox", cli=False)
    drain_timeout_s: float = setting(
        60.0, "seconds running requests get to finish on SIGTERM", cli=False
    )
    # the watchdog (worker/watchdog.py): an iteration running longer than
    # max(stall_floor_s, stall_factor x the moving average) takes the worker out
    stall_factor: float = setting(
        20.0,
        "watchdog: an iteration this many times the moving average (and over --stall-floor) "
        "takes the worker out and its requests are re-run elsewhere",
        lo=1,
    )
    stall_floor_s: float = setting(60.0, "watchdog floor, seconds", flag="--stall-floor", lo=0)
    async_publish: bool = setting(
        True, "publish on the engine's thread (debugging)", flag="--sync-publish"
    )
    http_port: int = setting(
        8081,
        "port of /metrics, /livez and /readyz (0: none)",
        env="DLLMSERVE_WORKER_HTTP_PORT",
        lo=0,
        hi=65535,
    )
    http_host: str = setting(
        "0.0.0.0", "address /metrics, /livez and /readyz listen on (dllmserve serve: 127.0.0.1)"
    )
