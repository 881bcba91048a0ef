"""decode_image: the allow-listed formats decode to upright RGB; every bad input is InvalidInput."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.common.errors import InvalidInput
from services.vision.decoding import ImageLimits, configure_pillow, decode_image

LIMITS = ImageLimits(max_image_bytes=2 * 1024 * 1024, max_image_pixels=4_000_000, min_image_side_px=8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 48, height: int = 32) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 90, np.uint8)], -1
    )
    return Image.fromarray(pixels)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height 1-bit pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + png_chunk(b"IEND", b"")
    )


def assert_invalid(data: bytes, fragment: str, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, limits)
    message = str(caught.value)
    assert fragment in message, message
    return message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encode(gradient(), fmt), LIMITS)
    assert image.mode == "RGB" and image.size == (48, 32)
    if fmt in ("PNG", "WEBP"):  # WebP's default is lossy, but a smooth ramp survives closely
        reference = np.asarray(gradient(), dtype=np.int16)
        assert np.abs(np.asarray(image, dtype=np.int16) - reference).mean() < 3


def test_gif_decodes_its_first_frame() -> None:
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert decode_image(data, LIMITS).getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    # Left half red, right half blue; orientation 6 says "rotate 90 degrees clockwise to view".
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95), LIMITS)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 128, 0] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    decoded = decode_image(encode(image, "PNG", transparency=0), LIMITS)
    assert decoded.getpixel((2, 2)) == (255, 255, 255)
    assert decoded.getpixel((12, 2)) == (0, 128, 0)


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("LA", (100, 0), (255, 255, 255)),
        ("LA", (100, 255), (100, 100, 100)),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ],
)
def test_alpha_is_composited_on_white(mode: str, color: tuple, expected: tuple) -> None:
    decoded = decode_image(encode(Image.new(mode, (16, 16), color), "PNG"), LIMITS)
    assert np.allclose(decoded.getpixel((4, 4)), expected, atol=1)


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), LIMITS)
    r, g, b = decoded.getpixel((8, 8))
    assert decoded.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    levels = np.zeros((16, 16), np.uint16)
    levels[:, 8:] = 32768
    levels[:8, :8] = 65535
    decoded = np.asarray(decode_image(encode(Image.fromarray(levels), "PNG"), LIMITS))
    assert tuple(decoded[12, 12]) == (128, 128, 128)
    assert tuple(decoded[2, 2]) == (255, 255, 255)
    assert tuple(decoded[12, 2]) == (0, 0, 0)


@pytest.mark.parametrize(("fmt", "name"), [("BMP", "BMP"), ("TIFF", "TIFF"), ("ICO", "ICO")])
def test_other_formats_are_refused_by_name(fmt: str, name: str) -> None:
    assert_invalid(
        encode(gradient(), fmt), f"unsupported image format {name}; supported: PNG, JPEG, WebP, GIF"
    )


def test_empty_bytes() -> None:
    assert_invalid(b"", "image is empty")


def test_too_many_bytes() -> None:
    data = encode(gradient(), "PNG")
    small = ImageLimits(max_image_bytes=len(data) - 1)
    assert_invalid(data, f"image is {len(data)} bytes; the limit is {len(data) - 1} bytes", small)


def test_not_an_image() -> None:
    assert_invalid(b"hello, this is plain text and no picture", "could not read image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_file(fmt: str) -> None:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), fmt)
    with pytest.raises(InvalidInput) as caught:
        decode_image(data[: len(data) * 2 // 3], LIMITS)
    assert "truncated" in str(caught.value) or "could not read" in str(caught.value)


def test_truncated_png_says_so() -> None:
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")
    assert_invalid(data[: len(data) // 2], "PNG image is truncated")


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_tiny_images_are_refused(size: tuple[int, int]) -> None:
    assert_invalid(encode(Image.new("RGB", size), "PNG"), "each side must be at least 8 pixels")


def test_decompression_bomb_is_refused_from_the_header_quickly() -> None:
    data = png_claiming(30_000, 30_000)
    assert len(data) < 1000
    began = time.perf_counter()
    assert_invalid(data, "900000000 pixels; the limit is 4000000 pixels")
    assert time.perf_counter() - began < 0.5


def test_pixel_limit_is_checked_before_decoding() -> None:
    assert_invalid(
        png_claiming(3000, 2000), "image is 3000x2000 = 6000000 pixels; the limit is 4000000 pixels"
    )


def test_pillows_own_bomb_error_becomes_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # Our limit generous, Pillow's tight: Pillow's guard fires inside Image.open.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    generous = ImageLimits(max_image_pixels=10**10)
    assert_invalid(png_claiming(2_000, 2_000), "4000000 pixels; the limit is 10000000000 pixels", generous)


def test_configured_pillow_turns_its_warning_into_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():  # restores the process's warning filters afterwards
        configure_pillow(ImageLimits(max_image_pixels=5_000))
        assert Image.MAX_IMAGE_PIXELS == 5_000
        # 6,400 pixels: above Pillow's warning threshold, below its error threshold; our own
        # limit is set generously here, so only the warning-turned-error can refuse it.
        assert_invalid(png_claiming(80, 80), "image is 6400 pixels", ImageLimits(max_image_pixels=10**10))


def test_jpeg_draft_decodes_smaller_but_never_below_the_requested_side() -> None:
    data = encode(gradient(2000, 1000), "JPEG")
    image = decode_image(data, LIMITS, draft_side_px=224)
    assert 224 <= min(image.size) < 1000 and image.size[0] / image.size[1] == 2
    assert decode_image(data, LIMITS).size == (2000, 1000)


# Property tests: whatever the bytes, the outcome is an RGB image or InvalidInput.


def _decode_or_invalid(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert image.mode == "RGB" and min(image.size) >= LIMITS.min_image_side_px


def _valid_files() -> list[bytes]:
    rgba = Image.fromarray(np.random.default_rng(2).integers(0, 255, (24, 40, 4), np.uint8), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 8
    return [
        encode(rgba, "PNG"),
        encode(rgba.convert("P"), "PNG", transparency=3),
        encode(rgba.convert("RGB"), "JPEG", exif=exif),
        encode(rgba.convert("RGB"), "JPEG", progressive=True),
        encode(rgba, "WEBP"),
        encode(rgba, "WEBP", lossless=True),
        encode(rgba.convert("RGB"), "GIF", save_all=True, append_images=[gradient(40, 24)]),
        png_claiming(64, 64),
    ]


VALID_FILES = _valid_files()
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(st.binary(min_size=0, max_size=2048))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    _decode_or_invalid(data)


@PROPERTY_SETTINGS
@given(st.sampled_from(VALID_FILES), st.data())
def test_truncated_valid_files_never_raise_anything_else(data: bytes, draw) -> None:
    _decode_or_invalid(data[: draw.draw(st.integers(0, len(data)))])


@PROPERTY_SETTINGS
@given(
    st.sampled_from(VALID_FILES),
    st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_headers_never_raise_anything_else(data: bytes, edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(data)
    for offset, value in edits:
        if offset < len(mutated):
            mutated[offset] = value
    _decode_or_invalid(bytes(mutated))


@PROPERTY_SETTINGS
@given(st.sampled_from(VALID_FILES), st.binary(min_size=1, max_size=64), st.integers(0, 400))
def test_spliced_bytes_never_raise_anything_else(data: bytes, junk: bytes, offset: int) -> None:
    _decode_or_invalid(data[:offset] + junk + data[offset + len(junk) :])


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"]),
    st.sampled_from(["PNG", "JPEG", "WEBP", "GIF"]),
    st.integers(8, 40),
    st.integers(8, 40),
)
def test_every_mode_and_format_decodes_to_rgb(mode: str, fmt: str, width: int, height: int) -> None:
    image = Image.new(mode, (width, height))
    try:
        data = encode(image, fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot store this mode
    decoded = decode_image(data, LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (width, height)
