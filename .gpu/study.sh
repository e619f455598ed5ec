#!/usr/bin/env bash
# A sweep that outlives GPU leases: run it for one lease, stop cleanly, pack what the next lease needs, repeat.
#
#   bash .gpu/study.sh LEASE_NUMBER MINUTES_PER_LEASE SWEEP_DIR OUT_DIR [train.py overrides ...]
#
# Every job trains under trainer.max_time = LEASE_NUMBER x MINUTES_PER_LEASE: the budget is counted across
# resumes (it is saved in last.pt), so lease k lets each job train MINUTES_PER_LEASE more minutes, stop after
# the step in flight, checkpoint and evaluate. resume=auto skips finished jobs and continues the others. When
# every job has its epochs, report.py writes the results report. The sweep folder (checkpoints without
# previous.pt, metrics, summaries) is packed into OUT_DIR in 15 MiB parts; unpack them into the next lease's
# SWEEP_DIR parent: cat OUT_DIR/state.tar.gz.part-* | tar -xzf - -C <parent>.
#
# Example, the seed study on one GPU (joblib, all five side by side, compiled, fused Adam):
#   bash .gpu/study.sh 1 9 outputs/multirun/seed_gpu "$OUT"
#   (next lease, after unpacking)  bash .gpu/study.sh 2 9 outputs/multirun/seed_gpu "$OUT"
set -uo pipefail
lease=$1 minutes=$2 sweep=$3 out=$4
shift 4
mkdir -p "$out" "$(dirname "$sweep")"
budget=$(python -c "print(round($lease * $minutes, 4))")
launcher=(hydra/launcher=joblib hydra.launcher.n_jobs=5 trainer.compile=true trainer.compile_mode=reduce-overhead)
defaults=("${launcher[@]}" experiment=seed model=deblurcnn,deblurcnn_res,deblursuperrescnn,dncnn,edsr
          optimizer.fused=true)
args=("$@")
[ ${#args[@]} -eq 0 ] && args=("${defaults[@]}")
export PYTHONUNBUFFERED=1
started=$(date +%s)
python scripts/train.py -m "${args[@]}" trainer.progress=false trainer.max_time="$budget" \
  hydra.sweep.dir="$sweep" resume=auto > "$out/sweep_lease$lease.log" 2>&1
status=$?
echo "lease $lease: sweep exited $status after $(( $(date +%s) - started )) s (budget per job: $budget min)" \
  | tee -a "$out/sweep_lease$lease.log"
cp "$sweep/summary.md" "$out/summary_lease$lease.md" 2>/dev/null
# Finished when every job trained all its epochs (not merely its time budget).
if python - "$sweep" <<'EOF'
import json, sys
from pathlib import Path
jobs = [p for p in Path(sys.argv[1]).iterdir() if (p / ".hydra").is_dir()]
done = [p for p in jobs if (p / "summary.json").is_file()
        and json.loads((p / "summary.json").read_text())["stopped_by"] == "epochs"]
print(f"{len(done)} of {len(jobs)} jobs have trained all their epochs")
sys.exit(0 if jobs and len(done) == len(jobs) else 1)
EOF
then
  python scripts/report.py "$sweep" --out "$out/report" > "$out/report.log" 2>&1 && echo "report in $out/report"
fi
tar -czf - --exclude=previous.pt --exclude=.submitit -C "$(dirname "$sweep")" "$(basename "$sweep")" \
  | split -b 15M - "$out/state.tar.gz.part-"
ls -la "$out"
exit $status
