"""Trained heads on disk: save, validate + load, run (numpy in, numpy out), check against encoders.

A head is a directory ``<heads_dir>/<name>/`` holding ``head.safetensors`` (the torch state
dict; never pickle) and ``manifest.json`` (schema and format versions: ``services.fusion.manifest``).
The manifest's name must equal the directory's name (one name per head, no aliases).

Inputs to ``Head.embed`` / ``Head.predict`` / ``Head.predict_proba``: per modality of the head
(``manifest.inputs``), a float array [N, input_dims[modality]] or None (``inputs``; ``text`` and
``image`` are shorthand); at least one is given, with the same N. Mixed batches pass masks
(``masks``), bool arrays [N] where True means "this row has that modality":

- A modality left out means no row has it (its mask, if given, must be all False).
- A given array with no mask means every row has that modality.
- Values in rows whose mask is False are ignored (pass zeros there).
- Every row needs at least one modality; otherwise ``InvalidInput``.

What a head does with a missing modality is defined per strategy in ``strategies`` (weighted_sum
renormalises its weights over the present modalities, concat_mlp substitutes a learned "missing"
vector, gated forces its gate to the present modality, attention masks the missing tokens out,
single-modality baselines fuse to zeros). Whether a head *answers* such a row at all is its
``missing_modality_policy``: ``refuse`` heads never saw a row without one of their modalities
in training, and ``check_modalities`` turns such rows away with a message naming what is missing.
Alignment heads embed an item as the normalised mean of its present modalities' projections.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.common.backend import EncoderInfo
from services.common.errors import FailedPrecondition, InvalidInput
from services.fusion.attention import AttentionFusion
from services.fusion.compiled_heads import Decision, compiled_decision
from services.fusion.features import FeatureSchema
from services.fusion.manifest import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    TASKS,
    EncoderRef,
    HeadLoadError,
    HeadManifest,
    HeadTooLarge,
    parse_manifest,
)
from services.fusion.modalities import FEATURES, MODALITIES, TEXT_IMAGE, joined, ordered
from services.fusion.outputs import CLASSIFICATION, Outputs, OutputSpec, split_outputs, task_of
from services.fusion.strategies import (
    ALIGNMENT_STRATEGY,
    AlignmentHead,
    FusionModel,
    build_head_module,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODALITIES",
    "FeatureSchema",
    "TASKS",
    "WEIGHTS_FILE",
    "EncoderRef",
    "Head",
    "HeadLoadError",
    "HeadManifest",
    "HeadTooLarge",
    "IncompatibleHead",
    "check_compatible",
    "check_encoders",
    "load_head",
    "parse_manifest",
    "save_head",
    "update_metrics",
]

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "head.safetensors"


class IncompatibleHead(FailedPrecondition):
    """A head was trained on other encoders than the ones serving now."""


def _fail(where: str, message: str) -> HeadLoadError:
    return HeadLoadError(f"head {where}: {message}")


def _too_large(where: str, message: str) -> HeadTooLarge:
    return HeadTooLarge(f"head {where}: {message}")


# --------------------------------------------------------------------------- the loaded head


def _as_input(array: np.ndarray | None, dim: int, modality: str) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    what = "values" if modality == FEATURES else "embeddings"
    if array.ndim != 2 or array.shape[1] != dim:
        raise InvalidInput(f"{modality} {what} must have shape [N, {dim}], got {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInput(f"{modality} {what} must be floating point, got {array.dtype}")
    return array


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


def _gather(text, image, text_mask, image_mask, inputs, masks) -> tuple[dict, dict]:
    """The generic ``inputs`` / ``masks`` dicts, with the text + image shorthand folded in."""
    inputs, masks = dict(inputs or {}), dict(masks or {})
    for modality, array, mask in (("text", text, text_mask), ("image", image, image_mask)):
        if array is not None:
            inputs[modality] = array
        if mask is not None:
            masks[modality] = mask
    return inputs, masks


def _present(args: tuple) -> dict[str, Sequence[bool]]:
    """Per-modality presence: a dict, or the text + image shorthand ``(has_text, has_image)``."""
    if len(args) == 1 and isinstance(args[0], Mapping):
        return dict(args[0])
    return dict(zip(TEXT_IMAGE, args, strict=True))


def _none_of(names: Sequence[str]) -> str:
    return f"neither {names[0]} nor {names[1]}" if len(names) == 2 else f"none of {joined(names)}"


class Head:
    """A loaded head: eval mode, CPU, inference only. Thread-safe (no state changes after load).

    Inputs go in as ``inputs`` (modality -> array [N, input_dims[modality]]) and ``masks``
    (modality -> bool [N]); ``text``, ``image``, ``text_mask`` and ``image_mask`` are shorthand
    for those two. ``features`` are given raw: the head standardises them with its training
    statistics (``manifest.features``).
    """

    def __init__(
        self, manifest: HeadManifest, module: FusionModel | AlignmentHead, decision: Decision | None = None
    ) -> None:
        self.manifest = manifest
        self._module = module.eval()
        # What predict runs: the module, or the same module compiled for CPU (compiled_for).
        self._decision_forward = decision or self._module

    def compiled_for(self, cpu_runtime: str) -> Head:
        """This head with its decision layer on ``cpu_runtime`` (services/fusion/compiled_heads.py),
        when it compiles and agrees with the eager module; explain and embed stay eager."""
        if not isinstance(self._module, FusionModel) or cpu_runtime == "eager":
            return self
        dims = {m: self.manifest.input_dims[m] for m in self.manifest.inputs}
        decision = compiled_decision(self._module, dims, cpu_runtime, f"head {self.name!r}")
        return Head(self.manifest, self._module, decision) if decision is not None else self

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

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        return self.manifest.outputs

    @property
    def can_explain(self) -> bool:
        """Whether ``predict(explain=True)`` has attention weights to return."""
        return isinstance(self._module, FusionModel) and isinstance(self._module.fusion, AttentionFusion)

    @property
    def attention_keys(self) -> tuple[str, ...]:
        """What ``Outputs.attention``'s columns are: [CLS], then each modality the head fuses."""
        return ("cls", *self.manifest.modalities)

    def modalities_used(self, *present) -> list[tuple[str, ...]]:
        """Per row, the modalities this head reads that the row carries (what its answer rests on).

        ``present``: modality -> [N] bools (or ``has_text, has_image``)."""
        present = _present(present)
        wanted = [m for m in self.manifest.modalities if m in present]
        rows = len(next(iter(present.values()))) if present else 0
        return [tuple(m for m in wanted if present[m][row]) for row in range(rows)]

    def check_modalities(self, *present) -> None:
        """Refuses (InvalidInput) rows that lack a modality this head reads, unless its policy allows it.

        Rows lacking every modality the head reads are refused under either policy: nothing
        would be left to answer from. ``present``: modality -> [N] bools (or ``has_text, has_image``).
        """
        present = _present(present)
        wanted = self.manifest.modalities
        rows = len(next(iter(present.values()))) if present else 0
        for index in range(rows):
            missing = [m for m in wanted if not (m in present and present[m][index])]
            if not missing:
                continue
            if len(missing) == len(wanted):
                raise InvalidInput(
                    f"inputs[{index}] has no {' and no '.join(missing)}: head {self.name!r} reads {joined(wanted)}"
                )
            if self.manifest.missing_modality_policy == "refuse":
                raise InvalidInput(
                    f"inputs[{index}] has no {missing[0]}: head {self.name!r} needs {joined(wanted)} (it never "
                    f"saw a row without {missing[0]} in training; missing-modality policy 'refuse')"
                )

    def _prepare(self, inputs: Mapping, masks: Mapping) -> tuple[dict, dict]:
        dims, names = self.manifest.input_dims, self.manifest.inputs
        unknown = sorted((set(inputs) | set(masks)) - set(names))
        if unknown:
            raise InvalidInput(f"head {self.name!r} reads {joined(names)}, not {', '.join(unknown)}")
        arrays = {m: _as_input(inputs.get(m), dims[m], m) for m in names}
        given = [m for m in names if arrays[m] is not None]
        if not given:
            raise InvalidInput(f"give {' or '.join(names)} embeddings (any of them)")
        n = arrays[given[0]].shape[0]
        for m in given[1:]:
            if arrays[m].shape[0] != n:
                raise InvalidInput(f"{given[0]} has {n} rows but {m} has {arrays[m].shape[0]}")
        row_masks = {m: _as_mask(masks.get(m), n, arrays[m] is not None, m) for m in names}
        empty = np.flatnonzero(~np.any(np.stack(list(row_masks.values())), axis=0))
        if empty.size:
            raise InvalidInput(f"rows {empty[:10].tolist()} have {_none_of(names)}")
        tensors = {}
        for m in names:
            array = arrays[m]
            if array is None:
                array = np.zeros((n, dims[m]), np.float32)
            else:
                # Absent rows may hold anything (NaN included); only present rows must be finite.
                array = np.where(row_masks[m][:, None], array, 0)
                if not np.isfinite(array).all():
                    raise InvalidInput(
                        f"{m} {'values' if m == FEATURES else 'embeddings'} contain NaN or infinity"
                    )
                if m == FEATURES:
                    array = np.where(row_masks[m][:, None], self.manifest.features.standardise(array), 0)
            tensors[m] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return tensors, {m: torch.from_numpy(mask) for m, mask in row_masks.items()}

    def embed(
        self, text=None, image=None, text_mask=None, image_mask=None, *, inputs=None, masks=None
    ) -> np.ndarray:
        """Fused embeddings [N, fused_dim] float32 (see the class docstring for inputs and masks)."""
        prepared = self._prepare(*_gather(text, image, text_mask, image_mask, inputs, masks))
        with torch.inference_mode():
            return self._module.embed(*prepared).numpy()

    def _decision(self) -> FusionModel:
        if not isinstance(self._module, FusionModel):
            raise FailedPrecondition(f"head {self.name!r} is an alignment head; it has nothing to predict")
        return self._module

    def predict(
        self,
        text=None,
        image=None,
        text_mask=None,
        image_mask=None,
        explain: bool = False,
        *,
        inputs=None,
        masks=None,
    ) -> Outputs:
        """Every output's answer for N rows: class probabilities (calibrated) and values (in target units).

        ``explain`` adds the attention heads' [CLS] attention weights [N, 1 + M]
        (``attention_keys``: cls, then each modality).
        """
        module = self._decision()
        if explain and not self.can_explain:
            raise InvalidInput(
                f"head {self.name!r} ({self.manifest.strategy}) has no attention weights; "
                "explain needs an attention head"
            )
        tensors, row_masks = self._prepare(*_gather(text, image, text_mask, image_mask, inputs, masks))
        with torch.inference_mode():
            raw = self._decision_forward(tensors, row_masks).double().numpy()
            # Temperatures by missing modality apply to the modalities this head reads.
            reads = self.manifest.modalities
            outputs = split_outputs(raw, self.outputs, {m: row_masks[m].numpy() for m in reads})
            if explain:
                weights = module.fusion.attention_weights(tensors, row_masks).numpy()
                outputs = Outputs(outputs.probabilities, outputs.values, weights)
        return outputs

    def predict_proba(
        self, text=None, image=None, text_mask=None, image_mask=None, *, inputs=None, masks=None
    ) -> np.ndarray:
        """Class probabilities [N, len(labels)] float32 of a classification head, in ``labels`` order."""
        self._decision()
        if self.task != CLASSIFICATION:
            raise FailedPrecondition(
                f"head {self.name!r} is a {self.task} head; read its outputs with predict()"
            )
        outputs = self.predict(text, image, text_mask, image_mask, inputs=inputs, masks=masks)
        return outputs.probabilities[self.outputs[0].name]

    def _alignment(self) -> AlignmentHead:
        if not isinstance(self._module, AlignmentHead):
            raise FailedPrecondition(f"head {self.name!r} is a {self.task} head, not an alignment head")
        return self._module

    def project_text(self, text: np.ndarray) -> np.ndarray:
        """Text embeddings [N, Dt] -> L2-normalised shared-space vectors [N, fused_dim]."""
        module = self._alignment()
        text = _as_input(text, self.manifest.input_dims["text"], "text").astype(np.float32, copy=False)
        if not np.isfinite(text).all():
            raise InvalidInput("text embeddings contain NaN or infinity")
        with torch.inference_mode():
            return module.project_text(torch.from_numpy(np.ascontiguousarray(text))).numpy()

    def project_image(self, image: np.ndarray) -> np.ndarray:
        """Image embeddings [N, Di] -> L2-normalised shared-space vectors [N, fused_dim]."""
        module = self._alignment()
        image = _as_input(image, self.manifest.input_dims["image"], "image").astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            raise InvalidInput("image embeddings contain NaN or infinity")
        with torch.inference_mode():
            return module.project_image(torch.from_numpy(np.ascontiguousarray(image))).numpy()

    @property
    def logit_scale(self) -> float:
        """Learned inverse temperature: logits = logit_scale * cosine similarity."""
        return float(self._alignment().logit_scale.detach())


