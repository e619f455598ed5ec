"""Ship finished runs as the package's pretrained models (``pretrained:<name>``).

    python scripts/export_pretrained.py RUN_OR_SWEEP [...] [--data-dir DIR]
    python scripts/export_pretrained.py RUN --name NAME [--self-ensemble]

A sweep folder (train.py -m) stands for its finished runs, one per architecture. Each run's checkpoint (its
eval.checkpoint: best.pt unless the run chose last) is written weights-only to deblur_exp/weights/<NAME>.pt (NAME:
the architecture unless --name gives one) with how it was trained (recipe, epochs, device, time, the resolved
config), scored on Set5 and Set14 (whole images, the run's own degradation and scoring protocol: RGB, or Y with
its eval.crop_border; with --self-ensemble as the mean of 8 flips/rotations, which the shipped model then asks
of deblur.py and evaluate.py) and pinned by SHA-256 in deblur_exp/weights/manifest.json. Prints the table
docs/models.md's "Pretrained models" shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from deblur_exp.cli import default_data_dir, read_image_sets, run_cli
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.report import find_runs, load_run
from deblur_exp.evaluation.scoring import ScoringOptions, evaluate_set, load_restorer, summarize
from deblur_exp.runs.pretrained import DEGRADED, FOLDER, PREFIX, export
from deblur_exp.runs.run_dir import RunDir, run_checkpoint
from deblur_exp.tables import markdown_table

SETS = ("Set5", "Set14")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="finished run folders, or sweep folders holding them; one run per architecture")
    p.add_argument("--name", help="ship one run under this name instead of its architecture's (e.g. edsr_x3)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="ship it restoring as the mean of its 8 flips/rotations (x8 slower); scored that way")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: $DEBLUR_DATA_DIR or data/")
    return p.parse_args()


def protocol_label(restorer) -> str:
    """How its run scores (restorer.protocol): "RGB", or "Y, crop 3" for the SR protocol (a luma-only model is
    scored in Y)."""
    protocol = restorer.protocol
    channel = "Y" if protocol["y_channel"] or restorer.color == "y" else "RGB"
    return channel + (f", crop {protocol['crop_border']}" if protocol["crop_border"] else "")


def main() -> int:
    args = parse_args()
    folders = find_runs(args.runs)  # before the image sets: a wrong folder is the likelier mistake
    if args.name and len(folders) != 1:
        raise DeblurError(f"--name: give exactly one run to ship under a name ({len(folders)} found)")
    sets, _ = read_image_sets(list(SETS), args.data_dir)
    runs = [load_run(folder) for folder in folders]
    names = [args.name or r.arch for r in runs]
    if len(set(names)) != len(names):
        raise DeblurError(f"two runs of one architecture ({', '.join(names)}); export one run per architecture")
    rows = []
    for run, name in zip(runs, names):
        checkpoint = run_checkpoint(run.folder)
        restorer = load_restorer(checkpoint, "cpu", label=run.arch)
        options = ScoringOptions(**restorer.protocol, self_ensemble=args.self_ensemble)
        scores = {set_name: summarize(evaluate_set(restorer, images, "cpu", options, progress=False)[0])
                  for set_name, images in sets.items()}
        scored_in = protocol_label(restorer) + (", x8 self-ensemble" if args.self_ensemble else "")
        s = run.summary
        overrides = yaml.safe_load(RunDir(run.folder).overrides.read_text()) or []
        trained = {"recipe": run.recipe, "overrides": overrides, "epochs": s["epochs"], "best_epoch": s["best_epoch"],
                   "stopped_by": s.get("stopped_by", "epochs"), "max_time_s": s.get("max_time_s"),
                   "train_time_s": s["train_time_s"], "device": s.get("device"), "run": run.folder.name}
        suffix = protocol_label(restorer).lower().replace(", ", "_").replace(" ", "")
        published = {f"{k}_psnr_{suffix}{which}": round(v[f"psnr{column}"], 4) for k, v in scores.items()
                     for which, column in (("", "_restored"), (DEGRADED, "_degraded"))}
        entry = export(checkpoint, name, trained, published, args.self_ensemble)
        rows.append([f"`{PREFIX}{name}`", s["epochs"], f"{s['train_time_s'] / 60:.1f} min", s.get("device"),
                     f"{scores['Set5']['psnr_restored']:.2f}", f"{scores['Set14']['psnr_restored']:.2f}",
                     f"{entry['bytes'] / 2**20:.2f} MiB", scored_in])
    print(markdown_table(["model", "epochs", "train time", "device", "Set5 PSNR", "Set14 PSNR", "size", "scored in"],
                         rows))
    print(f"written to {FOLDER}")
    return 0


if __name__ == "__main__":
    run_cli(main)
