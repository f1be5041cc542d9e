# syntax=docker/dockerfile:1.7
# Targets (deploy/README.md says how to build, run and deploy them):
#   api         slim, no torch                       docker build --target api -t wanserve-api:0.1.0 .
#   worker      torch (CUDA build) + diffusers       docker build --target worker -t wanserve-worker:0.1.0 .
#   worker-cpu  torch (CPU build) + diffusers        docker build --target worker-cpu -t wanserve-worker-cpu:0.1.0 .
#   worker-npu  CANN base + torch + torch_npu        docker build --target worker-npu -t wanserve-worker-npu:0.1.0 .
# Every image: dependencies in a layer before the source (a code edit reinstalls no torch), pip's cache
# as a build mount, numeric user 10001, dumb-init as PID 1, exec-form health checks.
ARG PYTHON_VERSION=3.11
# The torch the tests run on (TORCH_SPEC in the Makefile); tests/deploy checks the two agree.
ARG TORCH_VERSION=2.13.0
# torch_npu X.Y is built for torch X.Y (pyproject's `npu` extra); its CANN must match Ascend's table.
ARG TORCH_NPU_VERSION=2.13.0
ARG CANN_IMAGE=quay.io/ascend/cann:9.1.0-910b-ubuntu22.04-py3.11
ARG DUMB_INIT_VERSION=1.2.5.post1

# ---------------------------------------------------------------- shared by api, worker, worker-cpu
FROM python:${PYTHON_VERSION}-slim AS python-base
ARG DUMB_INIT_VERSION
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    WANSERVE_DATA_DIR=/data
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# /data/videos exists and belongs to the user, so a fresh named volume mounted there is writable by it.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/wanserve wanserve \
 && mkdir -p /data/videos /data/models \
 && chown -R 10001:10001 /data
# dumb-init forwards SIGTERM to its child only (--single-child): the worker then finishes its running job,
# even while the model loads, and never has an ffmpeg encode in its process group killed under it.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "dumb-init==${DUMB_INIT_VERSION}"
WORKDIR /app
ENTRYPOINT ["dumb-init", "--single-child", "--"]

# ---------------------------------------------------------------- api
FROM python-base AS api
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    --mount=type=bind,source=deploy/docker/pyproject_requirements.py,target=/tmp/build/requirements.py \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml api s3 > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,target=/tmp/src,rw \
    pip install --no-deps --no-build-isolation /tmp/src
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["wanserve", "api", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- worker (CUDA), worker-cpu
FROM python-base AS worker-base
# Metrics and probes of the group's rank 0 on WANSERVE_METRICS_PORT (0: off, then the process is the check).
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('WANSERVE_METRICS_PORT', '9400'); port == '0' or urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
CMD ["wanserve", "worker"]

# PyPI's torch is the CUDA build on x86_64; TORCH_INDEX_URL picks another (e.g. .../whl/cu126).
FROM worker-base AS torch-cuda
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=""
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_INDEX_URL="${TORCH_INDEX_URL}"; fi \
 && pip install "torch==${TORCH_VERSION}"

FROM worker-base AS torch-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_CPU_INDEX_URL}" "torch==${TORCH_VERSION}"

FROM torch-cuda AS worker
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    --mount=type=bind,source=deploy/docker/pyproject_requirements.py,target=/tmp/build/requirements.py \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml worker s3 > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,target=/tmp/src,rw \
    pip install --no-deps --no-build-isolation /tmp/src
USER 10001:10001

FROM torch-cpu AS worker-cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    --mount=type=bind,source=deploy/docker/pyproject_requirements.py,target=/tmp/build/requirements.py \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml worker s3 > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,target=/tmp/src,rw \
    pip install --no-deps --no-build-isolation /tmp/src
USER 10001:10001

# ---------------------------------------------------------------- worker-npu (Ascend)
# On CANN's image, as vLLM-Ascend and LightX2V build theirs. torch comes from PyTorch's CPU index (the CPU
# build on x86_64 and aarch64 alike); torch_npu adds the NPU backend. CANN_IMAGE's CANN must be the one
# Ascend's compatibility table gives for TORCH_NPU_VERSION.
FROM ${CANN_IMAGE} AS worker-npu
ARG TORCH_VERSION
ARG TORCH_NPU_VERSION
ARG DUMB_INIT_VERSION
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    WANSERVE_DATA_DIR=/data \
    WANSERVE_DEVICE=npu
# Ascend runtime settings for diffusion inference (deploy/README.md, "Ascend runtime settings"):
# - TASK_QUEUE_ENABLE=2: operators are dispatched from a second-level task queue, so the host thread is not
#   the bottleneck of a DiT step's many small kernels;
# - CPU_AFFINITY_CONF=1: each rank's threads are bound to the cores next to its NPU;
# - PYTORCH_NPU_ALLOC_CONF=expandable_segments:True: video sizes vary from job to job, and expandable
#   segments keep the caching allocator from fragmenting into out-of-memory;
# - HCCL_CONNECT_TIMEOUT=600: ranks that load the model at different speeds still build their
#   communicators (HCCL's 120 s default is shorter than a big model's load); keep it >= WANSERVE_DIST_TIMEOUT_S;
# - errors only, to stdout (the pod's log); CANN's log, cache and work folders under /tmp, which is
#   writable when the root filesystem is not.
ENV TASK_QUEUE_ENABLE=2 \
    CPU_AFFINITY_CONF=1 \
    PYTORCH_NPU_ALLOC_CONF=expandable_segments:True \
    HCCL_CONNECT_TIMEOUT=600 \
    ASCEND_GLOBAL_LOG_LEVEL=3 \
    ASCEND_SLOG_PRINT_TO_STDOUT=1 \
    ASCEND_PROCESS_LOG_PATH=/tmp/ascend/log \
    ASCEND_CACHE_PATH=/tmp/ascend/cache \
    ASCEND_WORK_PATH=/tmp/ascend/work
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Interactive shells (`kubectl exec ... bash`) get CANN's environment too; the worker gets it from ascend-env.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/wanserve wanserve \
 && mkdir -p /data/videos /data/models \
 && chown -R 10001:10001 /data \
 && echo 'source /usr/local/Ascend/ascend-toolkit/set_env.sh' >> /etc/bash.bashrc
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install "dumb-init==${DUMB_INIT_VERSION}"
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install --index-url "${TORCH_CPU_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && python3 -m pip install "torch_npu==${TORCH_NPU_VERSION}"
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    --mount=type=bind,source=deploy/docker/pyproject_requirements.py,target=/tmp/build/requirements.py \
    python3 /tmp/build/requirements.py /tmp/build/pyproject.toml worker npu s3 > /tmp/requirements.txt \
 && python3 -m pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,target=/tmp/src,rw \
    python3 -m pip install --no-deps --no-build-isolation /tmp/src
COPY --chmod=755 deploy/docker/ascend-env.sh /usr/local/bin/ascend-env
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('WANSERVE_METRICS_PORT', '9400'); port == '0' or urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["dumb-init", "--single-child", "--", "ascend-env"]
CMD ["wanserve", "worker"]
