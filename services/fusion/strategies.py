"""Fusion strategies and the trainable heads built on them (torch modules, no I/O).

Every fusion module has one interface::

    forward(text [N, Dt], image [N, Di], text_mask [N] bool, image_mask [N] bool) -> fused [N, D]

A False mask means the row has no such modality; its values in the input tensor are ignored.
Missing-modality rules (each module enforces its own, so a head behaves the same in training
and serving):

- ``weighted_sum``: each projected branch is normalised (LayerNorm without a learned scale,
  ``branch_norm``) before weighting, so both have the same size and the weights say how much
  each modality counts; a missing modality's branch is replaced by a learned placeholder (its
  weight unchanged), so the decision layer can tell a text-only row from a matching pair and
  learn (with modality dropout) to be as unsure as it should be. Format 1 heads
  (``branch_norm=0``) predate both: their softmax is taken over the present modalities only, so
  a text-only row is exactly its text projection.
- ``concat_mlp``: an absent modality's (normalised) input is replaced by a learned "missing"
  vector, so the MLP sees a consistent placeholder instead of an out-of-distribution zero.
- ``gated``: the per-sample gate is forced to the present modality (1 for text, 0 for image).
- ``attention``: a missing modality's tokens are masked out of the attention (``attention``).
- ``text_only`` / ``image_only``: baselines that look at one modality; a row without it fuses
  to the zero vector (the classifier then predicts its prior).

A row with neither modality fuses to zeros here; the serving layer refuses such rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from services.fusion.attention import ATTENTION_DEFAULTS, AttentionFusion

# Strategies of heads with a decision layer (classification, regression, multi-task).
CLASSIFICATION_STRATEGIES = ("weighted_sum", "concat_mlp", "gated", "attention", "text_only", "image_only")
DECISION_STRATEGIES = CLASSIFICATION_STRATEGIES
# The strategies that fuse both modalities (the others are single-modality baselines).
FUSED_STRATEGIES = ("weighted_sum", "concat_mlp", "gated", "attention")
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


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zeroes rows whose mask is False (also hides NaN/garbage a caller left in absent rows)."""
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


class FusionModule(nn.Module):
    """Base class: records the dims every strategy has."""

    def __init__(
        self, text_dim: int, image_dim: int, fused_dim: int, hidden_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.image_dim = image_dim
        self.fused_dim = fused_dim

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, image_mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


class WeightedSumFusion(FusionModule):
    """F = w_t * N(P_t(text)) + w_i * N(P_i(image)), w = softmax(learned logits).

    N normalises each projected branch to zero mean and unit variance per row (no learned
    scale), so neither branch can grow to outweigh the other: w_text and w_image are the real
    shares of the two modalities. A missing modality's N(P(x)) is a learned placeholder.
    ``branch_norm=0`` (format 1 heads) skips N and the placeholders and instead renormalises
    w over the present modalities.
    """

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        fused_dim: int,
        hidden_dim: int,
        dropout: float,
        branch_norm: int = 1,
    ):
        super().__init__(text_dim, image_dim, fused_dim, hidden_dim, dropout)
        # LayerNorm first: the encoders' scales differ (unit-norm text vs ReLU6 image features).
        self.proj_text = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, fused_dim))
        self.proj_image = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, fused_dim))
        self.modality_logits = nn.Parameter(torch.zeros(2))
        self.dropout = nn.Dropout(dropout)
        self.normalised = bool(branch_norm)
        if self.normalised:
            self.branch_norm = nn.LayerNorm(fused_dim, elementwise_affine=False)  # no parameters
            self.missing = nn.Parameter(torch.zeros(2, fused_dim))  # text, image placeholders

    def learned_weights(self) -> dict[str, float]:
        """The two-way softmax of the learned logits: each modality's share when both are present."""
        weights = torch.softmax(self.modality_logits.detach(), dim=0)
        return {"text": float(weights[0]), "image": float(weights[1])}

    def modality_weights(self, text_mask: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """[N, 2] weights (text, image), renormalised over each row's present modalities."""
        present = torch.stack([text_mask, image_mask], dim=-1).to(self.modality_logits.dtype)
        exp = torch.exp(self.modality_logits - self.modality_logits.max()) * present
        return exp / exp.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(exp.dtype).tiny)

    def forward(self, text, image, text_mask, image_mask):
        if not self.normalised:  # format 1
            weights = self.modality_weights(text_mask, image_mask)
            fused_text = _masked(self.proj_text(_masked(text, text_mask)), text_mask)
            fused_image = _masked(self.proj_image(_masked(image, image_mask)), image_mask)
            return self.dropout(weights[:, :1] * fused_text + weights[:, 1:] * fused_image)
        weights = torch.softmax(self.modality_logits, dim=0)
        fused_text = torch.where(
            text_mask.unsqueeze(-1),
            self.branch_norm(self.proj_text(_masked(text, text_mask))),
            self.missing[0],
        )
        fused_image = torch.where(
            image_mask.unsqueeze(-1),
            self.branch_norm(self.proj_image(_masked(image, image_mask))),
            self.missing[1],
        )
        fused = weights[0] * fused_text + weights[1] * fused_image
        return self.dropout(_masked(fused, text_mask | image_mask))


