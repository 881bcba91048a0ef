"""Trained heads on disk: save, validate + load, run (numpy in, numpy out), check against encoders.

A head is a directory ``<heads_dir>/<name>/`` holding ``head.safetensors`` (the torch state
dict; never pickle) and ``manifest.json``::

    {"format_version": 1, "name": "match", "task": "classification" | "alignment",
     "strategy": "weighted_sum" | "concat_mlp" | "gated" | "text_only" | "image_only" | "alignment",
     "labels": ["no", "yes"],                       # classification only; [] for alignment
     "input_dims": {"text": 384, "image": 1280},
     "config": {"fused_dim": 256, "hidden_dim": 256, "dropout": 0.1},
     "encoders": {"text": {"model_id": "...", "revision": "..."}, "image": {...}},
     "metrics": {...}, "weights_sha256": "<hex of head.safetensors>", "created_at": "<ISO 8601>"}

The manifest's name must equal the directory's name (one name per head, no aliases).

Inputs to ``Head.embed`` / ``Head.predict_proba``: ``text`` is a float array [N, input_dims.text]
or None, ``image`` is [N, input_dims.image] or None; at least one is given, with the same N.
Mixed batches pass masks, bool arrays [N] where True means "this row has that modality":

- ``text=None`` means no row has text (``text_mask``, if given, must be all False).
- A given array with no mask means every row has that modality.
- Values in rows whose mask is False are ignored (pass zeros there).
- Every row needs at least one modality; otherwise ``InvalidInput``.

What a head does with a missing modality is defined per strategy in ``strategies`` (weighted_sum
renormalises its weights over the present modalities, concat_mlp substitutes a learned "missing"
vector, gated forces its gate to the present modality, single-modality baselines fuse to zeros).
Alignment heads embed an item as the normalised mean of its present modalities' projections.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.common.backend import EncoderInfo
from services.common.errors import FailedPrecondition, InvalidInput, MmserveError
from services.fusion.strategies import (
    ALIGNMENT_STRATEGY,
    CLASSIFICATION_STRATEGIES,
    STRATEGY_MODALITIES,
    AlignmentHead,
    FusionClassifier,
    build_model,
    resolve_config,
)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "head.safetensors"
MODALITIES = ("text", "image")
TASKS = ("classification", "alignment")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class HeadLoadError(MmserveError):
    """A head on disk is corrupt, incomplete or inconsistent; it is never served."""

    code = FailedPrecondition.code


class IncompatibleHead(FailedPrecondition):
    """A head was trained on other encoders than the ones serving now."""


@dataclass(frozen=True)
class EncoderRef:
    model_id: str
    revision: str


@dataclass(frozen=True)
class HeadManifest:
    """The parsed, validated ``manifest.json`` of one head."""

    format_version: int
    name: str
    task: str
    strategy: str
    labels: tuple[str, ...]
    input_dims: Mapping[str, int]
    config: Mapping[str, Any]
    encoders: Mapping[str, EncoderRef]
    metrics: Mapping[str, Any]
    weights_sha256: str
    created_at: str

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this head reads (a text_only baseline needs no image encoder)."""
        return STRATEGY_MODALITIES[self.strategy]

    @property
    def fused_dim(self) -> int:
        return int(self.config["fused_dim"])

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "task": self.task,
            "strategy": self.strategy,
            "labels": list(self.labels),
            "input_dims": dict(self.input_dims),
            "config": dict(self.config),
            "encoders": {m: dataclasses.asdict(ref) for m, ref in self.encoders.items()},
            "metrics": dict(self.metrics),
            "weights_sha256": self.weights_sha256,
            "created_at": self.created_at,
        }


# --------------------------------------------------------------------------- manifest parsing


def _fail(where: str, message: str) -> HeadLoadError:
    return HeadLoadError(f"head {where}: {message}")


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise _fail(where, f"manifest lacks {key!r}")
    value = data[key]
    # bool is an int subclass; a dimension of `true` is a corrupt manifest, not 1.
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(where, f"manifest field {key!r} must be {names}, got {type(value).__name__}")
    return value


