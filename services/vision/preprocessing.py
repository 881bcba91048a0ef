"""RGB PIL image -> the float32 CHW array a model expects: resize, center crop, rescale, normalise.

The values come from the model's own configuration (a transformers image processor, or the
convention a packaged model was trained with); the work is one PIL resize and one fused
numpy multiply-add per image, without the transformers processor's per-call validation and
copies (and without torch). Every transform produces one fixed shape, so a batch stacks.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from services.common.errors import InvalidInput
from services.vision.decoding import ImageLimits, decode_image

_LOGGER = logging.getLogger(__name__)


class Preprocessor(Protocol):
    """What the vision pipeline needs from a transform."""

    @property
    def output_hw(self) -> tuple[int, int]:
        """(height, width) of every array this transform returns."""
        ...

    @property
    def draft_side_px(self) -> int:
        """Smallest side a JPEG may be decoded at without upsampling later (0: full size)."""
        ...

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32 array of shape (3, *output_hw)."""
        ...


@dataclass(frozen=True)
class ImageTransform:
    """Resize (shorter side, or exact size) -> center crop -> (x * scale - mean) / std, as CHW float32.

    Mirrors the standard transformers pipeline (resize, center crop, rescale, normalise) step
    for step, including its size rounding and crop offsets, so outputs match it.
    """

    resample: int
    # Exactly one of these two: scale the shorter side to this (keeping the aspect ratio) ...
    shortest_edge: int = 0
    # ... optionally capping the longer side, or resize to exactly (height, width).
    longest_edge: int = 0
    resize_hw: tuple[int, int] | None = None
    crop_hw: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if bool(self.shortest_edge) == bool(self.resize_hw):
            raise ValueError("set exactly one of shortest_edge and resize_hw")
        if self.crop_hw is None and self.resize_hw is None:
            raise ValueError("resizing by the shorter side needs a crop to give a fixed output size")
        # One fused multiply-add per value: (x * scale - mean) / std == x * gain + bias.
        std = np.asarray(self.std, dtype=np.float64)
        object.__setattr__(self, "_gain", (self.scale / std).astype(np.float32))
        object.__setattr__(self, "_bias", (-np.asarray(self.mean, dtype=np.float64) / std).astype(np.float32))

    @property
    def output_hw(self) -> tuple[int, int]:
        return self.crop_hw if self.crop_hw is not None else self.resize_hw  # type: ignore[return-value]

    @property
    def draft_side_px(self) -> int:
        if self.resize_hw is not None:
            return max(self.resize_hw)
        return self.shortest_edge

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """Size after the resize step, rounded as transformers rounds it."""
        if self.resize_hw is not None:
            return self.resize_hw
        short, long = (width, height) if width <= height else (height, width)
        new_short, exact_short = self.shortest_edge, float(self.shortest_edge)
        if self.longest_edge and long / short * new_short > self.longest_edge:
            exact_short = self.longest_edge * short / long
            new_short = int(round(exact_short))
        if short == new_short:
            return height, width
        new_long = int(exact_short * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, image: Image.Image) -> np.ndarray:
        height, width = self.resized_hw(image.height, image.width)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), resample=self.resample)
        if self.crop_hw is not None:
            image = _center_crop(image, *self.crop_hw)
        pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
        pixels = pixels * self._gain + self._bias
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    @classmethod
    def from_image_processor(cls, processor: Any) -> ImageTransform | None:
        """The transform a standard transformers image processor applies; None if it is not standard.

        "Standard" means the processor class only sets defaults on top of transformers' PIL or
        torchvision backend (CLIP, ViT, DeiT, ...). Processors with their own resize or
        preprocess logic are left to ``ProcessorTransform``.
        """
        if not _is_standard_processor(processor):
            return None
        size = _as_dict(getattr(processor, "size", None))
        crop = (
            _as_dict(getattr(processor, "crop_size", None))
            if getattr(processor, "do_center_crop", False)
            else {}
        )
        if not getattr(processor, "do_resize", True) or getattr(processor, "do_pad", False):
            return None
        shortest = int(size.get("shortest_edge") or 0)
        longest = int(size.get("longest_edge") or 0)
        resize_hw = None
        if not shortest:
            if not (size.get("height") and size.get("width")):
                return None  # max_height/max_width and other variable-size schemes
            resize_hw = (int(size["height"]), int(size["width"]))
        crop_hw = (
            (int(crop["height"]), int(crop["width"])) if crop.get("height") and crop.get("width") else None
        )
        if crop_hw is None and shortest:
            # Batches need one shape; crop the middle square rather than pad or distort.
            crop_hw = (shortest, shortest)
            _LOGGER.info(
                "image processor resizes by shorter side without a crop; center-cropping to %d", shortest
            )
        do_normalize = getattr(processor, "do_normalize", False)
        return cls(
            resample=_pil_resample(getattr(processor, "resample", None)),
            shortest_edge=shortest,
            longest_edge=longest,
            resize_hw=resize_hw,
            crop_hw=crop_hw,
            scale=float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else 1.0,
            mean=_triple(processor.image_mean) if do_normalize else (0.0, 0.0, 0.0),
            std=_triple(processor.image_std) if do_normalize else (1.0, 1.0, 1.0),
        )


