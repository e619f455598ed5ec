"""The run's schema: the groups' dataclasses composed into ``TrainConfig``, registered with Hydra's ConfigStore,
and ``check_config``, which refuses a bad setting by its key before any data is read.

Each group's dataclass lives beside the code it configures (``models.ModelConfig``, ``data.sources.DataConfig``,
``data.degrade.DegradationConfig``, ``evaluation.scoring.EvalConfig``); the trainer's, optimizer's, scheduler's and
paths' live here, with the training loop they configure.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf

from deblur_exp.config import COLOR_CHANNELS, did_you_mean, parse_duration, register_resolvers
from deblur_exp.data.degrade import DegradationConfig, degradation_problems
from deblur_exp.data.sources import DataConfig
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.scoring import EvalConfig
from deblur_exp.models import ModelConfig, model_parameters
from deblur_exp.runs.locate import find_checkpoints
from deblur_exp.runs.run_dir import CHECKPOINT_CHOICES
from deblur_exp.runtime import PRECISIONS
from deblur_exp.training.losses import LOSSES


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 5e-4
    weight_decay: float = 0.0


@dataclass
class AdamConfig(OptimizerConfig):
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    fused: Optional[bool] = None


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class SchedulerConfig:
    # None means a constant learning rate.
    _target_: Optional[str] = None
    _partial_: bool = True


@dataclass
class PlateauConfig(SchedulerConfig):
    mode: str = "min"
    factor: float = 0.5
    patience: int = 5
    min_lr: float = 0.0


@dataclass
class CosineConfig(SchedulerConfig):
    warmup: float = 0.0
    eta_min: float = 0.0


@dataclass
class TrainerConfig:
    device: str = "auto"
    epochs: int = 6
    batch_size: int = 4
    val_batch_size: Optional[int] = None
    loss: str = "mse"
    seed: int = 42
    limit_train_batches: Optional[int] = None
    limit_val_batches: Optional[int] = None
    image_every: int = 5
    num_image_samples: int = 8
    precision: str = "auto"
    dropout: float = 0.0
    channels_last: Optional[bool] = None
    patches_on_device: Optional[bool] = None
    compile: bool = False
    compile_mode: str = "default"
    cuda_graph: bool = False
    deterministic: bool = False
    num_threads: Optional[int] = None
    progress: bool = True
    max_time: Optional[str] = None


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    output_root: str = MISSING
    cache_dir: str = MISSING
    run_dir: str = MISSING


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    degradation: DegradationConfig = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = MISSING
    paths: PathsConfig = MISSING
    eval: EvalConfig = MISSING
    resume: Optional[str] = None
    init_weights: Optional[str] = None
    objective: str = "val_psnr"


def register_configs() -> None:
    """Register the resolvers and schemas; called on import so any entry point gets them."""
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="data", node=DataConfig)
    cs.store(group="schema", name="degradation", node=DegradationConfig)
    cs.store(group="schema", name="adam", node=AdamConfig)
    cs.store(group="schema", name="sgd", node=SGDConfig)
    cs.store(group="schema", name="scheduler_none", node=SchedulerConfig)
    cs.store(group="schema", name="plateau", node=PlateauConfig)
    cs.store(group="schema", name="cosine", node=CosineConfig)
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="paths", node=PathsConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)


register_configs()


CHOICES = {
    "data.source": ("sample", "folder"),
    "data.split": ("patch", "image"),
    "data.color": ("rgb", "y"),
    "trainer.compile_mode": ("default", "reduce-overhead", "max-autotune"),
}


# The typed groups: every key in them must be a field of their schema (Hydra lets ``+key=value`` add others).
GROUP_SCHEMAS = {"trainer": TrainerConfig, "data": DataConfig, "degradation": DegradationConfig,
                 "eval": EvalConfig, "paths": PathsConfig}


def _target_parameters(target: str) -> set[str]:
    return set(inspect.signature(get_class(target)).parameters) | {"_target_", "_partial_"}


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys that nothing reads (``+trainer.epoch=3`` would silently train the default epochs)."""
    def refuse(prefix: str, key: str, known) -> None:
        dotted = [f"{prefix}.{k}" if prefix else k for k in known]
        full = f"{prefix}.{key}" if prefix else key
        raise DeblurError(f"{full}: no such setting{did_you_mean(full, dotted)}")

    known_top = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in cfg:
        if key not in known_top:
            refuse("", key, known_top)
    for group, schema in GROUP_SCHEMAS.items():
        known = {f.name for f in dataclasses.fields(schema)}
        for key in cfg[group]:
            if key not in known:
                refuse(group, key, known)
    for group in ("optimizer", "scheduler"):
        target = cfg[group].get("_target_")
        known = _target_parameters(target) if target else {"_target_", "_partial_"}
        for key in cfg[group]:
            if key not in known:
                refuse(group, key, known)
    known = model_parameters(cfg.model.name)
    for key in cfg.model.params:
        if key not in known:
            raise DeblurError(f"model.params.{key}: no such setting for model={cfg.model.name} (it takes: "
                              f"{', '.join(known) or 'nothing'})")


