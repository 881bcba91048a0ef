"""Runs the audio encoder service: ``python -m services.audio [--flags]`` (env MMSERVE_AUDIO_*)."""

from __future__ import annotations

import asyncio
import sys

from services.audio.backend import create_model, model_family
from services.audio.servicer import AudioService
from services.common.logs import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.server import serve
from services.common.settings import AudioSettings, load_settings


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(AudioSettings, sys.argv[1:] if argv is None else argv)
    configure_logging("audio", settings.log_level)
    if model_family(settings) == "transformers":  # ONNX models take their threads per session
        from services.common.device import configure_threads, forward_lanes, torch_uses_cuda

        configure_threads(
            settings.torch_threads,
            forward_lanes(settings.forward_lanes, torch_uses_cuda(settings.device)),
            settings.lone_pass_threads,
        )
    model = create_model(settings)
    metrics = ServiceMetrics()
    asyncio.run(serve(settings, AudioService(settings, metrics, model), metrics, "audio"))


if __name__ == "__main__":
    main()
