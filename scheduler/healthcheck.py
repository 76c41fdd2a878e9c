"""`python -m dllmserve.scheduler.healthcheck [host:port] [service]`: exit 0 when the gRPC health
service says SERVING (for container health checks that have no grpc_health_probe binary). The
overall status ("") is the scheduler's readiness, NOT_SERVING until a worker is ready;
"liveness" is SERVING while the process runs."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else "localhost:50051"
    service = argv[2] if len(argv) > 2 else ""
    try:
        with grpc.insecure_channel(target) as ch:
            ask = health_pb2.HealthCheckRequest(service=service)
            resp = health_pb2_grpc.HealthStub(ch).Check(ask, timeout=3)
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}", file=sys.stderr)
        return 1
    ok = resp.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
