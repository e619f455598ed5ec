#!/usr/bin/env bash
# Issue 10 in one GPU lease: the five-model experiment=seed sweep at full length, timed from the command to its
# summary.md, then its first PLAIN_EPOCHS epochs held against a plain sweep (fp32, eager, one process per job)
# by scripts/compare_sweeps.py (0.1 dB rule). Writes into OUT: timing.txt, fast.log, summary_fast.md,
# plain.log, compare.md and sweeps.tar.gz (both sweeps' logs, metrics and summaries; no checkpoints).
#
#   bash scripts/gpu_sweep_check.sh OUT                        (run through scripts/gpu_lease.sh on the GPU)
#   LAUNCHER=joblib MPS=1 ...                                  (five processes, compiled, under CUDA MPS)
#
# LAUNCHER: threads (default; one process, a CUDA stream per job, uncompiled) or joblib (a process per job,
# torch.compile with CUDA graphs). PLAIN_EPOCHS (default 20; 0 skips the check). Any further arguments are
# train.py overrides for both sweeps (the CPU test passes tiny data and epochs here).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: [LAUNCHER=threads|joblib] bash scripts/gpu_sweep_check.sh OUT [overrides...]" >&2; exit 2; }
out=$(realpath -m "$1"); shift
case ${LAUNCHER:-threads} in
  threads) fast=(hydra/launcher=threads optimizer.fused=true) ;;
  joblib) fast=(hydra/launcher=joblib hydra.launcher.n_jobs=5 trainer.compile=true
                trainer.compile_mode=reduce-overhead optimizer.fused=true) ;;
  *) echo "error: LAUNCHER must be threads or joblib (got ${LAUNCHER})" >&2; exit 2 ;;
esac
plain_epochs=${PLAIN_EPOCHS:-20}
sweeps=$(mktemp -d "${TMPDIR:-/tmp}/gpu_sweep_check.XXXX")
five=(experiment=seed model=deblurcnn,deblurcnn_res,deblursuperrescnn,dncnn,edsr trainer.progress=false
      eval.figures=false)
mkdir -p "$out"
export PYTHONUNBUFFERED=1

started=$(date +%s.%N)
python scripts/train.py -m "${five[@]}" "${fast[@]}" hydra.sweep.dir="$sweeps/fast" "$@" > "$out/fast.log" 2>&1
status=$?
wall=$(python -c "print(f'{$(date +%s.%N) - $started:.1f}')")
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch", torch.__version__)')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "command: python scripts/train.py -m ${five[*]} ${fast[*]} $*"
  echo "fast sweep: exit status $status, ${wall} s wall from the command to summary.md"
} | tee "$out/timing.txt"
cp "$sweeps/fast/summary.md" "$out/summary_fast.md" 2>/dev/null

if [ "$status" -eq 0 ] && [ "$plain_epochs" -gt 0 ]; then
  plain=(hydra/launcher=joblib hydra.launcher.n_jobs=5 trainer.precision=32 trainer.compile=false eval.enabled=false)
  python scripts/train.py -m "${five[@]}" "${plain[@]}" hydra.sweep.dir="$sweeps/plain" "$@" \
    trainer.epochs="$plain_epochs" > "$out/plain.log" 2>&1 \
    && python scripts/compare_sweeps.py "$sweeps/plain" "$sweeps/fast" --epoch "$plain_epochs" \
         --out "$out/compare.md" | grep "job within" | tee -a "$out/timing.txt"
fi
tar -czf "$out/sweeps.tar.gz" --exclude=checkpoints -C "$sweeps" . && rm -rf "$sweeps"
exit $status
