import dataclasses
import json
from pathlib import Path

import pytest

from service.core.model_profile import (
    PROFILE_FILE,
    SHAPES_PROFILE,
    TINY_PROFILE,
    ModelProfile,
    profile_for_folder,
    resolve_profile,
)


def write_transformer_config(folder: Path, layers: int, heads: int) -> Path:
    (folder / "transformer").mkdir(parents=True)
    config = {"num_layers": layers, "num_attention_heads": heads, "attention_head_dim": 128}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    return folder


def test_wan_1_3b_serves_480p(tmp_path: Path) -> None:
    profile = profile_for_folder(write_transformer_config(tmp_path / "m", 30, 12))
    assert profile.name == "wan2.1-t2v-1.3b"
    assert profile.sizes == ("832x480", "480x832")
    assert (profile.num_attention_heads, profile.default_steps, profile.max_frames) == (12, 50, 81)


def test_wan_14b_serves_720p_and_480p(tmp_path: Path) -> None:
    profile = profile_for_folder(write_transformer_config(tmp_path / "m", 40, 40))
    assert profile.sizes[:2] == ("1280x720", "720x1280")
    assert "832x480" in profile.sizes


def test_model_name_overrides(tmp_path: Path) -> None:
    folder = write_transformer_config(tmp_path / "m", 30, 12)
    assert profile_for_folder(folder, "my-wan").name == "my-wan"


def test_no_model_means_the_shipped_shapes_model_and_tiny_random_the_random_one() -> None:
    assert resolve_profile(None, None, {}) == SHAPES_PROFILE
    assert resolve_profile("tiny-random", None, {}) == TINY_PROFILE


def test_an_unreadable_folder_falls_back_to_what_workers_registered() -> None:
    registered = {"wan-remote": json.dumps({**TINY_PROFILE.to_json(), "name": "wan-remote"})}
    assert resolve_profile("/nowhere", None, registered).name == "wan-remote"
    with pytest.raises(FileNotFoundError, match="no worker has registered"):
        resolve_profile("/nowhere", None, {})


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="transformer"):
        profile_for_folder(tmp_path)


def test_the_layer_count_is_kept(tmp_path: Path) -> None:
    assert profile_for_folder(write_transformer_config(tmp_path / "a", 30, 12)).num_layers == 30
    assert profile_for_folder(write_transformer_config(tmp_path / "b", 40, 40)).num_layers == 40
    assert profile_for_folder(write_transformer_config(tmp_path / "c", 7, 2)).num_layers == 7  # unknown model


def test_the_transformer_config_gives_the_layer_count_next_to_a_profile_file(tmp_path: Path) -> None:
    folder = write_transformer_config(tmp_path / "m", 12, 2)
    stale = {key: value for key, value in TINY_PROFILE.to_json().items() if key != "num_layers"}
    (folder / PROFILE_FILE).write_text(json.dumps(stale))
    assert profile_for_folder(folder) == dataclasses.replace(TINY_PROFILE, num_layers=12)


def test_a_profile_registered_without_a_layer_count_reads_as_unknown() -> None:
    assert ModelProfile.from_json(TINY_PROFILE.to_json()) == TINY_PROFILE
    old = {key: value for key, value in TINY_PROFILE.to_json().items() if key != "num_layers"}
    assert ModelProfile.from_json(json.loads(json.dumps(old))).num_layers is None
    assert resolve_profile("/nowhere", None, {"old": json.dumps(old)}).num_layers is None
