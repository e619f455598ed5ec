"""Model registry, after timm's: ``@register_model`` fills one dict, ``build_model`` builds.

Architecture modules in this package are discovered and imported on first use, so adding a model means
adding one module (plus one ``conf/model/*.yaml``) and nothing else. A module that fails to import is
reported by name instead of taking the whole package down.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

from omegaconf import MISSING
from torch import nn

from deblur_exp.errors import DeblurError

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    name: str = MISSING
    params: Dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_discovered = False


def register_model(name: str | None = None):
    """Register a builder (class or function returning an ``nn.Module``) under ``name``."""

    def decorator(builder):
        key = (name or builder.__name__).lower()
        if key in _REGISTRY and _REGISTRY[key] is not builder:
            raise ValueError(f"model name '{key}' is registered twice")
        _REGISTRY[key] = builder
        return builder

    return decorator


_BROKEN: dict[str, str] = {}  # model modules that failed to import -> their error, said whenever a name is missing


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        try:
            importlib.import_module(f"{__name__}.{module.name}")
        except Exception as exc:  # one broken architecture must not hide the others
            _BROKEN[module.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("could not import model module %s: %s", module.name, _BROKEN[module.name])
    _discovered = True


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _discover()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _builder(name: str) -> Callable[..., nn.Module]:
    _discover()
    if name.lower() not in _REGISTRY:
        broken = "".join(f"; deblur_exp/models/{module}.py failed to import ({error}), so its models are missing"
                         for module, error in sorted(_BROKEN.items()))
        raise DeblurError(f"model.name: unknown model '{name}'; known models: {', '.join(list_models())}{broken}")
    return _REGISTRY[name.lower()]


def model_parameters(name: str) -> list[str]:
    """The constructor arguments (``model.params.*``) that model ``name`` takes."""
    return list(inspect.signature(_builder(name)).parameters)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; unknown names and parameters fail with what is known."""
    accepted = model_parameters(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DeblurError(f"model.params.{unknown[0]}: '{name.lower()}' takes no such parameter; it takes: "
                          f"{', '.join(accepted) or 'none'}")
    return _builder(name)(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
