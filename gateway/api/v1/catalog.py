"""What is served: the encoders' models and the fusion heads."""

from __future__ import annotations

import json
from collections.abc import Mapping

from flask import Blueprint, Response

from gateway.api.shapes import INT, NUM, STR, array, obj
from gateway.encoding import json_response
from gateway.endpoints import endpoint, state
from gateway.errors import ApiError
from mmserve.v1 import common_pb2, fusion_pb2

blueprint = Blueprint("catalog", __name__, url_prefix="/v1")

MODEL = obj(
    {
        "id": STR,
        "object": {"type": "string", "enum": ["model"]},
        "modality": {"type": "string", "enum": ["text", "image", "audio", "video", "fused", "unspecified"]},
        "task": {"type": "string", "description": "embed, ner, classify, ..."},
        "revision": STR,
        "embedding_dim": {**INT, "description": "0 for models that do not embed (NER, classifiers)"},
        "device": STR,
        "dtype": STR,
        "max_batch_size": INT,
        "max_input_tokens": INT,
        "num_labels": INT,
        "labels": {**array(STR), "description": "classes or entity types the model returns"},
        "alias_of": {
            **STR,
            "description": "for an alias (MMSERVE_GATEWAY_MODEL_ALIASES): the model it names",
        },
    },
    ["id", "object", "modality", "task", "embedding_dim"],
)


def _models(info: common_pb2.ModelInfo) -> list[dict]:
    """One entry per task the service runs: its main (embedding) model, then NER, classifiers."""
    modality = common_pb2.Modality.Name(info.modality).removeprefix("MODALITY_").lower()
    main = {
        "id": info.model_id,
        "object": "model",
        "modality": modality,
        "task": info.tasks[0].task if info.tasks else "embed",
        "revision": info.revision,
        "embedding_dim": info.embedding_dim,
        "device": info.device,
        "dtype": info.dtype,
        "max_batch_size": info.max_batch_size,
        "max_input_tokens": info.max_input_tokens,
        "num_labels": info.num_labels,
        "labels": list(info.tasks[0].labels) if info.tasks else [],
    }
    extra = [
        {"id": t.model_id, "object": "model", "modality": modality, "task": t.task, "revision": t.revision,
         "embedding_dim": 0, "num_labels": t.num_labels, "labels": list(t.labels)}
        for t in info.tasks[1:]
    ]  # fmt: skip
    return [main, *extra]


@endpoint(
    blueprint, "GET", "/models",
    summary="The encoders' models, one entry per task (id, revision, dimension, labels, limits)",
    response=obj({"object": {"type": "string", "enum": ["list"]}, "data": array(MODEL)}, ["object", "data"]),
)  # fmt: skip
def models() -> Response:
    upstreams = state().upstreams
    calls = [
        upstreams.start(service, "GetModelInfo", common_pb2.GetModelInfoRequest(include_labels=True))
        for service in ("text", "vision", "audio")
    ]
    # What is being served: an encoder that is down is left out (its routes answer 503), as long
    # as one answers; with none, its error is the answer.
    infos, failures = [], []
    for call in calls:
        try:
            infos.append(call.result())
        except ApiError as error:
            failures.append(error)
    if not infos:
        raise failures[0]
    listed = [m for info in infos for m in _models(info)]
    return json_response({"object": "list", "data": listed + _aliases(listed, state().aliases)})


def _aliases(listed: list[dict], aliases: Mapping[str, str]) -> list[dict]:
    """An entry per declared alias of a listed model: clients that check a name against this list
    (OpenAI's models.list) find the names they may send."""
    by_id = {m["id"]: m for m in listed}
    return [
        {**by_id[target], "id": alias, "alias_of": target}
        for alias, target in sorted(aliases.items())
        if target in by_id
    ]


HEAD = obj(
    {
        "name": STR,
        "task": {"type": "string", "description": "classification, regression, multitask or alignment"},
        "strategy": {
            "type": "string",
            "description": "weighted_sum, concat_mlp, gated, attention, text_only, image_only or alignment",
        },
        "labels": {**array(STR), "description": "a classification head's labels"},
        "outputs": {
            **array(obj({"name": STR, "kind": STR, "labels": array(STR)}, ["name", "kind"])),
            "description": "each output: a classification (with its labels) or a regression target",
        },
        "modalities": {**array(STR), "description": "the modalities the head reads"},
        "missing_modality_policy": {
            "type": "string",
            "enum": ["allow", "refuse"],
            "description": "refuse: /v1/predict answers an input lacking one of the head's modalities with 400",
        },
        "fusion_weights": {
            "type": "object",
            "additionalProperties": NUM,
            "description": "weighted_sum heads: the learned weight of text and image (branches normalised)",
        },
        "modality_contribution": {
            "type": "object",
            "description": "drop in the head's test metric when each modality is masked (from its metrics)",
        },
        "format_version": INT,
        "text_model_id": STR,
        "vision_model_id": STR,
        "audio_model_id": STR,
        "feature_names": {**array(STR), "description": "heads reading features: the names each input gives"},
        "embedding_dim": INT,
        "metrics": {"type": "object", "description": "training metrics from the head's manifest"},
    },
    ["name", "task", "strategy", "labels"],
)
_MODALITY_NAMES = {
    common_pb2.MODALITY_TEXT: "text",
    common_pb2.MODALITY_IMAGE: "image",
    common_pb2.MODALITY_AUDIO: "audio",
    common_pb2.MODALITY_FEATURES: "features",
}


def _metrics(text: str) -> dict:
    try:
        # NaN/Infinity (a diverged run) would make the response invalid JSON.
        value = json.loads(text, parse_constant=lambda _name: None) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@endpoint(
    blueprint, "GET", "/heads",
    summary="The fusion heads being served",
    response=obj({"heads": array(HEAD)}, ["heads"]),
)  # fmt: skip
def heads() -> Response:
    reply = state().upstreams.call("fusion", "ListHeads", fusion_pb2.ListHeadsRequest())
    return json_response({"heads": [_head(h) for h in reply.heads]})


def _head(h: fusion_pb2.HeadInfo) -> dict:
    metrics = _metrics(h.metrics_json)
    return {
        "name": h.name,
        "task": h.task,
        "strategy": h.strategy,
        "labels": list(h.labels),
        "outputs": [{"name": o.name, "kind": o.kind, "labels": list(o.labels)} for o in h.outputs],
        "modalities": [_MODALITY_NAMES.get(m, "unspecified") for m in h.modalities],
        "missing_modality_policy": h.missing_modality_policy,
        "fusion_weights": {name: float(w) for name, w in sorted(h.fusion_weights.items())},
        "modality_contribution": metrics.get("modality_contribution") or {},
        "format_version": h.format_version,
        "text_model_id": h.text_model_id,
        "vision_model_id": h.vision_model_id,
        "audio_model_id": h.audio_model_id,
        "feature_names": list(h.feature_names),
        "embedding_dim": h.embedding_dim,
        "metrics": metrics,
    }
