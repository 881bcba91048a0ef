"""Runs the fusion service: ``python -m services.fusion [--flags]`` (env MMSERVE_FUSION_*)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from services.common.logs import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.server import serve
from services.common.settings import FusionSettings, load_settings
from services.fusion.clients import EncoderClients
from services.fusion.registry import HeadRegistry
from services.fusion.servicer import FusionService


async def run(settings: FusionSettings) -> None:
    # Channels are asyncio objects: they are made inside the running loop.
    clients = EncoderClients(settings)
    registry = HeadRegistry(Path(settings.heads_dir), clients.model_infos, settings.heads_reload_interval_s)
    metrics = ServiceMetrics()
    await serve(settings, FusionService(settings, clients, registry), metrics, "fusion")


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(FusionSettings, sys.argv[1:] if argv is None else argv)
    configure_logging("fusion", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
