"""Generated gRPC stubs of protos/dllmserve/v1 (regenerate with scripts/gen_protos.sh)."""
