"""Open Inference Protocol v2 (KServe/Triton) models: which v1 calls answer an OIP model, and
tensors in and out of them; shared by the gateway's REST front end and fusion's gRPC one.

An OIP model is each encoder model, by the id ``/v1/models`` lists (tasks of one model id share
one OIP model: efficientnet-lite0 answers ``embedding``, ``label`` and ``score``), and each
predicting fusion head, by its ``/v1/heads`` name. A model only names the v1 calls that produce
the outputs asked for; the front ends carry the tensors (JSON or binary over HTTP, protobuf over
gRPC) and make those calls with their deadlines, so both answer alike by construction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from mmserve.v1 import common_pb2, fusion_pb2, text_pb2, vision_pb2
from services.common.errors import InvalidInput, NotFound
from services.common.matrix import from_matrix

SERVER_NAME = "mmserve"
EXTENSIONS = ("binary_tensor_data",)
MODEL_VERSION = "1"  # served models have no versions: "1" (or none) names the one served
BYTES, FP32 = "BYTES", "FP32"
# Little-endian element types of the numeric datatypes (raw tensor data is little-endian).
NUMPY_DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
_LENGTH_PREFIX = np.dtype("<u4")


def server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:  # run from a source tree without the editable install
        return "0.0.0"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size
    # Elements are files (encoded images), not text: JSON carries them as base64 strings.
    files: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Tensor:
    """An output: numbers as a numpy array of the datatype, or BYTES as a list of bytes (row-major)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


# --- raw tensor data (the binary extension over HTTP, raw_*_contents over gRPC) -------------------


def element_count(shape: Sequence[int], where: str) -> int:
    if any(int(d) < 0 for d in shape):
        raise InvalidInput(f"{where} has a negative dimension in shape {list(shape)}")
    return math.prod(int(d) for d in shape)


def split_bytes(raw: bytes, count: int, where: str) -> list[bytes]:
    """BYTES elements from raw data: each a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    view = memoryview(raw)
    for index in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"{where}: raw data ends before element {index} of {count}")
        size = int(np.frombuffer(view[offset : offset + 4], _LENGTH_PREFIX)[0])
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput(f"{where}: element {index} claims {size} bytes past the end of the data")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if offset != len(raw):
        raise InvalidInput(f"{where}: {len(raw) - offset} bytes of raw data left after {count} elements")
    return items


def join_bytes(items: Sequence[bytes]) -> bytes:
    lengths = np.array([len(item) for item in items], dtype=_LENGTH_PREFIX)
    return b"".join(length.tobytes() + item for length, item in zip(lengths, items, strict=True))


def to_raw(tensor: Tensor) -> bytes:
    if tensor.datatype == BYTES:
        return join_bytes(tensor.data)  # type: ignore[arg-type]
    return np.ascontiguousarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


# --- models ------------------------------------------------------------------------------------

Inputs = Mapping[str, list[bytes | None]]  # input name -> one element per row (None: missing)
Outputs = dict[str, np.ndarray | list[bytes]]


@dataclass(frozen=True)
class Task:
    """One v1 call that produces some of a model's outputs."""

    service: str  # "text", "vision" or "fusion"
    method: str
    outputs: tuple[str, ...]
    request: Callable[[Inputs], Any]  # rows -> the v1 request
    read: Callable[[Any], Outputs]  # the v1 reply -> output name -> one value per row


@dataclass(frozen=True)
class Call:
    task: Task
    request: Any


