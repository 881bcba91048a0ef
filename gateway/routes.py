"""The /v1 REST routes: parse and validate, call one backend over gRPC, shape the JSON answer."""

from __future__ import annotations

import base64

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request

from gateway.errors import invalid
from gateway.image_urls import ImageUrlFetcher
from gateway.upstreams import Upstreams
from gateway.validation import (
    check_text,
    decode_image,
    image_list,
    json_body,
    multimodal_inputs,
    optional_int,
    optional_string,
    string_list,
)
from mmserve.v1 import common_pb2, fusion_pb2, text_pb2, vision_pb2
from services.common.matrix import from_matrix
from services.common.settings import GatewaySettings

v1 = Blueprint("v1", __name__, url_prefix="/v1")


def _upstreams() -> Upstreams:
    return current_app.extensions["mmserve.upstreams"]


def _limit() -> int:
    settings: GatewaySettings = current_app.extensions["mmserve.settings"]
    return settings.max_items_per_request


def _fetch_url():
    """The image URL fetcher when URL fetching is enabled; None makes URLs a clear 400."""
    fetcher: ImageUrlFetcher = current_app.extensions["mmserve.image_urls"]
    return fetcher.fetch if fetcher.enabled else None


def _rows(matrix: common_pb2.Float32Matrix) -> list[list[float]]:
    return from_matrix(matrix).tolist()


def _embed_texts(texts: list[str]) -> text_pb2.EmbedTextResponse:
    return _upstreams().call("text", "Embed", text_pb2.EmbedTextRequest(texts=texts))


def _embed_images(images: list[bytes]) -> vision_pb2.EmbedImageResponse:
    return _upstreams().call("vision", "Embed", vision_pb2.EmbedImageRequest(images=images))


