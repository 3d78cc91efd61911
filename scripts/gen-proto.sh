#!/usr/bin/env bash
# Regenerates the Python gRPC code from proto/ with grpcio-tools. The output
# lives beside the .proto files (package paywarden.v1); tests/test_proto.py
# fails when it is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" -m grpc_tools.protoc -Iproto \
  --python_out=proto --pyi_out=proto --grpc_python_out=proto \
  proto/paywarden/v1/signer.proto proto/paywarden/v1/sessions.proto \
  proto/paywarden/v1/approvals.proto proto/paywarden/v1/control.proto