@dataclass(frozen=True)
class Model:
    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tasks: tuple[Task, ...]
    # Whether every input must be given (encoders), or any of them (heads: a missing modality).
    all_inputs_required: bool = True

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": self.platform,
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }

    def check_version(self, version: str) -> None:
        if version not in ("", MODEL_VERSION):
            raise NotFound(
                f"model {self.name!r} has no version {version!r} (it serves version {MODEL_VERSION})"
            )

    def requested_outputs(self, names: Sequence[str]) -> list[str]:
        """The outputs to answer, in the order asked (all of them when none are named)."""
        known = [spec.name for spec in self.outputs]
        for name in names:
            if name not in known:
                raise InvalidInput(f"model {self.name!r} has no output {name!r}; its outputs are {known}")
        return list(names) or known

    def plan(self, inputs: Mapping[str, tuple[str, list[bytes]]], requested: Sequence[str]) -> list[Call]:
        """The v1 calls that answer ``requested`` for ``inputs`` (name -> (datatype, elements))."""
        expected = {spec.name for spec in self.inputs}
        for name, (datatype, _) in inputs.items():
            if name not in expected:
                raise InvalidInput(
                    f"model {self.name!r} has no input {name!r}; its inputs are {sorted(expected)}"
                )
            if datatype != BYTES:
                raise InvalidInput(f"input {name!r} must be BYTES, got {datatype}")
        missing = expected - set(inputs)
        if not inputs or (self.all_inputs_required and missing):
            raise InvalidInput(f"model {self.name!r} needs input {' and '.join(sorted(missing or expected))}")
        counts = {len(elements) for _, elements in inputs.values()}
        if len(counts) > 1:
            raise InvalidInput(f"inputs of one request must have as many elements each, got {sorted(counts)}")
        count = counts.pop()
        if count == 0:
            raise InvalidInput("inputs must have at least one element")
        # An empty element is a missing one (a head then predicts from the other modality).
        given: dict[str, list[bytes | None]] = {
            name: [item or None for item in elements] for name, (_, elements) in inputs.items()
        }
        for name in missing:
            given[name] = [None] * count
        return [Call(task, task.request(given)) for task in self.tasks if set(task.outputs) & set(requested)]

    def answer(self, calls: Sequence[Call], replies: Sequence[Any], requested: Sequence[str]) -> list[Tensor]:
        """The requested output tensors from the calls' replies."""
        values: Outputs = {}
        for call, reply in zip(calls, replies, strict=True):
            values.update(call.task.read(reply))
        specs = {spec.name: spec for spec in self.outputs}
        tensors = []
        for name in requested:
            data, spec = values[name], specs[name]
            if spec.datatype == BYTES:
                tensors.append(Tensor(name, BYTES, (len(data),), list(data)))
            else:
                array = np.asarray(data, dtype=NUMPY_DTYPES[spec.datatype])
                tensors.append(Tensor(name, spec.datatype, tuple(array.shape), array))
        return tensors


# --- the catalogue -------------------------------------------------------------------------------


def _texts(rows: list[bytes | None], name: str) -> list[str]:
    texts = []
    for index, item in enumerate(rows):
        try:
            texts.append((item or b"").decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r} element {index} is not UTF-8 text") from None
    return texts


def _images(rows: list[bytes | None]) -> list[bytes]:
    return [item or b"" for item in rows]


def _labels(results) -> Outputs:
    """Top-1 label and score of each item's classification."""
    return {
        "label": [r.labels[0].label.encode() if r.labels else b"" for r in results],
        "score": np.array([r.labels[0].score if r.labels else np.nan for r in results], np.float32),
    }


def _entities(reply: text_pb2.ExtractEntitiesResponse) -> Outputs:
    return {
        "entities": [
            json.dumps(
                [
                    {"text": e.text, "label": e.label, "start_char": e.start_char, "end_char": e.end_char,
                     "score": e.score if e.HasField("score") else None}
                    for e in result.entities
                ],
                ensure_ascii=False,
            ).encode()
            for result in reply.results
        ]
    }  # fmt: skip


def _encoder_tasks(
    modality: str, task: common_pb2.TaskModel, dim: int
) -> list[tuple[Task, list[TensorSpec]]]:
    """The OIP outputs one encoder task adds to its model, and the call that produces them."""
    label_specs = [TensorSpec("label", BYTES, (-1,)), TensorSpec("score", FP32, (-1,))]
    embedding = [TensorSpec("embedding", FP32, (-1, dim))]
    if modality == "text":
        table = {
            "embed": (Task("text", "Embed", ("embedding",),
                           lambda rows: text_pb2.EmbedTextRequest(texts=_texts(rows["text"], "text")),
                           lambda reply: {"embedding": from_matrix(reply.embeddings)}), embedding),
            "ner": (Task("text", "ExtractEntities", ("entities",),
                         lambda rows: text_pb2.ExtractEntitiesRequest(texts=_texts(rows["text"], "text")),
                         _entities), [TensorSpec("entities", BYTES, (-1,))]),
            "classify": (Task("text", "ClassifyText", ("label", "score"),
                              lambda rows: text_pb2.ClassifyTextRequest(texts=_texts(rows["text"], "text"), top_k=1),
                              lambda reply: _labels(reply.results)), label_specs),
        }  # fmt: skip
    else:
        table = {
            "embed": (Task("vision", "Embed", ("embedding",),
                           lambda rows: vision_pb2.EmbedImageRequest(images=_images(rows["image"])),
                           lambda reply: {"embedding": from_matrix(reply.embeddings)}), embedding),
            "classify": (Task("vision", "Classify", ("label", "score"),
                              lambda rows: vision_pb2.ClassifyImageRequest(images=_images(rows["image"]), top_k=1),
                              lambda reply: _labels(reply.results)), label_specs),
        }  # fmt: skip
    entry = table.get(task.task)
    return [entry] if entry is not None else []


