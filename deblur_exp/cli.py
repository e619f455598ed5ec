"""What the command-line scripts share: logging setup and turning user errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from deblur_exp.config import REPO_ROOT, env_or
from deblur_exp.errors import DeblurError, Terminated


def default_data_dir() -> Path:
    """The same rule as ``paths.data_dir``: $DEBLUR_DATA_DIR, else data/ in the repository."""
    return Path(env_or("DEBLUR_DATA_DIR", REPO_ROOT / "data"))


def default_output_dir(kind: str) -> Path:
    """Where a script writes when not told: <output root>/<kind>/<date>_<time>, the output root being the same
    as the runs' (``$DEBLUR_OUTPUT_DIR``, else outputs/ in the repository); never beside an input."""
    import time

    root = Path(env_or("DEBLUR_OUTPUT_DIR", REPO_ROOT / "outputs"))
    return root / kind / time.strftime("%Y-%m-%d_%H-%M-%S")


def make_output_dir(path: Path, option: str = "--out") -> bool:
    """Create a script's output folder before the work, so that an unwritable one fails at once in one line, not
    after minutes of scoring; returns whether it was made now (a script that wrote nothing removes it again)."""
    made = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeblurError(f"{option}: cannot create {path} ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DeblurError(f"{option}: cannot write into {path} (permission denied)")
    return made


def add_eval_options(parser, *keys: str, from_checkpoints: tuple[str, ...] = ()) -> None:
    """Add ``--<key>`` options whose defaults and help come from conf/eval/default.yaml (its values and its line
    comments) and whose types come from the eval schema, so scripts never restate the training-time eval settings.
    Keys in ``from_checkpoints`` default to None instead: the script reads them from each checkpoint's config.
    """
    import re
    import typing

    from omegaconf import OmegaConf

    from deblur_exp.config import CONF_DIR
    from deblur_exp.evaluation.scoring import EvalConfig

    source = CONF_DIR / "eval" / "default.yaml"
    text = source.read_text()
    values = OmegaConf.to_container(OmegaConf.load(source))
    hints = typing.get_type_hints(EvalConfig)
    for key in keys:
        comment = re.search(rf"^{key}:[^#\n]*#\s*(.+)$", text, re.MULTILINE)
        default = None if key in from_checkpoints else values.get(key)
        shown = f"the checkpoints' own eval.{key}" if key in from_checkpoints else default
        help_text = f"{comment.group(1).strip() if comment else key} (default: {shown})"
        flag = "--" + key.replace("_", "-")
        hint = hints[key]
        if hint is bool:  # --key / --no-key, so a script can tell "not given" from false where it needs to
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, nargs="*", default=default, help=help_text)
        else:
            kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def read_image_sets(names: list[str], data_dir: Path) -> tuple[dict, list[str]]:
    """``--sets NAME ...``: the image folders under ``data_dir`` by name, and the files in them that could not be
    used; a missing folder is an error naming the flag and where to point it."""
    from deblur_exp.data.images import read_folder

    sets, problems = {}, []
    for name in names:
        folder = data_dir / name
        if not folder.is_dir():
            raise DeblurError(f"--sets {name}: no folder {folder}; set --data-dir or DEBLUR_DATA_DIR")
        sets[name], bad = read_folder(folder)
        problems += bad
    return sets, problems


DEFAULT_COMPARE = "butterfly"  # the seed notebook's comparison image (Set5)


def add_compare_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", help=f"image shown side by side for every model (default: {DEFAULT_COMPARE} "
                                          f"where a set holds it, else the first image)")


def comparison_image(compare: str | None, sets: dict) -> str:
    """The image shown side by side for every model. ``--compare NAME``: that image, with a warning at once when no
    set holds it (rather than quietly making no figure after the scoring); not given: butterfly where a set holds
    it, else the first image of the first set."""
    names = sorted({image.name for images in sets.values() for image in images})
    if compare is None:
        if DEFAULT_COMPARE in names:
            return DEFAULT_COMPARE
        return next((images[0].name for images in sets.values() if images), DEFAULT_COMPARE)
    if compare not in names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        print(f"warning: --compare {compare}: no image of that name in {', '.join(sets)} ({shown}); "
              f"no comparison figure")
    return compare


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main``; a DeblurError becomes ``error: <message>`` and exit status 2, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    try:
        status = main()
    except DeblurError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


def finish(problems: list[str], where: str) -> int:
    """A script's last lines: each problem as a warning, then where its results are; exit status 1 if any."""
    for problem in problems:
        print(f"warning: {problem}")
    print(where)
    return 1 if problems else 0


def config_error_line(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error: the key, the bad value, the choices or the type."""
    from hydra.errors import MissingConfigException

    if isinstance(exc.__cause__, DeblurError):  # e.g. a launcher's own check, wrapped by Hydra's instantiate
        return str(exc.__cause__)
    missing = getattr(exc, "missing_cfg_file", None) or ""
    if isinstance(exc, MissingConfigException) and "/" in missing:
        group, option = missing.rsplit("/", 1)
        choices = f"; choose from {', '.join(exc.options)}" if exc.options else ""
        return f"{group}={option}: no such option{choices}"
    cause = exc.__cause__ or exc.__context__
    key = getattr(cause, "full_key", None)
    message = str(exc).splitlines()[0].strip()
    if message.startswith("Could not override '"):  # a key no config has
        from deblur_exp.config import did_you_mean

        key = message.split("'")[1]
        return f"{key}: no such setting{did_you_mean(key, _known_keys())}"
    detail = str(cause).splitlines()[0].strip() if cause is not None else ""
    override = message.removeprefix("Error merging override ").strip()
    if key and detail:
        return f"{override if '=' in override else key}: {detail}"
    return message if not detail else f"{message} ({detail})"


def _known_keys() -> list[str]:
    """Every dotted key of the default composed config, and every model's params: the candidates for a hint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from deblur_exp.config import CONF_DIR
    from deblur_exp.models import list_models, model_parameters

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train"), resolve=False)

    def walk(node, prefix=""):
        for key, value in node.items():
            yield f"{prefix}{key}"
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")

    params = {f"model.params.{p}" for name in list_models() for p in model_parameters(name)}
    return sorted(set(walk(cfg)) | params)


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_hydra_cli(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` function with configuration mistakes reported as one line and exit status 2.

    Hydra prints a multi-line report for them (and exits 1); we let the exception through instead by setting
    HYDRA_FULL_ERROR for this process, and translate it. A user who sets HYDRA_FULL_ERROR=1 sees everything.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    signal.signal(signal.SIGTERM, _terminate)  # training installs its own graceful handler while it trains
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"error: {config_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except DeblurError as exc:  # raised outside a job (a launcher, a callback): still one line
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside training's own handler (start-up, data, eval)
        logging.disable(logging.INFO)  # a half-imported torch logs cache statistics at exit
        word, status = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(word + (f" ({exc})" if str(exc) else ""), file=sys.stderr)
        sys.exit(status)
