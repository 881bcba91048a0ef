"""Text classification with any sequence-classification model: a fine-tuned folder from
``python -m training.finetune classify``, a local directory or a hub id.

A ModelBackend: items are (text, top_k), outputs that text's top_k (label, score), best first.
Scores are a softmax over the labels (independent sigmoids for a multi-label model). The
folder must hold safetensors weights and real label names: anything else is refused at start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from services.common.backend import ModelDescription
from services.common.compiled import check_runtime
from services.common.device import dtype_name, resolve_device
from services.common.model_source import model_revision
from services.text.compiled import compiled_forward
from services.text.embedding import estimated_tokens
from services.text.labels import checked_labels
from services.text.tokenizers import TokenizerPool

LabelScores = list[tuple[str, float]]


class TextClassifier:
    parallel_forward = True  # torch inference holds no per-call state; each pass borrows its own tokenizer

    def __init__(
        self,
        model: str,
        revision: str = "",
        device: str = "auto",
        dtype: str = "auto",
        cpu_runtime: str = "onnxruntime",
    ) -> None:
        if not model:
            raise ValueError("a text classifier needs a model directory or hub id")
        self._source = model
        self._revision = revision
        self._device, self._dtype = resolve_device(device, dtype)
        self._max_length = 512
        check_runtime(cpu_runtime)
        self._cpu_runtime = cpu_runtime

    def load(self) -> ModelDescription:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        kwargs = {"revision": self._revision} if self._revision else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(self._source, **kwargs)
            model = AutoModelForSequenceClassification.from_pretrained(
                self._source, use_safetensors=True, **kwargs
            )
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"text classifier {self._source}: cannot load: {exc}") from exc
        self._labels = checked_labels(model.config, self._source)
        self._multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
        self._model = model.to(self._device, self._dtype).eval()
        self._tokenizers = TokenizerPool(tokenizer)
        limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
        self._max_length = int(min(x for x in limits if x and x < 1_000_000))
        self._logits = self._eager_logits
        if self._device.type == "cpu" and (
            compiled := compiled_forward(self._model, tokenizer, self._cpu_runtime, self._max_length)
        ):
            self._logits = compiled
            self._model = None  # the compiled graph holds its own weights: not kept twice
        return ModelDescription(
            model_id=self._source,
            revision=model_revision(self._source, self._revision),
            embedding_dim=0,
            device=str(self._device),
            dtype=dtype_name(self._dtype),
            max_input_tokens=self._max_length,
            labels=tuple(self._labels),
        )

    def _eager_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._model(**inputs).logits

    def item_cost(self, item: tuple[str, int]) -> int:
        return estimated_tokens(item[0], self._max_length)

    def process(self, items: Sequence[tuple[str, int]]) -> list[LabelScores]:
        with self._tokenizers.borrowed() as tokenizer:
            encoded = tokenizer(
                [text for text, _ in items],
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="pt",
            )
        with torch.inference_mode():
            logits = self._logits({k: v.to(self._device) for k, v in encoded.items()}).float()
            scores = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
        top_k = max(k for _, k in items)
        values, indices = scores.topk(min(top_k, len(self._labels)), dim=-1)
        return [
            [
                (self._labels[i], float(v))
                for v, i in zip(row_values.tolist(), row_indices.tolist(), strict=True)
            ][:k]
            for row_values, row_indices, (_, k) in zip(values, indices, items, strict=True)
        ]
