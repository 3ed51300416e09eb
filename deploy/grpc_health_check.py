#!/usr/bin/env python3
"""Exit 0 when the local parakeet-server says SERVING (grpc.health.v1), 1 otherwise.

The container image's HEALTHCHECK. It asks 127.0.0.1 on PARAKEET_PORT (default 50051) about
the transcription service; grpcio and grpcio-health-checking are the server's own
dependencies. Kubernetes needs none of this: it probes gRPC health natively.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "parakeet.v1.TranscriptionService"


def main() -> int:
    target = f"127.0.0.1:{os.environ.get('PARAKEET_PORT', '50051')}"
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=4
            )
        except grpc.RpcError as error:
            print(f"{target}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{target}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
