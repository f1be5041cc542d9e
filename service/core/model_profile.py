"""What a model can serve (sizes, frames, defaults), read from its folder's JSON configs without torch.

The API validates requests against this profile, so a bad size is a 400 at the edge rather than a
failed job. Sources, first match wins: ``wanserve.json`` in the model folder (our tiny models carry
one), a known Wan2.1 transformer config (1.3B, 14B), else Wan2.1's 480p sizes. Which step-level caches the
model is calibrated for comes from its folder's ``cache_calibration.json``, else from the published data of
the known Wan2.1 transformers (:mod:`service.core.cache_calibration`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from service.core.cache_calibration import Calibration, load_calibration

PROFILE_FILE = "wanserve.json"
TINY_MODEL_NAME = "wan2.1-tiny-random"
SHAPES_MODEL_NAME = "wan2.1-tiny-shapes"
RANDOM_MODEL_ALIAS = "tiny-random"
"""``WANSERVE_MODEL`` value for the random-weight tiny model (generated on first use): the fastest tests."""


@dataclass(frozen=True)
class ModelProfile:
    name: str
    sizes: tuple[str, ...]
    default_size: str
    default_seconds: int = 5
    default_steps: int = 50
    default_guidance_scale: float = 5.0
    default_fps: int = 16
    max_frames: int = 81
    num_attention_heads: int = 12
    num_layers: int | None = None
    """Transformer blocks: the cache's block ranges are checked and its presets sized against them. None in a
    profile registered by an older worker: then the worker sizes presets and ranges are not checked."""
    max_sequence_length: int = 512
    """Text tokens the prompt is padded (or cut) to, as the model was trained: Wan2.1 512."""
    cache_calibrations: tuple[str, ...] = ()
    """The step-level caches calibrated for this model (``"magcache"``, ``"teacache"``): read from the
    model folder's calibration file, or the published data of a known Wan2.1 transformer."""
    notes: str = field(default="", compare=False)

    @property
    def default_frames(self) -> int:
        """Frames of a request that asks for none: the default seconds at the default rate, plus one."""
        return self.default_seconds * self.default_fps + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelProfile:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["sizes"] = tuple(known.get("sizes", ()))
        known["cache_calibrations"] = tuple(known.get("cache_calibrations", ()))
        return cls(**known)


TINY_PROFILE = ModelProfile(
    name=TINY_MODEL_NAME,
    sizes=("32x32", "64x64", "96x96", "128x128", "96x64", "64x96"),
    default_size="64x64",
    default_seconds=1,
    default_steps=4,
    max_frames=81,
    num_attention_heads=2,
    num_layers=2,
    notes="Random weights: produces noise-like video. Set WANSERVE_MODEL to a real Wan2.1 folder.",
)

# The shapes model ships inside the worker package (worker/tiny_model.py's SHAPES_MODEL_DIR, beside this
# package in a checkout and in site-packages alike). service.core may not import worker, so its calibration
# file is read by path: the profile the API uses with WANSERVE_MODEL unset then says what the worker's says.
SHIPPED_SHAPES_FOLDER = Path(__file__).resolve().parents[2] / "worker" / "models" / SHAPES_MODEL_NAME

SHAPES_PROFILE = ModelProfile(
    name=SHAPES_MODEL_NAME,
    sizes=("64x64",),
    default_size="64x64",
    default_seconds=1,
    default_steps=20,
    default_guidance_scale=3.0,
    max_frames=33,
    num_attention_heads=4,
    num_layers=6,
    max_sequence_length=32,
    cache_calibrations=load_calibration(SHIPPED_SHAPES_FOLDER).methods,
    notes=(
        "Trained here on synthetic clips: 'a {red|green|blue|yellow|white} {square|circle|triangle} moving "
        "{left|right|up|down}' on a dark background. See worker/models/wan2.1-tiny-shapes/README.md."
    ),
)

_WAN_480P = ("832x480", "480x832")
_WAN_720P = ("1280x720", "720x1280")

# (num_layers, num_attention_heads, attention_head_dim) of the released Wan2.1 text-to-video models.
_KNOWN_TRANSFORMERS: dict[tuple[int, int, int], tuple[str, tuple[str, ...]]] = {
    (30, 12, 128): ("wan2.1-t2v-1.3b", _WAN_480P),
    (40, 40, 128): ("wan2.1-t2v-14b", _WAN_720P + _WAN_480P),
}


def profile_for_folder(folder: Path, name: str | None = None) -> ModelProfile:
    """Read the profile of a diffusers-format Wan2.1 folder (``transformer/config.json``).

    The layer count always comes from the transformer's config, also when ``wanserve.json`` gives the rest;
    the calibrated caches always from the calibration file (or the published data).
    """
    explicit = folder / PROFILE_FILE
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    known = _known_transformer(config) if config is not None else None
    calibrated = calibration_for_folder(folder).methods
    if explicit.is_file():
        profile = ModelProfile.from_json(json.loads(explicit.read_text()))
        if config is not None:
            profile = replace(profile, num_layers=int(config["num_layers"]))
        return _renamed(replace(profile, cache_calibrations=calibrated), name)
    if config is None:
        raise FileNotFoundError(f"{folder} is not a diffusers Wan2.1 folder: {config_path} is missing")
    heads, layers = int(config["num_attention_heads"]), int(config["num_layers"])
    known_name, sizes = known or (folder.name, _WAN_480P)
    profile = ModelProfile(
        name=known_name,
        sizes=sizes,
        default_size=sizes[0],
        num_attention_heads=heads,
        num_layers=layers,
        cache_calibrations=calibrated,
    )
    return _renamed(profile, name)


def calibration_for_folder(folder: Path) -> Calibration:
    """The model's cache calibration: its folder's file, else the published data of a known Wan2.1
    transformer (whatever name it is served under), else none."""
    config_path = folder / "transformer" / "config.json"
    known = _known_transformer(json.loads(config_path.read_text())) if config_path.is_file() else None
    return load_calibration(folder, published=known[0] if known else None)


def _known_transformer(config: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """(name, sizes) of a released Wan2.1 text-to-video transformer, from its config; None for another."""
    key = (int(config["num_layers"]), int(config["num_attention_heads"]), int(config["attention_head_dim"]))
    return _KNOWN_TRANSFORMERS.get(key)


def _renamed(profile: ModelProfile, name: str | None) -> ModelProfile:
    if not name:
        return profile
    return ModelProfile(**{**profile.to_json(), "name": name, "sizes": profile.sizes})


def resolve_profile(model: str | None, model_name: str | None, registered: dict[str, str]) -> ModelProfile:
    """The profile the API validates against.

    Args:
        model: ``WANSERVE_MODEL``: a folder, ``tiny-random``, or None for the default (shapes) model.
        model_name: ``WANSERVE_MODEL_NAME``, the name to report.
        registered: profiles that workers published in Redis (name -> JSON), used when the API cannot
            read the model folder itself (API and workers on different machines).
    """
    if model is None:
        return _renamed(SHAPES_PROFILE, model_name)
    if model == RANDOM_MODEL_ALIAS:
        return _renamed(TINY_PROFILE, model_name)
    folder = Path(model)
    if folder.is_dir():
        return profile_for_folder(folder, model_name)
    if model_name and model_name in registered:
        return ModelProfile.from_json(json.loads(registered[model_name]))
    if len(registered) == 1:
        return ModelProfile.from_json(json.loads(next(iter(registered.values()))))
    raise FileNotFoundError(
        f"WANSERVE_MODEL={model} is not a folder on this machine and no worker has registered its model yet"
    )
