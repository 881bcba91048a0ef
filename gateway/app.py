"""The Flask application factory: wiring of routes, auth, request ids, metrics and errors."""

from __future__ import annotations

import hmac
import logging
import time

import grpc
from flask import Flask, Response, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from gateway.errors import ApiError, error_response
from gateway.image_urls import ImageUrlFetcher
from gateway.metrics import GatewayMetrics
from gateway.openapi import openapi_document
from gateway.routes import v1
from gateway.upstreams import Upstreams
from services.common.logs import request_id_var, sanitize_request_id
from services.common.settings import GatewaySettings

_LOGGER = logging.getLogger("gateway.access")
_HTTP_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                      413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}  # fmt: skip
_SWAGGER_PAGE = """<!doctype html><html><head><title>mmserve API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>"""


def create_app(settings: GatewaySettings | None = None, metrics: GatewayMetrics | None = None) -> Flask:
    settings = settings or GatewaySettings()
    metrics = metrics or GatewayMetrics()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions["mmserve.settings"] = settings
    app.extensions["mmserve.upstreams"] = Upstreams(settings, metrics)
    app.extensions["mmserve.image_urls"] = ImageUrlFetcher(
        settings.image_url_allowlist, settings.image_url_timeout_s, settings.image_url_max_bytes
    )
    api_keys = [k.strip().encode() for k in settings.api_keys.split(",") if k.strip()]

    @app.before_request
    def start_request() -> Response | None:
        g.began = time.perf_counter()
        g.request_id = sanitize_request_id(request.headers.get("X-Request-ID"))
        g.request_id_token = request_id_var.set(g.request_id)
        metrics.in_flight.inc()
        g.counted = True
        if api_keys and request.path.startswith("/v1") and not _authorized(api_keys):
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key; send 'Authorization: Bearer <key>'")
        return None

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("began", time.perf_counter())
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.duration.labels(route, request.method).observe(elapsed)
        _LOGGER.info(
            "request",
            extra={"fields": {"route": route, "method": request.method, "status": response.status_code,
                              "duration_ms": round(elapsed * 1000, 2)}},
        )  # fmt: skip
        return response

    @app.teardown_request
    def end_request(_exc: BaseException | None) -> None:
        if g.pop("counted", False):
            metrics.in_flight.dec()
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        code = error.code or 500
        status = _HTTP_STATUS_NAMES.get(code, "INTERNAL" if code >= 500 else "INVALID_ARGUMENT")
        response = jsonify({"error": {"code": code, "status": status, "message": error.description}})
        response.status_code = code
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        _LOGGER.exception("unhandled error")
        return error_response(ApiError(grpc.StatusCode.INTERNAL, "internal error; see the gateway log"))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        down = app.extensions["mmserve.upstreams"].not_serving()
        if down:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, f"not ready: {', '.join(down)} not serving")
        return jsonify({"status": "ready"})

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), mimetype="text/plain; version=0.0.4")

    document = openapi_document()

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)

    @app.get("/docs")
    def docs() -> Response:
        return Response(_SWAGGER_PAGE, mimetype="text/html")

    @app.get("/docs/static/<path:filename>")
    def docs_static(filename: str) -> Response:
        import swagger_ui_bundle

        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    app.register_blueprint(v1)
    return app


def _authorized(api_keys: list[bytes]) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    presented = token.strip().encode()
    # Compare against every key (constant time each) so timing reveals nothing about which matched.
    return any([hmac.compare_digest(presented, key) for key in api_keys])  # noqa: C419
