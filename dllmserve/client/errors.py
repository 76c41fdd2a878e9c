"""The errors the service answers with, as Python exceptions.

Each is a `grpc.RpcError` (so `code()`, `details()` and `trailing_metadata()` work as on a gRPC
call, `grpc_status.rpc_status.from_call` reads its rich details, and older
`except grpc.RpcError` code still catches it) under `ServiceError`; the ones a caller acts on
have their own class and carry the detail the service sent: the offending field of a
`ValidationError`, the retry hint of an `Overloaded`. The original gRPC error is `__cause__`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
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


@dataclass(frozen=True)
class StatusDetails:
    """What a failed call's google.rpc rich status says beyond its code and message."""

    field: str = ""  # the offending field of an INVALID_ARGUMENT ("" when none is named)
    retry_after: float | None = None  # RetryInfo: seconds to wait before retrying
    final: bool = False  # ErrorInfo: the service's own final status of the request


def status_details(err: grpc.RpcError) -> StatusDetails:
    """The BadRequest field, RetryInfo delay and ErrorInfo presence of a failed call: the one
    reading of them (this client, its retry rule and the HTTP gateway all use it). Without a
    BadRequest, an INVALID_ARGUMENT's field is its message's `field:` head (worker checks)."""
    field, retry, final = "", None, False
    for d in _details(err):
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            field = field or (br.field_violations[0].field if br.field_violations else "")
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            d.Unpack(ri)
            retry = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
        elif d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            final = True
    if not field and err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        head = (err.details() or "").split(":", 1)[0]
        field = head if " " not in head else ""
    return StatusDetails(field, retry, final)


def _trailers(err: grpc.RpcError) -> tuple:
    try:
        return tuple(err.trailing_metadata() or ())
    except Exception:  # an error raised before the call had any (a bad target, say)
        return ()


def _details(err: grpc.RpcError) -> list:
    """The packed details of a failed call's status (none when it has none or they do not
    parse: the plain message remains)."""
    for key, value in _trailers(err):
        if key == _DETAILS_KEY:
            try:
                return list(status_pb2.Status.FromString(value).details)
            except DecodeError:
                return []
    return []


def from_rpc_error(err: grpc.RpcError) -> ServiceError:
    """The typed error for a failed gRPC call."""
    code, message, trailers = err.code(), err.details() or "", _trailers(err)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError(code, message, status_details(err).field, trailers)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(code, message, trailers)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(code, message, status_details(err).retry_after, trailers)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(code, message, trailers)
    return ServiceError(code, message, trailers)
