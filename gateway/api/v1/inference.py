"""Decisions and analyses: a head's predictions, image labels, named entities, image-text similarity."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response

from gateway.api.shapes import INT, LABEL_SCORE, MATRIX, NUM, STR, array, obj
from gateway.api.v1.embeddings import FUSED_INPUTS, IMAGE, TEXT, multimodal_inputs
from gateway.encoding import float_rows, json_response
from gateway.endpoints import endpoint, state
from gateway.errors import invalid
from gateway.schema import Integer, ListOf, Object, String
from mmserve.v1 import fusion_pb2, text_pb2, vision_pb2
from services.common.matrix import from_matrix
from services.common.settings import FusionSettings

blueprint = Blueprint("inference", __name__, url_prefix="/v1")


def _short(value: float) -> float:
    """A float32 score with at most 9 significant digits (enough to identify it), as for embeddings."""
    return float(f"{value:.9g}")


def _label_scores(pairs) -> list[dict]:
    return [{"label": p.label, "score": _short(p.score)} for p in pairs]


PREDICTION = obj(
    {
        "label": STR,
        "score": NUM,
        "scores": {
            "type": "object",
            "additionalProperties": NUM,
            "description": "probability of every class",
        },
    },
    ["label", "score", "scores"],
)


@endpoint(
    blueprint, "POST", "/predict",
    summary="A trained classification head's decision for text and/or image inputs",
    description="One prediction per input: the best label, its probability, and every class's probability.",
    body=FUSED_INPUTS, response=obj({"head": STR, "predictions": array(PREDICTION)}, ["head", "predictions"]),
)  # fmt: skip
def predict(body: dict) -> Response:
    request = fusion_pb2.PredictRequest(inputs=multimodal_inputs(body), head=body["head"])
    reply = state().upstreams.call("fusion", "Predict", request)
    labels = [s.label for s in reply.predictions[0].scores] if reply.predictions else []
    # One vectorised pass over every probability: [best score, class scores...] per input.
    rows = float_rows(
        np.array([[p.score, *(s.score for s in p.scores)] for p in reply.predictions], np.float32)
    )
    predictions = [
        {"label": p.label, "score": row[0], "scores": dict(zip(labels, row[1:], strict=True))}
        for p, row in zip(reply.predictions, rows, strict=True)
    ]
    return json_response({"head": reply.head, "predictions": predictions})


CLASSIFY = Object(
    {
        "images": ListOf(IMAGE),
        "top_k": Integer(1, 1000, None, "Labels per image (default: the service's, 5)."),
    },
    required=("images",),
    description="JSON, or multipart/form-data with files in the form field 'image' (and optionally 'top_k').",
)


@endpoint(
    blueprint, "POST", "/classify/image",
    summary="Top-k labels per image (the vision model's classifier)",
    body=CLASSIFY, uploads={"image": "images"},
    response=obj({"model": STR, "results": array(obj({"labels": array(LABEL_SCORE)}, ["labels"]))}, ["model", "results"]),
)  # fmt: skip
def classify_image(body: dict) -> Response:
    request = vision_pb2.ClassifyImageRequest(images=body["images"], top_k=body["top_k"] or 0)
    reply = state().upstreams.call("vision", "Classify", request)
    return json_response(
        {"model": reply.model_id, "results": [{"labels": _label_scores(r.labels)} for r in reply.results]}
    )


ENTITY = obj(
    {
        "text": STR,
        "label": STR,
        "start_char": {**INT, "description": "offset of the first character in the input text"},
        "end_char": {**INT, "description": "offset after the last character (exclusive)"},
        "score": {"type": "number", "nullable": True, "description": "confidence, where the model gives one"},
    },
    ["text", "label", "start_char", "end_char", "score"],
)


@endpoint(
    blueprint, "POST", "/ner",
    summary="Named entities with character offsets, per text",
    body=Object({"texts": ListOf(TEXT)}, required=("texts",), example={"texts": ["Angela Merkel visited Paris."]}),
    response=obj({"model": STR, "results": array(obj({"entities": array(ENTITY)}, ["entities"]))}, ["model", "results"]),
)  # fmt: skip
def ner(body: dict) -> Response:
    reply = state().upstreams.call(
        "text", "ExtractEntities", text_pb2.ExtractEntitiesRequest(texts=body["texts"])
    )
    results = [
        {
            "entities": [
                {
                    "text": e.text,
                    "label": e.label,
                    "start_char": e.start_char,
                    "end_char": e.end_char,
                    "score": _short(e.score) if e.HasField("score") else None,
                }
                for e in result.entities
            ]
        }
        for result in reply.results
    ]
    return json_response({"model": reply.model_id, "results": results})


def _texts_or_labels(body: dict, _where: str) -> None:
    if not body["texts"] and not body["candidate_labels"]:
        raise invalid("give 'texts' and/or 'candidate_labels' to compare the images with")


SIMILARITY = Object(
    {
        "images": ListOf(IMAGE),
        "texts": ListOf(TEXT, min_items=0),
        # The fusion service's default limit, declared once there; fusion enforces its configured one.
        "candidate_labels": ListOf(TEXT, max_items=FusionSettings.max_candidate_labels, min_items=0),
        "head": String("Alignment head; empty for the encoders' native shared space (a CLIP pair)."),
    },
    required=("images",),
    check=_texts_or_labels,
)


@endpoint(
    blueprint, "POST", "/similarity",
    summary="Texts x images cosine similarity and zero-shot labels",
    description="Scores in the encoders' shared space (a CLIP pair) or through an alignment head. "
    "FAILED_PRECONDITION (400) when the encoders share no space and no alignment head is named.",
    body=SIMILARITY,
    response=obj(
        {"space": STR, "scores": {**MATRIX, "description": "[len(texts)][len(images)] cosine similarities"},
         "zero_shot": {**array(array(LABEL_SCORE)), "description": "per image, best label first"}},
        ["space", "scores", "zero_shot"],
    ),
)  # fmt: skip
def similarity(body: dict) -> Response:
    request = fusion_pb2.SimilarityRequest(
        texts=body["texts"],
        images=body["images"],
        candidate_labels=body["candidate_labels"],
        head=body["head"],
    )
    reply = state().upstreams.call("fusion", "Similarity", request)
    return json_response(
        {
            "space": reply.space,
            "scores": float_rows(from_matrix(reply.scores)),
            "zero_shot": [_label_scores(r.labels) for r in reply.zero_shot],
        }
    )
