"""gRPC error statuses with google.rpc rich details (BadRequest, RetryInfo, ErrorInfo).

Clients in any language can read the offending field from the BadRequest detail; the plain
status message also names it, for clients that ignore details.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "dllmserve"
# A status travels in HTTP/2 trailers, whose size gRPC limits (8 KiB by default): a longer one
# would reach the client as RESOURCE_EXHAUSTED instead of the real error. Messages quote values
# cut short already (dllmserve.errors.echo); this is the backstop.
MAX_MESSAGE_CHARS = 1024


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


class RpcError(Exception):
    """Raised inside a handler; the servicer turns it into the call's final status."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


def _status(code: grpc.StatusCode, message: str, *details) -> grpc.Status:
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    st = status_pb2.Status(code=code.value[0], message=_cut(message), details=packed)
    return rpc_status.to_status(st)


def invalid_argument(field: str, reason: str) -> RpcError:
    br = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=_cut(field), description=_cut(reason))
        ]
    )
    return RpcError(_status(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {reason}", br))


def out_of_range(message: str) -> RpcError:
    return RpcError(_status(grpc.StatusCode.OUT_OF_RANGE, message))


def resource_exhausted(message: str, retry_after_s: float | None) -> RpcError:
    details = []
    if retry_after_s is not None:
        secs = int(retry_after_s)
        delay = duration_pb2.Duration(seconds=secs, nanos=int((retry_after_s - secs) * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return RpcError(_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, *details))


def from_code(code: str, message: str, field: str = "", reason: str = "") -> RpcError:
    """A terminal error record of a request (its code is a grpc.StatusCode name); the
    ErrorInfo's reason is the code unless `reason` says more (REQUEST_STATE_LOST)."""
    if code == "INVALID_ARGUMENT" and field:
        return invalid_argument(field, message)
    sc = getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=reason or code, domain=DOMAIN)
    return RpcError(_status(sc, message, info))


def simple(code: grpc.StatusCode, message: str) -> RpcError:
    return RpcError(_status(code, message))
