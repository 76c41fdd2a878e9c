"""Python client of the dLLM-Serve gRPC API, sync (`Client`) and asyncio (`AsyncClient`).

    from dllmserve.client import Client, StepUpdate
    with Client("localhost:50051") as c:
        for ev in c.generate("Why is the sky blue?", sampling_params={"gen_length": 64}):
            if isinstance(ev, StepUpdate):
                print(ev.step, ev.text_delta)
        print(c.generate_text("Hi", sampling_params={"gen_length": 32}).text)

`generate` survives the loss of a scheduler: the request id is chosen on the client, and when
the stream breaks with UNAVAILABLE the client re-attaches (through the next target, when more
than one is given) after the last step it received, so the caller sees one unbroken stream.
A StepUpdate whose `attempt` differs from the previous one restarts the canvas (the request was
re-run on another worker); `Canvas` applies updates with that rule.

Events and results are frozen dataclasses (`Accepted`, `StepUpdate`, `Completed`, `ServerInfo`;
`Completed.finish_reason` is a `FinishReason`). A failed call raises a `ServiceError` (itself a
`grpc.RpcError`): `ValidationError` (`.field`), `NotFound`, `Overloaded` (`.retry_after`),
`Unavailable`, or `ServiceError` itself for the other statuses (`.code()`).
"""

from dllmserve.client.aio import AsyncClient
from dllmserve.client.errors import (
    NotFound,
    Overloaded,
    ServiceError,
    Unavailable,
    ValidationError,
)
from dllmserve.client.request import Canvas, build_request
from dllmserve.client.sync import Client
from dllmserve.client.types import (
    Accepted,
    Completed,
    Event,
    FinishReason,
    ModelInfo,
    ProvisionalToken,
    ServerInfo,
    StepUpdate,
    Timings,
    TokenEdit,
    Usage,
    WorkerInfo,
)

__all__ = [
    "Accepted",
    "AsyncClient",
    "Canvas",
    "Client",
    "Completed",
    "Event",
    "FinishReason",
    "ModelInfo",
    "NotFound",
    "Overloaded",
    "ProvisionalToken",
    "TokenEdit",
    "ServerInfo",
    "ServiceError",
    "StepUpdate",
    "Timings",
    "Unavailable",
    "Usage",
    "ValidationError",
    "WorkerInfo",
    "build_request",
]
