"""The Open Inference Protocol v2 (KServe/Triton) over REST, under /v2: health, server and model
metadata, and inference with JSON tensors or the binary tensor data extension.

Models and the v1 calls behind them come from services.common.inference_protocol (fusion's gRPC
front end uses the same); this module only carries tensors in and out of HTTP. Errors have the
protocol's shape, ``{"error": "<message>"}``, with the statuses of the rest of the API.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Any

import grpc
import numpy as np
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from gateway.api.shapes import BOOL, INT, STR, array, obj
from gateway.encoding import float_rows, json_response
from gateway.endpoints import endpoint, state
from gateway.errors import ApiError, from_http_exception, invalid
from gateway.upstreams import wait_all
from mmserve.v1 import common_pb2, fusion_pb2
from services.common import inference_protocol as oip
from services.common.errors import MmserveError

_LOGGER = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's JSON header size

blueprint = Blueprint("inference_protocol", __name__, url_prefix="/v2")


@blueprint.errorhandler(Exception)
def protocol_error(error: Exception) -> Response:
    """Every failure of a /v2 route (auth, limits, backends, bad tensors) in the protocol's shape."""
    if isinstance(error, MmserveError):
        error = ApiError(error.code, str(error))
    elif isinstance(error, HTTPException):
        error = from_http_exception(error, state().settings.max_body_bytes)
    elif not isinstance(error, ApiError):
        _LOGGER.exception("unhandled error")
        error = ApiError(grpc.StatusCode.INTERNAL, "internal error; the gateway log has the details")
    return json_response({"error": error.message}, error.http_status, error.headers)


# --- OpenAPI shapes ------------------------------------------------------------------------------

ERROR = obj({"error": STR}, ["error"], description="the Open Inference Protocol's error shape")
_ERRORS = {
    "400": "Invalid request: malformed JSON or tensors, unknown input or output, wrong datatype or shape",
    "401": "Missing or invalid API key",
    "404": "An unknown model or version",
    "413": "The request body is larger than the gateway's limit",
    "429": "A backend is overloaded; retry after the Retry-After header",
    "500": "Inference failed",
    "503": "A backend is unavailable; retry after the Retry-After header",
    "504": "A backend did not answer within the deadline",
}
ERRORS = {code: (description, ERROR) for code, description in _ERRORS.items()}
TENSOR_METADATA = obj({"name": STR, "datatype": STR, "shape": array(INT)}, ["name", "datatype", "shape"])
MODEL_METADATA = obj(
    {
        "name": STR,
        "versions": array(STR),
        "platform": STR,
        "inputs": array(TENSOR_METADATA),
        "outputs": array(TENSOR_METADATA),
    },
    ["name", "platform", "inputs", "outputs"],
)
MODEL_READY = obj({"name": STR, "ready": BOOL}, ["name", "ready"])
INFER_RESPONSE = obj(
    {
        "model_name": STR,
        "model_version": STR,
        "id": STR,
        "outputs": array(
            obj(
                {
                    "name": STR,
                    "datatype": STR,
                    "shape": array(INT),
                    "data": {"type": "array", "items": {}, "description": "row-major elements"},
                    "parameters": obj({"binary_data_size": INT}),
                },
                ["name", "datatype", "shape"],
            )
        ),
    },
    ["model_name", "outputs"],
)
INFER_DESCRIPTION = (
    'Body: `{"id"?, "parameters"?: {"binary_data_output": bool}, "inputs": [{"name", "datatype": '
    '"BYTES", "shape", "data" | "parameters": {"binary_data_size"}}], "outputs"?: [{"name", '
    '"parameters"?: {"binary_data": bool}}]}`. Text elements are UTF-8 strings; image elements are '
    "base64 in JSON, the file's bytes in binary data. Binary tensor data extension: send the JSON header's "
    f"size in `{HEADER_LENGTH}` and the inputs' raw data after it; outputs asked for as binary come back "
    f"as raw little-endian bytes after the JSON header, whose size is the response's `{HEADER_LENGTH}`. "
    "GET /v2/models/{name} describes each model's inputs and outputs."
)

