#!/usr/bin/env bash
# CUDA checks in one go (see README, Performance): every precision/compile knob trains on the GPU, the
# benchmark measures the models, and experiment=seed runs a few real epochs of all five models at once.
# Usage: DEBLUR_DATA_DIR=/path/to/datasets bash scripts/cuda_check.sh [output folder]
set -uo pipefail
out=${1:-cuda_check}
mkdir -p "$out"
export DEBLUR_OUTPUT_DIR="$out/outputs" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
tiny="data=sample data.images=[chelsea,coffee] data.val_images=[chelsea] trainer.epochs=2 trainer.progress=false
      trainer.limit_train_batches=20 trainer.device=cuda eval.sets=[Set5]"
for knob in trainer.precision=32 trainer.precision=bf16 trainer.precision=fp16 trainer.compile=true \
            optimizer.fused=true; do
  if python scripts/train.py $tiny "$knob" > "$out/smoke_$knob.log" 2>&1; then
    echo "ok   $knob: $(grep -o 'eval Set5.*' "$out/smoke_$knob.log")"
  else
    echo "FAIL $knob"; tail -3 "$out/smoke_$knob.log"
  fi
done
python scripts/benchmark.py --device cuda --steps 100 --skip large --json "$out/bench_fp32.json"
python scripts/benchmark.py --device cuda --steps 100 --precision bf16 --skip data patches inference large \
  --json "$out/bench_bf16.json"
# Real epochs: the five seed models side by side on one GPU, two epochs each (patch cache shared).
python scripts/train.py experiment=seed model=edsr trainer.epochs=1 trainer.limit_train_batches=1 \
  trainer.progress=false eval.enabled=false > "$out/seed_warm_cache.log" 2>&1
start=$(date +%s)
for m in deblurcnn deblurcnn_res deblursuperrescnn dncnn edsr; do
  python scripts/train.py experiment=seed model=$m trainer.epochs=2 trainer.progress=false eval.enabled=false \
    > "$out/seed_$m.log" 2>&1 &
done
wait
echo "five models x 2 seed epochs in parallel: $(( $(date +%s) - start )) s wall"
grep -h "epoch 2/2" "$out"/seed_*.log