@v1.post("/embeddings")
def openai_embeddings() -> Response:
    """OpenAI-compatible embeddings; list items {"type": "image", "image": ...} embed images."""
    data = json_body(request)
    raw = data.get("input")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise invalid("'input' must be a non-empty string or list")
    if len(raw) > _limit():
        raise invalid(f"too many items in 'input': {len(raw)} (limit {_limit()})")
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'")
    dimensions = data.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise invalid("'dimensions' must be a positive integer")
    texts: list[tuple[int, str]] = []
    images: list[tuple[int, bytes]] = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            if not item.strip():
                raise invalid(f"'input[{index}]' is empty")
            check_text(item, f"input[{index}]")
            texts.append((index, item))
        elif isinstance(item, dict) and item.get("type") == "image":
            images.append((index, decode_image(item.get("image"), f"input[{index}].image", _fetch_url())))
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            if not item["text"].strip():
                raise invalid(f"'input[{index}].text' is empty")
            check_text(item["text"], f"input[{index}].text")
            texts.append((index, item["text"]))
        else:
            raise invalid(f"'input[{index}]' must be a string or {{\"type\": \"image\", \"image\": <base64>}}")
    vectors: list = [None] * len(raw)
    tokens = 0
    model = []
    if texts:
        reply = _embed_texts([t for _, t in texts])
        for (index, _), row in zip(texts, from_matrix(reply.embeddings), strict=True):
            vectors[index] = row
        tokens = int(sum(reply.token_counts))
        model.append(reply.model_id)
    if images:
        reply = _embed_images([b for _, b in images])
        for (index, _), row in zip(images, from_matrix(reply.embeddings), strict=True):
            vectors[index] = row
        model.append(reply.model_id)
    if dimensions is not None:
        vectors = [_truncate(v, dimensions) for v in vectors]
    items = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(np.ascontiguousarray(v, "<f4").tobytes()).decode()
            if encoding == "base64"
            else v.tolist(),
        }
        for index, v in enumerate(vectors)
    ]
    return jsonify(
        {
            "object": "list",
            "data": items,
            "model": optional_string(data, "model") or "+".join(model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _truncate(vector: np.ndarray, dimensions: int) -> np.ndarray:
    """OpenAI's ``dimensions``: the leading components, re-normalised."""
    if dimensions > len(vector):
        raise invalid(f"'dimensions' is {dimensions} but the model's embeddings have {len(vector)}")
    head = vector[:dimensions]
    return head / max(float(np.linalg.norm(head)), 1e-12)


@v1.post("/embed/text")
def embed_text() -> Response:
    texts = string_list(json_body(request), "texts", _limit())
    reply = _embed_texts(texts)
    return jsonify(
        {
            "model": reply.model_id,
            "embeddings": _rows(reply.embeddings),
            "token_counts": list(reply.token_counts),
            "truncated": list(reply.truncated),
        }
    )


def _request_images() -> list[bytes]:
    """Images from JSON (base64 / data URLs) or from a multipart upload (field 'image')."""
    if request.mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            raise invalid("upload at least one file in the form field 'image'")
        if len(files) > _limit():
            raise invalid(f"too many images: {len(files)} (limit {_limit()})")
        return [f.read() for f in files]
    return image_list(json_body(request), "images", _limit(), fetch_url=_fetch_url())


@v1.post("/embed/image")
def embed_image() -> Response:
    reply = _embed_images(_request_images())
    return jsonify({"model": reply.model_id, "embeddings": _rows(reply.embeddings)})


@v1.post("/classify/image")
def classify_image() -> Response:
    top_k = 5
    if request.mimetype == "multipart/form-data":
        top_k = request.form.get("top_k", type=int, default=5)
        if not 1 <= top_k <= 1000:
            raise invalid("'top_k' must be between 1 and 1000")
    else:
        top_k = optional_int(json_body(request), "top_k", 5, 1, 1000)
    images = _request_images()
    reply = _upstreams().call("vision", "Classify", vision_pb2.ClassifyImageRequest(images=images, top_k=top_k))
    return jsonify(
        {
            "model": reply.model_id,
            "results": [
                {"labels": [{"label": s.label, "score": s.score} for s in result.labels]} for result in reply.results
            ],
        }
    )


@v1.post("/ner")
def ner() -> Response:
    texts = string_list(json_body(request), "texts", _limit())
    reply = _upstreams().call("text", "ExtractEntities", text_pb2.ExtractEntitiesRequest(texts=texts))
    return jsonify(
        {
            "model": reply.model_id,
            "results": [
                {
                    "entities": [
                        {
                            "text": e.text,
                            "label": e.label,
                            "start_char": e.start_char,
                            "end_char": e.end_char,
                            "score": e.score if e.HasField("score") else None,
                        }
                        for e in result.entities
                    ]
                }
                for result in reply.results
            ],
        }
    )


def _fusion_inputs(data: dict) -> list[fusion_pb2.MultimodalInput]:
    return [fusion_pb2.MultimodalInput(text=t, image=i) for t, i in multimodal_inputs(data, _limit(), _fetch_url())]


def _head(data: dict) -> str:
    head = optional_string(data, "head")
    if not head:
        raise invalid("'head' is required; GET /v1/heads lists the served heads")
    return head


@v1.post("/embed")
def embed_fused() -> Response:
    data = json_body(request)
    request_pb = fusion_pb2.FusionEmbedRequest(inputs=_fusion_inputs(data), head=_head(data))
    reply = _upstreams().call("fusion", "Embed", request_pb)
    return jsonify({"head": reply.head, "embeddings": _rows(reply.embeddings)})


@v1.post("/predict")
def predict() -> Response:
    data = json_body(request)
    request_pb = fusion_pb2.PredictRequest(inputs=_fusion_inputs(data), head=_head(data))
    reply = _upstreams().call("fusion", "Predict", request_pb)
    return jsonify(
        {
            "head": reply.head,
            "predictions": [
                {"label": p.label, "score": p.score, "scores": {s.label: s.score for s in p.scores}}
                for p in reply.predictions
            ],
        }
    )


@v1.post("/similarity")
def similarity() -> Response:
    data = json_body(request)
    limit = _limit()
    request_pb = fusion_pb2.SimilarityRequest(
        texts=string_list(data, "texts", limit, required=False),
        images=image_list(data, "images", limit, fetch_url=_fetch_url()),
        candidate_labels=string_list(data, "candidate_labels", 256, required=False),
        head=optional_string(data, "head"),
    )
    if not request_pb.texts and not request_pb.candidate_labels:
        raise invalid("give 'texts' and/or 'candidate_labels' to compare the images with")
    reply = _upstreams().call("fusion", "Similarity", request_pb)
    return jsonify(
        {
            "space": reply.space,
            "scores": _rows(reply.scores),
            "zero_shot": [[{"label": s.label, "score": s.score} for s in r.labels] for r in reply.zero_shot],
        }
    )


def _model_info(info: common_pb2.ModelInfo) -> dict:
    return {
        "id": info.model_id,
        "object": "model",
        "modality": common_pb2.Modality.Name(info.modality).removeprefix("MODALITY_").lower(),
        "revision": info.revision,
        "embedding_dim": info.embedding_dim,
        "device": info.device,
        "dtype": info.dtype,
        "max_batch_size": info.max_batch_size,
        "max_input_tokens": info.max_input_tokens,
    }


@v1.get("/models")
def models() -> Response:
    upstreams = _upstreams()
    infos = [upstreams.call(s, "GetModelInfo", common_pb2.GetModelInfoRequest()) for s in ("text", "vision")]
    return jsonify({"object": "list", "data": [_model_info(i) for i in infos]})


@v1.get("/heads")
def heads() -> Response:
    reply = _upstreams().call("fusion", "ListHeads", fusion_pb2.ListHeadsRequest())
    return jsonify(
        {
            "heads": [
                {
                    "name": h.name,
                    "task": h.task,
                    "strategy": h.strategy,
                    "labels": list(h.labels),
                    "text_model_id": h.text_model_id,
                    "vision_model_id": h.vision_model_id,
                    "embedding_dim": h.embedding_dim,
                }
                for h in reply.heads
            ]
        }
    )
