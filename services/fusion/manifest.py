"""A head's ``manifest.json``: its schema in three format versions, parsed and validated.

Format 3 (written since heads read any set of modalities)::

    {"format_version": 3, "name": "order", "task": "classification" | "regression" | "multitask" | "alignment",
     "strategy": "weighted_sum" | "concat_mlp" | "gated" | "attention" | "<modality>_only" | "alignment",
     "modalities": ["text", "audio", "features"],          # the head's inputs, in fusion order
     "outputs": [{"name": "variant", "kind": "classification", "labels": [...], "temperature": 1.3},
                 {"name": "total", "kind": "regression", "mean": 10.5, "std": 6.1}],   # [] for alignment
     "missing_modality_policy": "allow" | "refuse",
     "fusion_weights": {"text": 0.4, "audio": 0.3, "features": 0.3},  # weighted_sum: learned weights
     "input_dims": {"text": 384, "audio": 1024, "features": 3},        # one per modality
     "features": {"names": [...], "mean": [...], "std": [...]},        # heads reading features
     "config": {"fused_dim": 256, "hidden_dim": 256, "dropout": 0.1, ...strategy-specific},
     "encoders": {"text": {"model_id": "...", "revision": "..."}, "audio": {...}},  # encoded ones
     "metrics": {...}, "weights_sha256": "<hex of head.safetensors>", "created_at": "<ISO 8601>"}

``task`` must be what ``outputs`` make it (``services.fusion.outputs.task_of``). Formats 1 and 2
predate ``modalities``: every such head has text and image inputs (``input_dims`` and
``encoders`` of both). Format 2 is format 3 without ``modalities`` and ``features``. Format 1
(the first format: classification or alignment only) has ``"labels"`` instead of ``outputs``;
it is read as one classification output named ``label`` with temperature 1, missing-modality
policy ``allow`` (how format 1 heads were always served) and, for weighted_sum,
``branch_norm: 0``, so a format 1 head computes exactly what it did when it was trained.

A manifest is untrusted input (anyone who can write the heads directory writes it): its size,
nesting and every number that sizes a tensor are bounded here, before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import FailedPrecondition, MmserveError
from services.fusion.features import FeatureSchema, parse_schema
from services.fusion.modalities import FEATURES, TEXT_IMAGE, encoded, ordered
from services.fusion.outputs import (
    CLASSIFICATION,
    DEFAULT_CLASSIFICATION_OUTPUT,
    OutputSpec,
    parse_output,
    task_of,
)
from services.fusion.strategies import (
    ALIGNMENT_STRATEGY,
    DECISION_STRATEGIES,
    INTEGER_CONFIG_KEYS,
    SINGLE_STRATEGIES,
    resolve_config,
    strategy_modalities,
)

FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
TASKS = ("classification", "regression", "multitask", "alignment")
POLICIES = ("allow", "refuse")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What a format 1 manifest implies for keys it predates.
_FORMAT1_CONFIG = {"weighted_sum": {"branch_norm": 0}}

# Bounds on what a manifest may ask for, far above any real head (embeddings are at most a few
# thousand wide, heads have a few layers) and far below what would exhaust memory. The weights
# file must still match the shapes exactly (heads.load_head), so these only stop a manifest from
# sizing a giant module before that check can run.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_MANIFEST_DEPTH = 32  # JSON nesting; metrics are echoed in ListHeads, so deep nesting is refused
MAX_INPUT_DIM = 65_536
MAX_LAYER_WIDTH = 65_536  # fused_dim, hidden_dim
MAX_LAYER_COUNT = 64  # num_layers, num_heads, tokens_per_modality
MAX_OUTPUT_COLUMNS = 65_536  # labels plus regression values, all outputs together
_WIDTH_KEYS = ("fused_dim", "hidden_dim")


class HeadLoadError(MmserveError):
    """A head on disk is corrupt, incomplete or inconsistent; it is never served."""

    code = FailedPrecondition.code
    reason = "invalid"  # the label the registry counts refusals by (a bounded set)


class HeadTooLarge(HeadLoadError):
    """A head's files, or the module its manifest describes, exceed the bounds."""

    reason = "too_large"


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
    outputs: tuple[OutputSpec, ...]
    input_dims: Mapping[str, int]
    config: Mapping[str, Any]
    encoders: Mapping[str, EncoderRef]
    metrics: Mapping[str, Any]
    weights_sha256: str
    created_at: str
    missing_modality_policy: str = "allow"
    fusion_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    inputs: tuple[str, ...] = TEXT_IMAGE  # the head's input modalities, in fusion order
    features: FeatureSchema | None = None  # heads with a features input

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this head reads (a text_only baseline needs no image encoder)."""
        return strategy_modalities(self.strategy, self.inputs)

    @property
    def encoded_modalities(self) -> tuple[str, ...]:
        """The modalities this head reads that an encoder must embed (all but features)."""
        return encoded(self.modalities)

    @property
    def fused_dim(self) -> int:
        return int(self.config["fused_dim"])

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels of a classification head's one output; () for other tasks."""
        return self.outputs[0].labels if self.task == CLASSIFICATION else ()

    @property
    def num_outputs(self) -> int:
        """Width of the decision layer."""
        return sum(output.width for output in self.outputs)

    def to_json(self) -> dict[str, Any]:
        """The manifest in the current format (an older head is written back as format 3)."""
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "task": self.task,
            "strategy": self.strategy,
            "modalities": list(self.inputs),
            "outputs": [output.to_json() for output in self.outputs],
            "missing_modality_policy": self.missing_modality_policy,
            "input_dims": dict(self.input_dims),
            "config": dict(self.config),
            "encoders": {m: dataclasses.asdict(ref) for m, ref in self.encoders.items()},
            "metrics": dict(self.metrics),
            "weights_sha256": self.weights_sha256,
            "created_at": self.created_at,
        }
        if self.fusion_weights:
            data["fusion_weights"] = dict(self.fusion_weights)
        if self.features is not None:
            data["features"] = self.features.to_json()
        return data


