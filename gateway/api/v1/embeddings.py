"""Embeddings: OpenAI-compatible ``/v1/embeddings`` (images as an extension) and the native
``/v1/embed/text``, ``/v1/embed/image`` and fused ``/v1/embed`` routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Blueprint, Response

from gateway.api.shapes import BOOL, ENCODING_FORMAT, INT, STR, VECTOR, VECTORS, array, obj
from gateway.api.v1.audio import AUDIO
from gateway.api.v1.video import VIDEO
from gateway.encoding import json_response, vector_rows
from gateway.endpoints import endpoint, state
from gateway.errors import ApiError, invalid
from gateway.model_names import check_embedding_model
from gateway.schema import (
    TEXT_PATTERN,
    Context,
    Field,
    Image,
    Integer,
    ListOf,
    NumberMap,
    Object,
    String,
    Text,
    null_only,
)
from gateway.upstreams import wait_all
from mmserve.v1 import audio_pb2, fusion_pb2, text_pb2, vision_pb2
from services.common.matrix import from_matrix

blueprint = Blueprint("embeddings", __name__, url_prefix="/v1")

TEXT = Text()
IMAGE = Image()
_MEDIA = {"audio": AUDIO, "video": VIDEO}


@dataclass(frozen=True)
class EmbeddingInput(Field):
    """OpenAI's ``input``: a string or a list of them; as an extension, list items may be
    ``{"type": "image", "image": ...}``, ``{"type": "audio", "audio": ...}``, ``{"type": "video",
    "video": ...}`` (or ``{"type": "text", "text": ...}``)."""

    description: str = (
        'A text, or a list of texts; list items may also be {"type": "image", "image": <base64 or data URL>}, '
        '{"type": "audio", "audio": <base64>} or {"type": "video", "video": <base64>} (mmserve extension: '
        "texts go to the text encoder, images and videos to the vision encoder, audio to the audio encoder; "
        "order is kept)."
    )

    def parse(self, value: Any, where: str, ctx: Context) -> list[tuple[str, str | bytes]]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise invalid(f"'{where}' must be a string or a list")
        if not items:
            raise invalid(f"'{where}' must contain at least 1 item")
        if len(items) > ctx.max_items:
            raise invalid(f"too many items in '{where}': {len(items)} (limit {ctx.max_items})")
        parsed: list[tuple[str, str | bytes]] = []
        for index, item in enumerate(items):
            path = f"{where}[{index}]" if not isinstance(value, str) else where
            kind = item.get("type") if isinstance(item, dict) else None
            kind = kind if isinstance(kind, str) else None
            if isinstance(item, str):
                parsed.append(("text", TEXT.parse(item, path, ctx)))
            elif kind == "image":
                parsed.append(("image", IMAGE.parse(item.get("image"), f"{path}.image", ctx)))
            elif kind == "text":
                parsed.append(("text", TEXT.parse(item.get("text"), f"{path}.text", ctx)))
            elif kind in _MEDIA:
                parsed.append((kind, _MEDIA[kind].parse(item.get(kind), f"{path}.{kind}", ctx)))
            elif isinstance(item, int | list):
                raise invalid(f"'{path}': token arrays are not supported; send the text itself")
            else:
                raise invalid(
                    f'\'{path}\' must be a string or {{"type": "image"|"audio"|"video", "<type>": <base64>}}'
                )
        return parsed

    def openapi(self, ctx: Context) -> dict[str, Any]:
        item = {
            "oneOf": [
                TEXT.openapi(ctx),
                *(
                    obj(
                        {"type": {"type": "string", "enum": [kind]}, kind: field.openapi(ctx)}, ["type", kind]
                    )
                    for kind, field in {"image": IMAGE, "text": TEXT, **_MEDIA}.items()
                ),
            ]
        }
        listed = {"type": "array", "items": item, "minItems": 1, "maxItems": ctx.max_items}
        return {"oneOf": [TEXT.openapi(ctx), listed], "description": self.description}


# What OpenAI's ``dimensions`` may be without the served models: only the smallest width is sure.
_UNKNOWN_WIDTH = 1_000_000


@dataclass(frozen=True)
class Dimensions(Integer):
    """OpenAI's ``dimensions``: at most the smallest embedding width served (GET /v1/models), so
    any input's vector has that many components."""

    def _high(self, ctx: Context) -> int:
        width = ctx.max_dimensions() if ctx.max_dimensions is not None else None
        return width or self.high


