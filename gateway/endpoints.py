"""How routes are declared: one decorator registers a view with Flask, parses its request body
against its schema, and records the operation for the OpenAPI document.

    @endpoint(bp, "POST", "/embed/text", summary="...", body=EMBED_TEXT, response=EMBED_TEXT_RESPONSE)
    def embed_text(body: dict) -> Response: ...

Views receive the parsed body and never see malformed input; the decorator is the one place
requests are validated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, request
from flask.sansio.scaffold import Scaffold

from gateway.admission import InFlightBudget
from gateway.image_urls import ImageUrlFetcher
from gateway.metrics import GatewayMetrics
from gateway.schema import Context, Object, parse_form_body, parse_json_body
from gateway.upstreams import Upstreams
from services.common.settings import GatewaySettings

_STATE_KEY = "mmserve"


@dataclass(frozen=True)
class GatewayState:
    """What every request handler shares within one worker process."""

    settings: GatewaySettings
    upstreams: Upstreams
    image_urls: ImageUrlFetcher
    metrics: GatewayMetrics
    budget: InFlightBudget  # request bytes this worker handles at once

    def context(self) -> Context:
        return Context(
            self.settings.max_items_per_request,
            self.image_urls.for_request() if self.image_urls.enabled else None,
        )


def install_state(app: Flask, state: GatewayState) -> None:
    app.extensions[_STATE_KEY] = state


def state() -> GatewayState:
    return current_app.extensions[_STATE_KEY]


@dataclass(frozen=True)
class Operation:
    """A route as the OpenAPI document describes it."""

    method: str
    rule: str
    operation_id: str
    summary: str
    response: dict[str, Any]
    body: Object | None = None
    uploads: Mapping[str, str] = field(default_factory=dict)  # multipart form field -> body field
    response_type: str = "application/json"
    tag: str = ""
    description: str = ""
    # Responses in a shape of their own (HTTP status -> (description, schema)), instead of the Error shape.
    responses: Mapping[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def endpoint(
    scaffold: Scaffold,
    method: str,
    rule: str,
    *,
    summary: str,
    response: dict[str, Any],
    body: Object | None = None,
    uploads: Mapping[str, str] | None = None,
    response_type: str = "application/json",
    description: str = "",
    responses: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
) -> Callable:
    """Registers a view on an app or blueprint; views with a ``body`` schema get it parsed."""
    prefix = getattr(scaffold, "url_prefix", None) or ""

    def register(view: Callable) -> Callable:
        operation = Operation(
            method, prefix + rule, view.__name__, summary, response, body, dict(uploads or {}), response_type,
            scaffold.name, description, dict(responses or {}),
        )  # fmt: skip
        if body is None:
            handler = view
        else:

            @functools.wraps(view)
            def handler(**kwargs: Any):
                ctx = state().context()
                if operation.uploads and request.mimetype == "multipart/form-data":
                    parsed = parse_form_body(request, body, ctx, operation.uploads)
                else:
                    parsed = parse_json_body(request, body, ctx)
                return view(parsed, **kwargs)

        handler.operation = operation  # type: ignore[attr-defined]
        scaffold.add_url_rule(rule, view_func=handler, methods=[method])
        return handler

    return register


def operations(app: Flask) -> list[Operation]:
    """Every declared operation of the app, in registration order."""
    found = []
    for rule in app.url_map.iter_rules():
        operation = getattr(app.view_functions.get(rule.endpoint), "operation", None)
        if operation is not None:
            found.append(operation)
    return found
