import json
from pathlib import Path

import torch

from service.core.model_profile import PROFILE_FILE, TINY_PROFILE, profile_for_folder
from worker.tiny_model import build_tiny_pipeline, ensure_tiny_model


def test_same_seed_gives_the_same_weights() -> None:
    first, second = build_tiny_pipeline(), build_tiny_pipeline()
    for name in ("transformer", "vae", "text_encoder"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_the_folder_is_a_diffusers_wan_folder_with_our_profile(tiny_model_dir: Path) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert profile_for_folder(tiny_model_dir) == TINY_PROFILE


def test_ensure_is_idempotent_and_leaves_no_staging(tiny_model_dir: Path) -> None:
    models_dir = tiny_model_dir.parent
    marker = (tiny_model_dir / PROFILE_FILE).stat().st_mtime_ns
    assert ensure_tiny_model(models_dir) == tiny_model_dir
    assert (tiny_model_dir / PROFILE_FILE).stat().st_mtime_ns == marker
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".tiny-")]
