"""Version 2 of the REST API: the Open Inference Protocol (KServe/Triton), under /v2."""

from __future__ import annotations

from gateway.api.v2 import inference_protocol

BLUEPRINTS = (inference_protocol.blueprint,)