OPENAI_REQUEST = Object(
    {
        "input": EmbeddingInput(),
        "model": String(
            "A served embedding model's id or a declared alias (GET /v1/models lists both); the model "
            "of each input's modality, joined by '+', for mixed inputs. Left out: the served encoders "
            "answer. Any other name: 404 with reason model_not_found."
        ),
        "encoding_format": ENCODING_FORMAT,
        "dimensions": Dimensions(
            1,
            _UNKNOWN_WIDTH,
            None,
            "Keep the first N components, re-normalised to unit length; at most the smallest "
            "embedding width served (GET /v1/models), so it fits every modality.",
        ),  # fmt: skip
    },
    required=("input",),
    example={"input": ["a photo of a cat", "a dog"], "model": "all-MiniLM-L6-v2"},
)
OPENAI_RESPONSE = obj(
    {
        "object": {"type": "string", "enum": ["list"]},
        "data": array(
            obj({"object": {"type": "string", "enum": ["embedding"]}, "index": INT, "embedding": VECTOR},
                ["object", "index", "embedding"])
        ),
        "model": STR,
        "usage": obj({"prompt_tokens": INT, "total_tokens": INT}, ["prompt_tokens", "total_tokens"]),
    },
    ["object", "data", "model", "usage"],
)  # fmt: skip


@endpoint(
    blueprint, "POST", "/embeddings",
    summary="OpenAI-compatible embeddings (texts; images, audio and video as {type: ...} items)",
    description="Works with OpenAI's clients unchanged (they ask for base64 by default). "
    "`usage` counts the tokens the text encoder saw; images, audio and video count no tokens. "
    "Each modality has its own model and dimension (GET /v1/models).",
    body=OPENAI_REQUEST, response=OPENAI_RESPONSE,
)  # fmt: skip
def openai_embeddings(body: dict) -> Response:
    items: list[tuple[str, Any]] = body["input"]
    upstreams = state().upstreams
    groups: dict[str, list[int]] = {}
    for index, (kind, _) in enumerate(items):
        groups.setdefault(kind, []).append(index)
    if body["model"]:
        _check_model(body["model"], {_MODALITY_OF[kind] for kind in groups})
    requests = {
        kind: call([items[i][1] for i in groups[kind]])
        for kind, call in _EMBED_CALLS.items()
        if kind in groups
    }
    if len(requests) == 1:  # the common case: a blocking call costs half the CPU of a future
        ((kind, (service, method, request)),) = requests.items()
        replies = {kind: upstreams.call(service, method, request)}
    else:  # the modalities go to different encoders (or methods): ask them all at once
        calls = [upstreams.start(*call) for call in requests.values()]
        replies = dict(zip(requests, wait_all(calls), strict=True))

    vectors: list[Any] = [None] * len(items)
    models = []
    for kind, reply in replies.items():
        matrix = from_matrix(reply.embeddings)
        if body["dimensions"] is not None:
            matrix = _leading_components(matrix, body["dimensions"])
        for index, row in zip(groups[kind], vector_rows(matrix, body["encoding_format"]), strict=True):
            vectors[index] = row
        models.append(reply.model_id)
    tokens = int(sum(replies["text"].token_counts)) if "text" in replies else 0
    return json_response(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": "+".join(models),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# The modality whose encoder embeds each item kind (a video's frames go through the image model).
_MODALITY_OF = {"text": "text", "image": "image", "video": "image", "audio": "audio"}


def _check_model(requested: str, modalities: set[str]) -> None:
    """A name the served models answer to; known names are checked against what the gateway last
    heard, an unknown one after asking the encoders again (a model deployed a moment ago)."""
    gateway = state()
    served = gateway.served.embedding_models()
    if not served:
        return  # no encoder has answered yet: the call itself says whether they serve
    try:
        check_embedding_model(requested, gateway.aliases, served, modalities)
    except ApiError as error:
        if error.http_status != 404:
            raise
        check_embedding_model(
            requested, gateway.aliases, gateway.served.embedding_models(ask_now=True), modalities
        )


# Each item kind's embedding call: inputs -> (service, method, request).
_EMBED_CALLS = {
    "text": lambda texts: ("text", "Embed", text_pb2.EmbedTextRequest(texts=texts)),
    "image": lambda images: ("vision", "Embed", vision_pb2.EmbedImageRequest(images=images)),
    "audio": lambda clips: ("audio", "Embed", audio_pb2.EmbedAudioRequest(clips=clips)),
    "video": lambda videos: ("vision", "EmbedVideo", vision_pb2.EmbedVideoRequest(videos=videos)),
}


def _leading_components(matrix: np.ndarray, dimensions: int) -> np.ndarray:
    """OpenAI's ``dimensions``: the first components of each vector, re-normalised."""
    if dimensions > matrix.shape[1]:
        raise invalid(f"'dimensions' is {dimensions} but the model's embeddings have {matrix.shape[1]}")
    head = matrix[:, :dimensions]
    return head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)


