# A GPU worker: owns one GPU, loads the model once, serves batches from its Redis inbox.
# Build from the repository root: docker build -f deploy/worker.Dockerfile -t dllmserve-worker .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# `python -m dllmserve...` (the healthcheck) must import the installed package, not the
# source copy in the working directory (it lacks the kernels/ scheduler/ worker/ it maps in)
ENV PYTHONSAFEPATH=1
WORKDIR /opt/dllmserve
COPY pyproject.toml README.md ./
COPY dllmserve ./dllmserve
COPY scheduler ./scheduler
COPY worker ./worker
COPY kernels ./kernels
RUN pip install ".[service,kernels]"

# Model checkpoints are mounted here (a Hugging Face directory per model).
VOLUME ["/models"]
ENTRYPOINT ["dllmserve"]
CMD ["worker", "--model", "/models/LLaDA-8B-Instruct"]