def _fail(where: str, message: str) -> HeadLoadError:
    return HeadLoadError(f"head {where}: {message}")


def _too_large(where: str, message: str) -> HeadTooLarge:
    return HeadTooLarge(f"head {where}: {message}")


def _check_depth(data: Any, where: str) -> None:
    """Refuses JSON nested deeper than MAX_MANIFEST_DEPTH (walked without recursion)."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_MANIFEST_DEPTH:
                    raise _too_large(where, f"manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels")
                pending.append((child, depth + 1))


def _check_bounds(config: Mapping[str, Any], outputs: tuple[OutputSpec, ...], where: str) -> None:
    for key in INTEGER_CONFIG_KEYS:
        bound = MAX_LAYER_WIDTH if key in _WIDTH_KEYS else MAX_LAYER_COUNT
        if key in config and config[key] > bound:
            raise _too_large(where, f"config.{key} {config[key]} exceeds the bound {bound}")
    columns = sum(output.width for output in outputs)
    if columns > MAX_OUTPUT_COLUMNS:
        raise _too_large(where, f"outputs have {columns} columns, over the bound {MAX_OUTPUT_COLUMNS}")


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise _fail(where, f"manifest lacks {key!r}")
    value = data[key]
    # bool is an int subclass; a dimension of `true` is a corrupt manifest, not 1.
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(where, f"manifest field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _format1_outputs(data: Mapping[str, Any], task: str, where: str) -> tuple[OutputSpec, ...]:
    if task not in ("classification", "alignment"):
        raise _fail(where, f"unknown task {task!r} for format 1; known: classification, alignment")
    labels = _require(data, "labels", list, where) if task == "classification" else data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        raise _fail(where, "labels must be a list of non-empty strings")
    if task == "alignment":
        return ()
    if len(labels) < 2:
        raise _fail(where, f"a classification head needs at least 2 labels, got {len(labels)}")
    if len(set(labels)) != len(labels):
        raise _fail(where, "labels must be unique")
    return (OutputSpec(DEFAULT_CLASSIFICATION_OUTPUT, CLASSIFICATION, tuple(labels)),)


def _format2_outputs(data: Mapping[str, Any], task: str, where: str) -> tuple[OutputSpec, ...]:
    raw = _require(data, "outputs", list, where)
    try:
        outputs = tuple(parse_output(item, index) for index, item in enumerate(raw))
    except ValueError as exc:
        raise _fail(where, str(exc)) from None
    names = [output.name for output in outputs]
    if len(set(names)) != len(names):
        raise _fail(where, f"output names must be unique, got {names}")
    if task == "alignment":
        if outputs:
            raise _fail(where, "an alignment head has no outputs")
        return outputs
    if not outputs:
        raise _fail(where, f"a {task} head needs at least one output")
    if task_of(outputs) != task:
        raise _fail(where, f"task {task!r} does not fit its outputs (they make a {task_of(outputs)} head)")
    return outputs


def _config(data: Mapping[str, Any], strategy: str, version: int, where: str) -> dict[str, Any]:
    raw_config = dict(_require(data, "config", dict, where))
    if version == 1:
        raw_config = {**_FORMAT1_CONFIG.get(strategy, {}), **raw_config}
    # Numbers first: resolve_config's int() would raise on an infinite (JSON Infinity) or a list.
    for key, value in raw_config.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _fail(where, f"config.{key} must be a non-negative number, got {value!r}")
    try:
        config = resolve_config(strategy, raw_config)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None
    for key in INTEGER_CONFIG_KEYS:
        if key in config and key != "branch_norm" and int(config[key]) < 1:
            raise _fail(where, f"config.{key} must be a positive integer, got {config[key]!r}")
    if config["fused_dim"] != int(config["fused_dim"]):
        raise _fail(where, f"config.fused_dim must be a positive integer, got {config['fused_dim']!r}")
    return config


def _fusion_weights(data: Mapping[str, Any], inputs: tuple[str, ...], where: str) -> dict[str, float]:
    weights = data.get("fusion_weights", {})
    if not isinstance(weights, dict) or set(weights) - set(inputs):
        raise _fail(where, f"fusion_weights must map the head's modalities ({', '.join(inputs)}) to numbers")
    for modality, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise _fail(where, f"fusion_weights.{modality} must be a number in [0, 1], got {value!r}")
    return {m: float(v) for m, v in weights.items()}


def parse_manifest(data: Any, where: str = "<memory>") -> HeadManifest:
    """Validates a manifest's schema (not its weights); raises HeadLoadError naming the problem."""
    if not isinstance(data, dict):
        raise _fail(where, "manifest is not a JSON object")
    _check_depth(data, where)
    version = _require(data, "format_version", int, where)
    if version not in READABLE_FORMAT_VERSIONS:
        readable = ", ".join(map(str, READABLE_FORMAT_VERSIONS))
        raise _fail(where, f"unsupported format_version {version} (this server reads {readable})")
    name = _require(data, "name", str, where)
    if not _NAME_RE.match(name):
        raise _fail(where, f"invalid name {name!r} (letters, digits, '.', '_', '-'; at most 128)")
    task = _require(data, "task", str, where)
    if task not in TASKS:
        raise _fail(where, f"unknown task {task!r}; known: {', '.join(TASKS)}")
    strategy = _require(data, "strategy", str, where)
    allowed = (ALIGNMENT_STRATEGY,) if task == "alignment" else DECISION_STRATEGIES
    if strategy not in allowed:
        raise _fail(where, f"strategy {strategy!r} is not a {task} strategy; known: {', '.join(allowed)}")
    if version == 1 and strategy == "attention":
        raise _fail(where, "format 1 has no attention strategy")
    outputs = _format1_outputs(data, task, where) if version == 1 else _format2_outputs(data, task, where)

    policy = "allow" if version == 1 else _require(data, "missing_modality_policy", str, where)
    if policy not in POLICIES:
        raise _fail(where, f"missing_modality_policy must be one of {', '.join(POLICIES)}, got {policy!r}")

    inputs = _inputs(data, version, strategy, where)
    raw_dims = _require(data, "input_dims", dict, where)
    if version >= 3 and set(raw_dims) - set(inputs):
        extra = sorted(set(raw_dims) - set(inputs))
        raise _fail(where, f"input_dims has {extra}, which the head's modalities {list(inputs)} lack")
    for index, output in enumerate(outputs):
        if set(output.missing_temperatures) - set(inputs):
            raise _fail(
                where,
                f"outputs[{index}].missing_temperatures must map the head's modalities ({', '.join(inputs)})",
            )
    input_dims: dict[str, int] = {}
    for modality in inputs:
        dim = _require(raw_dims, modality, int, f"{where} input_dims")
        if dim <= 0:
            raise _fail(where, f"input_dims.{modality} must be positive, got {dim}")
        if dim > MAX_INPUT_DIM:
            raise _too_large(where, f"input_dims.{modality} {dim} exceeds the bound {MAX_INPUT_DIM}")
        input_dims[modality] = dim

    config = _config(data, strategy, version, where)
    _check_bounds(config, outputs, where)

    raw_encoders = _require(data, "encoders", dict, where)
    encoders: dict[str, EncoderRef] = {}
    for modality in encoded(inputs):
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
    features = None
    if FEATURES in inputs:
        try:
            features = parse_schema(_require(data, "features", dict, where), input_dims[FEATURES])
        except ValueError as exc:
            raise _fail(where, str(exc)) from None

    return HeadManifest(
        format_version=version,
        name=name,
        task=task,
        strategy=strategy,
        outputs=outputs,
        input_dims=input_dims,
        config=config,
        encoders=encoders,
        metrics=metrics,
        weights_sha256=sha,
        created_at=created_at,
        missing_modality_policy=policy,
        fusion_weights=_fusion_weights(data, inputs, where),
        inputs=inputs,
        features=features,
    )


def _inputs(data: Mapping[str, Any], version: int, strategy: str, where: str) -> tuple[str, ...]:
    """The head's input modalities: text and image before format 3, else its ``modalities``."""
    if version < 3:
        return TEXT_IMAGE
    raw = _require(data, "modalities", list, where)
    if not raw or not all(isinstance(m, str) for m in raw):
        raise _fail(where, "modalities must be a non-empty list of modality names")
    try:
        inputs = ordered(raw)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None
    if list(inputs) != raw:
        raise _fail(where, f"modalities must be listed in fusion order: {list(inputs)}")
    if strategy == ALIGNMENT_STRATEGY and inputs != TEXT_IMAGE:
        raise _fail(where, "an alignment head reads text and image")
    single = SINGLE_STRATEGIES.get(strategy)
    if single is not None and single not in inputs:
        raise _fail(where, f"strategy {strategy!r} reads {single}, which modalities {list(inputs)} lack")
    if single is None and strategy != ALIGNMENT_STRATEGY and len(inputs) < 2:
        raise _fail(where, f"strategy {strategy!r} fuses several modalities; modalities lists {list(inputs)}")
    return inputs
