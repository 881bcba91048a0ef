"""Runs the text encoder service: ``python -m services.text [--flags]`` (env MMSERVE_TEXT_*)."""

from __future__ import annotations

import asyncio
import sys

from services.common.device import configure_threads, forward_lanes, torch_uses_cuda
from services.common.logs import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.server import serve
from services.common.settings import TextSettings, load_settings
from services.text.classifier import TextClassifier
from services.text.embedding import TextEmbedder
from services.text.ner import create_ner
from services.text.servicer import TextService


def main(argv: list[str] | None = None, embedder_factory: type[TextEmbedder] = TextEmbedder) -> None:
    settings = load_settings(TextSettings, sys.argv[1:] if argv is None else argv)
    configure_logging("text", settings.log_level)
    lanes = forward_lanes(settings.forward_lanes, torch_uses_cuda(settings.device))
    configure_threads(settings.torch_threads, lanes, settings.lone_pass_threads)
    embedder = embedder_factory(
        settings.model, settings.revision, settings.pooling, settings.device, settings.dtype,
        cpu_runtime=settings.cpu_runtime,
    )  # fmt: skip
    ner = create_ner(settings.ner_model, settings.ner_revision, settings.device, settings.dtype)
    classifier = None
    if settings.classifier_model:
        classifier = TextClassifier(
            settings.classifier_model, settings.classifier_revision, settings.device, settings.dtype,
            cpu_runtime=settings.cpu_runtime,
        )  # fmt: skip
    metrics = ServiceMetrics()
    service = TextService(settings, metrics, embedder, ner, classifier)
    asyncio.run(serve(settings, service, metrics, "text"))


if __name__ == "__main__":
    main()