def check_config(cfg: DictConfig) -> None:
    """Range and consistency checks, run before any data is read; each failure names its key."""
    check_targets(cfg)
    check_known_keys(cfg)

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise DeblurError(f"{key}: {message} (got {OmegaConf.select(cfg, key)!r})")

    # The losses' and precisions' own tables are the lists of choices.
    choices = {**CHOICES, "trainer.loss": tuple(LOSSES), "trainer.precision": tuple(PRECISIONS)}
    for key, allowed in choices.items():
        need(str(OmegaConf.select(cfg, key)) in allowed, key, f"must be one of {', '.join(allowed)}")
    check_trainer(cfg, need)
    check_optimizer(cfg, need)
    check_model_params(cfg, need)
    check_data(cfg, need)
    check_eval(cfg, need)
    check_objective(cfg)
    if cfg.init_weights and not cfg.resume:  # only that it exists: the weights are loaded with the model
        try:
            find_checkpoints(cfg.init_weights)
        except DeblurError as exc:
            raise DeblurError(f"init_weights: {exc}") from None


def check_trainer(cfg: DictConfig, need) -> None:
    trainer = cfg.trainer
    need(cfg.optimizer.lr > 0, "optimizer.lr", "must be positive")
    need(math.isfinite(cfg.optimizer.lr), "optimizer.lr", "must be finite")
    need(trainer.epochs > 0, "trainer.epochs", "must be a positive integer")
    need(trainer.batch_size > 0, "trainer.batch_size", "must be a positive integer")
    need(trainer.val_batch_size is None or trainer.val_batch_size > 0, "trainer.val_batch_size",
         "must be positive or null")
    for key in ("limit_train_batches", "limit_val_batches"):
        need(trainer[key] is None or trainer[key] > 0, f"trainer.{key}", "must be positive or null (all batches)")
    need(trainer.image_every > 0, "trainer.image_every", "must be a positive integer")
    need(trainer.num_image_samples > 0, "trainer.num_image_samples", "must be a positive integer")
    need(trainer.num_threads is None or trainer.num_threads > 0, "trainer.num_threads",
         "must be a positive integer, or null (torch's default)")
    need(0 <= trainer.dropout < 1, "trainer.dropout", "must lie in [0, 1)")
    if trainer.cuda_graph:  # step.py: a captured step has no room for these
        need(not trainer.compile, "trainer.compile", "must be false with trainer.cuda_graph=true "
             "(compile_mode=reduce-overhead makes its own graphs)")
        need(trainer.precision != "fp16", "trainer.precision", "cannot be fp16 with trainer.cuda_graph=true (the "
             "gradient scaler checks for overflow on the host every step); use bf16 or 32")
        need("capturable" in _target_parameters(cfg.optimizer._target_), "optimizer._target_",
             "cannot step inside a CUDA graph (trainer.cuda_graph=true); use optimizer=adam or optimizer=adamw")
    need(trainer.device in ("auto", "cpu") or trainer.device.split(":")[0] == "cuda", "trainer.device",
         "must be auto, cpu, cuda or cuda:N")
    try:
        seconds = parse_duration(trainer.max_time)
    except ValueError:
        seconds = 0.0
    need(seconds is None or seconds >= 0.001, "trainer.max_time",
         "must be a duration of at least a millisecond: HH:MM:SS, DD:HH:MM:SS or minutes (e.g. 10), or null")


# Where optimizers and schedulers may come from: a _target_ elsewhere (os.system, say) is never instantiated.
TARGET_MODULES = {"optimizer": ("torch.optim.",),
                  "scheduler": ("torch.optim.lr_scheduler.", "deblur_exp.training.schedules.")}


def check_targets(cfg: DictConfig) -> None:
    """Refuse, before anything is imported or built, a _target_ outside the optimizer and scheduler modules."""
    for group, prefixes in TARGET_MODULES.items():
        target = cfg[group].get("_target_")
        if not (target is None and group == "scheduler" or str(target).startswith(prefixes)):
            raise DeblurError(f"{group}._target_: must name a class in "
                              f"{' or '.join(p.rstrip('.') for p in prefixes)} (got {target!r})")


