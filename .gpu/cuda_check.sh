#!/usr/bin/env bash
# CUDA checks in one go (see README, Performance): every precision/compile knob trains on the GPU, the
# benchmark measures the models and runs a few real epochs of the five-model experiment=seed sweep at once.
# Usage: DEBLUR_DATA_DIR=/path/to/datasets bash .gpu/cuda_check.sh [output folder]
set -uo pipefail
out=${1:-cuda_check}
mkdir -p "$out"
export DEBLUR_OUTPUT_DIR="$out/outputs" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
tiny="data=sample data.images=[chelsea,coffee] data.val_images=[chelsea] trainer.epochs=2 trainer.progress=false
      trainer.limit_train_batches=20 trainer.device=cuda eval.sets=[Set5]"
for knob in trainer.precision=32 trainer.precision=bf16 trainer.precision=fp16 trainer.compile=true \
            optimizer.fused=true trainer.cuda_graph=true trainer.patches_on_device=false; do
  if python scripts/train.py $tiny "$knob" > "$out/smoke_$knob.log" 2>&1; then
    echo "ok   $knob: $(grep -o 'eval Set5.*' "$out/smoke_$knob.log")"
  else
    echo "FAIL $knob"; tail -3 "$out/smoke_$knob.log"
  fi
done
# fp32: every section, ending with the real five-model experiment=seed sweep (joblib, compile, fused Adam) for
# four epochs and its projection to 202 epochs (goal: under 15 minutes on one H100-class GPU).
python scripts/benchmark.py --device cuda --steps 100 --skip large --json "$out/bench_fp32.json"
python scripts/benchmark.py --device cuda --steps 100 --precision bf16 --skip data patches inference large sweep \
  --json "$out/bench_bf16.json"
