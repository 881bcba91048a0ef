"""Text classification with the text service's fine-tuned classifier (MMSERVE_TEXT_CLASSIFIER_MODEL):
``/v1/classify/text`` for batches with top-k labels, and the classic one-text contract
``/text-classification`` that inference servers and model cards use."""

from __future__ import annotations

from flask import Blueprint, Response

from gateway.api.shapes import LABEL_SCORE, NUM, STR, array, obj
from gateway.api.v1.embeddings import TEXT
from gateway.encoding import json_response, short_float
from gateway.endpoints import endpoint, state
from gateway.schema import Integer, ListOf, Object
from mmserve.v1 import text_pb2

blueprint = Blueprint("text_classification", __name__)
# A deployment without a classifier refuses these routes (FAILED_PRECONDITION, 400) whatever the
# request, so its document does not offer them: a client reads what it can call from /openapi.json.
_CLASSIFIER = ("text", "classify")


def _classify(texts: list[str], top_k: int) -> text_pb2.ClassifyTextResponse:
    request = text_pb2.ClassifyTextRequest(texts=texts, top_k=top_k)
    return state().upstreams.call("text", "ClassifyText", request)


@endpoint(
    blueprint, "POST", "/v1/classify/text",
    summary="Top-k labels per text (the text service's fine-tuned classifier)",
    description="FAILED_PRECONDITION (400) when the text service serves no classifier; this document "
    "then leaves the operation out.",
    requires=_CLASSIFIER,
    body=Object(
        {"texts": ListOf(TEXT), "top_k": Integer(1, 1000, None, "Labels per text (default: the service's, 5).")},
        required=("texts",), example={"texts": ["The match ended two nil.", "Shares fell sharply today."]},
    ),
    response=obj({"model": STR, "results": array(obj({"labels": array(LABEL_SCORE)}, ["labels"]))}, ["model", "results"]),
)  # fmt: skip
def classify_text(body: dict) -> Response:
    reply = _classify(body["texts"], body["top_k"] or 0)
    results = [
        {"labels": [{"label": s.label, "score": short_float(s.score)} for s in result.labels]}
        for result in reply.results
    ]
    return json_response({"model": reply.model_id, "results": results})


@endpoint(
    blueprint, "POST", "/text-classification",
    summary="The best label for one text (the classic single-text contract)",
    description="Same model as /v1/classify/text; answers the best label and its score.",
    requires=_CLASSIFIER,
    body=Object({"text": TEXT}, required=("text",), example={"text": "The match ended two nil."}),
    response=obj({"label": STR, "score": NUM}, ["label", "score"]),
)  # fmt: skip
def text_classification(body: dict) -> Response:
    best = _classify([body["text"]], 1).results[0].labels[0]
    return json_response({"label": best.label, "score": short_float(best.score)})
