import re
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from deblur_exp.config import CONF_DIR
from deblur_exp.errors import DeblurError
from deblur_exp.training.config import check_config

GROUPS = ["model", "data", "degradation", "optimizer", "scheduler", "trainer", "paths", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_passes_checks(make_cfg, group, option):
    extra = ["data.root=/some/folder"] if option == "folder" else []
    cfg = make_cfg([f"{group}={option}", *extra])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    check_config(cfg)


def test_yaml_keys_carry_comments():
    for path in CONF_DIR.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            is_key = ":" in stripped and not stripped.startswith(("#", "-")) and not stripped.endswith(":")
            if is_key and path.parent.name != "hydra":
                assert "#" in line, f"{path.relative_to(CONF_DIR)}:{number} has no comment: {line!r}"


def test_seed_experiment_settings(make_cfg):
    cfg = make_cfg(["experiment=seed", "model=edsr"])
    assert cfg.model.name == "edsr"
    assert (cfg.data.name, cfg.data.patch_size, cfg.data.stride, cfg.data.split) == ("t91", 35, 14, "patch")
    assert (cfg.degradation.apply_to, cfg.degradation.blur_kernel, cfg.degradation.scale) == ("patch", 7, 3)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.loss) == (30, 202, "mse")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 5e-4
    assert cfg.scheduler._target_.endswith("ReduceLROnPlateau")
    assert (cfg.scheduler.patience, cfg.scheduler.factor) == (5, 0.5)
    assert (list(cfg.optimizer.betas), cfg.optimizer.weight_decay, cfg.data.val_fraction) == ([0.9, 0.999], 0.0, 0.1)
    assert (cfg.degradation.down_interp, cfg.degradation.up_interp, cfg.degradation.blur_sigma) == ("area", "linear", 0)
    assert (cfg.trainer.precision, cfg.trainer.dropout) == ("32", 0.2)  # fp32, and the seed's Dropout2d rate


@pytest.mark.parametrize("model", ["deblurcnn", "deblurcnn_res", "deblursuperrescnn"])
def test_the_recipe_sets_the_dropout_of_the_seed_models(make_cfg, model):
    """The deblurcnn family's Dropout2d rate is the recipe's trainer.dropout: 0 by default, the seed's 0.2 under
    experiment=seed, and what a model.params.dropout override says."""
    from deblur_exp.models import build_model

    def dropout_rates(cfg):
        modules = build_model(cfg.model.name, **cfg.model.params).modules()
        return {m.p for m in modules if isinstance(m, torch.nn.Dropout2d)}

    assert dropout_rates(make_cfg([f"model={model}"])) == {0.0}
    assert dropout_rates(make_cfg([f"model={model}", "experiment=seed"])) == {0.2}
    assert dropout_rates(make_cfg([f"model={model}", "trainer.dropout=0.1"])) == {0.1}
    assert dropout_rates(make_cfg([f"model={model}", "model.params.dropout=0.3"])) == {0.3}


def test_dropout_outside_0_1_is_refused(make_cfg):
    with pytest.raises(DeblurError, match=r"trainer\.dropout: must lie in \[0, 1\)"):
        check_config(make_cfg(["trainer.dropout=1.5"]))


def test_shell_style_overrides(make_cfg):
    cfg = make_cfg(["model=dncnn", "optimizer.lr=1e-3", "trainer.batch_size=64", "degradation.scale=4"])
    assert (cfg.model.name, cfg.optimizer.lr, cfg.trainer.batch_size, cfg.degradation.scale) == ("dncnn", 1e-3, 64, 4)