class ProcessorTransform:
    """Runs a transformers image processor per image: the correct, slower path for custom processors."""

    draft_side_px = 0

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        shapes = {self._run(Image.new("RGB", size, (127, 127, 127))).shape for size in ((96, 64), (64, 96))}
        if len(shapes) != 1:
            raise ValueError(
                f"{type(processor).__name__} produces differently sized inputs for differently shaped "
                f"images ({sorted(shapes)}); only fixed-size image processors can be batched"
            )
        (shape,) = shapes
        if len(shape) != 3 or shape[0] != 3:
            raise ValueError(f"{type(processor).__name__} produces arrays of shape {shape}, not (3, H, W)")
        self._output_hw = (int(shape[1]), int(shape[2]))

    @property
    def output_hw(self) -> tuple[int, int]:
        return self._output_hw

    def _run(self, image: Image.Image) -> np.ndarray:
        pixel_values = self._processor(images=[image], return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(np.asarray(pixel_values[0], dtype=np.float32))

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self._run(image)


def prepare_image(data: bytes, limits: ImageLimits, transform: Preprocessor) -> np.ndarray:
    """Encoded bytes -> model input; raises only InvalidInput for bad bytes.

    JPEGs decode at a reduced scale when the transform allows it (draft scaling).
    """
    return transform(decode_image(data, limits, draft_side_px=transform.draft_side_px))


def prepare_batch(images: Sequence[bytes], limits: ImageLimits, transform: Preprocessor) -> np.ndarray:
    """Encoded images -> one (N, 3, H, W) float32 batch: the one path from bytes to model input.

    The vision service, training and the benchmarks all prepare images here, so a head trained
    on embeddings computed in-process sees exactly what serving feeds it. A bad image raises
    InvalidInput naming its index.
    """
    rows = []
    for index, data in enumerate(images):
        try:
            rows.append(prepare_image(data, limits, transform))
        except InvalidInput as exc:
            raise InvalidInput(f"images[{index}]: {exc}") from None
    if not rows:
        return np.zeros((0, 3, *transform.output_hw), dtype=np.float32)
    return np.stack(rows)


def transform_for_processor(processor: Any) -> Preprocessor:
    """The fast transform when the processor is standard, else the processor itself."""
    fast = ImageTransform.from_image_processor(processor)
    if fast is not None:
        return fast
    _LOGGER.info("image processor %s has custom logic; running it per image", type(processor).__name__)
    return ProcessorTransform(processor)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """transformers' center crop: floor offsets, zero padding (centered) when the image is smaller."""
    if image.height >= height and image.width >= width:
        top = (image.height - height) // 2
        left = (image.width - width) // 2
        return image.crop((left, top, left + width, top + height))
    padded_h, padded_w = max(height, image.height), max(width, image.width)
    canvas = Image.new("RGB", (padded_w, padded_h), (0, 0, 0))
    pad_top = -(-(padded_h - image.height) // 2)
    pad_left = -(-(padded_w - image.width) // 2)
    canvas.paste(image, (pad_left, pad_top))
    return _center_crop(canvas, height, width)


# Methods whose presence on a processor subclass means it does more than the standard pipeline.
_PIPELINE_METHODS = frozenset(
    {"preprocess", "_preprocess", "resize", "center_crop", "rescale", "normalize", "rescale_and_normalize",
     "pad", "process_image", "_further_process_kwargs", "__call__"}
)  # fmt: skip


def _is_standard_processor(processor: Any) -> bool:
    try:
        from transformers.image_processing_backends import PilBackend, TorchvisionBackend
    except ImportError:  # an older transformers without backends: trust nothing
        return False
    cls = type(processor)
    base = next((b for b in (PilBackend, TorchvisionBackend) if issubclass(cls, b)), None)
    if base is None:
        return False
    for klass in cls.__mro__:
        if klass is base:
            return True
        overridden = {name for name, value in vars(klass).items() if inspect.isfunction(value)}
        if overridden & _PIPELINE_METHODS:
            return False
    return False


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, int):
        return {"height": value, "width": value}
    # transformers' SizeDict is a dataclass with optional fields.
    return {k: v for k, v in vars(value).items() if v is not None}


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {values}")
    return values[0], values[1], values[2]


def _pil_resample(value: Any) -> int:
    if value is None:
        return int(Image.Resampling.BILINEAR)
    name = getattr(value, "name", None)
    if isinstance(name, str) and name.upper() in Image.Resampling.__members__:
        return int(Image.Resampling[name.upper()])  # PIL enum or torchvision InterpolationMode
    return int(value)
