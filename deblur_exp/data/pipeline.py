"""Degradation pipelines: an ordered list of steps (blur kernels, motion, defocus, resize, noise, JPEG), each with
fixed values or ranges drawn per sample.

A pipeline is written in YAML as ``degradation.steps``, for example::

    steps:
      - {kind: gaussian_blur, sigma: [0.2, 3.0], sigma_y: [0.2, 3.0], angle: [0, 180]}
      - {kind: resize, factor: [1, 4], down: [bilinear, bicubic, area]}
      - {kind: gaussian_noise, sigma: [1, 25]}
      - {kind: jpeg, quality: [30, 95], p: 0.5}

A value is a number (fixed), two numbers ``[low, high]`` (drawn uniformly; integers when both are integers) or a
list of names (one drawn). ``p`` is the chance that the step happens at all; ``kind: one_of`` draws one of its
``steps``. Everything is drawn from a generator seeded by the caller, so a sample's degradation is a function of
its seed alone: training seeds every batch from (run seed, epoch, step), so a resumed run and a second run with the
same seed see the same samples; a test image's seed comes from its own pixels, so every model in a comparison is
scored on identical inputs.

Steps work on float NCHW tensors in [0, 1] on any device (blur and noise are tensor ops; JPEG goes through OpenCV
on the CPU). Noise is added in floating point and not clipped, the denoising literature's test protocol. Images
are degraded with a reflected margin of ``Pipeline.margin`` pixels that is cropped afterwards, so a patch cut
with its margin comes out as the same window of the degraded whole image would.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import Container, OmegaConf

from deblur_exp.config import did_you_mean
from deblur_exp.errors import DeblurError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
JPEG_BLOCK = 16  # a JPEG minimum coded unit with 4:2:0 chroma, in pixels


# --------------------------------------------------------------------------------------------------- values
def is_range(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def is_choice(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def draw_value(value: Any, rng: np.random.Generator) -> Any:
    """A fixed value as it is; ``[low, high]`` uniformly (an integer when both ends are); names: one of them."""
    if is_range(value):
        low, high = value
        if isinstance(low, int) and isinstance(high, int):
            return int(rng.integers(low, high + 1))
        return float(rng.uniform(low, high))
    if is_choice(value):
        return value[int(rng.integers(len(value)))]
    return value


def upper(value: Any) -> float:
    """The largest value a setting can take (for margins)."""
    return float(max(value)) if is_range(value) else float(value)


# ---------------------------------------------------------------------------------------------------- kernels
def gaussian_kernel(size: int, sigma: float, sigma_y: float, angle: float) -> np.ndarray:
    """A size x size Gaussian, sigma along the direction ``angle`` (degrees) and sigma_y across it; sums to 1."""
    theta = math.radians(angle)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inverse = np.linalg.inv(rotation @ np.diag([sigma ** 2, sigma_y ** 2]) @ rotation.T)
    radius = size // 2
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    points = np.stack([x, y], axis=-1).astype(np.float64)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", points, inverse, points))
    return kernel / kernel.sum()


def motion_kernel(size: int, length: float, rng: np.random.Generator) -> np.ndarray:
    """A camera-shake kernel: a random walk with inertia (its direction turns a little at each of 64 steps),
    scaled to ``length`` pixels of path, drawn into a size x size kernel with bilinear weights; sums to 1."""
    turns = np.cumsum(rng.normal(0.0, 0.35, 64)) + rng.uniform(0, 2 * math.pi)
    path = np.cumsum(np.stack([np.cos(turns), np.sin(turns)], axis=1), axis=0)
    path -= path.mean(axis=0)
    travelled = np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1))
    path *= length / max(travelled, 1e-9)
    extent = np.abs(path).max()
    if extent > size // 2:  # a path longer than the kernel allows is shrunk into it
        path *= (size // 2) / extent
    kernel = np.zeros((size, size))
    for x, y in path + size // 2:
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += w
    return kernel / kernel.sum()


def disk_kernel(size: int, radius: float) -> np.ndarray:
    """Defocus: a uniform disk of ``radius`` pixels, its rim anti-aliased by 4x4 supersampling; sums to 1."""
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    cover = np.zeros((size, size))
    for oy in offsets:
        for ox in offsets:
            cover += (x + ox) ** 2 + (y + oy) ** 2 <= radius ** 2
    if cover.sum() == 0:
        cover[half, half] = 1
    return cover / cover.sum()


def trimmed(kernel: np.ndarray) -> np.ndarray:
    """The kernel less its outer rings of (near) zeros, still centred: a sigma-0.5 Gaussian in a 21x21 kernel is
    filtered as a 5x5 one, the same result at a twentieth of the cost."""
    radius = kernel.shape[0] // 2
    significant = np.argwhere(kernel > kernel.max() * 1e-7)
    reach = int(np.abs(significant - radius).max())
    return kernel[radius - reach:radius + reach + 1, radius - reach:radius + reach + 1]


def convolve(images: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Each channel of an NCHW batch filtered with one kernel, borders reflected (OpenCV's BORDER_REFLECT_101)."""
    kernel = trimmed(kernel)
    radius = kernel.shape[0] // 2
    channels = images.shape[1]
    weight = torch.as_tensor(kernel[::-1, ::-1].copy(), dtype=images.dtype, device=images.device)
    padded = F.pad(images, (radius,) * 4, mode="reflect")
    return F.conv2d(padded, weight.expand(channels, 1, *kernel.shape), groups=channels)