EMBED_TEXT = Object(
    {"texts": ListOf(TEXT), "encoding_format": ENCODING_FORMAT},
    required=("texts",),
    example={"texts": ["a photo of a cat", "stock markets fell sharply"]},
)
EMBED_TEXT_RESPONSE = obj(
    {
        "model": STR,
        "embeddings": VECTORS,
        "token_counts": {**array(INT), "description": "tokens the model saw per text, after truncation"},
        "truncated": {**array(BOOL), "description": "true where a text was cut to the model's limit"},
    },
    ["model", "embeddings", "token_counts", "truncated"],
)


@endpoint(
    blueprint, "POST", "/embed/text",
    summary="Text embeddings (one L2-normalised vector per text)",
    body=EMBED_TEXT, response=EMBED_TEXT_RESPONSE,
)  # fmt: skip
def embed_text(body: dict) -> Response:
    reply = state().upstreams.call("text", "Embed", text_pb2.EmbedTextRequest(texts=body["texts"]))
    return json_response(
        {
            "model": reply.model_id,
            "embeddings": vector_rows(from_matrix(reply.embeddings), body["encoding_format"]),
            "token_counts": list(reply.token_counts),
            "truncated": list(reply.truncated),
        }
    )


EMBED_IMAGE = Object(
    {"images": ListOf(IMAGE), "encoding_format": ENCODING_FORMAT},
    required=("images",),
    description="JSON, or multipart/form-data with one or more files in the form field 'image'.",
)
EMBED_IMAGE_RESPONSE = obj({"model": STR, "embeddings": VECTORS}, ["model", "embeddings"])


@endpoint(
    blueprint, "POST", "/embed/image",
    summary="Image embeddings (JSON base64 / data URLs, or a multipart upload)",
    body=EMBED_IMAGE, response=EMBED_IMAGE_RESPONSE, uploads={"image": "images"},
)  # fmt: skip
def embed_image(body: dict) -> Response:
    reply = state().upstreams.call("vision", "Embed", vision_pb2.EmbedImageRequest(images=body["images"]))
    return json_response(
        {
            "model": reply.model_id,
            "embeddings": vector_rows(from_matrix(reply.embeddings), body["encoding_format"]),
        }
    )


# The fields of one fused input, one per modality (fusion.proto's MultimodalInput).
_INPUT_FIELDS = ("text", "image", "audio", "features")
# Most features one input may carry (a head reads far fewer; fusion checks its own).
MAX_FEATURES = 4096


def _one_input_shorthand(raw: dict) -> dict:
    """``{"text", "image", "audio", "features", ...}`` is shorthand for ``{"inputs": [{...}], ...}``."""
    inline = any(raw.get(key) is not None for key in _INPUT_FIELDS)
    if raw.get("inputs") is not None:
        if inline:
            raise invalid("give either 'inputs' or one input inline (text, image, audio, features), not both")
        return raw
    if not inline:
        raise invalid(
            "'inputs' is required (or one input inline as 'text', 'image', 'audio' and/or 'features')"
        )
    # Moved, not copied: media are decoded once, as part of 'inputs'.
    rest = {key: value for key, value in raw.items() if key not in _INPUT_FIELDS}
    return {**rest, "inputs": [{key: raw.get(key) for key in _INPUT_FIELDS}]}


@dataclass(frozen=True)
class OptionalText(Field):
    """A text that may be missing, null or blank (then the item has no text)."""

    description: str = "the item's text (optional)"

    def parse(self, value: Any, where: str, ctx: Context) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return TEXT.parse(value, where, ctx)

    nullable = True

    def openapi(self, ctx: Context) -> dict[str, Any]:
        # Blank (whitespace only) means "no text"; otherwise what Text accepts.
        return {"type": "string", "pattern": f"^\\s*$|{TEXT_PATTERN}", "description": self.description}


@dataclass(frozen=True)
class OptionalImage(Field):
    description: str = "the item's image (optional): " + IMAGE.description
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> bytes | None:
        return None if value is None else IMAGE.parse(value, where, ctx)

    def openapi(self, ctx: Context) -> dict[str, Any]:
        return {**IMAGE.openapi(ctx), "description": self.description}


