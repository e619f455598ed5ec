#!/usr/bin/env bash
# Run COMMAND on a lent GPU machine after setting it up from the carried .whl/ (.gpu/carry.sh made it):
# installs the carried wheels that are missing (offline, into /tmp/lease-site), imports the project from this
# checkout, reads the carried datasets, and, with MPS=1, starts CUDA MPS so that the parallel jobs of a sweep run
# their kernels side by side instead of time-slicing the GPU (kept only if a CUDA probe passes under it; the log
# says which).
#
#   device run, carry=[".whl"]:
#     bash .gpu/lease.sh bash .gpu/cuda_check.sh "$OUT/cuda_check"
#     MPS=1 bash .gpu/lease.sh bash .gpu/study.sh 1 8 outputs/multirun/seed_gpu "$OUT"
#     bash .gpu/lease.sh bash .gpu/sweep_check.sh "$OUT"
#
# CARRY (default .whl) names the carried folder. Everything the command prints is also in $OUT/lease.log when
# OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
carry=$(realpath -m "${CARRY:-.whl}")
[ $# -gt 0 ] || { echo "usage: [MPS=1] bash .gpu/lease.sh COMMAND [ARGS...]" >&2; exit 2; }
[ -d "$carry" ] || { echo "gpu_lease: $carry not found: run .gpu/carry.sh here and carry it" >&2; exit 2; }
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; exec > >(tee -a "$OUT/lease.log") 2>&1; fi
python=$(command -v python3 || command -v python)

# The carried wheels go into a folder of their own, not into the image's environment (which may be read-only),
# and without their needs: the image has PyYAML, packaging and the rest. pytest's family only if the image lacks
# pytest, so that its own pytest plugins keep the pytest they were built for.
site=${LEASE_SITE:-/tmp/lease-site}  # LEASE_SITE: where the carried wheels go (tests use a tmp folder)
hydra_wheels=("$carry"/wheels/{hydra_core,omegaconf,antlr4_python3_runtime,hydra_joblib_launcher}-*.whl)
install=()
"$python" -c "import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null || install+=("${hydra_wheels[@]}")
if ! "$python" -c "import pytest" 2>/dev/null; then
  for wheel in "$carry"/wheels/*.whl; do [[ " ${hydra_wheels[*]} " == *" $wheel "* ]] || install+=("$wheel"); done
fi
if [ ${#install[@]} -gt 0 ]; then
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "${install[@]}" \
    || { echo "gpu_lease: installing the carried wheels from $carry/wheels failed" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d "$carry/datasets" ] && export DEBLUR_DATA_DIR="$carry/datasets"
echo "gpu_lease: $("$python" -c 'import torch, hydra; print("torch", torch.__version__, "hydra", hydra.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")'), data ${DEBLUR_DATA_DIR:-unset}"

stop_mps() { echo quit | nvidia-cuda-mps-control >/dev/null 2>&1; }
if [ "${MPS:-0}" = 1 ]; then
  if ! command -v nvidia-cuda-mps-control >/dev/null; then
    echo "gpu_lease: MPS off: nvidia-cuda-mps-control not found; jobs time-slice the GPU"
  else
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    # A client that cannot reach a broken MPS server hangs or fails; probe before the real work depends on it.
    if nvidia-cuda-mps-control -d && timeout 90 "$python" -c "import torch; torch.ones(1, device='cuda').sum().item()"
    then
      echo "gpu_lease: MPS on"
      trap stop_mps EXIT
    else
      stop_mps
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      echo "gpu_lease: MPS off: the daemon did not serve a CUDA probe; jobs time-slice the GPU"
    fi
  fi
fi
"$@"
