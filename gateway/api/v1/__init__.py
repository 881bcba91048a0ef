"""Version 1 of the REST API: one blueprint per resource, all under /v1."""

from __future__ import annotations

from gateway.api.v1.catalog import catalog
from gateway.api.v1.embeddings import embeddings
from gateway.api.v1.inference import inference

BLUEPRINTS = (embeddings, inference, catalog)
