# A GPU worker: owns one GPU, loads the model once, serves batches from its Redis inbox.
# torch's CUDA wheels carry the CUDA libraries; the host's NVIDIA container toolkit (or the
# Kubernetes device plugin) provides the driver and the one GPU the worker sees.
# Build from the repository root (linux/amd64, the platform of the lock file):
#   docker build -f deploy/worker.Dockerfile -t ${DLLMSERVE_IMAGE:-dllmserve}-worker:TAG \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%FT%TZ) .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Exactly the locked wheels (scripts/lock.py): nothing resolved at build time.
COPY deploy/requirements/worker.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt
COPY . /src
RUN pip install --no-deps --no-build-isolation /src

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="dllmserve-worker" \
      org.opencontainers.image.description="dLLM-Serve GPU worker: the engine on one GPU" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A home directory: Triton and torch cache compiled kernels under it. The GPU lock directory
# exists in the image so that a volume mounted there (compose) starts owned by the worker.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/dllmserve dllmserve \
    && mkdir -p /var/lib/dllmserve/gpu-locks && chown 10001:10001 /var/lib/dllmserve/gpu-locks
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# Model checkpoints are mounted here (a Hugging Face directory per model).
VOLUME ["/models"]
# /metrics, /livez, /readyz
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=4)"]
ENTRYPOINT ["dllmserve"]
CMD ["worker", "--model", "/models/LLaDA-8B-Instruct"]
