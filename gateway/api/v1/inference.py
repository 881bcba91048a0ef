"""Decisions and analyses: a head's predictions, image labels, named entities, image-text similarity."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response

from gateway.api.shapes import INT, LABEL_SCORE, MATRIX, NUM, STR, array, obj
from gateway.api.v1.embeddings import EXAMPLE_PNG, FUSED_INPUTS, IMAGE, TEXT, multimodal_inputs
from gateway.encoding import float_rows, json_response
from gateway.endpoints import endpoint, state
from gateway.errors import invalid
from gateway.schema import Boolean, Context, Integer, ListOf, Object, String
from mmserve.v1 import common_pb2, fusion_pb2, text_pb2, vision_pb2
from services.common.matrix import from_matrix
from services.common.settings import FusionSettings

blueprint = Blueprint("inference", __name__, url_prefix="/v1")


def _short(value: float) -> float:
    """A float32 score with at most 9 significant digits (enough to identify it), as for embeddings."""
    return float(f"{value:.9g}")


def _label_scores(pairs) -> list[dict]:
    return [{"label": p.label, "score": _short(p.score)} for p in pairs]


_SCORES = {"type": "object", "additionalProperties": NUM, "description": "probability of every class"}
CLASS_ANSWER = obj({"label": STR, "score": NUM, "scores": _SCORES}, ["label", "score", "scores"])
# The modalities a fused input may carry (fusion.proto's MultimodalInput fields).
_MODALITY_NAMES = {
    common_pb2.MODALITY_TEXT: "text",
    common_pb2.MODALITY_IMAGE: "image",
    common_pb2.MODALITY_AUDIO: "audio",
    common_pb2.MODALITY_FEATURES: "features",
}
_COMMON = {
    "modalities": {
        **array({"type": "string", "enum": list(_MODALITY_NAMES.values())}),
        "description": "the modalities this prediction rests on: those the input carries that the head reads",
    },
    "attention": {
        "type": "object",
        "properties": {"cls": NUM},
        "required": ["cls"],
        "additionalProperties": NUM,
        "description": "with explain (attention heads): how the [CLS] token attends to itself and to each "
        "modality the head fuses (text, image, audio, features) in the last layer; sums to 1",
    },
}
_VALUES = {
    "type": "object",
    "additionalProperties": NUM,
    "description": "each regression target's value, in the target's units",
}
PREDICTION = {
    "oneOf": [
        obj(
            {**CLASS_ANSWER["properties"], **_COMMON},
            ["label", "score", "scores", "modalities"],
            title="classification head",
            additionalProperties=False,
        ),
        obj({"values": _VALUES, **_COMMON}, ["values", "modalities"], title="regression head", additionalProperties=False),
        obj(
            {
                "tasks": {"type": "object", "additionalProperties": CLASS_ANSWER,
                          "description": "each classification task's answer"},
                "values": {**_VALUES, "description": "each regression task's value"},
                **_COMMON,
            },
            ["tasks", "values", "modalities"],
            title="multi-task head",
            additionalProperties=False,
        ),
    ]
}  # fmt: skip
PREDICT = Object(
    {
        **FUSED_INPUTS.fields,
        "explain": Boolean(False, "Also return an attention head's [CLS] attention weights per input."),
    },
    required=FUSED_INPUTS.required,
    prepare=FUSED_INPUTS.prepare,
    rules=FUSED_INPUTS.rules,
    description=FUSED_INPUTS.description,
    example={"inputs": [{"text": "a red circle", "image": EXAMPLE_PNG}], "head": "match"},
)


def _class_answers(predictions) -> list[dict]:
    """Label, score and class scores of each prediction, in one vectorised pass over the floats."""
    labels = [s.label for s in predictions[0].scores] if predictions else []
    floats = float_rows(np.array([[p.score, *(s.score for s in p.scores)] for p in predictions], np.float32))
    return [
        {"label": p.label, "score": row[0], "scores": dict(zip(labels, row[1:], strict=True))}
        for p, row in zip(predictions, floats, strict=True)
    ]


_ATTENTION_ORDER = ("cls", *_MODALITY_NAMES.values())


def _cls_first(item: tuple[str, float]) -> int:
    """[CLS], then the modalities in fusion order."""
    return _ATTENTION_ORDER.index(item[0]) if item[0] in _ATTENTION_ORDER else len(_ATTENTION_ORDER)


def _prediction(p: fusion_pb2.Prediction, answer: dict | None) -> dict:
    out: dict = dict(answer) if answer is not None else {}
    if answer is None:
        out["values"] = {name: float(value) for name, value in p.values.items()}
    if p.tasks:
        out["tasks"] = {name: _class_answers([task])[0] for name, task in p.tasks.items()}
    out["modalities"] = [_MODALITY_NAMES.get(m, "unspecified") for m in p.modalities]
    if p.attention:
        out["attention"] = {key: _short(value) for key, value in sorted(p.attention.items(), key=_cls_first)}
    return out


@endpoint(
    blueprint, "POST", "/predict",
    summary="A trained head's decision for inputs of text, image, audio and/or features",
    description="One prediction per input, shaped by the head's task (GET /v1/heads): a classification "
    "head gives the best label, its calibrated probability and every class's probability; a regression head "
    "gives `values`, one number per target in the target's units; a multi-task head gives `tasks` (each "
    "classification task's answer) and `values` (each regression task's). Every prediction lists the "
    "`modalities` it rests on. Each input carries any of `text`, `image`, `audio` (base64) and `features` "
    "(name -> number: every feature the head lists, no other); the head reads those it was trained on. "
    "A head whose missing-modality policy is `refuse` answers an input lacking "
    "one of its modalities with 400 naming the input and the modality. `explain: true` (attention heads "
    "only) adds each input's attention weights.",
    body=PREDICT, response=obj({"head": STR, "predictions": array(PREDICTION)}, ["head", "predictions"]),
)  # fmt: skip
def predict(body: dict) -> Response:
    request = fusion_pb2.PredictRequest(
        inputs=multimodal_inputs(body), head=body["head"], explain=body["explain"]
    )
    reply = state().upstreams.call("fusion", "Predict", request)
    classified = [p for p in reply.predictions if p.scores]
    answers = iter(_class_answers(classified)) if classified else iter(())
    predictions = [_prediction(p, next(answers) if p.scores else None) for p in reply.predictions]
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


def _some_texts_or_labels(ctx: Context) -> dict[str, Any]:
    """JSON Schema for _texts_or_labels."""
    some = {"type": "array", "minItems": 1}
    return {
        "anyOf": [
            {"required": ["texts"], "properties": {"texts": some}},
            {"required": ["candidate_labels"], "properties": {"candidate_labels": some}},
        ]
    }


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
    rules=_some_texts_or_labels,
    # Names the demo alignment head (make train-demo), as the fused examples name its "match" head:
    # without a head only a CLIP pair of encoders can answer.
    example={"images": [EXAMPLE_PNG], "candidate_labels": ["a red square", "a blue circle"], "head": "align"},
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
