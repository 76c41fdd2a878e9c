"""Errors of the HTTP API in OpenAI's JSON shape, and the gRPC statuses they come from.

The gateway validates only what is HTTP/JSON-shaped (the body, OpenAI's own fields); every rule
about a request's meaning is the scheduler's, reached through gRPC. Its INVALID_ARGUMENT names a
wire field (`sampling_params.gen_length`); `param_of` turns that back into the name the HTTP
client sent (`max_tokens`), so the 400 names the field the caller can fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType

import grpc

from dllmserve.client.errors import status_details

# gRPC status -> (HTTP status, OpenAI error type).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.CANCELLED: (409, "cancelled"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
# Wire field prefixes -> the OpenAI-side name (longest first); the rest keep their names.
_PARAMS = (
    ("sampling_params.gen_length", "max_tokens"),
    ("sampling_params.", ""),
    ("messages.messages", "messages"),
    ("token_ids.ids", "prompt"),
    ("stream_options.mask_placeholder", "mask_placeholder"),
    ("stream_options", "stream_mode"),
)
_PROMPT_FIELDS = ("text", "prompt")
_NONE: Mapping[str, str] = MappingProxyType({})


class ApiError(Exception):
    """An error answered as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def bad_field(param: str, reason: str) -> ApiError:
    """A 400 naming the field, in the same `field: reason` form as the gRPC API."""
    return ApiError(400, f"{param}: {reason}", param=param)


def param_of(field: str, chat: bool, renames: Mapping[str, str] = _NONE) -> str:
    """The request-body name of a wire field (`sampling_params.steps` -> `steps`); `renames`:
    the request's own (its structured output's field, `Plan.renames`), tried first."""
    if field in _PROMPT_FIELDS:
        return "messages" if chat else "prompt"
    for wire, http in (*sorted(renames.items(), key=lambda kv: -len(kv[0])), *_PARAMS):
        if field.startswith(wire):
            return http + field[len(wire) :]
    return field


def from_rpc(err: grpc.RpcError, chat: bool, renames: Mapping[str, str] = _NONE) -> ApiError:
    code = err.code()
    status, kind = HTTP_STATUS.get(code, (500, "server_error"))
    message = err.details() or code.name
    details = status_details(err)
    field, retry = details.field, details.retry_after
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry is None:
        status, kind = 400, "invalid_request_error"  # retrying would not help (too large)
    if code == grpc.StatusCode.UNAVAILABLE:
        retry = retry if retry is not None else 1.0
    param = None
    if field:
        param = param_of(field, chat, renames)
        message = re.sub(rf"^{re.escape(field)}(?=[:\s])", param, message)
    elif code == grpc.StatusCode.NOT_FOUND and "model" in message:
        param = "model"
    code_name = "model_not_found" if param == "model" and status == 404 else code.name.lower()
    return ApiError(status, message, type=kind, param=param, code=code_name, retry_after_s=retry)
