"""How routes are declared: one decorator registers a view with Flask, parses its request body
against its schema, and records the operation for the OpenAPI document.

    @endpoint(bp, "POST", "/embed/text", summary="...", body=EMBED_TEXT, response=EMBED_TEXT_RESPONSE)
    def embed_text(body: dict) -> Response: ...

Views receive the parsed body and never see malformed input; the decorator is the one place
requests are validated.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, request
from flask.sansio.scaffold import Scaffold

from gateway.admission import InFlightBudget
from gateway.errors import ApiError
from gateway.image_urls import ImageUrlFetcher
from gateway.metrics import GatewayMetrics
from gateway.schema import Context, Object, parse_form_body, parse_json_body
from gateway.upstreams import READY_TIMEOUT_S, Upstreams, request_deadline
from mmserve.v1 import common_pb2
from services.common.settings import GatewaySettings

_STATE_KEY = "mmserve"
ENCODERS = ("text", "vision", "audio")


class ServedModels:
    """What the encoders serve (GetModelInfo), asked the first time it is needed and kept; asked
    again, at most every ``retry_s``, while an encoder has not answered. The OpenAPI document and
    the parser read it: OpenAI's ``dimensions`` may not exceed the smallest embedding width
    whatever the inputs' modality, and operations a missing model would refuse are left out."""

    def __init__(self, upstreams: Upstreams, retry_s: float = 5.0, refresh_s: float = 30.0) -> None:
        self._upstreams = upstreams
        self._retry_s = retry_s
        self._refresh_s = refresh_s  # a rolling update may change an encoder's model
        self._infos: dict[str, common_pb2.ModelInfo] = {}
        self._next_ask = 0.0
        self._next_refresh = 0.0
        self._embedding_models: dict[str, str] = {}  # rebuilt when an answer arrives, read per request
        self._lock = threading.Lock()

    def embedding_models(self, ask_now: bool = False) -> dict[str, str]:
        """Each served embedding model's id -> the modality it embeds (text, image, audio).
        ``ask_now``: ask the encoders again first (at most every ``retry_s``), for a name not found."""
        if ask_now and time.monotonic() >= self._next_ask:
            self._ask(list(ENCODERS))
        else:
            self._refresh()
        return self._embedding_models

    def smallest_width(self) -> int | None:
        """The smallest embedding width served (None: no encoder has answered yet)."""
        self._refresh()
        return min((i.embedding_dim for i in self._infos.values() if i.embedding_dim > 0), default=None)

    def tasks(self, encoder: str) -> frozenset[str] | None:
        """The tasks ``encoder`` runs (embed, ner, classify, ...); None while it has not answered."""
        self._refresh()
        info = self._infos.get(encoder)
        return None if info is None else frozenset(t.task for t in info.tasks)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._ask(list(ENCODERS))
        elif len(self._infos) < len(ENCODERS) and now >= self._next_ask:
            self._ask([name for name in ENCODERS if name not in self._infos])

    def _ask(self, names: list[str]) -> None:
        # One thread asks. While a refresh is under way the others go on with what is known; with
        # nothing known yet (a worker's first requests) they wait for the answer, then reuse it.
        knows_all = all(name in self._infos for name in names)
        if not self._lock.acquire(blocking=not knows_all):
            return
        try:
            now = time.monotonic()
            if not knows_all and now < self._next_ask:
                return  # answered while this thread waited
            self._next_ask = now + self._retry_s
            if len(names) == len(ENCODERS):
                self._next_refresh = now + self._refresh_s
            # A deadline of its own: a request's budget is not spent waiting on an absent encoder.
            token = request_deadline.set(now + READY_TIMEOUT_S)
            try:
                calls = {name: self._upstreams.start(name, "GetModelInfo", common_pb2.GetModelInfoRequest())
                         for name in names}  # fmt: skip
            finally:
                request_deadline.reset(token)
            for name, call in calls.items():
                try:
                    self._infos[name] = call.result()
                except ApiError:  # down or slow: the last answer stands, asked again later
                    continue
            self._embedding_models = {
                info.model_id: common_pb2.Modality.Name(info.modality).removeprefix("MODALITY_").lower()
                for info in self._infos.values()
                if info.embedding_dim > 0
            }
        finally:
            self._lock.release()


@dataclass(frozen=True)
class GatewayState:
    """What every request handler shares within one worker process."""

    settings: GatewaySettings
    upstreams: Upstreams
    image_urls: ImageUrlFetcher
    metrics: GatewayMetrics
    budget: InFlightBudget  # request bytes this worker handles at once
    served: ServedModels = field(default=None)  # type: ignore[assignment]  # None: made from upstreams
    aliases: Mapping[str, str] = field(default_factory=dict)  # a client's model name -> a served id

    def __post_init__(self) -> None:
        if self.served is None:
            object.__setattr__(self, "served", ServedModels(self.upstreams))

    def context(self) -> Context:
        return Context(
            self.settings.max_items_per_request,
            self.image_urls.for_request() if self.image_urls.enabled else None,
            max_dimensions=self.served.smallest_width,
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
    # (encoder, task) the operation cannot succeed without: left out of the document when the
    # encoder answers that it does not run that task.
    requires: tuple[str, str] | None = None
    # A JSON body the view parses itself (a protocol's own format), described for the document only.
    documented_body: dict[str, Any] | None = None


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
    requires: tuple[str, str] | None = None,
    documented_body: dict[str, Any] | None = None,
) -> Callable:
    """Registers a view on an app or blueprint; views with a ``body`` schema get it parsed."""
    prefix = getattr(scaffold, "url_prefix", None) or ""

    def register(view: Callable) -> Callable:
        operation = Operation(
            method, prefix + rule, view.__name__, summary, response, body, dict(uploads or {}), response_type,
            scaffold.name, description, dict(responses or {}), requires, documented_body,
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
