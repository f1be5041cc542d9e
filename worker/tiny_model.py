"""Our tiny Wan2.1 models, in diffusers format: they load through the same code path as a real Wan2.1
folder, so the service cannot tell the difference.

- The default, ``SHAPES_MODEL_DIR``: trained here on synthetic clips of coloured shapes (``shapes_model``),
  shipped with the package; it draws what it is told.
- ``tiny-random``: random weights from a fixed seed, generated once into the models cache; it only draws
  noise, fast, for tests. The same seed gives the same weights on every run and machine (same torch).

Its configs are the base the shapes model (``shapes_model.model``) and the benchmarks' random models
(:func:`write_random_model`) change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from service.core.model_profile import PROFILE_FILE, SHAPES_MODEL_NAME, TINY_PROFILE, ModelProfile

log = logging.getLogger("wanserve.worker")

SHAPES_MODEL_DIR = Path(__file__).parent / "models" / SHAPES_MODEL_NAME
TINY_SEED = 20250225
TINY_VERSION = "v1"

TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)
VAE_CONFIG: dict[str, Any] = dict(
    base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)
TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    vocab_size=384,
    d_model=32,
    d_ff=64,
    d_kv=16,
    num_heads=2,
    num_layers=2,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
)


def build_tiny_pipeline(seed: int = TINY_SEED) -> Any:
    """Build the tiny pipeline in memory with deterministic random weights."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer: Any = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKLWan(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG))
    return WanPipeline(
        tokenizer=ByT5Tokenizer(),
        text_encoder=text_encoder.eval(),
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG),
    )


def write_random_model(folder: Path, name: str, seed: int, **transformer: Any) -> Path:
    """A random-weight model folder for benchmarks: the tiny model with its transformer's config changed
    by ``transformer`` (more layers, wider), that transformer's weights drawn from ``seed``."""
    from diffusers import WanTransformer3DModel

    config = {**TRANSFORMER_CONFIG, **transformer}
    pipe = build_tiny_pipeline()
    torch.manual_seed(seed)
    model: Any = WanTransformer3DModel(**config)
    pipe.register_modules(transformer=model.eval())
    profile = dataclasses.replace(TINY_PROFILE, name=name, num_attention_heads=config["num_attention_heads"])
    _save(pipe, folder, profile)
    return folder


def _save(pipe: Any, folder: Path, profile: ModelProfile) -> None:
    pipe.save_pretrained(folder)
    # Written last: its presence marks a complete folder.
    (folder / PROFILE_FILE).write_text(json.dumps(profile.to_json(), indent=2))


def tiny_model_dir(models_dir: Path) -> Path:
    return models_dir / f"{TINY_PROFILE.name}-{TINY_VERSION}"


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return the tiny model's folder, generating it first if absent (safe with concurrent callers)."""
    target = tiny_model_dir(models_dir)
    if (target / PROFILE_FILE).is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    log.info("generating the tiny random-weight Wan2.1 model into %s", target)
    staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=".tiny-"))
    try:
        _save(build_tiny_pipeline(), staging, TINY_PROFILE)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / PROFILE_FILE).is_file():  # lost a race to a complete folder: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