def _encoder_models(modality: str, info: common_pb2.ModelInfo) -> list[Model]:
    """One model per model id the encoder runs, with the outputs of all its tasks."""
    tasks = list(info.tasks) or [common_pb2.TaskModel(task="embed", model_id=info.model_id)]
    by_id: dict[str, list[tuple[Task, list[TensorSpec]]]] = {}
    for task in tasks:
        by_id.setdefault(task.model_id, []).extend(_encoder_tasks(modality, task, info.embedding_dim))
    service = "text" if modality == "text" else "vision"
    return [
        Model(
            name=model_id,
            platform=f"mmserve_{service}_encoder",
            inputs=(TensorSpec(modality, BYTES, (-1,), files=modality == "image"),),
            outputs=tuple(spec for _, specs in entries for spec in specs),
            tasks=tuple(task for task, _ in entries),
        )
        for model_id, entries in by_id.items()
        if entries
    ]


_HEAD_MODALITIES = {common_pb2.MODALITY_TEXT: "text", common_pb2.MODALITY_IMAGE: "image"}


def head_output_names(head: fusion_pb2.HeadInfo, output: fusion_pb2.HeadOutput) -> tuple[str, ...]:
    """A classification output answers a label and its score ("label"/"score" for a classification
    head, "<output>_label"/"<output>_score" in a multi-task head); a regression target its value."""
    if output.kind != "classification":
        return (output.name,)
    prefix = "" if head.task == "classification" else f"{output.name}_"
    return (f"{prefix}label", f"{prefix}score")


def _head_model(head: fusion_pb2.HeadInfo) -> Model:
    modalities = [_HEAD_MODALITIES[m] for m in head.modalities if m in _HEAD_MODALITIES]
    specs: list[TensorSpec] = []
    for output in head.outputs:
        names = head_output_names(head, output)
        if output.kind == "classification":
            specs += [TensorSpec(names[0], BYTES, (-1,)), TensorSpec(names[1], FP32, (-1,))]
        else:
            specs.append(TensorSpec(names[0], FP32, (-1,)))

    def request(rows: Inputs) -> fusion_pb2.PredictRequest:
        count = len(next(iter(rows.values())))
        texts = _texts(rows["text"], "text") if "text" in rows else [""] * count
        images = rows.get("image") or [None] * count
        items = [
            fusion_pb2.MultimodalInput(text=text or None, image=image)
            for text, image in zip(texts, images, strict=True)
        ]
        return fusion_pb2.PredictRequest(inputs=items, head=head.name)

    def read(reply: fusion_pb2.PredictResponse) -> Outputs:
        values: Outputs = {}
        for output in head.outputs:
            names = head_output_names(head, output)
            if output.kind != "classification":
                values[names[0]] = np.array([p.values[output.name] for p in reply.predictions], np.float32)
                continue
            answers = [
                p if head.task == "classification" else p.tasks[output.name] for p in reply.predictions
            ]
            values[names[0]] = [a.label.encode() for a in answers]
            values[names[1]] = np.array([a.score for a in answers], np.float32)
        return values

    return Model(
        name=head.name,
        platform="mmserve_fusion_head",
        inputs=tuple(TensorSpec(m, BYTES, (-1,), files=m == "image") for m in modalities),
        outputs=tuple(specs),
        tasks=(Task("fusion", "Predict", tuple(s.name for s in specs), request, read),),
        all_inputs_required=False,
    )


# Served models change on deploys and head reloads, seconds apart, never per request: the front
# ends keep the catalogue this long instead of asking every backend before every inference.
CATALOGUE_TTL_S = 2.0


def catalogue(
    text: common_pb2.ModelInfo | None,
    vision: common_pb2.ModelInfo | None,
    heads: Sequence[fusion_pb2.HeadInfo],
) -> dict[str, Model]:
    """Every OIP model, by name, from what the encoders and fusion report (None: not reachable).

    Alignment heads predict nothing (they score similarity), so they are no OIP models."""
    models: dict[str, Model] = {}
    found = [
        *(_encoder_models("text", text) if text is not None else []),
        *(_encoder_models("image", vision) if vision is not None else []),
        *(_head_model(h) for h in heads if h.task != "alignment"),
    ]
    for model in found:
        models.setdefault(model.name, model)  # an encoder model's name wins over a head's
    return models


def find(models: Mapping[str, Model], name: str, failures: Sequence[Exception]) -> Model:
    """The named model; unknown only when every source answered (else the first failure is raised)."""
    model = models.get(name)
    if model is not None:
        return model
    if failures:
        raise failures[0]
    raise NotFound(f"unknown model {name!r}; GET /v1/models and /v1/heads list the served models")
