"""Fusion strategies and the trainable heads built on them (torch modules, no I/O).

Every fusion module is built for the modalities of its head (``dims``: modality -> input
width, in fusion order, ``services.fusion.modalities``) and has one interface::

    forward(inputs {modality: [N, D_m]}, masks {modality: [N] bool}) -> fused [N, D]

``forward(text, image, text_mask, image_mask)`` is shorthand for a text + image head. A False
mask means the row has no such modality; its values in the input tensor are ignored.
Missing-modality rules (each module enforces its own, so a head behaves the same in training
and serving):

- ``weighted_sum``: each projected branch is normalised (LayerNorm without a learned scale,
  ``branch_norm``) before weighting, so all have the same size and the weights say how much
  each modality counts; a missing modality's branch is replaced by a learned placeholder (its
  weight unchanged), so the decision layer can tell a text-only row from a complete one and
  learn (with modality dropout) to be as unsure as it should be. Format 1 heads
  (``branch_norm=0``) predate both: their softmax is taken over the present modalities only, so
  a text-only row is exactly its text projection.
- ``concat_mlp``: an absent modality's (normalised) input is replaced by a learned "missing"
  vector, so the MLP sees a consistent placeholder instead of an out-of-distribution zero.
- ``gated``: a per-sample, per-dimension softmax gate over the modalities, taken over the
  present ones (two modalities: the sigmoid gate of a gated multimodal unit, forced to the
  present modality when one is missing).
- ``attention``: a missing modality's tokens are masked out of the attention (``attention``).
- ``<modality>_only`` (``text_only``, ``audio_only``, ...): baselines that look at one modality;
  a row without it fuses to the zero vector (the classifier then predicts its prior).

Encoder embeddings are LayerNormed on the way in; ``features`` are not (they arrive
standardised with the training statistics, and a LayerNorm across a few numbers would erase
them). A row with no modality fuses to zeros here; the serving layer refuses such rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from services.fusion.attention import ATTENTION_DEFAULTS, AttentionFusion
from services.fusion.layers import Tensors, any_present, as_inputs, input_norm
from services.fusion.layers import masked as _masked
from services.fusion.modalities import NAMES, TEXT_IMAGE

# Strategies that fuse several modalities, and the one-modality baselines (one per modality).
FUSED_STRATEGIES = ("weighted_sum", "concat_mlp", "gated", "attention")
SINGLE_STRATEGIES = {f"{modality}_only": modality for modality in NAMES}
# Strategies of heads with a decision layer (classification, regression, multi-task).
DECISION_STRATEGIES = (*FUSED_STRATEGIES, *SINGLE_STRATEGIES)
# The decision strategies a text + image head can use (what every head was before modalities).
CLASSIFICATION_STRATEGIES = (*FUSED_STRATEGIES, "text_only", "image_only")
ALIGNMENT_STRATEGY = "alignment"

DEFAULT_CONFIG = {"fused_dim": 256, "hidden_dim": 256, "dropout": 0.1}
# Hyper-parameters only some strategies have, with their defaults.
STRATEGY_CONFIG: dict[str, dict[str, float]] = {
    "weighted_sum": {"branch_norm": 1},
    "attention": dict(ATTENTION_DEFAULTS),
}
DEFAULT_ALIGNMENT_CONFIG = {"fused_dim": 256, "init_temperature": 0.07}
# Config keys that must be whole numbers (the rest are rates).
INTEGER_CONFIG_KEYS = (
    "fused_dim",
    "hidden_dim",
    "branch_norm",
    "num_layers",
    "num_heads",
    "tokens_per_modality",
)
# CLIP's cap on the learned inverse temperature; beyond it training becomes unstable.
MAX_LOGIT_SCALE = 100.0


def strategy_modalities(strategy: str, modalities: Sequence[str]) -> tuple[str, ...]:
    """The modalities a strategy reads of a head's: one for a baseline, all of them otherwise."""
    single = SINGLE_STRATEGIES.get(strategy)
    return (single,) if single is not None else tuple(modalities)


