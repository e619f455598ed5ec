"""Train one model, or a sweep of them with -m. See README.md and docs/.

    python scripts/train.py model=dncnn optimizer.lr=1e-3
    python scripts/train.py experiment=seed model=edsr
    python scripts/train.py resume=outputs/runs/<date>/<time>_<id> trainer.epochs=20
    python scripts/train.py -m model=deblurcnn,deblurcnn_res,deblursuperrescnn,dncnn,edsr
    torchrun --nproc_per_node=2 scripts/train.py ...
"""

import sys

import hydra
from omegaconf import DictConfig

from deblur_exp.cli import run_hydra_cli
from deblur_exp.runs.resume import distributed_argv, resume_argv, run_dir_argv
from deblur_exp.sweeps.jobs import run_job  # imports training.config, which registers the schemas with Hydra
from deblur_exp.sweeps.summary import FAILED_JOBS  # filled at the end of a sweep (-m) with the jobs that failed


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Returns the run's `objective` (the best validation PSNR by default), the value sweepers (Optuna) maximise."""
    return run_job(cfg)


def start() -> None:
    sys.argv = distributed_argv(resume_argv(run_dir_argv(sys.argv)))  # resume=, paths.run_dir=: checked here
    FAILED_JOBS.clear()  # filled by this command's sweep only
    main()


if __name__ == "__main__":
    run_hydra_cli(start)
    sys.exit(1 if FAILED_JOBS else 0)
