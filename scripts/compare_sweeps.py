"""Check that a faster way of running a sweep reaches the same science: best validation PSNR job by job.

    python scripts/compare_sweeps.py REFERENCE_SWEEP CANDIDATE_SWEEP [--epoch N] [--tolerance 0.1] [--out FILE]

The jobs of the two sweeps are matched by folder name (the swept values, e.g. ``3_model=dncnn``). For each, the
best validation PSNR up to epoch N (default: the last epoch both reached) is read from its metrics.csv, so a
20-epoch fp32 eager sweep can be held against the first 20 epochs of a full-length compiled/bf16/threaded one.
Prints a Markdown table (also written to --out) and exits 0 when every job is within --tolerance dB, 1 when one
is not (the rule: speed never changes the science by more than 0.1 dB).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deblur_exp.cli import run_cli
from deblur_exp.errors import DeblurError
from deblur_exp.sweeps.summary import metrics_rows, named_sweep_jobs
from deblur_exp.tables import markdown_table, write_text


def val_psnr_by_epoch(job: Path) -> dict[int, float]:
    return {int(r["epoch"]): float(r["val_psnr"]) for r in metrics_rows(job)}


def compare(reference: Path, candidate: Path, epoch: int | None, tolerance: float) -> tuple[list[list], bool]:
    """Table rows (job, epoch, reference, candidate, difference, verdict) and whether all are within tolerance."""
    ours, theirs = named_sweep_jobs(reference), named_sweep_jobs(candidate)
    if ours.keys() != theirs.keys():
        raise DeblurError(f"the sweeps hold different jobs: {', '.join(sorted(ours.keys() ^ theirs.keys()))}; "
                          f"compare sweeps over the same values")
    rows, all_within = [], True
    for name in ours:
        a, b = val_psnr_by_epoch(ours[name]), val_psnr_by_epoch(theirs[name])
        upto = epoch if epoch is not None else min(max(a, default=0), max(b, default=0))
        if upto < 1 or max(a, default=0) < upto or max(b, default=0) < upto:
            rows.append([name, upto, "-", "-", "-", f"not compared: an epoch {upto} is missing"])
            all_within = False
            continue
        best_a = max(v for e, v in a.items() if e <= upto)
        best_b = max(v for e, v in b.items() if e <= upto)
        within = abs(best_b - best_a) <= tolerance
        all_within &= within
        rows.append([name, upto, f"{best_a:.3f}", f"{best_b:.3f}", f"{best_b - best_a:+.3f}",
                     "within" if within else f"OFF by more than {tolerance:g} dB"])
    return rows, all_within


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path, help="the sweep run the plain way (e.g. fp32 eager)")
    p.add_argument("candidate", type=Path, help="the same sweep run the fast way")
    p.add_argument("--epoch", type=int, default=None, help="compare the best validation PSNR up to this epoch")
    p.add_argument("--tolerance", type=float, default=0.1, help="dB (default 0.1)")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = p.parse_args()
    if args.epoch is not None and args.epoch < 1:
        raise DeblurError(f"--epoch: must be at least 1 (got {args.epoch})")
    rows, all_within = compare(args.reference, args.candidate, args.epoch, args.tolerance)
    table = markdown_table(["job", "up to epoch", "reference best val PSNR", "candidate", "difference", "verdict"],
                           rows)
    table += (f"\nreference: {args.reference}\ncandidate: {args.candidate}\n"
              f"{'every job within' if all_within else 'NOT every job within'} {args.tolerance:g} dB\n")
    print(table)
    if args.out:
        write_text(args.out, table)
    return 0 if all_within else 1


if __name__ == "__main__":
    run_cli(main)
