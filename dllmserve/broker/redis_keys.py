"""The Redis key names and request states the scheduler and the workers share.

Keys derive from the request or worker id (standalone Redis, not Cluster). The scripts that
move a request between states are in `dllmserve.broker.scripts`.
"""

from __future__ import annotations

PENDING = "dllm:pending"  # stream of {id}: requests waiting for dispatch
DISPATCH_GROUP = "dispatch"
INBOX_GROUP = "worker"
WORKERS = "dllm:workers"  # set of worker ids that have registered
MODELS = "dllm:models"  # hash model name -> last time a worker served it
DEAD = "dllm:dead"  # dead-letter stream
ASSIGNED = "dllm:assigned"  # sorted set request id -> dispatch time, while a worker holds it
LEASE = "dllm:dispatcher"  # the dispatcher lease: value = scheduler id
QUEUED_BY_CLIENT = "dllm:queued"  # hash client -> its requests waiting in dllm:pending

QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
DONE, FAILED, CANCELLED, EXPIRED, DEAD_STATUS = "done", "failed", "cancelled", "expired", "dead"
TERMINAL = frozenset({DONE, FAILED, CANCELLED, EXPIRED, DEAD_STATUS})

RESULT_TTL_S = 3600  # a finished request's records live this long, unless it stored its own
STEPS_TTL_S = 86400  # a running request's result stream lives at least this long

# Result-stream record kinds (field "k"); every record has the attempt in field "a".
REC_STEP, REC_COMPLETED, REC_ERROR = "s", "c", "e"


def req_key(request_id: str) -> str:
    return f"dllm:req:{request_id}"


def res_key(request_id: str) -> str:
    return f"dllm:res:{request_id}"


def watch_key(request_id: str) -> str:
    """The set of open client streams following a request (one token per stream)."""
    return f"dllm:watch:{request_id}"


def inbox_key(worker_id: str) -> str:
    return f"dllm:inbox:{worker_id}"


def worker_key(worker_id: str) -> str:
    return f"dllm:worker:{worker_id}"


def load_key(worker_id: str) -> str:
    """Requests handed to a worker and not yet finished (the dispatcher's view of its load)."""
    return f"dllm:load:{worker_id}"


def hub_wake_key(hub_id: str) -> str:
    """A scheduler's relay wake-up stream: an entry makes its blocked XREAD return."""
    return f"dllm:hub:{hub_id}"


def iso_key(worker_id: str) -> str:
    """The isolation tag of the suspects a worker holds (docs/service.md, "Poison isolation")."""
    return f"dllm:iso:{worker_id}"


def ctl_key(worker_id: str) -> str:
    """Control messages (cancellations) for one worker."""
    return f"dllm:ctl:{worker_id}"


def text(value: bytes | str | None) -> str:
    """A Redis reply as text (the clients return bytes, to keep binary request bodies intact)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
