"""Runs the vision encoder service: ``python -m services.vision [--flags]`` (env MMSERVE_VISION_*)."""

from __future__ import annotations

import asyncio
import sys

from services.common.device import configure_threads, forward_lanes, torch_uses_cuda
from services.common.logs import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.server import serve
from services.common.settings import VisionSettings, load_settings
from services.vision.backend import create_model
from services.vision.decoding import ImageLimits, configure_pillow
from services.vision.servicer import VisionService


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(VisionSettings, sys.argv[1:] if argv is None else argv)
    configure_logging("vision", settings.log_level)
    lanes = forward_lanes(settings.forward_lanes, torch_uses_cuda(settings.device))
    configure_threads(settings.torch_threads, lanes, settings.lone_pass_threads)
    configure_pillow(ImageLimits.from_settings(settings))
    model = create_model(settings)
    metrics = ServiceMetrics()
    asyncio.run(serve(settings, VisionService(settings, metrics, model), metrics, "vision"))


if __name__ == "__main__":
    main()
