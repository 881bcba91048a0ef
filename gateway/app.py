"""The Flask application factory: wiring of routes, auth, request ids, deadlines, metrics and errors."""

from __future__ import annotations

import json
import logging
import time

import grpc
from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import HTTPException

from gateway.admission import InFlightBudget
from gateway.api import service
from gateway.api.v1 import BLUEPRINTS
from gateway.api.v2 import BLUEPRINTS as V2_BLUEPRINTS
from gateway.auth import authorized, parse_api_keys
from gateway.body_limit import BODY_ERROR, BodyLimit
from gateway.deferred import DeferredWork
from gateway.encoding import json_response
from gateway.endpoints import GatewayState, install_state, operations
from gateway.errors import ApiError, from_http_exception
from gateway.image_urls import ImageUrlFetcher
from gateway.metrics import GatewayMetrics
from gateway.model_names import parse_aliases
from gateway.openapi import openapi_document
from gateway.upstreams import Upstreams, request_deadline
from services.common import tracing
from services.common.logs import request_id_var, sanitize_request_id
from services.common.settings import GatewaySettings

_ACCESS_LOG = logging.getLogger("gateway.access")
_LOGGER = logging.getLogger(__name__)
_PROTECTED_PREFIXES = ("/v1/", "/v2")
# Open Inference Protocol probes stay open, like /healthz and /readyz.
_OPEN_PREFIX = "/v2/health/"


class _RequestRecord:
    """What the hooks keep about the request being answered (one object in ``g``, read once per hook)."""

    __slots__ = ("began", "request_id", "tokens", "admitted")

    def __init__(self, began: float, request_id: str, tokens: tuple) -> None:
        self.began = began
        self.request_id = request_id
        self.tokens = tokens  # to reset the request id and deadline context variables
        self.admitted: int | None = None  # bytes held in the in-flight budget


def _log_access(route: str, method: str, status: int, seconds: float, request_id: str, at: float) -> None:
    fields = {"route": route, "method": method, "status": status, "duration_ms": round(seconds * 1000, 2)}
    # Written after the response (gateway.deferred): the line carries its request's id and time.
    _ACCESS_LOG.info("request", extra={"fields": fields, "request_id": request_id, "event_time": at})


def create_app(settings: GatewaySettings | None = None, registry: CollectorRegistry | None = None) -> Flask:
    """A gateway app with its own gRPC channels; call it in each worker process, after the fork.

    ``registry`` receives the gateway's metrics (a private one by default, so several apps in
    one process never collide); under gunicorn they are shared across workers through
    prometheus-client's multiprocess mode instead.
    """
    settings = settings or GatewaySettings()
    tracing.configure("gateway")  # before the channels: their interceptors depend on it
    deferred = DeferredWork()  # metric updates and access-log lines, off the request thread
    metrics = GatewayMetrics(registry, deferred)
    budget = InFlightBudget(settings.max_in_flight_bytes)
    app = Flask(__name__, static_folder=None)
    tracing.instrument_flask(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    install_state(
        app,
        GatewayState(
            settings=settings,
            upstreams=Upstreams(settings, metrics),
            image_urls=ImageUrlFetcher(
                settings.image_url_allowlist,
                settings.image_url_timeout_s,
                settings.image_url_max_bytes,
                request_max_bytes=settings.image_url_request_max_bytes,
                request_timeout_s=settings.image_url_request_timeout_s,
            ),
            metrics=metrics,
            budget=budget,
            aliases=parse_aliases(settings.model_aliases),
        ),
    )
    api_keys = parse_api_keys(settings)

    @app.before_request
    def start_request() -> None:
        began = time.perf_counter()
        current = request._get_current_object()  # one proxy lookup, not one per attribute read
        request_id = sanitize_request_id(current.headers.get("X-Request-ID"))
        tokens = (
            request_id_var.set(request_id),
            request_deadline.set(time.monotonic() + settings.deadline_s),
        )
        metrics.request_started()
        g.record = record = _RequestRecord(began, request_id, tokens)
        tracing.set_request_id(request_id)
        body_error = current.environ.get(BODY_ERROR)
        if body_error is not None:  # too large or unreadable, found before the app saw the request
            raise body_error
        size = current.content_length or 0
        if not budget.admit(size):
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the gateway is busy with {budget.used} bytes of requests (budget "
                f"{settings.max_in_flight_bytes}); retry later",
            )
        record.admitted = size
        path = current.path
        protected = path.startswith(_PROTECTED_PREFIXES) and not path.startswith(_OPEN_PREFIX)
        if api_keys and protected and not authorized(api_keys):
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid API key; send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": 'Bearer realm="mmserve"'},
            )

    @app.after_request
    def finish_request(response: Response) -> Response:
        record = g.get("record")
        if record is None:  # before_request never ran (it failed itself): nothing to account for
            return response
        response.headers["X-Request-ID"] = record.request_id
        current = request._get_current_object()
        # The URL rule, never the raw path: bounded label values whatever clients send.
        route = current.url_rule.rule if current.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - record.began
        status = response.status_code
        metrics.request_answered(route, current.method, status, elapsed)
        if _ACCESS_LOG.isEnabledFor(logging.INFO):
            deferred.later(
                _log_access, route, current.method, status, elapsed, record.request_id, time.time()
            )
        return response

    @app.teardown_request
    def end_request(_exc: BaseException | None) -> None:
        record = g.pop("record", None)
        if record is None:
            return
        if record.admitted is not None:
            budget.release(record.admitted)
        metrics.request_ended()
        request_id_var.reset(record.tokens[0])
        request_deadline.reset(record.tokens[1])

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return json_response(error.body(), error.http_status, error.headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return api_error(from_http_exception(error, settings.max_body_bytes))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        _LOGGER.exception("unhandled error")
        return api_error(
            ApiError(grpc.StatusCode.INTERNAL, "internal error; the gateway log has the details")
        )

    app.register_blueprint(service.blueprint)
    for blueprint in (*BLUEPRINTS, *V2_BLUEPRINTS):
        app.register_blueprint(blueprint)
    app.extensions[service.OPENAPI_KEY] = json.dumps(openapi_document(operations(app), settings))
    # Oversized bodies get their 413 read by the client, chunked ones too (see gateway.body_limit).
    app.wsgi_app = BodyLimit(
        app.wsgi_app, settings.max_body_bytes, settings.deadline_s, settings.body_read_timeout_s
    )
    return app
