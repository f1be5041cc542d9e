# syntax=docker/dockerfile:1
# Targets:  api     slim, no torch  (docker build --target api -t wanserve-api .)
#           worker  torch + diffusers; CUDA wheels by default, CPU with
#                   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WANSERVE_DATA_DIR=/data
RUN useradd --uid 10001 --create-home wanserve \
 && mkdir -p /data/videos /data/models \
 && chown -R wanserve /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker

FROM base AS api
RUN pip install ".[api]"
USER wanserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["wanserve", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install torch --index-url "${TORCH_INDEX_URL}" \
 && pip install ".[worker]"
USER wanserve
CMD ["wanserve", "worker"]