# ------------------------------------------------------------------------------------------------------ steps
@dataclass(frozen=True)
class StepKind:
    """A step: its settings with their defaults, what it does with drawn values, and the margin it needs."""

    defaults: dict[str, Any]
    apply: Callable[[torch.Tensor, dict, np.random.Generator, torch.Generator], torch.Tensor]
    margin: Callable[[dict], int]
    random: tuple[str, ...] = ()  # draws of its own beyond its settings (a noise field, a trajectory)


def _gaussian_blur(images, v, rng, generator):
    return convolve(images, gaussian_kernel(v["size"], v["sigma"], v["sigma_y"] or v["sigma"], v["angle"]))


def _motion_blur(images, v, rng, generator):
    return convolve(images, motion_kernel(v["size"], v["length"], rng))


def _defocus(images, v, rng, generator):
    return convolve(images, disk_kernel(v["size"], v["radius"]))


def _resize(images, v, rng, generator):
    """Down by ``factor`` (to floor(size / factor)) and back up to the size it had."""
    height, width = images.shape[-2:]
    small = (max(1, int(height / v["factor"])), max(1, int(width / v["factor"])))

    def resized(x, size, mode):
        smooth = mode in ("bilinear", "bicubic")
        return F.interpolate(x, size=size, mode=mode, **({"align_corners": False, "antialias": True} if smooth
                                                          else {}))
    return resized(resized(images, small, v["down"]), (height, width), v["up"])


def _gaussian_noise(images, v, rng, generator):
    """sigma in 0-255 units; ``grey`` noise is one field shared by the channels (luminance noise)."""
    shape = (images.shape[0], 1, *images.shape[2:]) if v["grey"] else images.shape
    noise = torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + noise * (v["sigma"] / 255.0)


def _poisson_noise(images, v, rng, generator):
    """Shot noise of a sensor that counts ``peak`` photons at white."""
    counts = torch.poisson(images.clamp(0, 1) * v["peak"], generator=generator)
    return counts / v["peak"]


def _jpeg(images, v, rng, generator):
    """JPEG at ``quality`` through OpenCV (on the CPU), from the image rounded to 8 bits as a file would be."""
    out = []
    for image in images:
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        channels = pixels.shape[2]
        bgr = pixels[..., ::-1] if channels == 3 else pixels[..., 0]
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(v["quality"])])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
        decoded = decoded[..., ::-1] if channels == 3 else decoded[..., None]
        out.append(torch.from_numpy(np.ascontiguousarray(decoded)).permute(2, 0, 1))
    return torch.stack(out).to(images.device, images.dtype) / 255.0