class ConcatMLPFusion(FusionModule):
    """MLP([norm(text), norm(image)]); an absent modality is replaced by a learned vector."""

    def __init__(self, text_dim: int, image_dim: int, fused_dim: int, hidden_dim: int, dropout: float):
        super().__init__(text_dim, image_dim, fused_dim, hidden_dim, dropout)
        self.norm_text = nn.LayerNorm(text_dim)
        self.norm_image = nn.LayerNorm(image_dim)
        self.missing_text = nn.Parameter(torch.zeros(text_dim))
        self.missing_image = nn.Parameter(torch.zeros(image_dim))
        self.mlp = nn.Sequential(
            nn.Linear(text_dim + image_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, fused_dim),
        )

    def forward(self, text, image, text_mask, image_mask):
        text_in = torch.where(
            text_mask.unsqueeze(-1), self.norm_text(_masked(text, text_mask)), self.missing_text
        )
        image_in = torch.where(
            image_mask.unsqueeze(-1), self.norm_image(_masked(image, image_mask)), self.missing_image
        )
        return self.mlp(torch.cat([text_in, image_in], dim=-1))


class GatedFusion(FusionModule):
    """Gated multimodal unit: z = sigmoid(W [t, i]) per sample and dim; F = z*tanh(P_t t) + (1-z)*tanh(P_i i)."""

    def __init__(self, text_dim: int, image_dim: int, fused_dim: int, hidden_dim: int, dropout: float):
        super().__init__(text_dim, image_dim, fused_dim, hidden_dim, dropout)
        self.norm_text = nn.LayerNorm(text_dim)
        self.norm_image = nn.LayerNorm(image_dim)
        self.proj_text = nn.Linear(text_dim, fused_dim)
        self.proj_image = nn.Linear(image_dim, fused_dim)
        self.gate = nn.Linear(text_dim + image_dim, fused_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text, image, text_mask, image_mask):
        text_in = _masked(self.norm_text(_masked(text, text_mask)), text_mask)
        image_in = _masked(self.norm_image(_masked(image, image_mask)), image_mask)
        gate = torch.sigmoid(self.gate(torch.cat([text_in, image_in], dim=-1)))
        only_text = (text_mask & ~image_mask).unsqueeze(-1)
        only_image = (image_mask & ~text_mask).unsqueeze(-1)
        gate = torch.where(only_text, torch.ones_like(gate), gate)
        gate = torch.where(only_image, torch.zeros_like(gate), gate)
        fused = gate * torch.tanh(self.proj_text(text_in)) + (1 - gate) * torch.tanh(
            self.proj_image(image_in)
        )
        neither = ~(text_mask | image_mask)
        return self.dropout(_masked(fused, ~neither))


class _SingleModalityFusion(FusionModule):
    """Baseline that projects one modality and ignores the other."""

    modality = ""

    def __init__(self, text_dim: int, image_dim: int, fused_dim: int, hidden_dim: int, dropout: float):
        super().__init__(text_dim, image_dim, fused_dim, hidden_dim, dropout)
        in_dim = text_dim if self.modality == "text" else image_dim
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, fused_dim),
        )

    def forward(self, text, image, text_mask, image_mask):
        x, mask = (text, text_mask) if self.modality == "text" else (image, image_mask)
        return _masked(self.proj(_masked(x, mask)), mask)


class TextOnlyFusion(_SingleModalityFusion):
    modality = "text"


class ImageOnlyFusion(_SingleModalityFusion):
    modality = "image"


FUSION_STRATEGIES: dict[str, type[nn.Module]] = {
    "weighted_sum": WeightedSumFusion,
    "concat_mlp": ConcatMLPFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "text_only": TextOnlyFusion,
    "image_only": ImageOnlyFusion,
}

# Modalities each strategy reads; a head is only checked against the encoders it uses.
STRATEGY_MODALITIES: dict[str, tuple[str, ...]] = {
    "weighted_sum": ("text", "image"),
    "concat_mlp": ("text", "image"),
    "gated": ("text", "image"),
    "attention": ("text", "image"),
    "text_only": ("text",),
    "image_only": ("image",),
    "alignment": ("text", "image"),
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

    def embed(self, text, image, text_mask, image_mask) -> torch.Tensor:
        return self.fusion(text, image, text_mask, image_mask)

    def forward(self, text, image, text_mask, image_mask) -> torch.Tensor:
        """Raw decision-layer columns [N, num_outputs] (logits and standardised values)."""
        return self.classifier(self.fusion(text, image, text_mask, image_mask))


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

    def embed(self, text, image, text_mask, image_mask) -> torch.Tensor:
        """Normalised mean of the present modalities' projections (one vector per multimodal item)."""
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


def build_model(
    strategy: str, text_dim: int, image_dim: int, config: dict, num_outputs: int = 0
) -> FusionModel | AlignmentHead:
    """The untrained module for a strategy; the one place heads are constructed (train and load).

    ``num_outputs`` is the width of the decision layer: the sum of the outputs' widths.
    """
    merged = resolve_config(strategy, config)
    if strategy == ALIGNMENT_STRATEGY:
        return AlignmentHead(
            text_dim, image_dim, int(merged["fused_dim"]), init_temperature=float(merged["init_temperature"])
        )
    extra = {key: int(merged[key]) for key in STRATEGY_CONFIG.get(strategy, {}) if key not in DEFAULT_CONFIG}
    fusion = FUSION_STRATEGIES[strategy](
        text_dim,
        image_dim,
        int(merged["fused_dim"]),
        int(merged["hidden_dim"]),
        float(merged["dropout"]),
        **extra,
    )
    return FusionModel(
        fusion, num_outputs, hidden_dim=int(merged["hidden_dim"]), dropout=float(merged["dropout"])
    )
