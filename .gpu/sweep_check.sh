#!/usr/bin/env bash
# Issue 10 on a lent GPU: the five-model experiment=seed sweep at full length, timed from the command to its
# summary.md (phase "fast"; it first checks, in seconds, that trainer.cuda_graph's
# replays follow eager steps on this device), and its first PLAIN_EPOCHS epochs held against a plain sweep: fp32,
# eager, one process per job (phase "plain", scripts/compare_sweeps.py, the 0.1 dB rule); then Set14 evaluation
# images/s on this device, torch SSIM vs scikit-image (phase "scoring", scripts/benchmark.py).
# Writes into OUT: timing.txt, graph_check.log, fast.log, summary_fast.md and weights_fast.tar (every job's
# best.pt, weights only) or, for a sweep stopped at FAST_LIMIT, progress_fast.md; plain.log, compare.md,
# scoring.json, and sweeps.tar.gz (both sweeps' logs, metrics and summaries; no checkpoints). At most 7 files a
# call, within the device tool's 8.
#
#   bash .gpu/sweep_check.sh OUT                   (through .gpu/lease.sh; all phases, one call)
#   PHASES=fast ... then PHASES='plain scoring' ...       (two calls on the warm machine: each fits a 600 s call)
#   MPS=1 ...                                             (five processes, compiled, under CUDA MPS)
#
# The fast sweep: joblib, a process per job, torch.compile with CUDA graphs. FAST_LIMIT (seconds, default 480: the 8-minute goal): a sweep still running then
# is stopped with SIGTERM (every job saves last.pt; resume=auto continues it) and progress_fast.md records the
# epochs each job reached and its measured epoch times. PLAIN_EPOCHS (default 20). SWEEPS (default
# outputs/gpu_sweep_check) holds the sweeps between the phases. Any further arguments are train.py overrides for
# both sweeps (the CPU test passes tiny data and epochs here).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: [PHASES='fast plain scoring'] bash .gpu/sweep_check.sh OUT [overrides...]" >&2; exit 2; }
out=$(realpath -m "$1"); shift
fast=(hydra/launcher=joblib hydra.launcher.n_jobs=5 trainer.compile=true trainer.compile_mode=reduce-overhead
      optimizer.fused=true)
phases=${PHASES:-fast plain scoring}
fast_limit=${FAST_LIMIT:-480}
plain_epochs=${PLAIN_EPOCHS:-20}
sweeps=$(realpath -m "${SWEEPS:-outputs/gpu_sweep_check}")
five=(experiment=seed model=deblurcnn,deblurcnn_res,deblursuperrescnn,dncnn,edsr trainer.progress=false
      eval.figures=false)
mkdir -p "$out" "$sweeps"
export PYTHONUNBUFFERED=1
status=0

if [[ " $phases " == *" fast "* ]]; then
  # seconds: does trainer.cuda_graph's capture hold on this device?
  if python -m pytest -q -p no:cacheprovider tests/test_graphed_step.py -k this_machines > "$out/graph_check.log" 2>&1
  then echo "cuda_graph check: graphed steps follow eager ones (deblurcnn, dncnn)"
  else echo "cuda_graph check: FAILED, see graph_check.log (the sweep runs anyway)"; fi | tee -a "$out/timing.txt"
  rm -rf "$sweeps/fast"
  started=$(date +%s.%N)
  # timeout signals the whole process group, so the joblib workers stop (and checkpoint) too
  timeout -s TERM -k 60 "$fast_limit" python scripts/train.py -m "${five[@]}" "${fast[@]}" \
    hydra.sweep.dir="$sweeps/fast" "$@" > "$out/fast.log" 2>&1
  status=$?
  wall=$(python -c "print(f'{$(date +%s.%N) - $started:.1f}')")
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    verdict="STOPPED at FAST_LIMIT=${fast_limit} s (${wall} s wall): the sweep did not finish; see progress_fast.md"
  else
    verdict="exit status $status, ${wall} s wall from the command to summary.md"
  fi
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch", torch.__version__)')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "command: python scripts/train.py -m ${five[*]} ${fast[*]} $*"
    echo "fast sweep: $verdict"
  } | tee -a "$out/timing.txt"
  cp "$sweeps/fast/summary.md" "$out/summary_fast.md" 2>/dev/null  # a sweep with a failed job has one too
  if [ "$status" -eq 0 ]; then
    # Each job's best weights come back, without the optimizer state (a third of the size): with sweeps.tar.gz
    # they make complete run folders for scripts/report.py and scripts/export_pretrained.py off the lease.
    python - "$sweeps"/fast/*/checkpoints/best.pt <<'SLIM' \
      && (cd "$sweeps" && tar -cf "$out/weights_fast.tar" fast/*/checkpoints/best.pt) || status=1
import sys
from deblur_exp.runs.checkpoint import drop_training_state
for path in sys.argv[1:]:
    drop_training_state(path)
SLIM
    # each job's epochs, and how far a projection from the first epochs was from this wall time
    python scripts/sweep_progress.py "$sweeps/fast" --wall "$wall" >> "$out/timing.txt" 2>&1 \
      || echo "(no back-test: see the line above)" >> "$out/timing.txt"
  else  # stopped or failed: how far each job got, its epoch times, and what it would still need
    python scripts/sweep_progress.py "$sweeps/fast" --out "$out/progress_fast.md" > /dev/null
  fi
fi

if [[ " $phases " == *" plain "* ]] && [ "$plain_epochs" -gt 0 ]; then
  rm -rf "$sweeps/plain"
  plain=(hydra/launcher=joblib hydra.launcher.n_jobs=5 trainer.precision=32 trainer.compile=false eval.enabled=false)
  python scripts/train.py -m "${five[@]}" "${plain[@]}" hydra.sweep.dir="$sweeps/plain" "$@" \
    trainer.epochs="$plain_epochs" > "$out/plain.log" 2>&1 \
    && python scripts/compare_sweeps.py "$sweeps/plain" "$sweeps/fast" --epoch "$plain_epochs" \
         --out "$out/compare.md" | grep "job within" | sed "s/^/plain check at epoch $plain_epochs: /" \
         | tee -a "$out/timing.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if [[ " $phases " == *" scoring "* ]]; then  # whole-image evaluation as every job ends, with the heaviest model
  python scripts/benchmark.py --skip data training patches inference large sweep --models dncnn \
    --json "$out/scoring.json" > "$out/scoring.log" 2>&1 \
    && python - "$out/scoring.json" <<'SCORING' | tee -a "$out/timing.txt"
import json, sys
report = json.load(open(sys.argv[1]))
scoring, machine = report["scoring"], report["machine"]
if "skipped" in scoring:
    print(f"Set14 scoring: skipped ({scoring['skipped']})")
else:
    print(f"Set14 scoring ({machine['gpu'] or machine['device']}, dncnn, {scoring['images']} images): "
          f"{scoring['images_per_s']:.2f} images/s with torch SSIM on {machine['device']} vs "
          f"{scoring['skimage_images_per_s']:.2f} with scikit-image")
SCORING
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "Set14 scoring: FAILED, see scoring.log" | tee -a "$out/timing.txt"; status=1; }
fi
tar -czf "$out/sweeps.tar.gz" --exclude=checkpoints -C "$sweeps" .
exit $status