# --------------------------------------------------------------------------- disk I/O


def _build(manifest: HeadManifest, where: str) -> FusionModel | AlignmentHead:
    try:
        return build_head_module(
            manifest.strategy,
            {m: manifest.input_dims[m] for m in manifest.inputs},
            dict(manifest.config),
            num_outputs=manifest.num_outputs,
        )
    except ValueError as exc:
        raise _fail(where, f"config {dict(manifest.config)} does not build: {exc}") from None


def _expected_shapes(manifest: HeadManifest, where: str) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes the manifest implies, from a module built on the meta device: no
    memory is allocated, so a manifest can't make the server build a giant module before its
    weights file, bounded in size, has been found to match."""
    with torch.device("meta"):
        module = _build(manifest, where)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _read_bounded(path: Path, max_bytes: int | None, where: str) -> bytes:
    """The file's bytes, refused (HeadTooLarge) past ``max_bytes``: checked on the size before
    reading, and on what is read (the file may grow in between)."""
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise _too_large(where, f"{path.name} is {path.stat().st_size} bytes, over the limit {max_bytes}")
    with path.open("rb") as file:
        data = file.read() if max_bytes is None else file.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_large(where, f"{path.name} grew past the limit {max_bytes} bytes while being read")
    return data


def load_head(path: Path | str, max_weights_bytes: int | None = None) -> Head:
    """Loads and validates the head in directory ``path``; raises HeadLoadError when anything is off.

    ``max_weights_bytes`` bounds the weights file (the server passes its setting; offline tools
    reading their own heads pass none). The manifest is always bounded by MAX_MANIFEST_BYTES.
    """
    path = Path(path)
    where = repr(path.name)
    manifest_path, weights_path = path / MANIFEST_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise _fail(where, f"{path} is not a directory")
    for required in (manifest_path, weights_path):
        if not required.is_file():
            raise _fail(where, f"missing {required.name} in {path}")
    raw_manifest = _read_bounded(manifest_path, MAX_MANIFEST_BYTES, where)
    try:
        data = json.loads(raw_manifest.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(where, f"{MANIFEST_FILE} is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_large(where, f"{MANIFEST_FILE} is nested too deeply to parse") from None
    manifest = parse_manifest(data, where)
    if manifest.name != path.name:
        raise _fail(where, f"manifest names the head {manifest.name!r}; rename the directory or the manifest")

    blob = _read_bounded(weights_path, max_weights_bytes, where)
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

    expected = _expected_shapes(manifest, where)
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
                f"(input_dims {dict(manifest.input_dims)}, {manifest.num_outputs} output columns, "
                f"config {dict(manifest.config)}) implies {list(shape)}",
            )
        if not torch.isfinite(state[key]).all():
            raise _fail(where, f"tensor {key!r} contains NaN or infinity")
    # Only now is the module allocated: its shapes equal the weights', which are bounded in size.
    module = _build(manifest, where)
    module.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    return Head(manifest, module)


def save_head(
    directory: Path | str,
    module: FusionModel | AlignmentHead,
    *,
    strategy: str,
    input_dims: Mapping[str, int],
    config: Mapping[str, Any],
    encoders: Mapping[str, EncoderRef | Mapping[str, str]],
    labels: Sequence[str] = (),
    outputs: Sequence[OutputSpec] = (),
    missing_modality_policy: str = "allow",
    fusion_weights: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any] | None = None,
    features: FeatureSchema | None = None,
) -> HeadManifest:
    """Writes ``module``'s weights and a manifest into ``directory`` (whose name is the head's name).

    The head's modalities are the keys of ``input_dims`` (``encoders`` names the encoder of each
    but features; a head reading features gives their ``features`` schema).

    A classification head may give just ``labels`` (one output named ``label``); others give
    ``outputs``. The weights are written before the manifest, so a scanner that sees a manifest
    sees weights matching its sha256 (or, mid-rewrite, a mismatch it refuses rather than a
    half-written head).
    """
    directory = Path(directory)
    alignment = strategy == ALIGNMENT_STRATEGY
    if not outputs and labels and not alignment:
        outputs = (OutputSpec("label", CLASSIFICATION, tuple(labels)),)
    outputs = () if alignment else tuple(outputs)
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    blob = save_safetensors(state)
    refs = {m: ref if isinstance(ref, EncoderRef) else EncoderRef(**ref) for m, ref in encoders.items()}
    manifest_data = {
        "format_version": FORMAT_VERSION,
        "name": directory.name,
        "task": "alignment" if alignment else task_of(outputs),
        "strategy": strategy,
        "outputs": [output.to_json() for output in outputs],
        "missing_modality_policy": missing_modality_policy,
        "modalities": list(ordered(input_dims)),
        "input_dims": dict(input_dims),
        "config": dict(config),
        "encoders": {m: {"model_id": r.model_id, "revision": r.revision} for m, r in refs.items()},
        "metrics": dict(metrics or {}),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if fusion_weights:
        manifest_data["fusion_weights"] = dict(fusion_weights)
    if features is not None:
        manifest_data["features"] = features.to_json()
    manifest = parse_manifest(manifest_data, repr(directory.name))
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / WEIGHTS_FILE, blob)
    _write_atomic(directory / MANIFEST_FILE, _manifest_bytes(manifest.to_json()))
    return manifest


def update_metrics(directory: Path | str, metrics: Mapping[str, Any]) -> HeadManifest:
    """Merges ``metrics`` into a saved head's manifest (evaluation runs after saving).

    The rest of the manifest is written back as it was (a format 1 head stays format 1).
    """
    directory = Path(directory)
    data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["metrics"] = {**data.get("metrics", {}), **metrics}
    manifest = parse_manifest(data, repr(directory.name))
    _write_atomic(directory / MANIFEST_FILE, _manifest_bytes(data))
    return manifest


def _manifest_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --------------------------------------------------------------------------- encoder compatibility


def check_encoders(manifest: HeadManifest, infos: Mapping[str, EncoderInfo | None]) -> None:
    """Refuses a head whose training encoders differ from the serving ones (IncompatibleHead).

    Only the encoded modalities the head reads are checked (features need no encoder). A
    revision is compared when both sides record one; ``None`` (or no entry) for an encoder the
    head needs means it is not being served.
    """
    for modality in manifest.encoded_modalities:
        trained = manifest.encoders[modality]
        trained_dim = manifest.input_dims[modality]
        info = infos.get(modality)
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


def check_compatible(
    manifest: HeadManifest, text_info: EncoderInfo | None, image_info: EncoderInfo | None
) -> None:
    """``check_encoders`` with the text and image encoders only."""
    check_encoders(manifest, {"text": text_info, "image": image_info})


def _describe(model_id: str, revision: str) -> str:
    return f"{model_id}@{revision}" if revision else model_id
