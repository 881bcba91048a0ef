"""Runs the fusion service: ``python -m services.fusion [--flags]`` (env MMSERVE_FUSION_*)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from services.common import tracing
from services.common.device import configure_threads
from services.common.logs import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.server import serve
from services.common.settings import FusionSettings, load_settings
from services.fusion.clients import EncoderClients
from services.fusion.registry import HeadRegistry
from services.fusion.servicer import FusionService

# Heads are a few small matrix products per request: one intra-op thread is as fast, and a pool
# of idle OpenMP threads first has to be woken (measured: 0.8 ms vs 5.6 ms for one concat_mlp
# prediction after 50 ms idle on 2 cores) and competes with the encoders for CPU.
HEAD_TORCH_THREADS = 1


async def run(settings: FusionSettings) -> None:
    tracing.configure("fusion")  # before the channels, whose interceptors depend on it
    # Channels are asyncio objects: they are made inside the running loop.
    clients = EncoderClients(settings)
    metrics = ServiceMetrics()
    registry = HeadRegistry(
        Path(settings.heads_dir),
        clients.refresh_infos,
        settings.heads_reload_interval_s,
        max_weights_bytes=settings.max_head_weights_bytes,
        metrics_registry=metrics.registry,
        configured=clients.modalities,
        cpu_runtime=settings.head_cpu_runtime,
    )
    await serve(settings, FusionService(settings, clients, registry), metrics, "fusion")


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(FusionSettings, sys.argv[1:] if argv is None else argv)
    configure_logging("fusion", settings.log_level)
    configure_threads(HEAD_TORCH_THREADS)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
