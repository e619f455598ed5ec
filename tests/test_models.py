import pytest
import torch
from torch import nn

from deblur_exp import models
from deblur_exp.errors import DeblurError
from deblur_exp.models import build_model, count_parameters, list_models, register_model

# Parameter counts of the seed notebook's architectures, SRCNN 9-1-5 and the residual U-Net, pinned.
PARAMETERS = {
    "deblurcnn": 292_355,
    "deblurcnn_res": 292_355,
    "deblursuperrescnn": 301_539,
    "dncnn": 558_336,
    "edsr": 298_947,
    "resunet": 1_042_112,
    "srcnn": 20_099,
}


def test_registry_lists_every_architecture():
    assert list_models() == sorted(PARAMETERS)
    assert list_models("deblur*") == ["deblurcnn", "deblurcnn_res", "deblursuperrescnn"]


def test_model_group_offers_exactly_the_registered_architectures():
    """`model=<name>` choices (what Hydra lists on a typo) are one YAML per architecture, nothing else."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deblur_exp.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("model")
    assert options == list_models()


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_count(name):
    assert count_parameters(build_model(name)) == PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(PARAMETERS))
@pytest.mark.parametrize("size", [(35, 35), (17, 23), (1, 1)])
def test_output_keeps_input_shape(name, size):
    model = build_model(name).eval()
    degraded = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert model(degraded).shape == degraded.shape


def test_residual_variants_start_from_the_input():
    # With the correction branch zeroed, the residual models must return their input unchanged.
    degraded = torch.rand(1, 3, 9, 9)
    for name, branch in (("deblurcnn_res", "body"), ("dncnn", "body"), ("resunet", "tail")):
        model = build_model(name).eval()
        last_conv = [m for m in getattr(model, branch).modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last_conv.weight)
        if last_conv.bias is not None:
            nn.init.zeros_(last_conv.bias)
        with torch.no_grad():
            assert torch.allclose(model(degraded), degraded)


def test_edsr_global_skip_adds_the_input_and_no_parameters():
    degraded = torch.rand(1, 3, 9, 9)
    plain, skip = build_model("edsr").eval(), build_model("edsr", global_skip=True).eval()
    skip.load_state_dict(plain.state_dict())  # same weights: the skip is the only difference
    assert count_parameters(skip) == PARAMETERS["edsr"]
    with torch.no_grad():
        assert torch.allclose(skip(degraded), plain(degraded) + degraded)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(DeblurError, match="unknown model 'unet'.*deblurcnn, deblurcnn_res.*srcnn"):
        build_model("unet")


def test_unknown_parameter_is_named():
    with pytest.raises(DeblurError, match=r"model.params.depht: 'dncnn' takes no such parameter"):
        build_model("dncnn", depht=3)


def test_build_passes_parameters():
    assert count_parameters(build_model("edsr", blocks=1)) < PARAMETERS["edsr"]


def test_registering_a_new_architecture_needs_no_other_edit():
    @register_model("tiny_test_net")
    class TinyNet(nn.Module):
        def __init__(self, channels: int = 3):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    try:
        assert "tiny_test_net" in list_models()
        assert isinstance(build_model("tiny_test_net"), TinyNet)
    finally:
        models._REGISTRY.pop("tiny_test_net")


def test_a_model_module_that_fails_to_import_is_named_in_the_error(tmp_path, monkeypatch):
    """One broken architecture module hides neither the others nor its own error: asking for a missing model says
    which module failed and why, not only "unknown model"."""
    (tmp_path / "zz_broken.py").write_text("import not_a_real_dependency\n")
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])
    monkeypatch.setattr(models, "_discovered", False)
    monkeypatch.setattr(models, "_BROKEN", {})
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    with pytest.raises(DeblurError, match=r"unknown model 'unet'; known models: .*edsr.*; "
                                          r"deblur_exp/models/zz_broken.py failed to import \(ModuleNotFoundError"):
        build_model("unet")
    assert "edsr" in list_models()
