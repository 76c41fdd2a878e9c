"""DllmService's registration with deserializers that never raise.

gRPC's own deserializer raises inside the server on bytes that are not a valid message, which
answers UNKNOWN and logs a traceback. Here parsing returns `Malformed` instead, and the handler
answers INVALID_ARGUMENT naming the problem: a body that does not decode, or a declared field
sent with another wire type (the parser keeps such a field as an unknown one, so the request
would silently run without it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from dllmserve.scheduler import errors
from dllmserve.v1 import dllm_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["DllmService"]
# Entries of a repeated message field inspected for wire types: no list may hold more (the
# validation refuses longer ones), so a huge list costs no more than this.
MAX_INSPECTED = 256


@dataclass(frozen=True)
class Malformed:
    """A request body that could not be taken as its message type."""

    field: str
    reason: str


def parser(msg_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            msg = msg_type.FromString(data)
        except DecodeError:
            name = msg_type.DESCRIPTOR.full_name
            return Malformed("request", f"is not a valid {name} ({len(data)} bytes)")
        field = mistyped_field(msg)
        if field:
            return Malformed(field, "was sent with a wire type other than its declared type")
        return msg

    return parse


def mistyped_field(msg: Message, prefix: str = "") -> str:
    """The path of the first declared field that arrived with another wire type, or ''."""
    by_number = msg.DESCRIPTOR.fields_by_number
    for f in UnknownFieldSet(msg):
        if f.field_number in by_number:
            return prefix + by_number[f.field_number].name
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            subs = [(f"{fd.name}[{i}]", v) for i, v in enumerate(value[:MAX_INSPECTED])]
        else:
            subs = [(fd.name, value)]
        for name, sub in subs:
            found = mistyped_field(sub, f"{prefix}{name}.")
            if found:
                return found
    return ""


def _refusing_malformed(impl, streaming: bool):
    async def refuse(request: Malformed, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(
            errors.invalid_argument(request.field, request.reason).status
        )

    if streaming:

        async def stream(request, context):
            if isinstance(request, Malformed):
                await refuse(request, context)
            async for ev in impl(request, context):
                yield ev

        return stream

    async def unary(request, context):
        if isinstance(request, Malformed):
            await refuse(request, context)
        return await impl(request, context)

    return unary


def add_service(servicer, server: grpc.aio.Server) -> None:
    """What the generated `add_DllmServiceServicer_to_server` does, with `parser`'s
    deserializers."""
    handlers = {}
    for m in SERVICE.methods:
        request_type = getattr(pb, m.input_type.name)
        response_type = getattr(pb, m.output_type.name)
        make = (
            grpc.unary_stream_rpc_method_handler
            if m.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[m.name] = make(
            _refusing_malformed(getattr(servicer, m.name), m.server_streaming),
            request_deserializer=parser(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
