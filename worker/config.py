"""Worker settings (command-line flags map onto these; the engine's are one EngineConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dllmserve.engine.config import EngineConfig


@dataclass
class WorkerConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    model: str = ""  # checkpoint directory
    # instead of a checkpoint: random weights of a named shape of dllmserve.models.shapes
    # ("llada-8b", "dream-7b", "tiny") with a byte-level tokenizer, for benchmarks
    random_shape: str = ""
    model_name: str = ""  # the name clients ask for; empty: the directory's name (random-SHAPE)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # shared by the workers of one host that all see its GPUs: each claims one (worker/gpu.py)
    gpu_lock_dir: str = ""
    worker_id: str = ""  # empty: host-pid-random (a fresh id per process)
    slots: int = 0  # requests it accepts at once; 0: 2 * max_num_seqs
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0  # missing for this long: the worker is dead, its work reclaimed
    idle_block_ms: int = 200
    result_ttl_s: int = 3600  # for records without a TTL of their own (set at enqueue)
    drain_timeout_s: float = 60.0
    # the watchdog (worker/watchdog.py): an iteration running longer than
    # max(stall_floor_s, stall_factor x the moving average) takes the worker out
    stall_factor: float = 20.0
    stall_floor_s: float = 60.0
    async_publish: bool = True  # publish step records on a thread, overlapping the next step
    http_port: int = 8081  # /metrics, /livez, /readyz (worker/http.py); 0: no HTTP server
    http_host: str = "0.0.0.0"  # the address they listen on (serve: 127.0.0.1)