class FusionModule(nn.Module):
    """Base class: the modalities and widths every strategy has; subclasses implement ``fuse``."""

    def __init__(self, dims: Mapping[str, int], fused_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.modalities = tuple(dims)
        self.fused_dim = fused_dim

    def forward(self, *args) -> torch.Tensor:
        inputs, masks = as_inputs(args)
        return self.fuse(inputs, masks)

    def fuse(self, inputs: Tensors, masks: Tensors) -> torch.Tensor:
        raise NotImplementedError

    def _present(self, masks: Tensors) -> torch.Tensor:
        return any_present({m: masks[m] for m in self.modalities})


class WeightedSumFusion(FusionModule):
    """F = sum_m w_m * N(P_m(x_m)), w = softmax(learned logits).

    N normalises each projected branch to zero mean and unit variance per row (no learned
    scale), so no branch can grow to outweigh the others: the weights are the real shares of
    the modalities. A missing modality's N(P(x)) is a learned placeholder. ``branch_norm=0``
    (format 1 heads) skips N and the placeholders and instead renormalises w over the present
    modalities.
    """

    def __init__(
        self, dims: Mapping[str, int], fused_dim: int, hidden_dim: int, dropout: float, branch_norm: int = 1
    ):
        super().__init__(dims, fused_dim, hidden_dim, dropout)
        for modality, dim in self.dims.items():
            self.add_module(
                f"proj_{modality}", nn.Sequential(input_norm(modality, dim), nn.Linear(dim, fused_dim))
            )
        self.modality_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.dropout = nn.Dropout(dropout)
        self.normalised = bool(branch_norm)
        if self.normalised:
            self.branch_norm = nn.LayerNorm(fused_dim, elementwise_affine=False)  # no parameters
            self.missing = nn.Parameter(torch.zeros(len(self.modalities), fused_dim))  # placeholders

    def learned_weights(self) -> dict[str, float]:
        """The softmax of the learned logits: each modality's share when all are present."""
        weights = torch.softmax(self.modality_logits.detach(), dim=0)
        return {m: float(w) for m, w in zip(self.modalities, weights, strict=True)}

    def modality_weights(self, *masks) -> torch.Tensor:
        """[N, M] weights (in modality order), renormalised over each row's present modalities.

        Takes the masks dict, or one mask per modality in order."""
        by_name = (
            masks[0]
            if len(masks) == 1 and isinstance(masks[0], Mapping)
            else dict(zip(self.modalities, masks, strict=True))
        )
        present = torch.stack([by_name[m] for m in self.modalities], dim=-1).to(self.modality_logits.dtype)
        exp = torch.exp(self.modality_logits - self.modality_logits.max()) * present
        return exp / exp.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(exp.dtype).tiny)

    def _project(self, modality: str, inputs: Tensors, masks: Tensors) -> torch.Tensor:
        return getattr(self, f"proj_{modality}")(_masked(inputs[modality], masks[modality]))

    def fuse(self, inputs, masks):
        if not self.normalised:  # format 1
            weights = self.modality_weights(masks)
            fused = 0
            for index, m in enumerate(self.modalities):
                branch = _masked(self._project(m, inputs, masks), masks[m])
                fused = fused + weights[:, index : index + 1] * branch
            return self.dropout(fused)
        weights = torch.softmax(self.modality_logits, dim=0)
        fused = 0
        for index, m in enumerate(self.modalities):
            branch = torch.where(
                masks[m].unsqueeze(-1), self.branch_norm(self._project(m, inputs, masks)), self.missing[index]
            )
            fused = fused + weights[index] * branch
        return self.dropout(_masked(fused, self._present(masks)))


class ConcatMLPFusion(FusionModule):
    """MLP([norm(x_1), ..., norm(x_M)]); an absent modality is replaced by a learned vector."""

    def __init__(self, dims: Mapping[str, int], fused_dim: int, hidden_dim: int, dropout: float):
        super().__init__(dims, fused_dim, hidden_dim, dropout)
        for modality, dim in self.dims.items():
            self.add_module(f"norm_{modality}", input_norm(modality, dim))
        for modality, dim in self.dims.items():
            self.register_parameter(f"missing_{modality}", nn.Parameter(torch.zeros(dim)))
        self.mlp = nn.Sequential(
            nn.Linear(sum(self.dims.values()), hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, fused_dim),
        )

    def fuse(self, inputs, masks):
        parts = [
            torch.where(
                masks[m].unsqueeze(-1),
                getattr(self, f"norm_{m}")(_masked(inputs[m], masks[m])),
                getattr(self, f"missing_{m}"),
            )
            for m in self.modalities
        ]
        return self.mlp(torch.cat(parts, dim=-1))