def parse_manifest(data: Any, where: str = "<memory>") -> HeadManifest:
    """Validates a manifest's schema (not its weights); raises HeadLoadError naming the problem."""
    if not isinstance(data, dict):
        raise _fail(where, "manifest is not a JSON object")
    version = _require(data, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise _fail(where, f"unsupported format_version {version} (this server reads {FORMAT_VERSION})")
    name = _require(data, "name", str, where)
    if not _NAME_RE.match(name):
        raise _fail(where, f"invalid name {name!r} (letters, digits, '.', '_', '-'; at most 128)")
    task = _require(data, "task", str, where)
    if task not in TASKS:
        raise _fail(where, f"unknown task {task!r}; known: {', '.join(TASKS)}")
    strategy = _require(data, "strategy", str, where)
    allowed = (ALIGNMENT_STRATEGY,) if task == "alignment" else CLASSIFICATION_STRATEGIES
    if strategy not in allowed:
        raise _fail(where, f"strategy {strategy!r} is not a {task} strategy; known: {', '.join(allowed)}")

    labels = _require(data, "labels", list, where) if task == "classification" else data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        raise _fail(where, "labels must be a list of non-empty strings")
    if task == "classification" and len(labels) < 2:
        raise _fail(where, f"a classification head needs at least 2 labels, got {len(labels)}")
    if len(set(labels)) != len(labels):
        raise _fail(where, "labels must be unique")

    raw_dims = _require(data, "input_dims", dict, where)
    input_dims: dict[str, int] = {}
    for modality in MODALITIES:
        dim = _require(raw_dims, modality, int, f"{where} input_dims")
        if dim <= 0:
            raise _fail(where, f"input_dims.{modality} must be positive, got {dim}")
        input_dims[modality] = dim

    raw_config = _require(data, "config", dict, where)
    try:
        config = resolve_config(strategy, raw_config)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None
    for key, value in config.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _fail(where, f"config.{key} must be a non-negative number, got {value!r}")
    if int(config["fused_dim"]) < 1 or config["fused_dim"] != int(config["fused_dim"]):
        raise _fail(where, f"config.fused_dim must be a positive integer, got {config['fused_dim']!r}")

    raw_encoders = _require(data, "encoders", dict, where)
    encoders: dict[str, EncoderRef] = {}
    for modality in MODALITIES:
        ref = _require(raw_encoders, modality, dict, f"{where} encoders")
        encoders[modality] = EncoderRef(
            model_id=_require(ref, "model_id", str, f"{where} encoders.{modality}"),
            revision=_require(ref, "revision", str, f"{where} encoders.{modality}"),
        )

    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise _fail(where, "metrics must be a JSON object")
    sha = _require(data, "weights_sha256", str, where)
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise _fail(where, "weights_sha256 must be 64 lower-case hex digits")
    created_at = _require(data, "created_at", str, where)

    return HeadManifest(
        format_version=version,
        name=name,
        task=task,
        strategy=strategy,
        labels=tuple(labels),
        input_dims=input_dims,
        config=config,
        encoders=encoders,
        metrics=metrics,
        weights_sha256=sha,
        created_at=created_at,
    )


# --------------------------------------------------------------------------- the loaded head


def _as_input(array: np.ndarray | None, dim: int, modality: str) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InvalidInput(f"{modality} embeddings must have shape [N, {dim}], got {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInput(f"{modality} embeddings must be floating point, got {array.dtype}")
    return array.astype(np.float32, copy=False)


def _as_mask(mask: np.ndarray | Sequence[bool] | None, n: int, has_array: bool, modality: str) -> np.ndarray:
    if mask is None:
        return np.full(n, has_array, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (n,):
        raise InvalidInput(
            f"{modality}_mask must be a bool array of shape [{n}], got {mask.dtype} {list(mask.shape)}"
        )
    if not has_array and mask.any():
        raise InvalidInput(f"{modality}_mask marks rows present but no {modality} embeddings were given")
    return mask


class Head:
    """A loaded head: eval mode, CPU, inference only. Thread-safe (no state changes after load)."""

    def __init__(self, manifest: HeadManifest, module: FusionClassifier | AlignmentHead) -> None:
        self.manifest = manifest
        self._module = module.eval()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def fused_dim(self) -> int:
        return self.manifest.fused_dim

    def _prepare(self, text, image, text_mask, image_mask):
        dims = self.manifest.input_dims
        text = _as_input(text, dims["text"], "text")
        image = _as_input(image, dims["image"], "image")
        if text is None and image is None:
            raise InvalidInput("give text or image embeddings (or both)")
        n = (text if text is not None else image).shape[0]
        if text is not None and image is not None and image.shape[0] != n:
            raise InvalidInput(f"text has {n} rows but image has {image.shape[0]}")
        t_mask = _as_mask(text_mask, n, text is not None, "text")
        i_mask = _as_mask(image_mask, n, image is not None, "image")
        empty = np.flatnonzero(~(t_mask | i_mask))
        if empty.size:
            raise InvalidInput(f"rows {empty[:10].tolist()} have neither text nor image")
        # Absent rows may hold anything (NaN included); only present rows must be finite.
        text = np.zeros((n, dims["text"]), np.float32) if text is None else np.where(t_mask[:, None], text, 0)
        image = (
            np.zeros((n, dims["image"]), np.float32) if image is None else np.where(i_mask[:, None], image, 0)
        )
        if not (np.isfinite(text).all() and np.isfinite(image).all()):
            raise InvalidInput("embeddings contain NaN or infinity")
        return (
            torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            torch.from_numpy(t_mask),
            torch.from_numpy(i_mask),
        )

    def embed(self, text=None, image=None, text_mask=None, image_mask=None) -> np.ndarray:
        """Fused embeddings [N, fused_dim] float32 (see the module docstring for inputs and masks)."""
        inputs = self._prepare(text, image, text_mask, image_mask)
        with torch.inference_mode():
            return self._module.embed(*inputs).numpy()

    def predict_proba(self, text=None, image=None, text_mask=None, image_mask=None) -> np.ndarray:
        """Class probabilities [N, len(labels)] float32, columns in ``labels`` order."""
        if not isinstance(self._module, FusionClassifier):
            raise FailedPrecondition(f"head {self.name!r} is an alignment head; it has no labels to predict")
        inputs = self._prepare(text, image, text_mask, image_mask)
        with torch.inference_mode():
            return torch.softmax(self._module(*inputs), dim=-1).numpy()

    def _alignment(self) -> AlignmentHead:
        if not isinstance(self._module, AlignmentHead):
            raise FailedPrecondition(f"head {self.name!r} is a {self.task} head, not an alignment head")
        return self._module

    def project_text(self, text: np.ndarray) -> np.ndarray:
        """Text embeddings [N, Dt] -> L2-normalised shared-space vectors [N, fused_dim]."""
        module = self._alignment()
        text = _as_input(text, self.manifest.input_dims["text"], "text")
        if not np.isfinite(text).all():
            raise InvalidInput("text embeddings contain NaN or infinity")
        with torch.inference_mode():
            return module.project_text(torch.from_numpy(np.ascontiguousarray(text))).numpy()

    def project_image(self, image: np.ndarray) -> np.ndarray:
        """Image embeddings [N, Di] -> L2-normalised shared-space vectors [N, fused_dim]."""
        module = self._alignment()
        image = _as_input(image, self.manifest.input_dims["image"], "image")
        if not np.isfinite(image).all():
            raise InvalidInput("image embeddings contain NaN or infinity")
        with torch.inference_mode():
            return module.project_image(torch.from_numpy(np.ascontiguousarray(image))).numpy()

    @property
    def logit_scale(self) -> float:
        """Learned inverse temperature: logits = logit_scale * cosine similarity."""
        return float(self._alignment().logit_scale.detach())


# --------------------------------------------------------------------------- disk I/O


def _expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def load_head(path: Path | str) -> Head:
    """Loads and validates the head in directory ``path``; raises HeadLoadError when anything is off."""
    path = Path(path)
    where = repr(path.name)
    manifest_path, weights_path = path / MANIFEST_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise _fail(where, f"{path} is not a directory")
    for required in (manifest_path, weights_path):
        if not required.is_file():
            raise _fail(where, f"missing {required.name} in {path}")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(where, f"{MANIFEST_FILE} is not valid JSON: {exc}") from None
    manifest = parse_manifest(data, where)
    if manifest.name != path.name:
        raise _fail(where, f"manifest names the head {manifest.name!r}; rename the directory or the manifest")

    blob = weights_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.weights_sha256:
        raise _fail(
            where,
            f"{WEIGHTS_FILE} has sha256 {digest[:12]}… but the manifest expects "
            f"{manifest.weights_sha256[:12]}… (corrupt or replaced weights)",
        )
    try:
        state = load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise _fail(where, f"{WEIGHTS_FILE} is not a valid safetensors file: {exc}") from None

    module = build_model(
        manifest.strategy,
        manifest.input_dims["text"],
        manifest.input_dims["image"],
        dict(manifest.config),
        num_labels=len(manifest.labels),
    )
    expected = _expected_shapes(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise _fail(
            where,
            f"weights do not fit strategy {manifest.strategy!r}: missing {missing}, unexpected {unexpected}",
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise _fail(
                where,
                f"tensor {key!r} has shape {list(state[key].shape)} but the manifest "
                f"(input_dims {dict(manifest.input_dims)}, {len(manifest.labels)} labels, "
                f"config {dict(manifest.config)}) implies {list(shape)}",
            )
        if not torch.isfinite(state[key]).all():
            raise _fail(where, f"tensor {key!r} contains NaN or infinity")
    module.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    return Head(manifest, module)


def save_head(
    directory: Path | str,
    module: FusionClassifier | AlignmentHead,
    *,
    strategy: str,
    input_dims: Mapping[str, int],
    config: Mapping[str, Any],
    encoders: Mapping[str, EncoderRef | Mapping[str, str]],
    labels: Sequence[str] = (),
    metrics: Mapping[str, Any] | None = None,
) -> HeadManifest:
    """Writes ``module``'s weights and a manifest into ``directory`` (whose name is the head's name).

    The weights are written before the manifest, so a scanner that sees a manifest sees weights
    matching its sha256 (or, mid-rewrite, a mismatch it refuses rather than a half-written head).
    """
    directory = Path(directory)
    task = "alignment" if strategy == ALIGNMENT_STRATEGY else "classification"
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    blob = save_safetensors(state)
    refs = {m: ref if isinstance(ref, EncoderRef) else EncoderRef(**ref) for m, ref in encoders.items()}
    manifest_data = {
        "format_version": FORMAT_VERSION,
        "name": directory.name,
        "task": task,
        "strategy": strategy,
        "labels": list(labels),
        "input_dims": dict(input_dims),
        "config": dict(config),
        "encoders": {m: dataclasses.asdict(ref) for m, ref in refs.items()},
        "metrics": dict(metrics or {}),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest = parse_manifest(manifest_data, repr(directory.name))
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / WEIGHTS_FILE, blob)
    _write_atomic(directory / MANIFEST_FILE, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    return manifest


def update_metrics(directory: Path | str, metrics: Mapping[str, Any]) -> HeadManifest:
    """Merges ``metrics`` into a saved head's manifest (evaluation runs after saving)."""
    directory = Path(directory)
    data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["metrics"] = {**data.get("metrics", {}), **metrics}
    manifest = parse_manifest(data, repr(directory.name))
    _write_atomic(directory / MANIFEST_FILE, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    return manifest


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --------------------------------------------------------------------------- encoder compatibility


def check_compatible(
    manifest: HeadManifest, text_info: EncoderInfo | None, image_info: EncoderInfo | None
) -> None:
    """Refuses a head whose training encoders differ from the serving ones (IncompatibleHead).

    Only the modalities the head reads are checked. A revision is compared when both sides
    record one; ``None`` for an encoder the head needs means it is not being served.
    """
    serving = {"text": text_info, "image": image_info}
    for modality in manifest.modalities:
        trained = manifest.encoders[modality]
        trained_dim = manifest.input_dims[modality]
        info = serving[modality]
        if info is None:
            raise IncompatibleHead(
                f"head {manifest.name!r} needs a {modality} encoder ({trained.model_id}) but none is serving"
            )
        same_model = info.model_id == trained.model_id
        same_revision = not (info.revision and trained.revision) or info.revision == trained.revision
        if not (same_model and same_revision and int(info.embedding_dim) == trained_dim):
            raise IncompatibleHead(
                f"head {manifest.name!r} was trained on {modality} encoder {_describe(trained.model_id, trained.revision)} "
                f"(dim {trained_dim}) but {_describe(info.model_id, info.revision)} (dim {info.embedding_dim}) is serving"
            )


def _describe(model_id: str, revision: str) -> str:
    return f"{model_id}@{revision}" if revision else model_id
