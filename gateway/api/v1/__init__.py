"""Version 1 of the REST API: one blueprint per resource, under /v1 (and the classic
single-text ``/text-classification`` contract beside it)."""

from __future__ import annotations

from gateway.api.v1 import audio, catalog, embeddings, inference, text_classification, video

BLUEPRINTS = (
    embeddings.blueprint,
    inference.blueprint,
    text_classification.blueprint,
    audio.blueprint,
    video.blueprint,
    catalog.blueprint,
)
