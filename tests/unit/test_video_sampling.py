"""Video sampling in-process (services/vision/video.py): which frames, how they are reached, and
the budgets that refuse a video before it is decoded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidInput
from services.vision.efficientnet_lite import TRANSFORM
from services.vision.video import (
    Sampling,
    VideoLimits,
    _choose,
    _frame_times,
    _plan,
    prepare_video,
    sniff_container,
)
from tests.support.media import decoded_frames, pattern_frame, video_file

LIMITS = VideoLimits()
FRAMES = [pattern_frame(i) for i in range(48)]


@pytest.mark.parametrize(
    ("codec", "container"), [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("mpeg4", "mp4")]
)
def test_seeking_to_keyframes_gives_the_frames_a_full_decode_gives(codec: str, container: str) -> None:
    video = video_file(FRAMES, codec=codec, container=container, keyframe_every=8)
    index = _frame_times(video, sniff_container(video), LIMITS)
    chosen = _choose(index.times, index.duration_s, Sampling(num_frames=3), LIMITS)
    assert chosen == [8, 24, 40]
    runs = _plan(index, chosen, LIMITS)
    assert all(run.start is not None for run in runs), "each sampled frame is reached by a seek"
    prepared = prepare_video(video, LIMITS, Sampling(num_frames=3), TRANSFORM)
    every = decoded_frames(video)
    expected = np.stack([TRANSFORM(Image.fromarray(every[i][1])) for i in chosen])
    np.testing.assert_array_equal(prepared.frames, expected)
    assert prepared.timestamps_s == [1.0, 3.0, 5.0] and prepared.duration_s == pytest.approx(6.0)


def test_the_decoding_budget_is_checked_before_decoding() -> None:
    """One keyframe at the start: reaching the last frame means decoding all 48 (48 x 96 x 64 pixels)."""
    video = video_file(FRAMES, keyframe_every=1000)
    tight = VideoLimits(max_video_decoded_pixels=47 * 96 * 64)
    with pytest.raises(
        InvalidInput, match=r"needs 48 frames of 96x64 decoded \(294912 pixels\); the limit is 288768"
    ):
        prepare_video(video, tight, Sampling(num_frames=48), TRANSFORM)
    assert prepare_video(video, tight, Sampling(num_frames=1), TRANSFORM).timestamps_s == [3.0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [((2, 1.0), "not both"), ((65, 0.0), "num_frames is 65; the limit is 64"), ((-1, 0.0), "must be positive"),
     ((0, float("nan")), "must be positive"), ((0, float("inf")), "must be positive")],
)  # fmt: skip
def test_sampling_fields_are_validated(fields: tuple[int, float], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Sampling.of(*fields, default_frames=8, limits=LIMITS)
    assert Sampling.of(0, 0.0, default_frames=8, limits=LIMITS) == Sampling(num_frames=8)


def test_frames_per_second_picks_the_first_frame_at_each_tick() -> None:
    video = video_file(FRAMES[:12], fps=8)
    prepared = prepare_video(video, LIMITS, Sampling(frames_per_second=3.0), TRANSFORM)
    assert prepared.timestamps_s == pytest.approx(
        [0.0, 0.375, 0.75, 1.0, 1.375]
    )  # ticks 0, 1/3, 2/3, 1, 4/3 s