@dataclass(frozen=True)
class OptionalAudio(Field):
    description: str = "the item's audio (optional): " + AUDIO.description
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> bytes | None:
        return None if value is None else AUDIO.parse(value, where, ctx)

    def openapi(self, ctx: Context) -> dict[str, Any]:
        return {**AUDIO.openapi(ctx), "description": self.description}


@dataclass(frozen=True)
class OptionalFeatures(NumberMap):
    max_items: int = MAX_FEATURES
    description: str = (
        "the item's tabular features (optional), for heads that read them: every feature name the "
        "head lists (GET /v1/heads) with a finite number, and no other"
    )
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> dict[str, float] | None:
        return None if value is None else super().parse(value, where, ctx)


FEATURES = OptionalFeatures()


def _has_a_modality(ctx: Context) -> dict[str, Any]:
    """JSON Schema for _some_modality: a non-blank text, an image, audio or features (any of them)."""
    carried = {"text": TEXT.openapi(ctx), "image": IMAGE.openapi(ctx), "audio": AUDIO.openapi(ctx)}
    carried["features"] = FEATURES.openapi(ctx)
    return {"anyOf": [{"required": [key], "properties": {key: schema}} for key, schema in carried.items()]}


def _some_modality(item: dict, where: str) -> None:
    if all(item[key] is None for key in _INPUT_FIELDS):
        raise invalid(f"'{where}' needs a text, an image, audio or features (any of them)")


def _inputs_or_inline(ctx: Context) -> dict[str, Any]:
    """JSON Schema for _one_input_shorthand: 'inputs', or one input inline, never both."""
    inline_absent = {key: null_only("object" if key == "features" else "string") for key in _INPUT_FIELDS}
    return {
        "oneOf": [
            {"required": ["inputs"], "properties": {"inputs": {"type": "array"}, **inline_absent}},
            {"properties": {"inputs": null_only("array")}, **_has_a_modality(ctx)},
        ]
    }


# A small real PNG, so the documented examples are requests the API answers.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGO8IyfHgA0wYRUdtBIA4FYBKCgCg6AAAAAASUVORK5CYII="
)
MULTIMODAL_INPUT = Object(
    {"text": OptionalText(), "image": OptionalImage(), "audio": OptionalAudio(), "features": FEATURES},
    check=_some_modality,
    rules=_has_a_modality,
    description="one item: any of a text, an image, audio and features (those the head reads)",
)
FUSED_INPUTS = Object(
    {
        "inputs": ListOf(MULTIMODAL_INPUT, null_is_missing=True),
        "head": Text("Name of a served head (GET /v1/heads)."),
        "text": OptionalText("shorthand for one input: its text"),
        "image": OptionalImage(),
        "audio": OptionalAudio(),
        "features": FEATURES,
    },
    required=("head",),
    prepare=_one_input_shorthand,
    rules=_inputs_or_inline,
    description="'inputs', or one input given inline as 'text', 'image', 'audio' and/or 'features' (not both).",
)


def multimodal_inputs(body: dict) -> list[fusion_pb2.MultimodalInput]:
    inputs = []
    for item in body["inputs"]:
        features = fusion_pb2.Features(values=item["features"]) if item["features"] is not None else None
        inputs.append(
            fusion_pb2.MultimodalInput(
                text=item["text"], image=item["image"], audio=item["audio"], features=features
            )
        )
    return inputs


EMBED_FUSED = Object(
    {**FUSED_INPUTS.fields, "encoding_format": ENCODING_FORMAT},
    required=FUSED_INPUTS.required,
    prepare=_one_input_shorthand,
    rules=_inputs_or_inline,
    description=FUSED_INPUTS.description,
    example={"inputs": [{"text": "a red circle", "image": EXAMPLE_PNG}], "head": "match"},
)


@endpoint(
    blueprint, "POST", "/embed",
    summary="Fused embeddings (text, image, audio, features) through a trained head's fusion layer",
    body=EMBED_FUSED, response=obj({"head": STR, "embeddings": VECTORS}, ["head", "embeddings"]),
)  # fmt: skip
def embed_fused(body: dict) -> Response:
    request = fusion_pb2.FusionEmbedRequest(inputs=multimodal_inputs(body), head=body["head"])
    reply = state().upstreams.call("fusion", "Embed", request)
    return json_response(
        {
            "head": reply.head,
            "embeddings": vector_rows(from_matrix(reply.embeddings), body["encoding_format"]),
        }
    )
