# The scheduler: gRPC front end, validation, queue, dispatcher, relay (also the image of the
# HTTP gateway: `dllmserve gateway`). No GPU and no torch.
# Build from the repository root (linux/amd64, the platform of the lock file):
#   docker build -f deploy/scheduler.Dockerfile -t ${DLLMSERVE_IMAGE:-dllmserve}-scheduler:TAG \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%FT%TZ) .
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Exactly the locked wheels (scripts/lock.py): nothing resolved at build time.
COPY deploy/requirements/scheduler.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt
COPY . /src
RUN pip install --no-deps --no-build-isolation /src

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="dllmserve-scheduler" \
      org.opencontainers.image.description="dLLM-Serve scheduler: gRPC front end and dispatcher" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --no-create-home dllmserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC API, scheduler metrics; the gateway (same image) listens on 8000.
EXPOSE 50051 9090 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-m", "dllmserve.scheduler.healthcheck", "localhost:50051"]
ENTRYPOINT ["dllmserve"]
CMD ["scheduler", "--listen", "0.0.0.0:50051"]