# --- health and metadata -------------------------------------------------------------------------


@endpoint(
    blueprint, "GET", "/health/live", summary="Open Inference Protocol: the server is live",
    response=obj({"live": BOOL}, ["live"]), responses=ERRORS,
)  # fmt: skip
def server_live() -> Response:
    return json_response({"live": True})


_SERVER_READY = obj({"ready": BOOL}, ["ready"])


@endpoint(
    blueprint, "GET", "/health/ready",
    summary="Open Inference Protocol: the server can serve (at least one backend is SERVING)",
    description="As /readyz: 503 when no backend is serving.",
    response=_SERVER_READY,
    responses={**ERRORS, "503": ("No backend is SERVING", _SERVER_READY)},
)  # fmt: skip
def server_ready() -> Response:
    ready = any(status == "SERVING" for status in state().upstreams.states().values())
    return json_response({"ready": ready}, 200 if ready else 503, None if ready else {"Retry-After": "1"})


@endpoint(
    blueprint, "GET", "",
    summary="Open Inference Protocol: server metadata",
    response=obj({"name": STR, "version": STR, "extensions": array(STR)}, ["name", "version", "extensions"]),
    responses=ERRORS,
)  # fmt: skip
def server_metadata() -> Response:
    return json_response(
        {"name": oip.SERVER_NAME, "version": oip.server_version(), "extensions": list(oip.EXTENSIONS)}
    )


class _Catalogue:
    """This worker's view of the served models, refreshed when older than oip.CATALOGUE_TTL_S or
    when a name is not in it (a head added a moment ago is found at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, oip.Model] = {}
        self._fresh_until = 0.0

    def model(self, name: str) -> oip.Model:
        with self._lock:
            cached = self._models.get(name) if time.monotonic() < self._fresh_until else None
        if cached is not None:
            return cached
        models, failures = _ask_backends()
        if not failures:  # a partial view is used once, never kept
            with self._lock:
                self._models, self._fresh_until = models, time.monotonic() + oip.CATALOGUE_TTL_S
        return oip.find(models, name, failures)


def _ask_backends() -> tuple[dict[str, oip.Model], list[ApiError]]:
    """Every OIP model the encoders and fusion serve now (asked in parallel), and who failed."""
    upstreams = state().upstreams
    info = common_pb2.GetModelInfoRequest()
    calls = {
        "text": upstreams.start("text", "GetModelInfo", info),
        "vision": upstreams.start("vision", "GetModelInfo", info),
        "fusion": upstreams.start("fusion", "ListHeads", fusion_pb2.ListHeadsRequest()),
    }
    replies, failures = {}, []
    for service, call in calls.items():
        try:
            replies[service] = call.result()
        except ApiError as error:
            failures.append(error)
    heads = replies["fusion"].heads if "fusion" in replies else []
    return oip.catalogue(replies.get("text"), replies.get("vision"), heads), failures


def _model(name: str, version: str) -> oip.Model:
    catalogue = current_app.extensions.setdefault("mmserve.oip_catalogue", _Catalogue())
    model = catalogue.model(state().aliases.get(name, name))  # the aliases /v1 accepts, too
    model.check_version(version)
    return model


@endpoint(
    blueprint, "GET", "/models/<path:name>",
    summary="Open Inference Protocol: a model's metadata (inputs and outputs, datatypes and shapes)",
    description="Models are named as GET /v1/models and /v1/heads list them.",
    response=MODEL_METADATA, responses=ERRORS,
)  # fmt: skip
def model_metadata(name: str) -> Response:
    return json_response(_model(name, "").metadata())


@endpoint(
    blueprint, "GET", "/models/<path:name>/versions/<version>",
    summary="Open Inference Protocol: a model version's metadata (version 1 is the one served)",
    response=MODEL_METADATA, responses=ERRORS,
)  # fmt: skip
def model_version_metadata(name: str, version: str) -> Response:
    return json_response(_model(name, version).metadata())


@endpoint(
    blueprint, "GET", "/models/<path:name>/ready",
    summary="Open Inference Protocol: the model is served and its backend answers",
    response=MODEL_READY, responses=ERRORS,
)  # fmt: skip
def model_ready(name: str) -> Response:
    return json_response({"name": _model(name, "").name, "ready": True})


@endpoint(
    blueprint, "GET", "/models/<path:name>/versions/<version>/ready",
    summary="Open Inference Protocol: the model version is served and its backend answers",
    response=MODEL_READY, responses=ERRORS,
)  # fmt: skip
def model_version_ready(name: str, version: str) -> Response:
    return json_response({"name": _model(name, version).name, "ready": True})


# --- inference -----------------------------------------------------------------------------------


def _split_body() -> tuple[dict[str, Any], bytes]:
    """The JSON inference request and the binary data after it (binary tensor data extension)."""
    body = request.get_data(cache=False)
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        header, binary = body, b""
    else:
        if not length.isdigit() or int(length) > len(body):
            raise invalid(
                f"{HEADER_LENGTH} must be the JSON header's size, at most the body's {len(body)} bytes"
            )
        header, binary = body[: int(length)], body[int(length) :]
    try:
        document = json.loads(header)
    except ValueError as error:
        raise invalid(f"the inference request is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise invalid("the inference request must be a JSON object")
    return document, binary


def _flat(data: Any) -> list:
    """Row-major elements of JSON tensor data (flat or nested lists)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    return [element for item in data for element in _flat(item)]


