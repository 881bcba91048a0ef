"""Routes about the service itself, open even when API keys are set: liveness, readiness,
Prometheus metrics, the OpenAPI document and Swagger UI (served from the installed
swagger-ui-bundle package, never a CDN, so /docs works offline and in locked-down clusters)."""

from __future__ import annotations

import json

from flask import Blueprint, Response, abort, current_app, send_from_directory

from gateway.api.shapes import STR, obj
from gateway.encoding import json_response
from gateway.endpoints import ENCODERS, endpoint, operations, state
from gateway.openapi import openapi_document
from gateway.upstreams import BACKENDS, READY_TIMEOUT_S

blueprint = Blueprint("service", __name__)

OPENAPI_KEY = "mmserve.openapi"  # the document's JSON text, built once by create_app
_OPENAPI_BY_FACTS = "mmserve.openapi.served"  # (what is served, the document's JSON text)
_SWAGGER_FILES = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}
)
_SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmserve API</title>
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>"""


@endpoint(
    blueprint,
    "GET",
    "/healthz",
    summary="Liveness: the process answers",
    response=obj({"status": STR}, ["status"]),
)
def healthz() -> Response:
    return json_response({"status": "ok"})


_BACKEND_STATE = {
    "type": "string",
    "description": "the backend's grpc.health.v1 status (SERVING, NOT_SERVING, SERVICE_UNKNOWN), or the "
    "gRPC code of a health check that failed (UNAVAILABLE: down or unreachable; DEADLINE_EXCEEDED: "
    f"no answer within {READY_TIMEOUT_S} s)",
}
READINESS = obj(
    {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "backends": obj(
            {name: _BACKEND_STATE for name in BACKENDS},
            list(BACKENDS),
            description="each backend's state; routes whose backend is not SERVING answer 503",
        ),
    },
    ["status", "backends"],
    example={
        "status": "ready",
        "backends": {"text": "SERVING", "vision": "UNAVAILABLE", "fusion": "SERVING"},
    },
)


@endpoint(
    blueprint, "GET", "/readyz",
    summary="Readiness: this gateway can serve something (at least one backend is SERVING)",
    description="200 while at least one backend reports SERVING over grpc.health.v1, so losing one "
    "modality never takes the gateway out of its load balancer; the body lists every backend's state. "
    "503, with the same body, when none is serving.",
    response=READINESS,
    responses={"503": ("No backend is SERVING; the body lists each one's state", READINESS)},
)  # fmt: skip
def readyz() -> Response:
    backends = state().upstreams.states()
    if any(status == "SERVING" for status in backends.values()):
        return json_response({"status": "ready", "backends": backends})
    return json_response({"status": "not_ready", "backends": backends}, 503, {"Retry-After": "1"})


@endpoint(
    blueprint, "GET", "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response={"type": "string"}, response_type="text/plain",
)  # fmt: skip
def metrics() -> Response:
    return Response(state().metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")


@endpoint(blueprint, "GET", "/openapi.json", summary="This OpenAPI document", response={"type": "object"})
def openapi() -> Response:
    # create_app builds the document without the served models; once the encoders have told what
    # they serve it is rebuilt for that (the limit on OpenAI's `dimensions`, the operations a
    # missing model would refuse left out) and kept while that stays the same.
    served = state().served
    facts = (served.smallest_width(), {name: served.tasks(name) for name in ENCODERS})
    if facts == (None, dict.fromkeys(ENCODERS)):
        return Response(current_app.extensions[OPENAPI_KEY], mimetype="application/json")
    built = current_app.extensions.get(_OPENAPI_BY_FACTS)
    if built is None or built[0] != facts:
        document = openapi_document(operations(current_app), state().settings, *facts)
        built = current_app.extensions[_OPENAPI_BY_FACTS] = (facts, json.dumps(document))
    return Response(built[1], mimetype="application/json")


@endpoint(
    blueprint,
    "GET",
    "/docs",
    summary="Swagger UI for this API",
    response={"type": "string"},
    response_type="text/html",
)
def docs() -> Response:
    return Response(_SWAGGER_PAGE, mimetype="text/html")


@blueprint.get("/docs/static/<name>")
def docs_static(name: str) -> Response:
    if name not in _SWAGGER_FILES:
        abort(404)
    import swagger_ui_bundle  # only /docs needs it

    return send_from_directory(swagger_ui_bundle.swagger_ui_path, name, max_age=86400)