class GatedFusion(FusionModule):
    """Gated multimodal unit: F = sum_m z_m * tanh(P_m x_m), z = per-sample, per-dimension gate.

    The gate's logits come from all inputs (one block per modality but the last, whose logit is
    0), softmaxed over the present modalities. With two modalities that is the sigmoid gate
    z*tanh(P_t t) + (1-z)*tanh(P_i i), computed as one (bit for bit what heads trained as such
    were).
    """

    def __init__(self, dims: Mapping[str, int], fused_dim: int, hidden_dim: int, dropout: float):
        super().__init__(dims, fused_dim, hidden_dim, dropout)
        if len(self.modalities) < 2:
            raise ValueError("gated fusion needs at least two modalities")
        for modality, dim in self.dims.items():
            self.add_module(f"norm_{modality}", input_norm(modality, dim))
        for modality, dim in self.dims.items():
            self.add_module(f"proj_{modality}", nn.Linear(dim, fused_dim))
        self.gate = nn.Linear(sum(self.dims.values()), fused_dim * (len(self.modalities) - 1))
        self.dropout = nn.Dropout(dropout)

    def _gates(self, logits: torch.Tensor, masks: Tensors) -> list[torch.Tensor]:
        first, second = (masks[m] for m in self.modalities[:2])
        if len(self.modalities) == 2:
            gate = torch.sigmoid(logits)
            gate = torch.where((first & ~second).unsqueeze(-1), torch.ones_like(gate), gate)
            gate = torch.where((second & ~first).unsqueeze(-1), torch.zeros_like(gate), gate)
            return [gate, 1 - gate]
        n = logits.shape[0]
        logits = torch.cat(
            [logits.view(n, -1, self.fused_dim), logits.new_zeros(n, 1, self.fused_dim)], dim=1
        )
        present = torch.stack([masks[m] for m in self.modalities], dim=-1)
        # A row with nothing present fuses to zeros below; all keys keep its softmax finite.
        present = present | ~present.any(dim=-1, keepdim=True)
        logits = logits.masked_fill(~present.unsqueeze(-1), float("-inf"))
        return list(torch.softmax(logits, dim=1).unbind(dim=1))

    def fuse(self, inputs, masks):
        normed = {
            m: _masked(getattr(self, f"norm_{m}")(_masked(inputs[m], masks[m])), masks[m])
            for m in self.modalities
        }
        gates = self._gates(self.gate(torch.cat(list(normed.values()), dim=-1)), masks)
        fused = 0
        for gate, m in zip(gates, self.modalities, strict=True):
            fused = fused + gate * torch.tanh(getattr(self, f"proj_{m}")(normed[m]))
        return self.dropout(_masked(fused, self._present(masks)))


class SingleModalityFusion(FusionModule):
    """Baseline that projects one modality and ignores the others."""

    def __init__(
        self, dims: Mapping[str, int], fused_dim: int, hidden_dim: int, dropout: float, modality: str
    ):
        super().__init__({modality: dims[modality]}, fused_dim, hidden_dim, dropout)
        self.modality = modality
        in_dim = dims[modality]
        self.proj = nn.Sequential(
            input_norm(modality, in_dim),
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, fused_dim),
        )

    def fuse(self, inputs, masks):
        x, mask = inputs[self.modality], masks[self.modality]
        return _masked(self.proj(_masked(x, mask)), mask)


FUSION_STRATEGIES: dict[str, type[nn.Module]] = {
    "weighted_sum": WeightedSumFusion,
    "concat_mlp": ConcatMLPFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    **{name: SingleModalityFusion for name in SINGLE_STRATEGIES},
}


