"""The fast per-image transform matches the transformers image processors it replaces."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil, ConvNextImageProcessorPil, ViTImageProcessorPil

from services.vision.decoding import ImageLimits
from services.vision.efficientnet_lite import TRANSFORM as EFFICIENTNET_TRANSFORM
from services.vision.preprocessing import (
    ImageTransform,
    ProcessorTransform,
    prepare_image,
    transform_for_processor,
)

SHAPES = [(300, 200), (199, 301), (224, 224), (50, 20), (20, 50), (641, 479)]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def reference(processor, image: Image.Image) -> np.ndarray:
    return processor(images=[image], return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize(
    "processor",
    [
        CLIPImageProcessorPil(),
        CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
        # Crop larger than the resized image: transformers pads with zeros around it.
        CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 32, "width": 28}),
        # The longer side capped: the shorter one ends up below shortest_edge.
        CLIPImageProcessorPil(
            size={"shortest_edge": 40, "longest_edge": 50}, crop_size={"height": 24, "width": 24}
        ),
        ViTImageProcessorPil(),
        ViTImageProcessorPil(
            size={"height": 32, "width": 48}, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.6, 0.7]
        ),
        ViTImageProcessorPil(do_normalize=False),
    ],
    ids=["clip-224", "clip-30", "clip-pad", "clip-longest-edge", "vit-224", "vit-32x48", "vit-no-normalize"],
)
def test_fast_transform_matches_the_standard_processor(processor) -> None:
    transform = transform_for_processor(processor)
    assert isinstance(transform, ImageTransform)
    for index, (width, height) in enumerate(SHAPES):
        image = noise(width, height, index)
        expected = reference(processor, image)
        out = transform(image)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert out.shape == expected.shape == (3, *transform.output_hw)
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_processors_with_custom_logic_run_themselves() -> None:
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 64})
    transform = transform_for_processor(processor)
    assert isinstance(transform, ProcessorTransform) and transform.output_hw == (64, 64)
    assert transform.draft_side_px == 0
    image = noise(120, 80)
    np.testing.assert_array_equal(transform(image), reference(processor, image))


def test_variable_size_processors_are_refused() -> None:
    # Resizing by the shorter side with no crop keeps the aspect ratio: no fixed batch shape.
    with pytest.raises(ValueError, match="differently sized inputs"):
        ProcessorTransform(ViTImageProcessorPil(size={"shortest_edge": 40}))


def test_the_fast_path_crops_a_square_when_the_processor_would_not() -> None:
    transform = transform_for_processor(ViTImageProcessorPil(size={"shortest_edge": 40}))
    assert transform.output_hw == (40, 40)
    assert transform(noise(90, 40)).shape == transform(noise(40, 90)).shape == (3, 40, 40)


def test_efficientnet_transform_follows_the_tensorflow_convention() -> None:
    assert EFFICIENTNET_TRANSFORM.output_hw == (224, 224)
    white = EFFICIENTNET_TRANSFORM(Image.new("RGB", (400, 300), (255, 255, 255)))
    black = EFFICIENTNET_TRANSFORM(Image.new("RGB", (300, 400), (0, 0, 0)))
    assert white.shape == black.shape == (3, 224, 224)
    np.testing.assert_allclose(white, (255 - 127) / 128, atol=1e-6)
    np.testing.assert_allclose(black, -127 / 128, atol=1e-6)


def test_center_crop_keeps_the_middle() -> None:
    # A 512x256 image, left quarter red: the 224/256 center crop of the 512x256 resize drops it.
    pixels = np.zeros((256, 512, 3), np.uint8)
    pixels[:, :128] = (255, 0, 0)
    out = EFFICIENTNET_TRANSFORM(Image.fromarray(pixels))
    assert np.allclose(out[0], -127 / 128, atol=1e-6)


def test_prepare_image_decodes_jpegs_at_a_reduced_scale_without_going_below_the_resize() -> None:
    buffer = io.BytesIO()
    noise(2400, 1800).save(buffer, format="JPEG")
    out = prepare_image(buffer.getvalue(), ImageLimits(), EFFICIENTNET_TRANSFORM)
    assert out.shape == (3, 224, 224) and np.isfinite(out).all()
    assert EFFICIENTNET_TRANSFORM.draft_side_px == 256


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shortest_edge": 224, "resize_hw": (224, 224)},
        {},
        {"shortest_edge": 224},  # no crop: the output size would follow the input's aspect ratio
    ],
)
def test_transform_requires_one_fixed_output_size(kwargs) -> None:
    with pytest.raises(ValueError):
        ImageTransform(resample=2, **kwargs)
