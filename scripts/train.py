"""Train one model, or a sweep of them with -m. See README.md.

    python scripts/train.py model=dncnn optimizer.lr=1e-3
    python scripts/train.py experiment=seed model=edsr
    python scripts/train.py resume=outputs/runs/2026-11-26/13-00-00_123ab trainer.epochs=20
"""

import sys

import hydra
from omegaconf import DictConfig

import deblur_exp.config  # noqa: F401  (registers the config schemas and resolvers with Hydra)
from deblur_exp.errors import DeblurError
from deblur_exp.runs import resume_argv


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from deblur_exp.training import TrainingInterrupted, train

    try:
        return train(cfg)
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except DeblurError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = resume_argv(sys.argv)
    main()