class FusionModel(nn.Module):
    """A fusion module (the shared trunk) followed by a small MLP decision layer.

    The decision layer's last Linear has one column block per output (``services.fusion.outputs``:
    class logits, or one standardised value per regression target), so a multi-task head is one
    shared trunk with a read-out per task. It is an MLP rather than one Linear layer because
    weighted_sum fuses additively: a linear read-out of P_t(t) + P_i(i) could never tell whether
    a caption *matches* an image. (``classifier`` is the format 1 name of these weights.)
    """

    def __init__(self, fusion: nn.Module, num_outputs: int, hidden_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.fusion = fusion
        self.classifier = nn.Sequential(
            nn.Linear(fusion.fused_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_outputs),
        )
        self.num_outputs = num_outputs

    def embed(self, *args) -> torch.Tensor:
        """The fused embedding: ``(inputs, masks)`` or ``(text, image, text_mask, image_mask)``."""
        return self.fusion(*args)

    def forward(self, *args) -> torch.Tensor:
        """Raw decision-layer columns [N, num_outputs] (logits and standardised values)."""
        return self.classifier(self.fusion(*args))


class AlignmentHead(nn.Module):
    """Two projections into one shared, L2-normalised space with a learned temperature (CLIP-style)."""

    def __init__(self, text_dim: int, image_dim: int, fused_dim: int, init_temperature: float):
        super().__init__()
        self.text_dim = text_dim
        self.image_dim = image_dim
        self.fused_dim = fused_dim
        self.proj_text = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, fused_dim))
        self.proj_image = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, fused_dim))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj_text(text), dim=-1)

    def project_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj_image(image), dim=-1)

    def embed(self, *args) -> torch.Tensor:
        """Normalised mean of the present modalities' projections (one vector per multimodal item)."""
        inputs, masks = as_inputs(args)
        text, image, text_mask, image_mask = inputs["text"], inputs["image"], masks["text"], masks["image"]
        summed = _masked(self.project_text(_masked(text, text_mask)), text_mask) + _masked(
            self.project_image(_masked(image, image_mask)), image_mask
        )
        return F.normalize(summed, dim=-1)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Image-to-text logits [N_images, N_texts] (row i's positive is column i in training)."""
        return self.logit_scale * self.project_image(image) @ self.project_text(text).T


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: cross-entropy of image->text and text->image, positives on the diagonal."""
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2


def default_config(strategy: str) -> dict:
    """A strategy's hyper-parameters and their defaults."""
    if strategy == ALIGNMENT_STRATEGY:
        return dict(DEFAULT_ALIGNMENT_CONFIG)
    return {**DEFAULT_CONFIG, **STRATEGY_CONFIG.get(strategy, {})}


def resolve_config(strategy: str, config: dict) -> dict:
    """A strategy's full hyper-parameters: defaults overlaid with ``config``; unknown keys are refused."""
    if strategy != ALIGNMENT_STRATEGY and strategy not in FUSION_STRATEGIES:
        known = ", ".join([*FUSION_STRATEGIES, ALIGNMENT_STRATEGY])
        raise ValueError(f"unknown strategy {strategy!r}; known: {known}")
    defaults = default_config(strategy)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown config keys for strategy {strategy!r}: {unknown}; known: {sorted(defaults)}"
        )
    merged = {**defaults, **config}
    for key in INTEGER_CONFIG_KEYS:
        value = merged.get(key)
        if value is not None and (isinstance(value, bool) or value != int(value) or value < 0):
            raise ValueError(f"config.{key} must be a non-negative whole number, got {value!r}")
    if strategy == "attention" and int(merged["fused_dim"]) % max(1, int(merged["num_heads"])):
        raise ValueError(
            f"config.fused_dim {merged['fused_dim']} must be a multiple of num_heads {merged['num_heads']}"
        )
    return merged


def build_head_module(
    strategy: str, dims: Mapping[str, int], config: dict, num_outputs: int = 0
) -> FusionModel | AlignmentHead:
    """The untrained module for a strategy over the head's modalities (``dims``: modality -> input
    width, in fusion order); the one place heads are constructed (train and load).

    ``num_outputs`` is the width of the decision layer: the sum of the outputs' widths.
    """
    merged = resolve_config(strategy, config)
    dims = dict(dims)
    if strategy == ALIGNMENT_STRATEGY:
        if tuple(dims) != TEXT_IMAGE:
            raise ValueError(f"an alignment head aligns text and image, not {', '.join(dims)}")
        return AlignmentHead(
            dims["text"], dims["image"], int(merged["fused_dim"]), float(merged["init_temperature"])
        )
    extra = {key: int(merged[key]) for key in STRATEGY_CONFIG.get(strategy, {}) if key not in DEFAULT_CONFIG}
    single = SINGLE_STRATEGIES.get(strategy)
    if single is not None:
        if single not in dims:
            raise ValueError(
                f"strategy {strategy!r} reads {single}, which the head's modalities ({', '.join(dims)}) lack"
            )
        extra["modality"] = single
    elif len(dims) < 2:
        raise ValueError(
            f"strategy {strategy!r} fuses several modalities; the head has only {', '.join(dims)}"
        )
    fusion = FUSION_STRATEGIES[strategy](
        dims, int(merged["fused_dim"]), int(merged["hidden_dim"]), float(merged["dropout"]), **extra
    )
    return FusionModel(
        fusion, num_outputs, hidden_dim=int(merged["hidden_dim"]), dropout=float(merged["dropout"])
    )


def build_model(
    strategy: str, text_dim: int, image_dim: int, config: dict, num_outputs: int = 0
) -> FusionModel | AlignmentHead:
    """``build_head_module`` for a text + image head."""
    dims = {"text": text_dim, "image": image_dim}
    return build_head_module(
        strategy, {m: dims[m] for m in strategy_modalities(strategy, TEXT_IMAGE)}, config, num_outputs
    )
