#!/usr/bin/env bash
# wanserve's runtime dependencies on an accelerator machine that has no package index (the lent GPU machine:
# nothing can be downloaded there), from a wheel folder carried with the source. The machine's own torch is
# used as it is: this script never installs, upgrades or replaces torch.
#
# Here, once (network and the project's venv; the folder is ignored by git, about 11 MiB):
#     bench/gpu_setup.sh build [FOLDER]        # FOLDER defaults to bench/wheels
# That is `pip download --no-deps --only-binary=:all:` of WHEELS below, each at the exact version
# `.venv/bin/pip freeze` shows here, as wheels for the device's Python (PY_VERSION, default 3.12, the H200
# image's; x86-64 manylinux). WHEELS is what the project needs beyond the H200 image's packages
# (.library/device/KINDS.md lists them: torch, transformers, accelerate, numpy, huggingface-hub, safetensors,
# pillow, ... are there), plus a few small ones that image may hold too old.
#
# There (the working tree sent with `carry` naming the folder):
#     bench/gpu_setup.sh install [FOLDER]
# It refuses to go on without a torch that sees a CUDA device (or an Ascend NPU through torch_npu); then
#   1. `pip install --no-index --find-links FOLDER` of the project's runtime requirements (pyproject's
#      dependencies and its `worker` extra, less torch and imageio-ffmpeg, which only the MP4 encoder needs),
#      with torch pinned to the installed build: pip takes from the folder only what is missing or too old;
#   2. the project itself, editable and without dependencies (if that fails the checkout still serves: the
#      benchmarks import the project from it);
#   3. imports what bench/gpu_wan13b.py imports, and fails if any is missing.
#
# The one device call, setup and bench together (docs/BENCHMARKS.md, "Accelerators (issue 17)"):
#     bash bench/gpu_setup.sh install && PYTHONUNBUFFERED=1 python3 bench/gpu_wan13b.py
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
FOLDER="${2:-$ROOT/bench/wheels}"
PY_VERSION="${PY_VERSION:-3.12}"
WHEELS=(
  diffusers importlib-metadata lazy-importer zipp
  pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection typing-extensions
  redis rq croniter prometheus-client imageio tqdm
)

build() {
  local venv_python="${VENV_PYTHON:-$ROOT/.venv/bin/python}"
  local pins=() name version
  for name in "${WHEELS[@]}"; do
    version="$("$venv_python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")"
    pins+=("$name==$version")
  done
  mkdir -p "$FOLDER"
  rm -f "$FOLDER"/*.whl
  "$venv_python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$FOLDER" \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${pins[@]}"
  printf '%s\n' "${pins[@]}" >"$FOLDER/pins.txt"
  echo "$(ls "$FOLDER"/*.whl | wc -l) wheels, $(du -sh "$FOLDER" | cut -f1) in $FOLDER"
}

install() {
  local python="${PYTHON:-python3}"
  [ -d "$FOLDER" ] || { echo "no wheel folder $FOLDER: build it here (bench/gpu_setup.sh build) and carry it" >&2; exit 1; }
  "$python" - <<'EOF' || exit 1
import importlib.util, sys
import torch
npu = importlib.util.find_spec("torch_npu") is not None
if npu:
    import torch_npu  # noqa: F401
if not (torch.cuda.is_available() or (npu and torch.npu.is_available())):
    sys.exit(f"torch {torch.__version__} sees no CUDA device and no NPU: install the accelerator's torch first")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) kept as it is")
EOF
  local constraints requirements
  constraints="$(mktemp)"
  requirements="$(mktemp)"
  "$python" -c 'import torch; print(f"torch=={torch.__version__}")' >"$constraints"
  "$python" - "$ROOT/pyproject.toml" >"$requirements" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["worker"]:
    if re.split(r"[ <>=!~;\[]", requirement, maxsplit=1)[0].lower() not in ("torch", "imageio-ffmpeg"):
        print(requirement)
EOF
  echo "installing from $FOLDER: $(tr '\n' ' ' <"$requirements")"
  "$python" -m pip install --quiet --no-index --find-links "$FOLDER" --constraint "$constraints" \
    --requirement "$requirements"
  (cd "$ROOT" && "$python" -m pip install --quiet --no-index --no-deps --no-build-isolation --editable .) \
    || echo "warning: the project did not install; bench/ imports it from $ROOT" >&2
  (cd "$ROOT" && "$python" -c '
import diffusers, pydantic_settings, rq, transformers
import worker.engine, worker.cache, service.core.cache
print(f"ready: diffusers {diffusers.__version__}, transformers {transformers.__version__}")
')
  rm -f "$constraints" "$requirements"
}

case "$MODE" in
  build) build ;;
  install) install ;;
  *) echo "usage: bench/gpu_setup.sh build|install [FOLDER]" >&2; exit 2 ;;
esac
