"""The errors the service answers with, as Python exceptions.

Each is a `grpc.RpcError` (so `code()` and `details()` work as on a gRPC call, and older
`except grpc.RpcError` code still catches it) under `ServiceError`; the ones a caller acts on
have their own class and carry the detail the service sent: the offending field of a
`ValidationError`, the retry hint of an `Overloaded`. The original gRPC error is `__cause__`.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from dllmserve import errors

_DETAILS_KEY = "grpc-status-details-bin"


class ServiceError(grpc.RpcError):
    """An error status from the service (or from the transport on the way to it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self._code = code
        self.message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self.message


class ValidationError(ServiceError, errors.ValidationError):
    """INVALID_ARGUMENT: `field` names the bad field (e.g. ``sampling_params.steps``); also a
    `dllmserve.ValidationError`, like the offline API's."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str) -> None:
        errors.ValidationError.__init__(self, field, message.removeprefix(f"{field}: "))
        self._code = code
        self.message = message


class NotFound(ServiceError):
    """NOT_FOUND: an unknown model, or a request id the service does not know (any more)."""


class Overloaded(ServiceError):
    """RESOURCE_EXHAUSTED: the queue is full (`retry_after` seconds is the service's hint), or
    the request can never fit a worker or is too large (`retry_after` is None: do not retry)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """UNAVAILABLE: no scheduler answered (down, draining, or its Redis unreachable); retry."""


def _rich_details(err: grpc.RpcError) -> list:
    """The google.rpc details of a failed call (BadRequest, RetryInfo), unpacked."""
    try:
        trailers = err.trailing_metadata() or ()
    except Exception:
        return []
    for key, value in trailers:
        if key == _DETAILS_KEY:
            out = []
            for d in status_pb2.Status.FromString(value).details:
                for cls in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
                    if d.Is(cls.DESCRIPTOR):
                        m = cls()
                        d.Unpack(m)
                        out.append(m)
            return out
    return []


def from_rpc_error(err: grpc.RpcError) -> ServiceError:
    """The typed error for a failed gRPC call."""
    code, message = err.code(), err.details() or ""
    details = _rich_details(err)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        fields = [v.field for d in details if hasattr(d, "field_violations")
                  for v in d.field_violations]  # fmt: skip
        field = fields[0] if fields else message.partition(":")[0]
        return ValidationError(code, message, field)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(code, message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delays = [d.retry_delay for d in details if hasattr(d, "retry_delay")]
        retry = delays[0].seconds + delays[0].nanos / 1e9 if delays else None
        return Overloaded(code, message, retry)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(code, message)
    return ServiceError(code, message)
