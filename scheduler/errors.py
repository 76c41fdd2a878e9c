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
    st = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return rpc_status.to_status(st)


def invalid_argument(field: str, reason: str) -> RpcError:
    br = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=reason)
        ]
    )
    return RpcError(_status(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {reason}", br))


def resource_exhausted(message: str, retry_after_s: float | None) -> RpcError:
    details = []
    if retry_after_s is not None:
        secs = int(retry_after_s)
        delay = duration_pb2.Duration(seconds=secs, nanos=int((retry_after_s - secs) * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return RpcError(_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, *details))


def from_code(code: str, message: str, field: str = "") -> RpcError:
    """A terminal error record of a request (its code is a grpc.StatusCode name)."""
    if code == "INVALID_ARGUMENT" and field:
        return invalid_argument(field, message)
    sc = getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=code, domain=DOMAIN)
    return RpcError(_status(sc, message, info))


def simple(code: grpc.StatusCode, message: str) -> RpcError:
    return RpcError(_status(code, message))