def _json_elements(spec: oip.TensorSpec | None, name: str, data: Any) -> list[bytes]:
    elements = []
    for index, item in enumerate(_flat(data)):
        if not isinstance(item, str):
            raise invalid(f"input {name!r} element {index} must be a string (BYTES)")
        if spec is not None and spec.files:
            try:
                elements.append(base64.b64decode(item.partition(",")[2] or item, validate=True))
            except (binascii.Error, ValueError):
                raise invalid(
                    f"input {name!r} element {index} is not base64 (images in JSON are base64)"
                ) from None
        else:
            elements.append(item.encode())
    return elements


def _inputs(document: dict, binary: bytes, model: oip.Model) -> dict[str, tuple[str, list[bytes]]]:
    """Input name -> (datatype, elements), from JSON data or the binary data that follows."""
    specs = {spec.name: spec for spec in model.inputs}
    items = document.get("inputs")
    if not isinstance(items, list) or not items:
        raise invalid("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, tuple[str, list[bytes]]] = {}
    offset = 0
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid(f"'inputs[{position}]' must be an object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise invalid(f"'inputs[{position}]' needs a string 'name' and 'datatype'")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise invalid(f"input {name!r} needs 'shape', a list of integers")
        if name in inputs:
            raise invalid(f"input {name!r} is given twice")
        count = oip.element_count(shape, f"input {name!r}")
        parameters = item.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if datatype != oip.BYTES:
            elements: list[bytes] = []  # refused by the model's plan, which names the datatype it takes
        elif size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise invalid(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(binary)} bytes sent"
                )
            elements = oip.split_bytes(binary[offset : offset + size], count, f"input {name!r}")
            offset += size
        elif "data" in item:
            elements = _json_elements(specs.get(name), name, item["data"])
        else:
            raise invalid(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        if datatype == oip.BYTES and len(elements) != count:
            raise invalid(f"input {name!r} has {len(elements)} elements but shape {shape} needs {count}")
        inputs[name] = (datatype, elements)
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes of binary data follow the inputs that claim none")
    limit = state().settings.max_items_per_request
    for name, (_, elements) in inputs.items():
        if len(elements) > limit:
            raise invalid(f"too many elements in input {name!r}: {len(elements)} (limit {limit})")
    return inputs


def _requested(document: dict) -> tuple[list[str], dict[str, bool]]:
    """The outputs asked for, and whether each comes back as binary data."""
    parameters = document.get("parameters") or {}
    binary_default = (
        bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    )
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise invalid("'outputs' must be a list of objects with a 'name'")
    binary = {}
    for output in outputs:
        options = output.get("parameters") or {}
        binary[output["name"]] = (
            bool(options.get("binary_data", binary_default)) if isinstance(options, dict) else binary_default
        )
    return [o["name"] for o in outputs], binary | {"": binary_default}


def _json_data(tensor: oip.Tensor) -> list:
    if tensor.datatype == oip.BYTES:
        return [item.decode("utf-8", "replace") for item in tensor.data]  # type: ignore[union-attr]
    if tensor.datatype == oip.FP32:  # as /v1 answers floats: each reads back as the same float32
        return float_rows(np.asarray(tensor.data).reshape(-1))
    return np.asarray(tensor.data).reshape(-1).tolist()


def _infer(name: str, version: str) -> Response:
    model = _model(name, version)  # an unknown model is a 404 whatever the body
    document, binary = _split_body()
    inputs = _inputs(document, binary, model)
    names, binary_outputs = _requested(document)
    requested = model.requested_outputs(names)
    calls = model.plan(inputs, requested)
    upstreams = state().upstreams
    if len(calls) == 1:  # the common case: a blocking call costs half the CPU of a future
        replies = [upstreams.call(calls[0].task.service, calls[0].task.method, calls[0].request)]
    else:
        replies = wait_all([upstreams.start(c.task.service, c.task.method, c.request) for c in calls])

    outputs, chunks = [], []
    for tensor in model.answer(calls, replies, requested):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary_outputs.get(tensor.name, binary_outputs[""]):
            raw = oip.to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": oip.MODEL_VERSION, "outputs": outputs}
    if isinstance(document.get("id"), str) and document["id"]:
        body["id"] = document["id"]
    if not chunks:
        return json_response(body)
    header = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return Response(
        b"".join([header, *chunks]),
        headers={HEADER_LENGTH: str(len(header))},
        content_type="application/octet-stream",
    )


# The protocol's JSON inference request. The view parses it itself (the binary extension appends
# raw tensor bytes after the JSON, sized by the Inference-Header-Content-Length header).
_PARAMETERS = {"type": "object", "description": "protocol parameters, e.g. binary_data_output"}
INFER_REQUEST = obj(
    {
        "id": STR,
        "parameters": _PARAMETERS,
        "inputs": {
            **array(
                obj(
                    {
                        "name": STR,
                        "shape": array({"type": "integer", "minimum": 0}),
                        "datatype": STR,
                        "parameters": _PARAMETERS,
                        "data": {"description": "the tensor's elements, row-major (absent with binary data)"},
                    },
                    ["name", "shape", "datatype"],
                )
            ),
            "minItems": 1,
        },
        "outputs": array(obj({"name": STR, "parameters": _PARAMETERS}, ["name"])),
    },
    ["inputs"],
)


@endpoint(
    blueprint, "POST", "/models/<path:name>/infer",
    summary="Open Inference Protocol: inference (JSON tensors or the binary tensor data extension)",
    description=INFER_DESCRIPTION, response=INFER_RESPONSE, responses=ERRORS, documented_body=INFER_REQUEST,
)  # fmt: skip
def model_infer(name: str) -> Response:
    return _infer(name, "")


@endpoint(
    blueprint, "POST", "/models/<path:name>/versions/<version>/infer",
    summary="Open Inference Protocol: inference on a model version (version 1 is the one served)",
    description=INFER_DESCRIPTION, response=INFER_RESPONSE, responses=ERRORS, documented_body=INFER_REQUEST,
)  # fmt: skip
def model_version_infer(name: str, version: str) -> Response:
    return _infer(name, version)
