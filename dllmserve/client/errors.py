"""The errors the service answers with, as Python exceptions.

Each is a `grpc.RpcError` (so `code()`, `details()` and `trailing_metadata()` work as on a gRPC
call, `grpc_status.rpc_status.from_call` reads its rich details, and older
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

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple = ()) -> None:
        super().__init__(f"{code.name}: {message}")
        self._code = code
        self.message = message
        self._trailers = tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self.message

    def trailing_metadata(self) -> tuple:
        return self._trailers


class ValidationError(ServiceError, errors.ValidationError):
    """INVALID_ARGUMENT: `field` names the bad field (e.g. ``sampling_params.steps``); also a
    `dllmserve.ValidationError`, like the offline API's."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str, trailers=()) -> None:
        errors.ValidationError.__init__(self, field, message.removeprefix(f"{field}: "))
        self._code = code
        self.message = message
        self._trailers = tuple(trailers)


class NotFound(ServiceError):
    """NOT_FOUND: an unknown model, or a request id the service does not know (any more)."""


class Overloaded(ServiceError):
    """RESOURCE_EXHAUSTED: the queue is full (`retry_after` seconds is the service's hint), or
    the request can never fit a worker or is too large (`retry_after` is None: do not retry)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after: float | None, trailers=()
    ) -> None:
        super().__init__(code, message, trailers)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """UNAVAILABLE: no scheduler answered (down, draining, or its Redis unreachable); retry."""


def _trailers(err: grpc.RpcError) -> tuple:
    try:
        return tuple(err.trailing_metadata() or ())
    except Exception:  # an error raised before the call had any (a bad target, say)
        return ()


def _rich_details(trailers: tuple) -> list:
    """The google.rpc details of a failed call (BadRequest, RetryInfo), unpacked."""
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
    code, message, trailers = err.code(), err.details() or "", _trailers(err)
    details = _rich_details(trailers)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        fields = [
            v.field for d in details if hasattr(d, "field_violations") for v in d.field_violations
        ]
        field = fields[0] if fields else message.partition(":")[0]
        return ValidationError(code, message, field, trailers)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(code, message, trailers)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delays = [d.retry_delay for d in details if hasattr(d, "retry_delay")]
        retry = delays[0].seconds + delays[0].nanos / 1e9 if delays else None
        return Overloaded(code, message, retry, trailers)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(code, message, trailers)
    return ServiceError(code, message, trailers)