@pytest.mark.parametrize("override,key", [
    ("trainer.epcohs=3", "trainer.epcohs"),
    ("trainer.epochs=many", "trainer.epochs"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("optimizer.momentum=0.9", "optimizer.momentum"),  # adam has no momentum
    ("data.patch_size=[1]", "data.patch_size"),
])
def test_schema_rejects_typos_and_wrong_types(make_cfg, override, key):
    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        make_cfg([override])


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=0", "optimizer.lr: must be positive"),
    ("trainer.batch_size=0", "trainer.batch_size: must be a positive integer"),
    ("trainer.epochs=-1", "trainer.epochs: must be a positive integer"),
    ("data.stride=0", "data.stride: must be at least 1"),
    ("data.root=/my/photos", "data.root: "),  # data=sample reads no folder: use data=folder
    ("data.download=true", "data.download: "),
    ("data.val_fraction=1.0", "data.val_fraction: must lie strictly between 0 and 1"),
    ("data.scales=[1.0,1.5]", r"data.scales: must list factors in \(0, 1\]"),
    ("data.scales=[]", r"data.scales: must list factors in \(0, 1\]"),
    ("data.patch_size=2", "data.patch_size: is smaller than degradation.scale=3"),
    ("degradation.blur_kernel=4", "degradation.blur_kernel: must be 0 .no blur. or a positive odd number"),
    ("trainer.device=tpu", "trainer.device: must be auto, cpu, cuda or cuda:N"),
    ("trainer.loss=huber", "trainer.loss: must be one of mse, l1"),
    ("data.split=random", "data.split: must be one of patch, image"),
    ("eval.checkpoint=worst", "eval.checkpoint: must be one of best, last"),
    ("eval.every=0", "eval.every: must be a positive number of epochs, or null"),
])
def test_out_of_range_values_name_the_key(make_cfg, override, message):
    with pytest.raises(DeblurError, match=message):
        check_config(make_cfg([override]))


def test_data_dir_comes_from_the_environment(monkeypatch, make_cfg):
    monkeypatch.setenv("DEBLUR_DATA_DIR", "/datasets/here")
    assert make_cfg(["data=t91"]).data.root == "/datasets/here/T91"
    monkeypatch.delenv("DEBLUR_DATA_DIR")
    cfg = make_cfg(["data=t91"])
    assert Path(cfg.data.root) == Path(cfg.paths.root_dir) / "data" / "T91"


@pytest.mark.parametrize("variable,key,default", [("DEBLUR_DATA_DIR", "paths.data_dir", "data"),
                                                  ("DEBLUR_OUTPUT_DIR", "paths.output_root", "outputs")])
def test_an_empty_environment_variable_counts_as_unset(monkeypatch, variable, key, default):
    """``DEBLUR_OUTPUT_DIR=`` must not send a run's files to the file system's root."""
    from hydra import compose, initialize_config_dir

    from deblur_exp.cli import default_data_dir, default_output_dir

    monkeypatch.setenv(variable, "")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train")  # the paths as a user gets them, none overridden
    assert Path(OmegaConf.select(cfg, key)) == Path(cfg.paths.root_dir) / default
    made_by_scripts = default_data_dir() if default == "data" else default_output_dir("eval").parents[1]
    assert made_by_scripts == Path(cfg.paths.root_dir) / default


@pytest.mark.parametrize("overrides, key", [
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay"),
    (["optimizer.betas=[2,0.5]"], "optimizer.betas"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum"),
    (["scheduler=plateau", "scheduler.factor=2"], "scheduler.factor"),
    (["scheduler.warmup=5"], "scheduler.warmup"),
    (["scheduler.eta_min=1"], "scheduler.eta_min"),
    (["trainer.num_threads=-1"], "trainer.num_threads"),
    (["trainer.num_image_samples=0"], "trainer.num_image_samples"),
    (["trainer.max_time=1e-9"], "trainer.max_time"),
    (["model=edsr", "model.params.features=-4"], "model.params.features"),
    (["model=deblurcnn", "model.params.dropout=1.5"], "model.params.dropout"),
    (["optimizer._target_=os.system"], "optimizer._target_"),
    (["degradation.blur_sigma=nan"], "degradation.blur_sigma"),
])
def test_values_torch_would_refuse_with_a_traceback_are_one_line_naming_the_key(make_cfg, overrides, key):
    with pytest.raises(DeblurError, match=f"^{re.escape(key)}: "):
        check_config(make_cfg(overrides))
