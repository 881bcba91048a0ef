"""Version 1 of the REST API: one blueprint per resource, all under /v1."""

from __future__ import annotations

from gateway.api.v1 import catalog, embeddings, inference

BLUEPRINTS = (embeddings.blueprint, inference.blueprint, catalog.blueprint)
