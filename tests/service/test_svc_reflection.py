"""Server reflection answers under both names, v1 (newer grpcurl, Postman) and v1alpha."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as wire


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_service(cluster, version):
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(cluster.target) as ch:
        call = ch.stream_stream(
            method,
            request_serializer=wire.ServerReflectionRequest.SerializeToString,
            response_deserializer=wire.ServerReflectionResponse.FromString,
        )
        requests = [
            wire.ServerReflectionRequest(list_services=""),
            wire.ServerReflectionRequest(file_containing_symbol="dllmserve.v1.StepUpdate"),
        ]
        listed, described = list(call(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"dllmserve.v1.DllmService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names  # fmt: skip
    fd = descriptor_pb2.FileDescriptorProto.FromString(
        described.file_descriptor_response.file_descriptor_proto[0]
    )
    step = next(m for m in fd.message_type if m.name == "StepUpdate")
    assert "token_texts" in {f.name for f in step.field}
