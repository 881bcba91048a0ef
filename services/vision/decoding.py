"""Encoded image bytes -> an RGB PIL image, refusing anything unsafe or unreadable with InvalidInput.

Only PNG, JPEG, WebP and GIF are decoded; Pillow is never asked to try its other parsers on
untrusted bytes. The pixel count is checked from the header before any pixel is decoded, so a
small file that claims a huge canvas (a decompression bomb) costs nothing. Whatever the bytes,
the only exception that leaves ``decode_image`` is InvalidInput.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from services.common.errors import InvalidInput
from services.common.settings import settings_subset

# Pillow format names, in the order the parsers are tried.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF"

# Magic numbers of common formats that are refused, so the caller learns what they sent.
_KNOWN_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"\x00\x00\x02\x00", 0, "CUR"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"qoif", 0, "QOI"),
    (b"DDS ", 0, "DDS"),
    (b"icns", 0, "ICNS"),
    (b"\x0a\x05\x01\x08", 0, "PCX"),
    (b"P1", 0, "PBM"),
    (b"P4", 0, "PBM"),
    (b"P2", 0, "PGM"),
    (b"P5", 0, "PGM"),
    (b"P3", 0, "PPM"),
    (b"P6", 0, "PPM"),
)

_LOGGER = logging.getLogger(__name__)

_PILLOW_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class ImageLimits:
    """What an accepted image may be; built from VisionSettings."""

    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    min_image_side_px: int = 8

    @classmethod
    def from_settings(cls, settings: object) -> ImageLimits:
        return settings_subset(cls, settings)


def configure_pillow(limits: ImageLimits) -> None:
    """Makes Pillow's own process-wide bomb guard agree with ours; called once at service start.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that, inside
    ``Image.open``. With its limit at ours and its warning turned into an error, every image
    Pillow flags is refused (``decode_image`` reports both as InvalidInput), never just logged.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_image(data: bytes, limits: ImageLimits, *, draft_side_px: int = 0) -> Image.Image:
    """Decodes one encoded image to an upright RGB image (first frame of animations).

    ``draft_side_px`` lets a JPEG decode at a reduced 1/2, 1/4 or 1/8 scale (DCT scaling, far
    cheaper than decoding full size and resizing) as long as both sides stay at least that
    long; pass the side the image will be resized to, or 0 for full size.
    """
    if not data:
        raise InvalidInput("image is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"image is {len(data)} bytes; the limit is {limits.max_image_bytes} bytes")
    image = _open(data, limits)
    rgb: Image.Image | None = None
    try:
        _check_dimensions(image, limits)
        if draft_side_px > 0 and image.format == "JPEG":
            image.draft(None, (draft_side_px, draft_side_px))
        try:
            image.load()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the input's fault
            raise _unreadable(image.format, exc, limits) from None
        _apply_exif_orientation(image)
        try:
            rgb = _to_rgb(image)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(
                f"could not convert {image.format} {image.mode} image to RGB: {_describe(exc)}"
            ) from None
        return rgb
    finally:
        if rgb is not image:
            image.close()


def _open(data: bytes, limits: ImageLimits) -> Image.ImageFile.ImageFile:
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except Image.UnidentifiedImageError:
        known = _sniff_format(data)
        if known is not None:
            raise InvalidInput(f"unsupported image format {known}; supported: {_SUPPORTED_TEXT}") from None
        raise InvalidInput(f"could not read image: not a recognised {_SUPPORTED_TEXT} file") from None
    except Exception as exc:  # noqa: BLE001 - a malformed header may raise nearly anything
        text = _describe(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise InvalidInput(f"image is truncated or incomplete: {text}") from None
        raise InvalidInput(f"could not read image: {text}") from None


def _sniff_format(data: bytes) -> str | None:
    for signature, offset, name in _KNOWN_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _check_dimensions(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise InvalidInput(
            f"image is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_image_pixels} pixels"
        )
    if min(width, height) < limits.min_image_side_px:
        raise InvalidInput(
            f"image is {width}x{height} pixels; each side must be at least {limits.min_image_side_px} pixels"
        )


def _bomb(exc: Exception, limits: ImageLimits) -> InvalidInput:
    """Pillow's guard fired before ours could: say the same as ours would, if its message allows."""
    found = _PILLOW_BOMB_PIXELS.search(str(exc))
    if found is None:
        return InvalidInput(f"image refused as a decompression bomb: {exc}")
    return InvalidInput(f"image is {found.group(1)} pixels; the limit is {limits.max_image_pixels} pixels")


def _unreadable(image_format: str | None, exc: Exception, limits: ImageLimits) -> InvalidInput:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb(exc, limits)
    text = _describe(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return InvalidInput(f"{image_format} image is truncated or incomplete: {text}")
    return InvalidInput(f"could not read {image_format} image: {text}")


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotates/flips as the EXIF Orientation tag says; a malformed EXIF block is ignored, not fatal."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - cameras write broken EXIF often enough; keep the pixels
        _LOGGER.debug("ignoring unreadable EXIF orientation", exc_info=True)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flattens any mode to 8-bit RGB; transparency becomes white, the usual page background."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255 instead of scaling them.
        levels = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
        gray = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return image
    return image.convert("RGB")
