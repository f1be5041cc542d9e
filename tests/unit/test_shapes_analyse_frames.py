"""The analyser frame by frame (issue 15): what a person sees in each frame, where the whole-video mean
averages a late failure away. Clips come from the training data's own generator."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re

import numpy as np

from bench.shapes_eval import UNSEEN_WORDINGS, WORDING
from shapes_model.analyse import (
    FILL_TRIANGLE,
    accuracy_by_position,
    analyse_each_frame,
    analyse_frames,
    score_frames,
)
from shapes_model.data import (
    BACKGROUND,
    COLOURS,
    PROMPT_TEMPLATES,
    SHAPES,
    Clip,
    render,
    sample_clip,
)
from shapes_model.model import UNK, build_tokenizer


def test_every_frame_of_drawn_clips_reads_as_drawn() -> None:
    rng = random.Random(15)
    for colour, shape in itertools.product(COLOURS, SHAPES):
        clip = sample_clip(rng, colour, shape)
        each = analyse_each_frame(render(clip))
        assert [(f.present, f.single, f.colour, f.shape) for f in each] == [(True, True, colour, shape)] * 17
        scores = score_frames(each, colour, shape)
        assert (scores.colour, scores.shape, scores.present, scores.single) == (1.0, 1.0, 1.0, 1.0)
        assert (scores.off_colour, scores.patched) == (0.0, 0.0)
        assert scores.sharpness is not None and 0.8 < scores.sharpness < 1.25, clip


def test_a_colour_that_drifts_late_is_caught_in_the_frames_it_drifts() -> None:
    red = Clip("red", "circle", "right", radius=9.0, travel=0.4, start=(0.3, 0.5))
    drifting = np.concatenate([render(red)[:12], render(dataclasses.replace(red, colour="yellow"))[12:]])
    assert analyse_frames(drifting).colour == "red"  # the whole-video mean says all is well
    scores = score_frames(analyse_each_frame(drifting), "red", "circle")
    assert scores.colour == 12 / 17
    assert scores.colour_by_frame == (True,) * 12 + (False,) * 5
    assert scores.shape == 1.0


def test_a_patch_of_another_colour_inside_the_object_is_seen_though_the_mean_hides_it() -> None:
    blue = Clip("blue", "square", "right", radius=10.0, travel=0.3, start=(0.35, 0.5))
    frames = render(blue)
    clean = score_frames(analyse_each_frame(frames), "blue", "square")
    assert (clean.off_colour, clean.patched) == (0.0, 0.0)
    patched = frames.copy()
    for i in range(8, 17):  # from frame 8, a green patch of 7x7 pixels in the middle of the 20x20 square
        (x, _), (x1, y) = blue.start, blue.end
        cx = round((x + (x1 - x) * i / 16) * 64)
        patched[i, round(y * 64) - 3 : round(y * 64) + 4, cx - 3 : cx + 4] = COLOURS["green"]
    each = analyse_each_frame(patched)
    assert [f.colour for f in each] == ["blue"] * 17  # every frame's mean colour is still blue
    assert all(f.off_colour == 0 for f in each[:8])
    assert all(0.12 < f.off_colour < 0.2 for f in each[8:]), [f.off_colour for f in each[8:]]
    scores = score_frames(each, "blue", "square")
    assert scores.colour == 1.0 and scores.patched == 9 / 17


def test_half_red_half_yellow_is_half_right() -> None:
    red = Clip("red", "square", "up", radius=9.0, travel=0.4, start=(0.5, 0.7))
    frames = np.concatenate([render(red, 16)[:8], render(dataclasses.replace(red, colour="yellow"), 16)[8:]])
    each = analyse_each_frame(frames)
    assert [f.colour for f in each] == ["red"] * 8 + ["yellow"] * 8
    assert score_frames(each, "red", "square").colour == 0.5
    assert score_frames(each, "yellow", "square").colour == 0.5


def test_two_objects_are_present_but_not_single() -> None:
    top = Clip("red", "circle", "right", radius=8.0, travel=0.3, start=(0.2, 0.25))
    bottom = Clip("blue", "square", "right", radius=8.0, travel=0.3, start=(0.2, 0.75))
    frames = np.maximum(render(top), render(bottom))
    each = analyse_each_frame(frames)
    assert {f.objects for f in each} == {2}
    scores = score_frames(each, "red", "circle")
    assert (scores.present, scores.single) == (1.0, 0.0)


def test_a_frame_without_the_object_counts_as_absent_and_wrong() -> None:
    frames = render(Clip("green", "triangle", "down", radius=9.0, travel=0.4, start=(0.5, 0.3)))
    frames[5:7] = BACKGROUND
    each = analyse_each_frame(frames)
    assert [f.present for f in each] == [True] * 5 + [False] * 2 + [True] * 10
    assert (each[5].objects, each[5].colour, each[5].shape, each[5].sharpness) == (0, None, None, None)
    scores = score_frames(each, "green", "triangle")
    assert scores.present == scores.colour == scores.shape == 15 / 17
    assert scores.single == 15 / 17


def test_blur_lowers_sharpness_and_a_rendered_edge_scores_about_one() -> None:
    frames = render(Clip("white", "square", "left", radius=9.7, travel=0.4, start=(0.7, 0.5)))
    blurred = _blur(_blur(frames))
    sharp = score_frames(analyse_each_frame(frames), "white", "square").sharpness
    soft = score_frames(analyse_each_frame(blurred), "white", "square").sharpness
    assert sharp is not None and soft is not None
    assert 0.9 < sharp < 1.25
    assert soft < 0.6 * sharp


def test_a_square_rounded_into_a_blob_is_not_a_square_but_a_slightly_rounded_one_is() -> None:
    """A blob that fills its box about as a circle does is what the model draws when asked for a square."""
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5

    def rounded_square(half: float, rounding: float) -> str | None:
        corner = np.maximum(np.abs(np.stack([xs - 32.3, ys - 31.8])) - half * (1 - rounding), 0.0)
        inside = np.hypot(corner[0], corner[1]) < half * rounding
        frame = np.where(inside[..., None], COLOURS["blue"], BACKGROUND).astype(np.uint8)
        return analyse_each_frame(frame[None])[0].shape

    for half in (7.0, 9.0):
        assert rounded_square(half, 0.3) == "square"
        assert rounded_square(half, 0.85) == "circle"
        assert rounded_square(half, 1.0) == "circle"


def test_a_triangle_rounded_until_it_fills_its_box_like_a_circle_is_still_a_triangle() -> None:
    drawn = render(Clip("green", "triangle", "up", radius=10.0, travel=0.0, start=(0.5, 0.5)), 1)
    rounded: np.ndarray = drawn[0].astype(np.float32)
    for _ in range(2):
        rounded = _box_blur(rounded, 3)
    seen = analyse_each_frame(rounded.round().astype(np.uint8)[None])[0]
    assert seen.fill is not None and seen.fill > FILL_TRIANGLE  # rounded: its fill alone says circle
    assert seen.shape == "triangle"


def test_accuracy_by_frame_position_is_over_videos() -> None:
    flags = [(True, True, False), (True, False, False)]
    assert accuracy_by_position(flags) == [1.0, 0.5, 0.0]


def test_the_unseen_wordings_are_new_to_training_and_read_by_the_tokenizer() -> None:
    def words(template: str) -> str:
        return re.sub("[^a-z{}]+", " ", template.lower()).strip()

    trained = {words(t) for t in PROMPT_TEMPLATES} | {words(WORDING)}
    tokenizer = build_tokenizer()
    for wording in UNSEEN_WORDINGS:
        assert words(wording) not in trained
        prompt = wording.format(colour="yellow", shape="triangle", direction="up")
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
        assert UNK not in tokens
        assert {"yellow", "triangle", "up"} <= set(tokens)


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """A (2 radius + 1)-wide box blur along both axes."""
    for axis in (0, 1):
        shifted = [np.roll(image, shift, axis) for shift in range(-radius, radius + 1)]
        image = np.mean(shifted, axis=0)
    return image


def _blur(frames: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both image axes."""
    out: np.ndarray = frames.astype(np.float32)
    for axis in (1, 2):
        out = (np.roll(out, 1, axis) + 2 * out + np.roll(out, -1, axis)) / 4
    return out.round().astype(np.uint8)
