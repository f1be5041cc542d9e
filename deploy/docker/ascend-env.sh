#!/bin/bash
# The worker-npu image's entry point, under dumb-init: CANN's environment (set_env.sh) for this process and
# every process it starts (torchrun and each rank), then the command.
toolkit_env=/usr/local/Ascend/ascend-toolkit/set_env.sh
if [[ ! -f $toolkit_env ]]; then
  echo "ascend-env: $toolkit_env not found: the image must be built on a CANN base image" >&2
  exit 1
fi
# shellcheck source=/dev/null
source "$toolkit_env"
# ATB (CANN's transformer acceleration library) ships with some CANN images; its environment when it does.
if [[ -f /usr/local/Ascend/nnal/atb/set_env.sh ]]; then
  # shellcheck source=/dev/null
  source /usr/local/Ascend/nnal/atb/set_env.sh
fi
mkdir -p "${ASCEND_PROCESS_LOG_PATH:-/tmp/ascend/log}" "${ASCEND_CACHE_PATH:-/tmp/ascend/cache}" \
  "${ASCEND_WORK_PATH:-/tmp/ascend/work}"
exec "$@"
