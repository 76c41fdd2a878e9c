"""gRPC server reflection under both names: `grpc.reflection.v1alpha` and `grpc.reflection.v1`.

grpcio-reflection ships only the v1alpha service, but newer tools (grpcurl, Postman, grpcui)
ask for v1 first. The v1 protocol is v1alpha renamed, message for message and field number for
field number, so the v1 method is the v1alpha servicer behind a second route.
"""

from __future__ import annotations

import grpc
import grpc.aio
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as wire

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=wire.ServerReflectionRequest.FromString,
                response_serializer=wire.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
