# The scheduler: gRPC front end, validation, queue, dispatcher, relay. No GPU.
# Build from the repository root: docker build -f deploy/scheduler.Dockerfile -t dllmserve-scheduler .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# `python -m dllmserve...` (the healthcheck) must import the installed package, not the
# source copy in the working directory (it lacks the kernels/ scheduler/ worker/ it maps in)
ENV PYTHONSAFEPATH=1
WORKDIR /opt/dllmserve
# The package imports torch at top level; the CPU build keeps this image small.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
COPY pyproject.toml README.md ./
COPY dllmserve ./dllmserve
COPY scheduler ./scheduler
COPY worker ./worker
COPY kernels ./kernels
RUN pip install ".[service]"

USER 65534:65534
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD ["python", "-m", "dllmserve.scheduler.healthcheck", "localhost:50051"]
ENTRYPOINT ["dllmserve"]
CMD ["scheduler", "--listen", "0.0.0.0:50051"]