KINDS: dict[str, StepKind] = {
    "gaussian_blur": StepKind({"size": 21, "sigma": 2.0, "sigma_y": None, "angle": 0.0}, _gaussian_blur,
                              lambda s: int(s["size"]) // 2),
    "motion_blur": StepKind({"size": 21, "length": 10.0}, _motion_blur, lambda s: int(s["size"]) // 2,
                            random=("trajectory",)),
    "defocus": StepKind({"size": 21, "radius": 3.0}, _defocus, lambda s: int(s["size"]) // 2),
    "resize": StepKind({"factor": 2.0, "down": "bicubic", "up": "bicubic"}, _resize,
                       lambda s: 2 * math.ceil(upper(s["factor"]))),
    "gaussian_noise": StepKind({"sigma": 25.0, "grey": False}, _gaussian_noise, lambda s: 0, random=("noise",)),
    "poisson_noise": StepKind({"peak": 100.0}, _poisson_noise, lambda s: 0, random=("noise",)),
    "jpeg": StepKind({"quality": 75}, _jpeg, lambda s: 0),
}
COMMON = {"p": 1.0}  # every step: the chance it happens


# --------------------------------------------------------------------------------------------------- checks
def _check_value(where: str, key: str, value: Any, default: Any) -> None:
    if key in ("down", "up"):
        names = value if is_choice(value) else [value]
        bad = [n for n in names if n not in INTERPOLATIONS]
        if bad:
            raise DeblurError(f"{where}.{key}: {bad[0]!r} is not one of {', '.join(INTERPOLATIONS)}")
        return
    if key == "grey" or isinstance(default, bool):
        if not isinstance(value, bool):
            raise DeblurError(f"{where}.{key}: must be true or false")
        return
    if value is None and default is None:
        return
    if is_range(value):
        low, high = value
        if low > high:
            raise DeblurError(f"{where}.{key}: the range [{low}, {high}] runs backwards; write [low, high]")
    elif not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise DeblurError(f"{where}.{key}: must be a number or a [low, high] range (got {value!r})")
    low = min(value) if is_range(value) else value
    limits = {"size": (1, "an odd number of pixels >= 1"), "p": (0, "a chance in [0, 1]"),
              "quality": (1, "a JPEG quality in [1, 100]"), "factor": (1, "a downscale factor >= 1"),
              "peak": (1e-6, "a photon count > 0")}
    least, meaning = limits.get(key, (0, "a number >= 0"))
    if low < least or (key == "p" and upper(value) > 1) or (key == "quality" and upper(value) > 100):
        raise DeblurError(f"{where}.{key}: must be {meaning} (got {value!r})")
    if key == "size" and (is_range(value) or int(value) != value or int(value) % 2 == 0):
        raise DeblurError(f"{where}.{key}: must be one odd number of pixels (got {value!r})")


def plain(value: Any) -> Any:
    """YAML-composed settings (OmegaConf containers) as plain dicts and lists."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def parse_step(raw: dict, where: str) -> dict:
    """A step's settings with the defaults filled in; DeblurError naming the step and key for anything wrong."""
    if not isinstance(raw, dict) or "kind" not in raw:
        raise DeblurError(f"{where}: a step needs a kind: one of {', '.join([*KINDS, 'one_of'])}")
    kind = raw["kind"]
    if kind == "one_of":
        options = raw.get("steps")
        if not isinstance(options, list) or not options:
            raise DeblurError(f"{where}.steps: one_of needs a list of steps to draw from")
        unknown = set(raw) - {"kind", "steps", "p"}
        if unknown:
            raise DeblurError(f"{where}.{sorted(unknown)[0]}: one_of takes steps and p only")
        _check_value(where, "p", raw.get("p", 1.0), 1.0)
        return {"kind": "one_of", "p": raw.get("p", 1.0),
                "steps": [parse_step(plain(s), f"{where}.steps[{i}]") for i, s in enumerate(options)]}
    if kind not in KINDS:
        raise DeblurError(f"{where}.kind: {kind!r} is not a step{did_you_mean(str(kind), list(KINDS))}; choose from "
                          f"{', '.join([*KINDS, 'one_of'])}")
    known = {**KINDS[kind].defaults, **COMMON}
    step = {"kind": kind, **known}
    for key, value in raw.items():
        if key == "kind":
            continue
        if key not in known:
            raise DeblurError(f"{where}.{key}: {kind} has no such setting{did_you_mean(key, list(known))}; its "
                              f"settings: {', '.join(known)}")
        _check_value(where, key, value, known[key])
        step[key] = list(value) if isinstance(value, (list, tuple)) else value
    return step


# ------------------------------------------------------------------------------------------------- pipeline
class Pipeline:
    """``degradation.steps`` as a callable degradation (see the module's docstring)."""

    def __init__(self, steps: list[dict], where: str = "degradation.steps"):
        if not steps:
            raise DeblurError(f"{where}: a pipeline needs at least one step")
        steps = OmegaConf.to_container(steps, resolve=True) if isinstance(steps, Container) else steps
        self.steps = [parse_step(plain(s), f"{where}[{i}]") for i, s in enumerate(steps)]

    @property
    def margin(self) -> int:
        """Pixels of context each side that the steps together need to act on a window as on the whole image."""
        def need(step):
            if step["kind"] == "one_of":
                return max(need(s) for s in step["steps"])
            return KINDS[step["kind"]].margin(step)

        return sum(need(s) for s in self.steps)

    @property
    def image_margin(self) -> int:
        """The margin for a whole image: with a JPEG step, whole coded blocks (JPEG codes 16x16 blocks from the
        corner), so the image's blocks stay where a file of it has them. A patch has no such place to keep."""
        def has_jpeg(step):
            return step["kind"] == "jpeg" or any(has_jpeg(s) for s in step.get("steps", []))
        if any(has_jpeg(s) for s in self.steps):
            return -(-self.margin // JPEG_BLOCK) * JPEG_BLOCK
        return self.margin

    @property
    def random(self) -> bool:
        """True when two draws can differ: a range, a choice, a chance below 1, or a step with draws of its own."""
        def varies(step):
            if step["kind"] == "one_of":
                return len(step["steps"]) > 1 or step["p"] < 1 or any(varies(s) for s in step["steps"])
            values = [v for k, v in step.items() if k != "kind"]
            return step["p"] < 1 or bool(KINDS[step["kind"]].random) or any(
                is_range(v) or is_choice(v) for v in values)
        return any(varies(s) for s in self.steps)

    @property
    def adds_noise(self) -> bool:
        """True when a step may add noise (Gaussian or Poisson, alone or among one_of's choices)."""
        def noisy(step):
            if step["kind"] == "one_of":
                return any(noisy(s) for s in step["steps"])
            return "noise" in KINDS[step["kind"]].random
        return any(noisy(s) for s in self.steps)

    def draw(self, rng: np.random.Generator) -> list[dict]:
        """One sample's degradation: the steps that happen, each with its values drawn."""
        drawn = []
        for step in self.steps:
            if rng.uniform() >= step["p"]:
                continue
            if step["kind"] == "one_of":
                step = step["steps"][int(rng.integers(len(step["steps"])))]
                if rng.uniform() >= step["p"]:
                    continue
            drawn.append({k: draw_value(v, rng) for k, v in step.items() if k != "p"})
        return drawn

    def apply(self, image: torch.Tensor, drawn: list[dict], rng: np.random.Generator,
              generator: torch.Generator) -> torch.Tensor:
        """One 1xCxHxW image through its drawn steps (its margin included); float, noise unclipped."""
        for values in drawn:
            image = KINDS[values["kind"]].apply(image, values, rng, generator)
        return image

    def degrade_windows(self, sharp: torch.Tensor, seed: int, margin: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """A batch of NxCx(P+2m)x(P+2m) float windows (P plus the margin m each side; default ``self.margin``) ->
        (degraded, sharp) NxCxPxP and what was drawn for each; everything drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        generator = torch.Generator(device=sharp.device).manual_seed(seed)
        m = self.margin if margin is None else margin
        draws, degraded = [], []
        for window in sharp:
            drawn = self.draw(rng)
            draws.append(drawn)
            degraded.append(self.apply(window[None], drawn, rng, generator)[0])
        crop = (slice(None), slice(None), slice(m, sharp.shape[2] - m), slice(m, sharp.shape[3] - m))
        return torch.stack(degraded)[crop], sharp[crop], draws

    def degrade_image(self, sharp: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
        """A whole HxWxC uint8 image -> (HxWxC float32 in [0, 1] units, noise unclipped; what was drawn). Without
        a seed, the image's own seed (``image_seed``): the same image always gets the same degradation."""
        seed = image_seed(sharp) if seed is None else seed
        x = torch.from_numpy(np.ascontiguousarray(sharp)).permute(2, 0, 1)[None].float().div_(255)
        degraded, _, (drawn,) = self.degrade_windows(pad_reflect(x, self.image_margin), seed, self.image_margin)
        return degraded[0].permute(1, 2, 0).numpy(), drawn

    def drawn_for(self, sharp: np.ndarray) -> list[dict]:
        """What ``degrade_image(sharp)`` draws for this image (its own seed), without degrading it."""
        return self.draw(np.random.default_rng(image_seed(sharp)))

    def describe(self, drawn: list[dict] | None = None) -> str:
        """The steps in words: as configured (ranges), or as drawn for one image."""
        return ", then ".join(describe_step(s) for s in (drawn if drawn is not None else self.steps)) or "nothing"


def pad_reflect(images: torch.Tensor, margin: int) -> torch.Tensor:
    """Reflect (without repeating the edge) ``margin`` pixels each side; more than the image allows, in rounds."""
    while margin > 0:
        step = min(margin, images.shape[-1] - 1, images.shape[-2] - 1)
        if step <= 0:
            return F.pad(images, (margin,) * 4, mode="replicate")
        images = F.pad(images, (step,) * 4, mode="reflect")
        margin -= step
    return images


def image_seed(sharp: np.ndarray) -> int:
    """A test image's own seed: from its pixels, so it is the same for every model, run and machine."""
    return zlib.crc32(np.ascontiguousarray(sharp).tobytes()) ^ (sharp.shape[0] << 16 | sharp.shape[1])


def describe_step(step: dict) -> str:
    def show(value):
        if is_range(value):
            return f"{value[0]:g}-{value[1]:g}"
        if is_choice(value):
            return "|".join(value)
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    kind = step["kind"]
    if kind == "one_of":
        return "one of (" + "; ".join(describe_step(s) for s in step["steps"]) + ")"
    settings = {k: v for k, v in step.items() if k not in ("kind", "p") and v is not None and v is not False}
    settings = {k: ("" if v is True else v) for k, v in settings.items()}
    chance = f" (p {step['p']:g})" if step.get("p", 1) < 1 else ""
    return f"{kind.replace('_', ' ')} " + " ".join(f"{k} {show(v)}".strip() for k, v in settings.items()) + chance