def check_optimizer(cfg: DictConfig, need) -> None:
    """The optimizer's and scheduler's own settings, ranges torch would only refuse with a traceback."""
    optimizer, scheduler = cfg.optimizer, cfg.scheduler
    need(optimizer.get("weight_decay", 0) >= 0, "optimizer.weight_decay", "must be >= 0")
    need(optimizer.get("momentum", 0) >= 0, "optimizer.momentum", "must be >= 0")
    betas = optimizer.get("betas", [0.9, 0.999])
    need(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", "must be two numbers in [0, 1)")
    need(0 < scheduler.get("factor", 0.5) < 1, "scheduler.factor", "must lie strictly between 0 and 1")
    need(0 <= scheduler.get("warmup", 0) < 1, "scheduler.warmup", "must be a share of the run in [0, 1)")
    need(0 <= scheduler.get("eta_min", 0) < optimizer.lr, "scheduler.eta_min",
         "must be >= 0 and below optimizer.lr (the rate the schedule anneals from)")


def check_model_params(cfg: DictConfig, need) -> None:
    """Sizes (features, blocks, depth, channels) must be positive and dropout rates in [0, 1): the model's own
    constructor would otherwise fail deep inside torch."""
    for key, value in cfg.model.params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "dropout" in key:
            need(0 <= value < 1, f"model.params.{key}", "must lie in [0, 1)")
        elif isinstance(value, int):
            need(value > 0, f"model.params.{key}", "must be a positive integer")


def check_data(cfg: DictConfig, need) -> None:
    data, degradation = cfg.data, cfg.degradation
    if data.source == "sample":  # scikit-image's bundled photos: a folder or download set here would be ignored
        for key, unset in (("root", None), ("url", None), ("download", False)):
            need(data[key] == unset, f"data.{key}", "is not read by data=sample (scikit-image's photos); to train "
                                                    "on your own images use data=folder data.root=PATH")
    need(data.patch_size > 0, "data.patch_size", "must be a positive integer")
    need(data.stride >= 1, "data.stride", "must be at least 1")
    need(0 < data.val_fraction < 1, "data.val_fraction", "must lie strictly between 0 and 1")
    need(len(data.scales) > 0 and all(0 < s <= 1 for s in data.scales), "data.scales",
         "must list factors in (0, 1], e.g. [1.0] (no scale augmentation) or [1.0,0.9,0.8,0.7,0.6]")
    for key, problem in degradation_problems(degradation):  # the degradation checks its own settings
        need(False, f"degradation.{key}", problem)
    need(data.patch_size // degradation.scale >= 1, "data.patch_size",
         f"is smaller than degradation.scale={degradation.scale}; a patch must survive the downscale")
    channels = cfg.model.params.get("channels", 3)
    need(channels == COLOR_CHANNELS[data.color], "model.params.channels",
         f"must be {COLOR_CHANNELS[data.color]} for data.color={data.color}")


def check_eval(cfg: DictConfig, need) -> None:
    eval_cfg = cfg.eval
    need(not (eval_cfg.y_channel and cfg.data.color == "y"), "eval.y_channel",
         "must be false for data.color=y (the images already are the Y channel)")
    need(eval_cfg.checkpoint in CHECKPOINT_CHOICES, "eval.checkpoint",
         f"must be one of {', '.join(CHECKPOINT_CHOICES)}")
    need(eval_cfg.crop_border >= 0, "eval.crop_border", "must be >= 0")
    need(eval_cfg.every is None or eval_cfg.every > 0, "eval.every",
         "must be a positive number of epochs, or null (score only when training ends)")
    need(eval_cfg.tile is None or eval_cfg.tile > 0, "eval.tile", "must be positive or null (one pass)")
    need(eval_cfg.tile_overlap >= 0, "eval.tile_overlap", "must be >= 0")


def check_objective(cfg: DictConfig) -> None:
    """``objective`` (what train.py returns to a sweeper) must be a value the run will produce."""
    objective, eval_cfg = cfg.objective, cfg.eval
    if objective == "val_psnr":
        return
    scored = [*eval_cfg.sets, *(["images"] if eval_cfg.images else []),
              *(["held_out"] if eval_cfg.held_out and cfg.data.split == "image" else [])]
    if not eval_cfg.enabled or objective not in scored:
        choices = ", ".join(scored) if eval_cfg.enabled and scored else "none: set eval.enabled=true"
        raise DeblurError(f"objective={objective}: not scored by this run; choose val_psnr or a set that eval "
                          f"scores ({choices}; held_out needs data.split=image and eval.held_out=true)")
