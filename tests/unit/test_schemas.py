import pytest

from service.core.errors import InvalidRequest
from service.core.model_profile import TINY_PROFILE
from service.core.schemas import parse_create_request, resolve_params


def resolve(**body: object):
    return resolve_params(
        parse_create_request({"prompt": "a red fox", **body}),
        TINY_PROFILE,
        max_prompt_chars=2000,
        max_steps=100,
    )


def rejected(**body: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        resolve(**body)
    return caught.value


@pytest.mark.parametrize(("seconds", "frames"), [(1, 17), (2, 33), (5, 81)])
def test_seconds_map_to_fps_times_seconds_plus_one(seconds: int, frames: int) -> None:
    params = resolve(seconds=seconds)
    assert params.num_frames == frames
    assert params.seconds == str(seconds)


def test_form_fields_arrive_as_strings_and_are_coerced() -> None:
    params = resolve(seconds="1", size="96x64", num_inference_steps="3", guidance_scale="4.5", seed="7")
    assert (params.width, params.height, params.num_frames) == (96, 64, 17)
    assert (params.num_inference_steps, params.guidance_scale, params.seed) == (3, 4.5, 7)


def test_defaults_come_from_the_model_profile() -> None:
    params = resolve()
    assert params.size == TINY_PROFILE.default_size
    assert params.num_inference_steps == TINY_PROFILE.default_steps
    assert params.num_frames == TINY_PROFILE.default_seconds * 16 + 1
    assert 0 <= params.seed < 2**32


def test_num_frames_sets_frames_directly() -> None:
    assert resolve(num_frames=9).num_frames == 9


def test_frames_not_4k_plus_1_are_rejected_not_rounded() -> None:
    error = rejected(num_frames=18)
    assert error.param == "num_frames"
    assert error.code == "unsupported_frame_count"
    assert "4k+1" in error.message


def test_fps_that_cannot_make_4k_plus_1_frames_is_rejected() -> None:
    error = rejected(seconds=1, fps=10)
    assert error.param == "seconds"
    assert "11 frames" in error.message


def test_seconds_and_num_frames_must_agree() -> None:
    assert rejected(seconds=1, num_frames=33).code == "conflicting_parameters"
    assert resolve(seconds=2, num_frames=33).num_frames == 33


def test_too_many_frames() -> None:
    assert rejected(num_frames=85).code == "too_many_frames"


def test_unknown_size_names_the_choices() -> None:
    error = rejected(size="832x480")
    assert error.param == "size"
    assert "64x64" in error.message


@pytest.mark.parametrize("size", ["64", "64x", "x64", "64X64", "-64x64", "64x64x1", ""])
def test_malformed_sizes_are_rejected(size: str) -> None:
    assert rejected(size=size).param == "size"


def test_steps_out_of_range() -> None:
    assert rejected(num_inference_steps=0).param == "num_inference_steps"
    assert rejected(num_inference_steps=101).param == "num_inference_steps"


def test_empty_blank_and_overlong_prompts() -> None:
    for prompt in ("", "   \n"):
        with pytest.raises(InvalidRequest) as caught:
            parse_create_request({"prompt": prompt})
        assert caught.value.param == "prompt"
    error = rejected(prompt="x" * 2001)
    assert (error.param, error.code) == ("prompt", "string_above_max_length")
    assert rejected(negative_prompt="x" * 2001).param == "negative_prompt"


def test_missing_prompt() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_create_request({"seconds": 1})
    assert (caught.value.param, caught.value.code) == ("prompt", "missing_required_parameter")


def test_wrong_types_name_the_field() -> None:
    assert rejected(seconds="one").param == "seconds"
    assert rejected(guidance_scale="high").param == "guidance_scale"
    assert rejected(seed=-1).param == "seed"
    assert rejected(seed=2**32).param == "seed"


def test_unknown_parameters_are_named() -> None:
    error = rejected(steps=10)
    assert (error.param, error.code) == ("steps", "unknown_parameter")


def test_another_model_is_refused() -> None:
    error = rejected(model="sora-2")
    assert (error.param, error.code) == ("model", "model_not_found")
    assert resolve(model=TINY_PROFILE.name).prompt == "a red fox"
