"""The shipped shapes model is a Wan2.1 folder that loads like any other (it draws, and the recipe that made
it runs, in tests/integration/test_shapes_model_runs.py)."""

from __future__ import annotations

import json

from service.core.model_profile import SHAPES_PROFILE, profile_for_folder
from worker.tiny_model import SHAPES_MODEL_DIR

MAX_WEIGHTS_BYTES = 20 * 1024 * 1024


def test_the_shipped_folder_is_a_wan_folder_with_its_profile() -> None:
    index = json.loads((SHAPES_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert profile_for_folder(SHAPES_MODEL_DIR) == SHAPES_PROFILE


def test_the_weights_are_small() -> None:
    weights = sum(p.stat().st_size for p in SHAPES_MODEL_DIR.rglob("*.safetensors"))
    assert 0 < weights < MAX_WEIGHTS_BYTES
