#!/usr/bin/env bash
# Pack what a lent GPU machine lacks into .whl/ (git-ignored), on this machine, before the lease:
#   .whl/wheels/    hydra-core, omegaconf, antlr4-python3-runtime 4.9.3, the joblib launcher and pytest, as wheels
#                   (the GPU image has torch, OpenCV, TensorBoard, tqdm, joblib and scikit-image, not Hydra)
#   .whl/datasets/  T91, Set5 and Set14 (about 16 MiB), copied from DEBLUR_DATA_DIR
# Then one device call runs the lease: carry=[".whl"], command="bash .gpu/lease.sh <command>".
# Usage: DEBLUR_DATA_DIR=/path/to/datasets bash .gpu/carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DEBLUR_DATA_DIR:?set DEBLUR_DATA_DIR to the folder holding T91, Set5 and Set14}"
rm -rf .whl/wheels .whl/datasets
mkdir -p .whl/wheels .whl/datasets
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.x pins) is published as a source archive only: build its wheel
# here, so the GPU machine installs without building anything.
python -m pip wheel --quiet --no-deps --wheel-dir .whl/wheels \
  "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "antlr4-python3-runtime==4.9.3" "hydra-joblib-launcher>=1.2,<1.3"
# pytest and what it needs, for the device checks that are tests (gpu_sweep_check.sh's cuda_graph check)
python -m pip wheel --quiet --wheel-dir .whl/wheels "pytest>=7.4"
for set in T91 Set5 Set14; do
  [ -d "$DEBLUR_DATA_DIR/$set" ] || { echo "gpu_carry: $DEBLUR_DATA_DIR/$set not found" >&2; exit 1; }
  cp -r "$DEBLUR_DATA_DIR/$set" .whl/datasets/
done
ls .whl/wheels
du -sh .whl
